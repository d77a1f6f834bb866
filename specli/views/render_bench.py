"""Rich views of a bench summary (the plain dict from specli.bench.summary.summarize).

They read only the summary, so a saved `--json` file renders the same way. Each function
returns a renderable; `print_report` prints them all to a Console it is given.
"""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text
from rich import box

SPARK = "▁▂▃▄▅▆▇█"
BAR_WIDTH = 40


def _label(v: dict) -> tuple[str, str]:
    return ("target" if v["k"] == 0 else v["drafter"]), str(v["k"])


def _num(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _x(x) -> str:
    return f"{x:.2f}×" if x is not None else "-"


def sparkline(counts: list[int]) -> str:
    """Counts as one block character each, scaled to the largest (empty bins: a space)."""
    top = max(counts, default=0)
    if top <= 0:
        return ""
    return "".join(" " if c == 0 else SPARK[min(len(SPARK) - 1, (c * len(SPARK) - 1) // top)]
                   for c in counts)


def results_table(summary: dict) -> Table:
    """Per (drafter, K): tok/s, speedup vs the same run's baseline, predictions, α, time split."""
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0, 0, 1), title_justify="left",
              title="Results (all prompts)")
    for name, just in (("drafter", "left"), ("K", "right"), ("tok/s", "right"), ("min-max", "right"),
                       ("speedup", "right"), ("pred", "right"), ("pred+", "right"),
                       ("replay", "right"), ("α", "right"), ("β/exact", "right"),
                       ("tok/rnd", "right"), ("accepted", "left"), ("time %", "right")):
        t.add_column(name, justify=just, no_wrap=True)
    for v in summary["variants"]:
        if not v.get("runs"):
            continue
        drafter, k = _label(v)
        tps = v["tokens_per_s"]
        sp = v.get("speedup") or {}
        sh = v["shares"]
        alpha = v.get("alpha")
        t.add_row(
            drafter, k, _num(tps["median"]), f"{_num(tps['min'])}-{_num(tps['max'])}",
            _x(sp.get("median")), _x(v.get("predicted_speedup")) if v["k"] != 0 else "",
            _x(v.get("predicted_speedup_catchup")) if v["k"] != 0 else "",
            _x(v.get("replayed_speedup")) if v["k"] != 0 else "",
            f"{alpha:.2f}" if alpha is not None and v["k"] != 0 else "",
            _overlap_cell(v),
            f"{v['tokens_per_round']:.2f}", sparkline(v["accepted_hist"]) if v["k"] != 0 else "",
            f"{100 * sh['draft']:.0f}/{100 * sh['verify']:.0f}/{100 * sh['other']:.0f}",
            style="bold" if v["k"] == 0 else None,
        )
    return t


def _overlap_cell(v: dict) -> str:
    """'0.74/0.31': mean sum min(p,q) (rejection sampling) / sum p*q (exact match); sampled only."""
    b, m = v.get("expected_acceptance"), v.get("exact_match_acceptance")
    return f"{b:.2f}/{m:.2f}" if b is not None and m is not None else ""


LEGEND = ("speedup: median of per-run ratios to the K 0 run of the same prompt and repeat · "
          "α: per-token acceptance, accepted / (accepted + rejections) · pred: Leviathan et al.'s "
          "formula with the calibrated costs and the row's α · pred+: the same plus the draft's "
          "catch-up (a round after an all-accepted one feeds it 2 tokens) · β/exact: expected "
          "acceptance per model draft under rejection sampling, Σ min(p,q), and under the "
          "exact-match verification llama-server and mlx-lm use, Σ p·q (sampled runs) · replay: the "
          "calibrated costs, catch-ups included, applied to the rounds actually run · "
          "accepted: rounds by drafts "
          "accepted, 0..K · time %: draft/verify/other\n")


def auto_choices(summary: dict) -> Text:
    """For --k auto rows: how often each K was chosen (and which drafter proposed)."""
    out = Text()
    for v in summary["variants"]:
        if v["k"] != "auto" or not v.get("runs"):
            continue
        ks = " ".join(f"{k}×{n}" for k, n in v["k_chosen"].items())
        src = " ".join(f"{s} {n}" for s, n in v["drafter_rounds"].items())
        out.append(f"auto ({v['drafter']}) chose K: {ks}   rounds by drafter: {src}\n")
    return out


def bar_chart(summary: dict, width: int = BAR_WIDTH) -> Text:
    """Median tok/s per row as bars; '│' marks the target alone (K 0) on every bar."""
    rows = [v for v in summary["variants"] if v.get("runs")]
    if not rows:
        return Text()
    top = max(v["tokens_per_s"]["median"] for v in rows) or 1.0
    base = next((v["tokens_per_s"]["median"] for v in rows if v["k"] == 0), None)
    mark = round(base / top * width) if base else None
    text = Text("tok/s by K (median over runs; │ = target alone")
    text.append(f", {base:.1f} tok/s)\n" if base else ")\n")
    for v in rows:
        drafter, k = _label(v)
        x = v["tokens_per_s"]["median"]
        n = max(0, round(x / top * width))
        cells = ["█" if i < n else " " for i in range(width + 1)]
        if mark is not None:
            cells[min(mark, width)] = "┃" if mark < n else "│"
        style = "bold" if v["k"] == 0 else ("green" if base and x > base else "yellow")
        text.append(f"{drafter:>7} K {k:<4} ")
        bar = "".join(cells)
        if mark is not None and mark < n:
            text.append(bar[:mark], style)
            text.append(bar[mark], "bold white")
            text.append(bar[mark + 1:], style)
        else:
            text.append(bar, style)
        sp = (v.get("speedup") or {}).get("median")
        text.append(f" {_num(x):>6}" + (f"  {sp:.2f}×" if sp is not None and v["k"] != 0 else "") + "\n")
    return text


def cost_model(summary: dict) -> Text:
    """The calibrated costs (and the same costs as seen inside the runs)."""
    cal = summary.get("calibration")
    if not cal:
        return Text()
    tv = cal["t_verify"]
    text = Text(f"Costs (median of {cal['reps']} samples, taken before the sweep and before "
                "each prompt block):\n", style="bold")
    text.append("  target t_v(n) ms  " + "  ".join(f"n={n} {1e3 * t:.1f}" for n, t in enumerate(tv, 1))
                + "\n")
    text.append("  t_v(n)/t_v(1)     " + "  ".join(f"{t / tv[0]:.2f}" for t in tv) + "\n")
    if cal.get("t_draft"):
        text.append(f"  draft t_d {1e3 * cal['t_draft']:.1f} ms/token = {cal['draft_ratio']:.2f} "
                    "of a target step")
        batch = cal.get("t_draft_batch") or {}
        if batch:
            text.append("; batches " + "  ".join(f"n={n} {1e3 * t:.1f}" for n, t in batch.items()
                                                if int(n) in (1, 2, 4, 8, 16, 32)) + " ms")
        text.append("\n")
    run = summary.get("in_run_costs") or {}
    if run.get("t_verify"):
        seen = "  ".join(f"n={n} {1e3 * t:.1f}" for n, t in run["t_verify"].items())
        text.append(f"  in the runs: t_v ms {seen}", style="dim")
        if run.get("t_draft"):
            text.append(f" · t_d {1e3 * run['t_draft']:.1f} ms/token", style="dim")
        text.append("\n")
    return text


def _name(best: dict) -> str:
    return f"--k {best['k']}" + (f" --drafter {best['drafter']}" if best["drafter"] != "model" else "")


def recommendation(summary: dict) -> Text:
    """Best K per suite, or why speculation does not pay here, with the numbers."""
    text = Text("Recommendation\n", style="bold")
    for suite, s in summary.get("suites", {}).items():
        best = s.get("best")
        if best is None:
            text.append(f"  {suite}: only the baseline ran\n")
            continue
        if s.get("pays"):
            text.append(f"  {suite}: {_name(best)} — {best['speedup']:.2f}× the target alone", "green")
        else:
            advice = s.get("advice") or {"k": 0}
            use = ("use --k 0" if advice["k"] == 0 else
                   f"keep {_name(advice)}: it kept up with the target alone and drafts only "
                   "where that pays")
            text.append(f"  {suite}: speculation does not pay for this pair on this machine "
                        f"(best: {_name(best)}, {best['speedup']:.2f}×); {use}", "yellow")
        autos = s.get("auto") or {}
        if autos:
            text.append("\n    --k auto: " + "; ".join(
                f"{d} drafter {a['vs_baseline']:.2f}× baseline"
                + (f", {a['vs_best_fixed']:.2f}× best fixed K" if a.get("vs_best_fixed") else "")
                for d, a in autos.items()))
        text.append("\n")
        why = s.get("why")
        if why and not s.get("pays"):
            text.append(_why(why), "dim")
    return text


def _why(why: dict) -> str:
    parts = [f"    a draft token costs {why['draft_ratio']:.2f} of a target step, its catch-up "
             f"after an all-accepted round {why.get('catchup_ratio', 0):.2f} more"]
    for k, ratio in why["verify_ratio"].items():
        alpha = why["alpha"].get(k)
        need = why["break_even_alpha"].get(k)
        need_s = f"needs α ≥ {need:.2f}" if need is not None else "cannot pay even at α = 1"
        a_s = f"α {alpha:.2f}" if alpha is not None else "α -"
        parts.append(f"K {k}: verifying {int(k) + 1} tokens costs {ratio:.2f}× one, {a_s}, {need_s}")
    return ";\n    ".join(parts) + "\n"


def footer(summary: dict) -> Text:
    """Peak memory, machine load, and exactness at temperature 0."""
    text = Text(style="dim")
    text.append(f"peak RSS {summary.get('peak_rss_mib', 0):.0f} MiB · "
                f"{summary.get('elapsed_s', 0):.0f} s · load avg before {summary.get('load_before')} "
                f"after {summary.get('load_after')}")
    if summary.get("interrupted"):
        text.append(" · INTERRUPTED: partial results", "yellow")
    other = summary.get("other_cpu_share")
    if other is not None:
        text.append(f" · other processes used {100 * other:.0f}% of the CPUs")
    text.append("\n")
    if other is not None and other > 0.1:
        text.append(f"warning: other processes used {100 * other:.0f}% of the CPUs during the "
                    "sweep: timings are skewed\n", "yellow")
    base = next((v for v in summary.get("variants", []) if v["k"] == 0 and v.get("runs")), None)
    lo, hi = (base["tokens_per_s"]["min"], base["tokens_per_s"]["max"]) if base else (0, 0)
    if lo > 0 and hi > 1.5 * lo:
        spread = hi / lo
        text.append(f"warning: the baseline's tok/s varies {spread:.1f}x between runs: "
                    "a noisy machine (or very different prompts)\n", "yellow")
    mism = summary.get("greedy_mismatches") or []
    if mism:
        text.append(f"note: {len(mism)} greedy run(s) differ from the baseline's tokens (seq "
                    f"{mism[:10]}): batched and single-token decodes can round differently "
                    "in llama.cpp, which flips near-tied argmaxes\n", "yellow")
    return text


def report(summary: dict) -> Group:
    return Group(results_table(summary), Text(LEGEND, style="dim"), auto_choices(summary), bar_chart(summary),
                 cost_model(summary), numerics_line(summary), recommendation(summary), footer(summary))


def numerics_line(summary: dict) -> Text:
    """The batch-numerics gap of the target here, and whether the rows ran --strict."""
    bn = summary.get("batch_numerics")
    if not bn:
        return Text("")
    inv, tv = bn["invariant_up_to"], bn["tv"]
    worst = max(tv.values(), default=0.0)
    text = (f"batch numerics: verify batches of up to {inv} tokens compute the target's "
            f"single-token logits bit for bit; larger ones differ by TV up to {worst:.4f}")
    if inv >= bn["n_max"]:
        text = f"batch numerics: every verify batch up to {inv} tokens is bit-identical to single-token decoding"
    if summary.get("strict"):
        text += f" · --strict: verified in chunks of {summary.get('verify_chunk')}"
    return Text(text, style="dim")


def print_report(console: Console, summary: dict) -> None:
    console.print(report(summary))
