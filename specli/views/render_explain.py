"""Rich views for `specli explain`: the one-step table and real rounds, step by step."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from specli.core.explain import PROOF, StepTable, fmt_fraction


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


def _tok(text: str) -> str:
    """A token's text, visible: quotes, newlines and tabs spelled out, markup escaped."""
    return escape(repr(text))


def _alts_table(pos) -> Table:
    """The draft's top q beside the target's top p at one position."""
    t = Table(box=None, pad_edge=False, show_edge=False)
    for name in ("#", "draft q", "", "target p", ""):
        t.add_column(name, justify="right" if name in ("#", "") else "left")
    n = max(len(pos.q_top), len(pos.p_top))
    for i in range(n):
        q = pos.q_top[i] if i < len(pos.q_top) else None
        p = pos.p_top[i] if i < len(pos.p_top) else None
        t.add_row(str(i + 1), _tok(q[1]) if q else "", f"{q[2]:.4f}" if q else "",
                  _tok(p[1]) if p else "", f"{p[2]:.4f}" if p else "")
    return t


def _position_line(pos, greedy: bool) -> str:
    verdict = "[green]accepted[/]" if pos.accepted else "[red]rejected[/]"
    if greedy:
        agree = "equals" if pos.token == pos.target_argmax else "differs from"
        return (f"x_{pos.index + 1} = {_tok(pos.text)} {agree} the target's argmax "
                f"(id {pos.target_argmax}) -> {verdict}")
    return (f"x_{pos.index + 1} = {_tok(pos.text)}: q(x) = {pos.q_x:.4f}, p(x) = {pos.p_x:.4f}, "
            f"min(1, p/q) = {pos.accept:.4f}, u = {pos.u:.4f} -> {verdict} "
            f"(u {'<' if pos.accepted else '>='} min(1, p/q)); Σmin(p,q) = {pos.beta:.3f}, "
            f"Σp·q = {pos.exact_match:.3f}")


def _ending(rnd) -> str:
    t = rnd.trace
    tok = _tok(t.token_text)
    if t.greedy:
        return f"the target's own token: {tok} (its argmax)"
    if t.source == "residual":
        return f"drew {tok} from the residual norm((p - q)+) (probability {t.token_prob:.4f} there)"
    if rnd.draft_tokens:
        return f"all {len(rnd.draft_tokens)} accepted: bonus token {tok} from p_(K+1) (p = {t.token_prob:.4f})"
    return f"no drafts: the target's token {tok} from p (p = {t.token_prob:.4f})"


def print_rounds(console: Console, rounds, step: float, greedy: bool, note: str) -> None:
    """Each round: per draft position the top q and p, the draw and the verdict; the ending."""
    for rnd in rounds:
        t = rnd.trace
        console.print(f"[bold]round {rnd.index}[/] · K {rnd.k} · drafter {rnd.drafter}"
                      + (" · greedy: argmax agreement" if greedy else ""))
        for pos in t.positions:
            console.print(_alts_table(pos))
            console.print(_position_line(pos, greedy))
        if t.source == "residual":
            r = Table(title="residual norm((p - q)+), top 5", title_justify="left", box=None)
            r.add_column("token")
            r.add_column("prob", justify="right")
            for _, text, prob in t.drawn_top:
                r.add_row(_tok(text), f"{prob:.4f}")
            console.print(r)
        console.print(_ending(rnd))
        console.print(f"cost: draft {1e3 * rnd.t_draft:.1f} ms, verify {1e3 * rnd.t_verify:.1f} ms "
                      f"for {len(rnd.draft_tokens) + 1} tokens, one target step {1e3 * step:.1f} ms")
        console.print()
    console.print(f"[dim]{escape(note)}[/]")
