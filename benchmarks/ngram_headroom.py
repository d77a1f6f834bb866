#!/usr/bin/env python3
"""How much can prompt-lookup drafting gain on this machine? An offline replay, greedy only.

At temperature 0 the target's output is fixed, so whether a draft is accepted is known
in advance: it is accepted exactly as far as it agrees with that output. This script
  1. generates each prompt's greedy answer with the target alone (K = 0),
  2. calibrates the target's verify cost t_v(n), n = 1..32, as `specli bench` does,
  3. replays the answer round by round with specli's n-gram index and prices each round
     with the measured t_v, for three ways of choosing K:
       - auto:   specli's --k auto policy for n-gram drafts (the hybrid's rule: n-gram
                 drafts only after a match of >= 3 tokens, the target alone otherwise);
       - fixed:  the best single K in 1..31 for the whole prompt set;
       - oracle: each round drafts exactly as many tokens as will be accepted (or none
                 when that does not pay): the ceiling of this lookup on this machine;
  4. replays llama.cpp's own prompt lookup, llama-server's `--spec-type ngram-simple` with
     its defaults (common_ngram_simple_draft: when the last 12 tokens occurred before, the
     most recent such place, draft the up to 48 tokens that followed it), priced the same
     way, and prints each policy's ratio to it: what the serve benchmark's "÷ llama
     ngram" column can be at most, given this lookup (the oracle's ratio).

The replay has no noise and no Python overhead, so it is an upper bound for each policy,
and it lets a policy change be judged on many prompts in seconds. Measured tok/s come
from `specli bench`, never from here.

Usage:
  python benchmarks/ngram_headroom.py [--prompts FILE.jsonl | --suite edit] [--max-tokens 128]
      [--target GGUF] [--json OUT.json] [--outputs CACHE.jsonl]
--outputs keeps the greedy answers (and t_v) in a file and reuses them on the next call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

NGRAM_K_MAX = 31
LLAMA_SIZE_N, LLAMA_SIZE_M = 12, 48  # llama-server's ngram-simple defaults (common.h)


def replay(prompt, out, t_v, choose, observe=None, min_match=3):
    """Seconds and rounds to produce `out` after `prompt`; choose(match, avail) -> K."""
    from specli.core.drafters import NgramDrafter

    drafter = NgramDrafter()
    committed = list(prompt)
    drafter.prefill(committed)
    pos, seconds, rounds = 0, 0.0, 0
    while pos < len(out):
        match = drafter.match_len(committed)
        room = len(out) - pos - 1
        full = drafter.propose(committed, min(NGRAM_K_MAX, room), None).tokens if match else []
        avail = 0
        while avail < len(full) and full[avail] == out[pos + avail]:
            avail += 1
        k = min(choose(match if match >= min_match else 0, avail), len(full))
        n = min(avail, k)
        committed.extend(out[pos : pos + n + 1])
        pos += n + 1
        seconds += t_v[k]
        rounds += 1
        drafter.rewind(committed)
        if observe is not None:
            observe(k, n, t_v[k])
    return seconds, rounds


def llama_ngram_simple(prompt, out, t_v, size_n=LLAMA_SIZE_N, size_m=LLAMA_SIZE_M):
    """Seconds and rounds for llama-server's ngram-simple to produce `out` after `prompt`.

    As common_ngram_simple_draft does it: the pattern is the last size_n tokens (the last
    one just sampled); search backwards for its most recent earlier occurrence; draft the
    tokens after it, at most size_m and at most what the sequence holds, and only if that
    is at least size_n; no draft while the sequence is shorter than size_n + size_m + 1.
    The server caps a draft to the tokens still to generate minus one.
    """
    tokens = list(prompt)
    pos, seconds, rounds = 0, 0.0, 0
    while pos < len(out):
        cur, draft = len(tokens), []
        if cur > size_n + size_m + 1:
            pattern = tokens[cur - size_n :]
            at = next((j for j in range(cur - size_n - 1, 0, -1)
                       if tokens[j : j + size_n] == pattern), 0)
            copy_max = min(size_m, cur - (at + size_n)) if at else 0
            if copy_max >= size_n:
                draft = tokens[at + size_n : at + size_n + copy_max]
        draft = draft[: max(0, len(out) - pos - 1)]
        n = 0
        while n < len(draft) and draft[n] == out[pos + n]:
            n += 1
        tokens.extend(out[pos : pos + n + 1])
        pos += n + 1
        seconds += t_v[len(draft)]
        rounds += 1
    return seconds, rounds


def extended(t_v, n_max):
    """t_v(1..n_max): measured sizes as they are, larger ones extrapolated linearly from
    the slope between the medians of sizes 9-16 and 25-32 (caches made before t_v went to
    49 stop at 32)."""
    t = list(t_v)
    if len(t) < n_max:
        slope = (statistics.median(t[24:32]) - statistics.median(t[8:16])) / 16
        while len(t) < n_max:
            t.append(t[-1] + slope)
    return t


def auto_policy(t_v):
    from specli.core.policy import AutoK

    policy = AutoK(8)
    policy.seed(dict(enumerate(t_v, start=1)))

    def choose(match, avail):
        if match == 0:
            policy.plan("model")  # the hybrid's model rounds; replayed as the target alone
            return 0
        return policy.plan("ngram", match)[1]

    def observe(k, n, seconds):
        policy.observe_round(k=k, n_accepted=n, draft_seconds=0.0, verify_seconds=seconds,
                             source="ngram" if k else "none")

    return choose, observe


def oracle(t_v):
    def choose(match, avail):
        return max(range(avail + 1), key=lambda k: ((k + 1) / t_v[k], -k))
    return choose


def generate(loaded, items, max_tokens):
    from specli.config import SamplingConfig, SpecConfig
    from specli.core.engine import Done, speculative_generate
    from specli.prompt import build_prompt

    sampling = SamplingConfig(temperature=0.0)
    rows = []
    for i, item in enumerate(items):
        tokens, _ = build_prompt(loaded.target, item.prompt)
        loaded.target.truncate(0)
        spec = SpecConfig(k=0, max_tokens=max_tokens, seed=0)
        done = None
        for ev in speculative_generate(loaded.target, None, tokens, sampling, spec,
                                       n_vocab=loaded.n_vocab):
            if isinstance(ev, Done):
                done = ev
        print(f"[{i + 1}/{len(items)}] {item.id}: {len(done.tokens)} tokens", file=sys.stderr)
        rows.append({"id": item.id, "prompt": list(tokens), "out": list(done.tokens)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=Path, help="a JSONL prompts file (as for specli bench)")
    ap.add_argument("--suite", default="edit", help="a built-in suite when --prompts is not given")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--target", type=Path, help="target GGUF (default: the default pair's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--outputs", type=Path, help="cache of greedy answers and t_v (JSONL)")
    ap.add_argument("--json", type=Path, help="write per-prompt figures here")
    args = ap.parse_args(argv)

    from specli.bench.suites import load_prompts_file, load_suite

    items = load_prompts_file(args.prompts) if args.prompts else load_suite(args.suite)
    cached = {}
    if args.outputs and args.outputs.exists():
        for line in args.outputs.read_text().splitlines():
            row = json.loads(line)
            cached[row["id"]] = row
    t_v = cached.get("__t_v__", {}).get("t_v")
    todo = [it for it in items if it.id not in cached]
    if todo or t_v is None:
        from specli.bench.calibration import calibrate
        from specli.config import RuntimeConfig, SamplingConfig
        from specli.session import load_models, resolve_paths

        paths = resolve_paths(pair=None, target=str(args.target) if args.target else None, draft=None)
        loaded = load_models(paths, RuntimeConfig(n_ctx=4096, n_threads=args.threads),
                             load_draft=False)
        try:
            for row in generate(loaded, todo, args.max_tokens):
                cached[row["id"]] = row
            if t_v is None:
                context = cached[items[0].id]["prompt"]
                loaded.target.truncate(0)
                calib = calibrate(loaded.target, None, context, LLAMA_SIZE_M + 1,
                                  SamplingConfig(temperature=0.0), loaded.n_vocab, reps=3)
                t_v = list(calib.t_verify)
                cached["__t_v__"] = {"id": "__t_v__", "t_v": t_v}
        finally:
            loaded.close()
        if args.outputs:
            args.outputs.write_text("".join(json.dumps(r) + "\n" for r in cached.values()))

    rows = [cached[it.id] for it in items]
    for r in rows:
        r["out"] = r["out"][: args.max_tokens]
    figures = []
    fixed_totals = {k: [] for k in range(1, NGRAM_K_MAX + 1)}
    t_llama = extended(t_v, LLAMA_SIZE_M + 1)
    t_v = t_v[: NGRAM_K_MAX + 1]
    for r in rows:
        base = len(r["out"]) * t_v[0]
        choose, observe = auto_policy(t_v)
        s_auto, n_auto = replay(r["prompt"], r["out"], t_v, choose, observe)
        s_oracle, n_oracle = replay(r["prompt"], r["out"], t_v, oracle(t_v), min_match=1)
        for k in fixed_totals:
            s, _ = replay(r["prompt"], r["out"], t_v, lambda m, a, k=k: k if m else 0)
            fixed_totals[k].append(base / s)
        s_llama, n_llama = llama_ngram_simple(r["prompt"], r["out"], t_llama)
        figures.append({"id": r["id"], "tokens": len(r["out"]), "auto": base / s_auto,
                        "auto_rounds": n_auto, "oracle": base / s_oracle, "oracle_rounds": n_oracle,
                        "llama": base / s_llama, "llama_rounds": n_llama,
                        "auto_vs_llama": s_llama / s_auto, "oracle_vs_llama": s_llama / s_oracle})
    best_k = max(fixed_totals, key=lambda k: statistics.median(fixed_totals[k]))
    for f, s in zip(figures, fixed_totals[best_k]):
        f["fixed"] = s
    print(f"t_v(n) ms: " + " ".join(f"{n}:{1000 * t:.0f}" for n, t in enumerate(t_llama, start=1)
                                     if n <= len(cached["__t_v__"]["t_v"])))
    keys = ("auto", "fixed", "oracle", "llama", "auto_vs_llama", "oracle_vs_llama")
    print(f"{'prompt':<16}{'tokens':>7}{'auto':>8}{f'K={best_k}':>8}{'oracle':>8}{'llama':>8}"
          f" | {'auto÷llama':>10}{'oracle÷llama':>13}")
    for f in figures:
        print(f"{f['id']:<16}{f['tokens']:>7}" + "".join(f"{f[k]:>7.2f}×" for k in keys[:4])
              + f" | {f['auto_vs_llama']:>9.2f}×{f['oracle_vs_llama']:>12.2f}×")
    med = {key: statistics.median(f[key] for f in figures) for key in keys}
    print(f"{'median':<16}{'':>7}" + "".join(f"{med[k]:>7.2f}×" for k in keys[:4])
          + f" | {med['auto_vs_llama']:>9.2f}×{med['oracle_vs_llama']:>12.2f}×")
    print("(replayed speedups over the target alone, greedy, no noise: upper bounds; "
          "oracle = the most this lookup can give here; llama = llama-server's ngram-simple;"
          " ÷llama columns are medians of per-prompt ratios)")
    if args.json:
        args.json.write_text(json.dumps({"t_v": t_v, "best_fixed_k": best_k, "median": med,
                                         "prompts": figures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
