#!/usr/bin/env python3
"""Where the time outside llama_decode goes, in specli's hot loop: prints a breakdown.

On the real pair (default: the default pair), K = 3, for temperature 0 and for
temperature 0.7 with top-k 40, top-p 0.95 (min-p as given, default 0.05 like the CLI):

  1. clean runs (no instrumentation, no rendering): tok/s and Stats.python_share, the
     figure `specli bench` reports (1 - time inside llama_decode / decode wall time);
  2. clean runs rendering every round into a LiveView on a Console(force_terminal=True)
     writing to io.StringIO: what the live view costs;
  3. one instrumented run: every function of the loop wrapped with perf_counter timers
     that charge *exclusive* time (a callee's time is not also charged to its caller),
     so the rows add up to the decode wall time. Wrapper overhead is about 1 µs a call.

Rows of the breakdown:
  llama_decode target/draft   inside the C call (what python_share excludes)
  decode() Python target/draft  LlamaModel.decode around it: batch fill, logits view
  kv truncate (seq_rm)        llama_memory_seq_rm, rejected drafts (C, outside decode)
  warp target p / draft q     sampling.warp: temperature, top-k, top-p, min-p
  draft token choice          ModelDrafter._draw minus warp: greedy argmax or q.sample
  verification                engine._verify minus warps: argmax rows / accept-reject
  detokenise                  token_bytes, the incremental UTF-8 decoder, token_text
  drafter loop                ModelDrafter.propose/rewind bookkeeping
  commit / round / generator  the engine's own bookkeeping and the event stream
  render                      LiveView.round (only in the rendering run)

Usage:
  python benchmarks/profile_loop.py [--target T --draft D] [--k 3] [--n 128]
      [--repeats 3] [--prompt TEXT | --suite code --index 0] [--cprofile] [--json OUT]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path


class Timers:
    """Exclusive-time accounting for wrapped callables (a stack of open frames)."""

    def __init__(self) -> None:
        self.excl: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[list] = []  # [label, start, child_seconds]
        self.active = False

    def wrap(self, label: str, fn):
        clock = time.perf_counter
        timers = self

        def wrapped(*a, **kw):
            if not timers.active:
                return fn(*a, **kw)
            frame = [label, clock(), 0.0]
            timers.stack.append(frame)
            try:
                return fn(*a, **kw)
            finally:
                elapsed = clock() - frame[1]
                timers.stack.pop()
                timers.excl[label] += elapsed - frame[2]
                timers.calls[label] += 1
                if timers.stack:
                    timers.stack[-1][2] += elapsed

        wrapped.__wrapped__ = fn
        return wrapped

    def reset(self) -> None:
        self.excl.clear()
        self.calls.clear()


class _LibProxy:
    """llama_cpp module stand-in for one model: times its C calls, delegates the rest."""

    def __init__(self, lib, timers: Timers, role: str) -> None:
        self._lib = lib
        self.llama_decode = timers.wrap(f"llama_decode {role}", lib.llama_decode)
        self.llama_memory_seq_rm = timers.wrap("kv truncate (seq_rm)", lib.llama_memory_seq_rm)

    def __getattr__(self, name):
        return getattr(self._lib, name)


def instrument(timers: Timers, target, draft):
    """Wrap the loop's functions; returns an undo callable."""
    from specli.core import drafters, engine
    from specli.views import render
    from specli.llama.backend import LlamaModel

    undo = []

    def patch(obj, name, label):
        old = getattr(obj, name)
        undo.append((obj, name, old, name in vars(obj) if isinstance(obj, type) else True))
        setattr(obj, name, timers.wrap(label, old))

    for model, role in ((target, "target"), (draft, "draft")):
        if model is None:
            continue
        lib = model._lc
        undo.append((model, "_lc", lib, True))
        model._lc = _LibProxy(lib, timers, role)
        for name, label in (("decode", f"decode() Python {role}"), ("truncate", "kv truncate (seq_rm)"),
                            ("token_bytes", "detokenise"), ("token_text", "detokenise"),
                            ("is_eog", "commit / round / generator")):
            old = getattr(model, name)  # bound method; the instance attribute shadows the class
            undo.append((model, name, None, False))
            setattr(model, name, timers.wrap(label, old))
    patch(engine, "warp", "warp target p")
    patch(drafters, "warp", "warp draft q")
    patch(drafters, "greedy_token", "draft token choice")
    patch(drafters.ModelDrafter, "_draw", "draft token choice")
    patch(drafters.ModelDrafter, "propose", "drafter loop")
    patch(drafters.ModelDrafter, "rewind", "drafter loop")
    patch(engine._Run, "_verify", "verification")
    patch(engine._Run, "_commit", "commit / round / generator")
    patch(engine._Run, "_round", "commit / round / generator")
    patch(engine._Detok, "feed", "detokenise")
    patch(render.LiveView, "round", "render")

    def restore():
        for obj, name, old, had in reversed(undo):
            if old is None or not had:
                try:
                    delattr(obj, name)
                except AttributeError:
                    pass
            else:
                setattr(obj, name, old)

    return restore


