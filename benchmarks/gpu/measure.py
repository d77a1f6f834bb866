"""Measure specli's cost model inputs and loop overheads on a GPU, through specli's own backend.

With both models fully offloaded (n_gpu_layers=-1 by default), after a ~300-token prefill:
  t_v(n)   target decode of n tokens with all n logits rows (what a verify round asks),
           n = 1..9, 16, 17: median of --reps calls of one n in a row (and, as a second
           figure, with n changing every call), timed around LlamaModel.decode
           (which includes llama_get_logits, where llama.cpp waits for the GPU), then
           the cache is truncated back; llama_decode alone is recorded too: on a GPU it
           can return before the kernels finish, and Stats.python_share counts only it;
  t_d      draft single-token decode, likewise;
  c        t_d / t_v(1), t_v(n) / t_v(1), and specli.core.costs.predicted_speedup for
           alpha in (0.6, 0.8, 0.9), K = 1..8;
  engine   specli.core.engine.speculative_generate, ModelDrafter, K = 0 and K = 4, 128 new
           tokens, temperature 0 and 0.7 (top-k 40, top-p 0.95, min-p 0.05): tok/s,
           Stats.python_share, and the share outside LlamaModel.decode measured with
           the GPU wait included. Random weights: the draft never agrees with the
           target, acceptance is ~0 and K = 4 is slower; this measures overheads only.

  python3 benchmarks/gpu/measure.py --target T.gguf --draft D.gguf [--json OUT] [--small]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from specli import costs  # noqa: E402
from specli.llama.backend import LlamaModel  # noqa: E402
from specli.config import SamplingConfig, SpecConfig  # noqa: E402
from specli.core.engine import Done, Round, speculative_generate  # noqa: E402
from specli.session import Loaded, make_drafter  # noqa: E402

NS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17]
ALPHAS = (0.6, 0.8, 0.9)
KS = range(1, 9)


class LogTap(logging.Handler):
    """Collects llama.cpp's log lines (specli routes them to the 'specli.llama' logger)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def timed_decode(model: LlamaModel) -> None:
    """Wrap model.decode (instance attribute) to add its wall time, GPU wait included."""
    inner = model.decode
    model.wall = 0.0
    model.calls = 0

    def decode(tokens, n_logits=1):
        t0 = time.perf_counter()
        out = inner(tokens, n_logits)
        model.wall += time.perf_counter() - t0
        model.calls += 1
        return out

    model.decode = decode


def ms(x: float) -> float:
    return round(x * 1e3, 4)


def decode_costs(model: LlamaModel, ns, fill: int, reps: int, warmup: int, rng, order: str = "block") -> dict:
    """{n: {median_ms, min_ms, llama_decode_median_ms}} for decode(n tokens, n rows) at n_past=fill.

    order="block": warmup + reps calls of one n, then the next n: a steady batch shape, as
    the engine's target sees with a fixed K (CUDA graphs, when built in, are captured after
    two calls of one shape and replayed). order="alternate": n changes every call, as with
    --k auto or early-stopped drafts (the shape changes, so no CUDA graph is replayed).
    """
    model.reset()
    model.decode([int(x) for x in rng.integers(0, 150000, fill)], 0)
    wall = {n: [] for n in ns}
    inner = {n: [] for n in ns}
    if order == "block":
        schedule = [(n, i >= warmup) for n in ns for i in range(warmup + reps)]
    else:
        schedule = [(n, rep >= warmup) for rep in range(warmup + reps) for n in ns]
    for n, keep in schedule:
        toks = [int(x) for x in rng.integers(0, 150000, n)]
        d0 = model.decode_seconds
        t0 = time.perf_counter()
        rows = model.decode(toks, n)
        _ = float(rows[-1, 0])  # touch the logits (already synchronised by llama_get_logits)
        t1 = time.perf_counter()
        model.truncate(fill)
        if keep:
            wall[n].append(t1 - t0)
            inner[n].append(model.decode_seconds - d0)
    return {n: {"median_ms": ms(statistics.median(wall[n])), "min_ms": ms(min(wall[n])),
                "llama_decode_median_ms": ms(statistics.median(inner[n]))} for n in ns}


