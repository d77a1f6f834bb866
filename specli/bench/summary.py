"""A sweep's results: one row per run (JSON, CSV), and the summary the report shows:
paired speedups, the cost model's predictions beside them, and the recommendation."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Sequence

from specli.bench.calibration import Calibration
from specli.bench.plan import ORDER, Trial, Variant
from specli.core.costs import break_even_alpha, predicted_speedup, predicted_speedup_catchup

SPEEDUP_DEFINITION = ("median over runs of tok/s / tok/s of the K=0 baseline of the same prompt "
                      "and repeat")
PAYS = 1.03  # a best speedup below this is within noise: speculation does not pay


# --------------------------------------------------------------------------- rows


def result_row(trial: Trial, done, trace, baseline, greedy: bool) -> dict:
    """One run as a flat-ish JSON object (see benchmarks/README.md for the schema)."""
    s = done.stats
    base_tps, base_tokens = baseline if baseline else (None, None)
    speedup = s.tokens_per_s / base_tps if base_tps else None
    rejections = sum(1 for a, n in zip(trace.accepted, trace.drafted) if a < n)
    return {
        "seq": trial.seq,
        "repeat": trial.repeat,
        "prompt_id": trial.prompt.id,
        "suite": trial.prompt.suite,
        "k": trial.variant.k,
        "drafter": trial.variant.drafter,
        "tokens_per_s": s.tokens_per_s,
        "baseline_tokens_per_s": base_tps,
        "speedup": speedup,
        "acceptance_rate": s.acceptance_rate,
        "alpha": _alpha(s.accepted, rejections),
        "rejections": rejections,
        "tokens_per_round": s.tokens_per_round,
        "new_tokens": s.new_tokens,
        "prompt_tokens": s.prompt_tokens,
        "rounds": s.rounds,
        "drafted": s.drafted,
        "accepted": s.accepted,
        "decode_seconds": s.decode_seconds,
        "prompt_seconds": s.prompt_seconds,
        "draft_seconds": s.draft_seconds,
        "verify_seconds": s.verify_seconds,
        "sample_seconds": s.sample_seconds,
        "other_seconds": s.other_seconds,
        "llama_seconds": s.llama_seconds,
        "python_share": s.python_share,
        "overlap_positions": s.overlap_positions,
        "beta_sum": s.beta_sum,
        "exact_match_sum": s.exact_match_sum,
        "accepted_hist": list(s.accepted_hist),
        "k_chosen": _hist(trace.k),
        "drafter_rounds": dict(sorted(Counter(trace.drafter).items())),
        "stop_reason": done.stop_reason,
        "matches_baseline": (tuple(done.tokens) == tuple(base_tokens))
        if greedy and base_tokens is not None else None,
        "per_round": trace.to_dict(),
    }


def _alpha(accepted: int, rejections: int) -> float | None:
    """Per-token acceptance probability under the i.i.d. model: accepted / judged drafts.

    A round that rejects draft i never judges drafts i+1..k, so accepted / drafted is
    biased low at large K; accepted / (accepted + rejections) is the maximum-likelihood
    estimate of Leviathan et al.'s alpha (the same rule costs.AcceptanceRate uses).
    """
    judged = accepted + rejections
    return accepted / judged if judged else None


def _hist(values: Sequence[int]) -> dict[str, int]:
    """{"k": count} with keys in numeric order (strings: JSON object keys)."""
    c = Counter(values)
    return {str(k): c[k] for k in sorted(c)}


CSV_FIELDS = ("seq", "repeat", "prompt_id", "suite", "k", "drafter", "tokens_per_s",
              "baseline_tokens_per_s", "speedup", "acceptance_rate", "alpha", "rejections",
              "tokens_per_round",
              "new_tokens", "prompt_tokens", "rounds", "drafted", "accepted", "decode_seconds",
              "prompt_seconds", "draft_seconds", "verify_seconds", "sample_seconds",
              "other_seconds", "llama_seconds", "python_share", "accepted_hist", "k_chosen",
              "drafter_rounds", "stop_reason", "matches_baseline")


def csv_record(row: dict) -> dict:
    """A result row for CSV: scalars as they are, histograms as 'key:count' lists."""
    out = {}
    for name in CSV_FIELDS:
        v = row.get(name)
        if isinstance(v, dict):
            v = " ".join(f"{k}:{c}" for k, c in v.items())
        elif isinstance(v, list):
            v = " ".join(str(x) for x in v)
        elif v is None:
            v = ""
        out[name] = v
    return out


# --------------------------------------------------------------------------- summary


def summarize(rows: Sequence[dict], variants: Sequence[Variant], calib: Calibration | None,
              info: dict) -> dict:
    """Per-variant figures (all prompts), per-suite figures, the recommendation and the checks."""
    suites = list(dict.fromkeys(r["suite"] for r in rows))
    out = {
        "order": ORDER,
        "speedup": SPEEDUP_DEFINITION,
        "calibration": calib.to_dict() if calib else None,
        "variants": [_variant_summary(v, [r for r in rows if _is(r, v)], calib) for v in variants],
        "suites": {},
        **info,
    }
    for suite in suites:
        srows = [r for r in rows if r["suite"] == suite]
        vs = [_variant_summary(v, [r for r in srows if _is(r, v)], calib, brief=True)
              for v in variants]
        out["suites"][suite] = {"variants": vs, **_recommend(vs, calib, srows)}
    out["in_run_costs"] = in_run_costs(rows)
    out["greedy_mismatches"] = [r["seq"] for r in rows if r["matches_baseline"] is False]
    return out


def _is(row: dict, v: Variant) -> bool:
    return row["k"] == v.k and row["drafter"] == v.drafter


def _variant_summary(v: Variant, rows: list[dict], calib, brief: bool = False) -> dict:
    d = {"k": v.k, "drafter": v.drafter, "runs": len(rows)}
    if not rows:
        return d
    tps = [r["tokens_per_s"] for r in rows]
    sp = [r["speedup"] for r in rows if r["speedup"] is not None]
    drafted = sum(r["drafted"] for r in rows)
    accepted = sum(r["accepted"] for r in rows)
    alpha = _alpha(accepted, sum(r["rejections"] for r in rows))
    d.update(tokens_per_s=_spread(tps), speedup=_spread(sp) if sp else None,
             acceptance_rate=accepted / drafted if drafted else None, alpha=alpha)
    d.update(_predictions(v, rows, alpha, calib))
    d.update(_overlap_means(rows))
    if brief:
        return d
    dec = sum(r["decode_seconds"] for r in rows) or 1e-12
    n_rounds = sum(r["rounds"] for r in rows)
    d.update(
        tokens_per_round=sum(r["new_tokens"] for r in rows) / n_rounds if n_rounds else 0.0,
        accepted_hist=_sum_lists(r["accepted_hist"] for r in rows),
        k_chosen=_sum_hists(r["k_chosen"] for r in rows),
        drafter_rounds=_sum_hists(r["drafter_rounds"] for r in rows),
        shares={"draft": sum(r["draft_seconds"] for r in rows) / dec,
                "verify": sum(r["verify_seconds"] for r in rows) / dec,
                "other": sum(r["other_seconds"] for r in rows) / dec},
        python_share=1.0 - sum(r["llama_seconds"] for r in rows) / dec,
    )
    return d


def _overlap_means(rows: list[dict]) -> dict:
    """Mean sum min(p, q) and sum p*q over the rows' verified model-draft positions (sampled
    runs only): the acceptance rejection sampling expects against exact match's."""
    n = sum(r.get("overlap_positions", 0) for r in rows)
    if not n:
        return {"expected_acceptance": None, "exact_match_acceptance": None}
    return {"expected_acceptance": sum(r["beta_sum"] for r in rows) / n,
            "exact_match_acceptance": sum(r["exact_match_sum"] for r in rows) / n}