ROW_ORDER = ("llama_decode target", "llama_decode draft", "decode() Python target",
             "decode() Python draft", "kv truncate (seq_rm)", "warp target p", "warp draft q",
             "draft token choice", "verification", "detokenise", "drafter loop",
             "commit / round / generator", "render")


def breakdown(excl: dict, calls: dict, wall: float, tokens: int) -> list[dict]:
    """Rows (label, seconds, share of wall, µs/token, calls); an `unaccounted` row closes it."""
    rows = []
    for label in [*ROW_ORDER, *sorted(set(excl) - set(ROW_ORDER))]:
        if label in excl:
            s = excl[label]
            rows.append({"part": label, "seconds": s, "share": s / wall if wall else 0.0,
                         "us_per_token": 1e6 * s / tokens if tokens else 0.0,
                         "calls": calls.get(label, 0)})
    rest = wall - sum(excl.values())
    rows.append({"part": "unaccounted (loop, timers)", "seconds": rest,
                 "share": rest / wall if wall else 0.0,
                 "us_per_token": 1e6 * rest / tokens if tokens else 0.0, "calls": 0})
    return rows


def outside_share(rows: list[dict]) -> float:
    """Share of wall time not inside llama_decode (comparable to Stats.python_share)."""
    return sum(r["share"] for r in rows if not r["part"].startswith("llama_decode"))


def format_breakdown(rows: list[dict], title: str) -> str:
    lines = [title, f"  {'part':<30} {'ms':>9} {'share':>7} {'µs/token':>9} {'calls':>7}"]
    for r in rows:
        lines.append(f"  {r['part']:<30} {1e3 * r['seconds']:9.1f} {100 * r['share']:6.2f}% "
                     f"{r['us_per_token']:9.1f} {r['calls']:7d}")
    lines.append(f"  {'outside llama_decode':<30} {'':>9} {100 * outside_share(rows):6.2f}%")
    return "\n".join(lines)


# --------------------------------------------------------------------------- runs


def generate(loaded, tokens, sampling, k: int, n: int, view=None):
    """One generation, a fresh drafter; feeds rounds to `view` if given. Returns Done."""
    from specli.config import SpecConfig
    from specli.core.engine import Done, speculative_generate
    from specli.session import make_drafter
    from specli.core.policy import make_policy

    spec = SpecConfig(k=k, max_tokens=n, seed=0, drafter="model")
    d = make_drafter(loaded, "model", sampling) if k else None
    done = None
    for ev in speculative_generate(loaded.target, d, tokens, sampling, spec,
                                   policy=make_policy(spec), n_vocab=loaded.n_vocab):
        if isinstance(ev, Done):
            done = ev
        elif view is not None:
            view.round(ev)
    return done


def live_view():
    from rich.console import Console

    from specli.views.render import LiveView

    console = Console(file=io.StringIO(), force_terminal=True, width=100, color_system="truecolor")
    return LiveView(console, mode="rejected", k_label="3")