def engine_run(target, draft, n_vocab, k, sampling, max_tokens, fill, seed) -> dict:
    rng = np.random.default_rng(1000 + seed)
    prompt = [int(x) for x in rng.integers(0, 150000, fill)]
    target.reset()
    drafter = None
    if k > 0:
        draft.reset()
        drafter = make_drafter(Loaded(target, draft, n_vocab), "model", sampling)
    # Prefill here, so the wall counters below see only the decode phase.
    target.decode(prompt[:-1], 0)
    if drafter is not None:
        draft.decode(prompt[:-1], 0)
    target.wall = draft.wall = 0.0
    target.calls = draft.calls = 0
    done = None
    t_sample = 0.0
    for ev in speculative_generate(target, drafter, prompt, sampling,
                                   SpecConfig(k=k, max_tokens=max_tokens, seed=seed), n_vocab=n_vocab):
        if isinstance(ev, Round):
            t_sample += ev.t_sample
        elif isinstance(ev, Done):
            done = ev
    s = done.stats
    wall_in_decode = target.wall + (draft.wall if drafter is not None else 0.0)
    return {
        "k": k, "temperature": sampling.temperature, "stop_reason": done.stop_reason,
        "new_tokens": s.new_tokens, "rounds": s.rounds, "drafted": s.drafted, "accepted": s.accepted,
        "acceptance_rate": round(s.acceptance_rate, 4),
        "tokens_per_s": round(s.tokens_per_s, 2),
        "decode_seconds": round(s.decode_seconds, 5),
        "python_share": round(s.python_share, 4),  # specli's figure: 1 - llama_decode / wall
        "share_outside_decode_call": round(max(0.0, 1 - wall_in_decode / s.decode_seconds), 4),
        "ms_per_round": ms(s.decode_seconds / s.rounds),
        "python_ms_per_round": ms((s.decode_seconds - wall_in_decode) / s.rounds),
        "llama_decode_ms_per_round": ms(s.llama_seconds / s.rounds),
        "decode_call_ms_per_round": ms(wall_in_decode / s.rounds),
        "verify_ms_per_round": ms(s.verify_seconds / s.rounds),
        "draft_ms_per_drafted_token": ms(s.draft_seconds / s.drafted) if s.drafted else None,
        "sample_ms_per_round": ms(t_sample / s.rounds),
        "tokens": list(done.tokens),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=Path, required=True)
    ap.add_argument("--draft", type=Path, required=True)
    ap.add_argument("--n-gpu-layers", type=int, default=-1)
    ap.add_argument("--threads", type=int, default=None, help="default: specli's (physical cores)")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--fill", type=int, default=300, help="context tokens before timing")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--llama-log", type=Path, help="write llama.cpp's log lines here")
    ap.add_argument("--small", action="store_true", help="CPU smoke test: 1 thread, few reps and tokens")
    args = ap.parse_args(argv)
    if args.small:
        args.threads = args.threads or 1
        args.reps, args.warmup, args.max_tokens, args.fill = 3, 1, 24, 64

    tap = LogTap()
    lg = logging.getLogger("specli.llama")
    lg.setLevel(logging.DEBUG)
    lg.addHandler(tap)
    lg.propagate = False

    import llama_cpp

    out: dict = {"args": {k: str(v) for k, v in vars(args).items()},
                 "python": platform.python_version(), "llama_cpp_python": llama_cpp.__version__}
    t0 = time.perf_counter()
    target = LlamaModel(args.target, n_ctx=args.ctx, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers)
    t1 = time.perf_counter()
    draft = LlamaModel(args.draft, n_ctx=args.ctx, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers)
    t2 = time.perf_counter()
    out["supports_gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
    out["system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace")
    out["load_seconds"] = {"target": round(t1 - t0, 3), "draft": round(t2 - t1, 3)}
    out["n_threads"] = target.n_threads
    keys = ("offload", "CUDA", "Flash Attention", "flash_attn", "buffer size", "ggml_cuda", "Device ",
            "graphs", "file type", "model size")
    out["llama_log_key_lines"] = [ln for ln in tap.lines if any(k in ln for k in keys)][:80]
    print(f"loaded target {t1 - t0:.2f}s, draft {t2 - t1:.2f}s; gpu offload supported: "
          f"{out['supports_gpu_offload']}; threads {target.n_threads}", flush=True)
    for ln in out["llama_log_key_lines"]:
        if "offloaded" in ln or "Flash Attention" in ln or "Device " in ln:
            print("  llama.cpp:", ln, flush=True)

    # Timed parts run with the logger at WARNING, as in the product (llama.cpp still calls
    # specli's Python log callback for every line; it returns early).
    lg.setLevel(logging.WARNING)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    tv = decode_costs(target, NS, args.fill, args.reps, args.warmup, rng, "block")
    tv_alt = decode_costs(target, NS, args.fill, args.reps, args.warmup, rng, "alternate")
    td = decode_costs(draft, [1], args.fill, args.reps * 2, args.warmup, rng, "block")[1]
    print(f"decode costs measured in {time.perf_counter() - t:.1f}s", flush=True)
    tv1 = tv[1]["median_ms"]
    out["t_v_ms"] = tv
    out["t_v_ms_alternating_n"] = tv_alt
    out["t_d_ms"] = td
    out["c"] = round(td["median_ms"] / tv1, 4)
    out["t_v_ratio"] = {n: round(tv[n]["median_ms"] / tv1, 4) for n in NS}
    curve = [tv[n]["median_ms"] for n in range(1, 10)]
    pred = {}
    for a in ALPHAS:
        pred[str(a)] = {str(k): round(costs.predicted_speedup(a, k, td["median_ms"], curve), 4) for k in KS}
        pred[str(a)]["best_k"] = costs.best_k(a, 8, td["median_ms"], curve)
    out["predicted_speedup"] = pred
    save(args.json, out)  # partial results survive a timeout in the engine runs

    print(f"\n== decode costs at n_past={args.fill} (median of {args.reps}; ms) ==")
    print(f"{'n':>3} {'t_v(n)':>9} {'t_v/t_v1':>9} {'min':>8} {'llama_decode only':>18} {'n alternating':>14}")
    for n in NS:
        r = tv[n]
        print(f"{n:>3} {r['median_ms']:>9.3f} {out['t_v_ratio'][n]:>9.3f} {r['min_ms']:>8.3f} "
              f"{r['llama_decode_median_ms']:>18.3f} {tv_alt[n]['median_ms']:>14.3f}")
    print(f"draft t_d = {td['median_ms']:.3f} ms (llama_decode only {td['llama_decode_median_ms']:.3f});"
          f" c = t_d / t_v(1) = {out['c']:.3f}")
    print("\n== predicted speedup (specli.core.costs.predicted_speedup) ==")
    print("alpha " + " ".join(f"K={k:<5}" for k in KS) + " best K")
    for a in ALPHAS:
        p = pred[str(a)]
        print(f"{a:<5} " + " ".join(f"{p[str(k)]:<7.3f}" for k in KS) + f" {p['best_k']}")

    timed_decode(target)
    timed_decode(draft)
    n_vocab = min(target.n_vocab, draft.n_vocab)
    settings = [("greedy", SamplingConfig(temperature=0.0)),
                ("t0.7", SamplingConfig(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05))]
    engine_runs = []
    # Warm-up: one short run of each kind, untimed.
    for _, sampling in settings:
        for k in (0, 4):
            engine_run(target, draft, n_vocab, k, sampling, 8, args.fill, 0)
    t = time.perf_counter()
    for name, sampling in settings:
        for k in (0, 4):
            r = engine_run(target, draft, n_vocab, k, sampling, args.max_tokens, args.fill, 0)
            r["setting"] = name
            engine_runs.append(r)
    print(f"\nengine runs took {time.perf_counter() - t:.1f}s")
    greedy = {r["k"]: r["tokens"] for r in engine_runs if r["setting"] == "greedy"}
    g0, g4 = greedy[0], greedy[4]
    first_diff = next((i for i, (a, b) in enumerate(zip(g0, g4)) if a != b), None)
    out["greedy_k4_equals_k0"] = g0 == g4
    out["greedy_first_divergence"] = first_diff
    for r in engine_runs:
        r["tokens"] = r["tokens"][:16]  # keep the JSON short
    out["engine"] = engine_runs
    print("\n== engine (speculative_generate; random weights: acceptance ~0, overheads only) ==")
    hdr = ("setting", "K", "tok/s", "accept", "ms/round", "python_share", "outside decode()",
           "py ms/round", "sample ms/rnd", "draft ms/tok")
    print("{:<7} {:>2} {:>8} {:>7} {:>9} {:>13} {:>17} {:>12} {:>14} {:>13}".format(*hdr))
    for r in engine_runs:
        dt = r["draft_ms_per_drafted_token"]
        print(f"{r['setting']:<7} {r['k']:>2} {r['tokens_per_s']:>8.1f} {r['acceptance_rate']:>7.3f} "
              f"{r['ms_per_round']:>9.3f} {r['python_share']:>13.3f} {r['share_outside_decode_call']:>17.3f} "
              f"{r['python_ms_per_round']:>12.3f} {r['sample_ms_per_round']:>14.3f} "
              f"{(f'{dt:.3f}' if dt is not None else '-'):>13}")
    print(f"greedy K=4 tokens equal K=0 tokens: {out['greedy_k4_equals_k0']}"
          + (f" (first divergence at token {first_diff})" if first_diff is not None else ""))
    # How many log lines llama.cpp emits per decode (each one a Python callback in specli).
    lg.setLevel(logging.DEBUG)
    per = {}
    for n in (1, 5, 5, 1):
        target.reset()
        target.decode([int(x) for x in rng.integers(0, 150000, args.fill)], 0)
        before = len(tap.lines)
        target.decode([int(x) for x in rng.integers(0, 150000, n)], n)
        per.setdefault(f"n{n}", []).append(len(tap.lines) - before)
        sample = tap.lines[before:before + 3]
    out["llama_log_lines_per_decode"] = per
    out["llama_log_sample_after_decode"] = sample
    print(f"llama.cpp log lines per decode (n: counts): {per}")
    target.close()
    draft.close()
    if args.llama_log:
        args.llama_log.write_text("\n".join(tap.lines) + "\n")
    save(args.json, out)
    if args.json:
        print(f"wrote {args.json}")
    return 0


def save(path: Path | None, out: dict) -> None:
    if path:
        path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