def _spread(xs: Sequence[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _sum_lists(lists) -> list[int]:
    out: list[int] = []
    for xs in lists:
        out += [0] * (len(xs) - len(out))
        for i, x in enumerate(xs):
            out[i] += x
    return out


def _sum_hists(hists) -> dict[str, int]:
    c: Counter = Counter()
    for h in hists:
        c.update(h)
    keys = sorted(c, key=lambda k: (0, int(k)) if str(k).isdigit() else (1, str(k)))
    return {k: c[k] for k in keys}


def in_run_costs(rows: Sequence[dict]) -> dict:
    """Costs seen inside the runs, to set beside the calibration: the median verify call
    per batch size n (rounds that sent n - 1 drafts) and the median model-draft cost per
    drafted token (a round of k model drafts makes k draft decodes)."""
    by_n: dict[int, list[float]] = {}
    per_token: list[float] = []
    for r in rows:
        pr = r["per_round"]
        for n, src, td, tv in zip(pr["drafted"], pr["drafter"], pr["t_draft"], pr["t_verify"]):
            by_n.setdefault(n + 1, []).append(tv)
            if src == "model" and n:
                per_token.append(td / n)
    return {"t_verify": {str(n): statistics.median(v) for n, v in sorted(by_n.items())},
            "t_verify_rounds": {str(n): len(v) for n, v in sorted(by_n.items())},
            "t_draft": statistics.median(per_token) if per_token else None}


def _predictions(v: Variant, rows: list[dict], alpha, calib: Calibration | None) -> dict:
    """Predicted speedups from the calibrated costs (see benchmarks/README.md).

    predicted_speedup: Leviathan et al.'s E(K) t_v(1) / (K t_d + t_v(K+1)) with this
    variant's alpha (accepted / judged, see _alpha). predicted_speedup_catchup: the same
    plus the draft's catch-up, which the formula leaves out: a round after an all-accepted
    one (probability alpha^K) first feeds 2 tokens, not 1. Both only for fixed-K model
    drafting, where their assumptions hold.
    replayed_speedup: the calibrated costs, catch-ups included, applied to the rounds this
    variant actually ran; for every variant, auto and n-gram (free drafts) included.
    """
    if calib is None or v.is_baseline:
        one = 1.0 if v.is_baseline else None
        return {"predicted_speedup": one, "predicted_speedup_catchup": one, "replayed_speedup": one}
    pred = pred_c = None
    if v.drafter == "model" and v.k != "auto" and alpha is not None and calib.t_draft is not None:
        pred = predicted_speedup(alpha, v.k, calib.t_draft, calib.t_v)
        pred_c = predicted_speedup_catchup(alpha, v.k, calib.t_draft, calib.t_v, calib.catchup(2))
    return {"predicted_speedup": pred, "predicted_speedup_catchup": pred_c,
            "replayed_speedup": _replay(rows, calib)}


def _replay(rows: list[dict], calib: Calibration) -> float | None:
    """tokens * t_v(1) / sum over rounds of (t_v(n_i + 1) + model drafting incl. catch-up)."""
    t_d = calib.t_draft or 0.0
    tokens, seconds = 0, 0.0
    for r in rows:
        pr = r["per_round"]
        tokens += r["new_tokens"]
        lag = 1  # committed tokens the draft has not decoded (the pending one at least)
        for n, src, acc in zip(pr["drafted"], pr["drafter"], pr["accepted"]):
            seconds += calib.t_v(n + 1)
            if src == "model" and n:
                seconds += n * t_d + calib.catchup(lag)
                lag = 2 if acc == n else 1  # all accepted: its own last draft is undecoded
            else:
                lag += acc + 1  # the draft never saw this round's tokens
    return tokens * calib.t_v(1) / seconds if seconds > 0 else None


def _paired(rows: Sequence[dict], a: dict, b: dict) -> float | None:
    """Median over (prompt, repeat) of tok/s of variant a / tok/s of variant b."""
    tps = {(r["prompt_id"], r["repeat"], r["drafter"], r["k"]): r["tokens_per_s"] for r in rows}
    ratios = [x / tps[(p, rep, b["drafter"], b["k"])]
              for (p, rep, d, k), x in tps.items()
              if (d, k) == (a["drafter"], a["k"]) and tps.get((p, rep, b["drafter"], b["k"]))]
    return statistics.median(ratios) if ratios else None


def _recommend(vs: list[dict], calib: Calibration | None, rows: Sequence[dict]) -> dict:
    """Best variant of one suite, the verdict, the numbers behind it, and the auto checks."""
    scored = [v for v in vs if v.get("speedup") and v["k"] != 0]
    out: dict = {"best": None, "pays": False, "auto": {}}
    fixed = [v for v in scored if v["k"] != "auto"]
    best_fixed = max(fixed, key=lambda v: v["speedup"]["median"], default=None)
    for v in scored:
        if v["k"] == "auto":
            out["auto"][v["drafter"]] = {
                "vs_baseline": v["speedup"]["median"],
                "vs_best_fixed": _paired(rows, v, best_fixed) if best_fixed else None,
            }
    if not scored:
        return out
    best = max(scored, key=lambda v: v["speedup"]["median"])
    out["best"] = {"k": best["k"], "drafter": best["drafter"], "speedup": best["speedup"]["median"]}
    out["best_fixed"] = ({"k": best_fixed["k"], "drafter": best_fixed["drafter"],
                          "speedup": best_fixed["speedup"]["median"]} if best_fixed else None)
    out["pays"] = best["speedup"]["median"] >= PAYS
    out["advice"] = _advice(out)
    if calib is not None and calib.t_draft is not None:
        ks = [v for v in fixed if v["drafter"] == "model"]
        out["why"] = {
            "draft_ratio": calib.t_draft / calib.t_v(1),
            "catchup_ratio": calib.catchup(2) / calib.t_v(1),
            "verify_ratio": {str(v["k"]): calib.t_v(v["k"] + 1) / calib.t_v(1) for v in ks},
            "alpha": {str(v["k"]): v["alpha"] for v in ks},
            "break_even_alpha": {str(v["k"]): break_even_alpha(v["k"], calib.t_draft, calib.t_v,
                                                               calib.catchup(2)) for v in ks},
        }
    return out


def _advice(rec: dict) -> dict:
    """What to run: the best variant when it pays; else `--k auto` if an auto row kept up
    with the target alone (within noise: it drafts only where drafting pays, so it costs
    nothing here and gains where text repeats); else `--k 0`."""
    if rec["pays"]:
        return {"k": rec["best"]["k"], "drafter": rec["best"]["drafter"]}
    autos = {d: a["vs_baseline"] for d, a in rec["auto"].items() if a.get("vs_baseline")}
    if autos:
        drafter, speedup = max(autos.items(), key=lambda kv: kv[1])
        if speedup >= 1 / PAYS:
            return {"k": "auto", "drafter": drafter}
    return {"k": 0, "drafter": None}