def profile_setting(loaded, tokens, sampling, k, n, repeats, use_cprofile=False) -> dict:
    clean, rendered = [], []
    for _ in range(repeats):  # interleaved: clean, rendering
        d = generate(loaded, tokens, sampling, k, n)
        clean.append((d.stats.tokens_per_s, d.stats.python_share, d.stats.new_tokens))
        with live_view() as view:
            d = generate(loaded, tokens, sampling, k, n, view)
        rendered.append((d.stats.tokens_per_s, d.stats.python_share))
    timers = Timers()
    restore = instrument(timers, loaded.target, loaded.draft)
    try:
        timers.active = True
        with live_view() as view:
            # Charge only the decode phase: drop what the prefill spent before round 1.
            from specli.core import engine

            orig_prefill = engine._Run._prefill

            def prefill(self):
                timers.active = False
                try:
                    orig_prefill(self)
                finally:
                    timers.active = True
                    timers.reset()

            engine._Run._prefill = prefill
            try:
                d = generate(loaded, tokens, sampling, k, n, view)
            finally:
                engine._Run._prefill = orig_prefill
        timers.active = False
    finally:
        restore()
    rows = breakdown(dict(timers.excl), dict(timers.calls), d.stats.decode_seconds, d.stats.new_tokens)
    out = {
        "clean_tok_s": statistics.median(c[0] for c in clean),
        "clean_python_share": statistics.median(c[1] for c in clean),
        "clean_python_share_all": [c[1] for c in clean],
        "clean_tokens": [c[2] for c in clean],
        "render_tok_s": statistics.median(r[0] for r in rendered),
        "render_python_share": statistics.median(r[1] for r in rendered),
        "instrumented": {"tok_s": d.stats.tokens_per_s, "python_share": d.stats.python_share,
                         "tokens": d.stats.new_tokens, "rounds": d.stats.rounds,
                         "acceptance": d.stats.acceptance_rate, "rows": rows},
    }
    if use_cprofile:
        import cProfile
        import pstats

        pr = cProfile.Profile()
        pr.enable()
        generate(loaded, tokens, sampling, k, n)
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(20)
        out["cprofile"] = buf.getvalue()
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Breakdown of specli's time outside llama_decode.")
    ap.add_argument("--target", type=Path, help="target GGUF (default: the default pair's)")
    ap.add_argument("--draft", type=Path, help="draft GGUF (default: the default pair's)")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--n", type=int, default=128, help="new tokens per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--prompt", help="prompt text (default: --suite/--index)")
    ap.add_argument("--suite", default="code")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--min-p", type=float, default=0.05, help="min-p of the sampled setting")
    ap.add_argument("--temperatures", default="0,0.7")
    ap.add_argument("--cprofile", action="store_true", help="also print cProfile's top functions")
    ap.add_argument("--json", type=Path)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from specli.bench.machine import peak_rss_mib
    from specli.config import RuntimeConfig, SamplingConfig
    from specli.prompt import build_prompt
    from specli.session import ModelPaths, load_models, resolve_paths

    if args.target and args.draft:
        paths = ModelPaths(args.target, args.draft)
    else:
        paths = resolve_paths(pair=None, target=None, draft=None, progress=False)
    rss0 = peak_rss_mib()
    loaded = load_models(paths, RuntimeConfig(n_ctx=args.ctx, n_threads=args.threads))
    if args.prompt:
        text = args.prompt
    else:
        from specli.bench.suites import load_suite

        text = load_suite(args.suite)[args.index].prompt
    tokens, _ = build_prompt(loaded.target, text)
    load_before = os.getloadavg()
    generate(loaded, tokens, SamplingConfig(temperature=0.0), args.k, 32)  # warm-up
    results = {}
    try:
        for t in (float(x) for x in args.temperatures.split(",")):
            sampling = (SamplingConfig(temperature=0.0) if t == 0 else
                        SamplingConfig(temperature=t, top_k=40, top_p=0.95, min_p=args.min_p))
            label = ("temperature 0" if t == 0 else
                     f"temperature {t}, top-k 40, top-p 0.95, min-p {args.min_p}")
            res = profile_setting(loaded, tokens, sampling, args.k, args.n, args.repeats, args.cprofile)
            results[label] = res
            ins = res["instrumented"]
            print(f"\n== K={args.k} · {label} · {len(tokens)} prompt tokens")
            print(f"clean:     {res['clean_tok_s']:.1f} tok/s, outside llama_decode "
                  f"{100 * res['clean_python_share']:.2f}% (median of {args.repeats}; "
                  f"{', '.join(f'{100 * x:.2f}%' for x in res['clean_python_share_all'])})")
            print(f"rendering: {res['render_tok_s']:.1f} tok/s, outside llama_decode "
                  f"{100 * res['render_python_share']:.2f}%")
            print(format_breakdown(ins["rows"], f"instrumented run (rendering): {ins['tok_s']:.1f} tok/s, "
                                   f"{ins['tokens']} tokens in {ins['rounds']} rounds, acceptance "
                                   f"{100 * ins['acceptance']:.0f}%"))
            if "cprofile" in res:
                print(res["cprofile"])
    finally:
        loaded.close()
    files = (Path(paths.target).stat().st_size + Path(paths.draft).stat().st_size) / 2**20
    peak = peak_rss_mib()
    print(f"\npeak RSS {peak:.0f} MiB at ctx {args.ctx} (before loading {rss0:.0f} MiB); GGUF files "
          f"{files:.0f} MiB; files + 500 = {files + 500:.0f} MiB")
    print(f"load {[round(x, 2) for x in load_before]} -> {[round(x, 2) for x in os.getloadavg()]}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "peak_rss_mib": peak,
                                         "files_mib": files}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
