"""Rich views for `specli explain`: the one-step table and real rounds, step by step."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from specli.explain import PROOF, StepTable, fmt_fraction


def step_view(table: StepTable) -> Table:
    """One row per token: q, p, min(1, p/q), kept, residual, via rejection, emitted."""
    t = Table(title="one verification step (exact)", title_justify="left")
    for name in ("x", "q(x)", "p(x)", "min(1,p/q)", "P(draft, keep)", "(p-q)+",
                 "norm (p-q)+", "P(via reject)", "P(emit)"):
        t.add_column(name, justify="right")
    for r in table.rows:
        t.add_row(str(r.token), *(fmt_fraction(v) for v in (
            r.q, r.p, r.accept, r.kept, r.residual, r.residual_norm, r.via_rejection, r.emitted)))
    return t


def print_step(console: Console, table: StepTable, samples: dict | None) -> None:
    """The table, the acceptance figures, the proof line and, if drawn, the sample check."""
    console.print(step_view(table))
    ok = all(r.emitted == r.p for r in table.rows)
    console.print(f"acceptance β = Σ min(p, q) = {fmt_fraction(table.beta)} ({float(table.beta):.4f})")
    console.print(f"rejection probability 1 - β = {fmt_fraction(table.rejection)} "
                  f"({float(table.rejection):.4f})")
    console.print(f"exact-match acceptance (llama-server, mlx-lm) Σ p·q = "
                  f"{fmt_fraction(table.exact_match)} ({float(table.exact_match):.4f})")
    console.print(f"P(emit) == p for every token: {'yes' if ok else 'NO'}")
    console.print(f"why: {PROOF}")
    if samples:
        _print_samples(console, table, samples)


def _print_samples(console: Console, table: StepTable, s: dict) -> None:
    t = Table(title=f"{s['n']} seeded verifications (seed {s['seed']})", title_justify="left")
    for name in ("x", "p(x)", "empirical", "count"):
        t.add_column(name, justify="right")
    for r, f, c in zip(table.rows, s["frequencies"], s["counts"]):
        t.add_row(str(r.token), f"{float(r.p):.4f}", f"{f:.4f}", str(c))
    console.print(t)
    console.print(f"chi-square {s['chi_square']:.3f} on {s['dof']} degrees of freedom: "
                  f"p-value {s['p_value']:.3f} (small, e.g. < 0.001, would mean the output is not p)")
