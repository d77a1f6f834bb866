#!/usr/bin/env python3
"""What trace collection (speculative_generate(..., trace=True)) costs per token: prints figures.

Runs the same seeded generation with tracing off and on, interleaved, on the real pair
(default: the default pair) at a fixed K, and prints the median decode time per token of
each, their difference, and the spread. The outputs are checked equal (a trace draws
nothing). Also prints the per-token cost of building the traces alone (timed around
specli.core.trace.build_trace), which is the part of the difference that is not noise.

Usage:
  python benchmarks/trace_cost.py [--target T --draft D] [--k 3] [--n 64] [--repeats 3]
      [--temperature 0.8] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target")
    ap.add_argument("--draft")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--prompt", default="Write a Python function that merges two sorted lists.")
    return ap


def run_once(loaded, tokens, sampling, k, n, trace):
    """(decode seconds per token, seconds spent building traces, output tokens)."""
    import specli.core.trace as tr
    from specli.config import SpecConfig
    from specli.core.drafters import ModelDrafter
    from specli.core.engine import Done, speculative_generate

    spent = [0.0]
    real = tr.build_trace

    def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            spent[0] += time.perf_counter() - t0

    tr.build_trace = timed  # the engine imports it at call time, so it sees the timed one
    try:
        drafter = ModelDrafter(loaded.draft, sampling, loaded.n_vocab)
        loaded.target.truncate(0)
        loaded.draft.truncate(0)
        for ev in speculative_generate(loaded.target, drafter, tokens, sampling,
                                       SpecConfig(k=k, max_tokens=n, seed=0),
                                       n_vocab=loaded.n_vocab, trace=trace):
            if isinstance(ev, Done):
                s = ev.stats
                return s.decode_seconds / max(1, s.new_tokens), spent[0] / max(1, s.new_tokens), ev.tokens
    finally:
        tr.build_trace = real
    raise RuntimeError("no Done event")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from specli.config import RuntimeConfig, SamplingConfig
    from specli.prompt import build_prompt
    from specli.session import ModelPaths, load_models, resolve_paths

    paths = (ModelPaths(Path(args.target), Path(args.draft)) if args.target and args.draft
             else resolve_paths(pair=None, target=None, draft=None, progress=False))
    loaded = load_models(paths, RuntimeConfig(n_ctx=args.ctx, n_threads=args.threads))
    try:
        tokens, _ = build_prompt(loaded.target, args.prompt)
        sampling = SamplingConfig(temperature=args.temperature)
        run_once(loaded, tokens, sampling, args.k, 16, False)  # warm-up
        off, on, build = [], [], []
        for _ in range(args.repeats):
            a, _, out_a = run_once(loaded, tokens, sampling, args.k, args.n, False)
            b, c, out_b = run_once(loaded, tokens, sampling, args.k, args.n, True)
            assert out_a == out_b, "a trace changed the output"
            off.append(a)
            on.append(b)
            build.append(c)
    finally:
        loaded.close()
    med = statistics.median
    print(f"{paths.target.name} <- {paths.draft.name}, K {args.k}, T {args.temperature}, "
          f"{args.n} tokens x {args.repeats} (interleaved)")
    print(f"trace off: {1e3 * med(off):.2f} ms/token (min {1e3 * min(off):.2f}, max {1e3 * max(off):.2f})")
    print(f"trace on:  {1e3 * med(on):.2f} ms/token (min {1e3 * min(on):.2f}, max {1e3 * max(on):.2f})")
    print(f"difference: {1e3 * (med(on) - med(off)):+.3f} ms/token "
          f"({100 * (med(on) / med(off) - 1):+.1f}%); building traces: {1e3 * med(build):.3f} ms/token")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
