#!/usr/bin/env python3
"""What the draft history (specli/core/history.py) costs: memory, lookup, add, per size.

Fills a DraftHistory with synthetic documents (token ids drawn from a Zipf law over a
150k vocabulary, as text's are; every document opens with the same shared header, as an
agent's requests open with the same system prompt and tool list), then times:
  - lookup, no match: a query whose last n-grams never occurred;
  - lookup, one source: the end of a stored document's middle (one occurrence agrees);
  - lookup, shared header: half the header (the 32 most recent documents vote, and agree);
  - lookup, header's end: where the documents part ways (the vote stops the draft);
  - add: one more document (evicting the oldest once the store is full);
and, beside them, the baseline the engine already pays every round: NgramIndex.lookup_in
over an index of the same number of tokens. Memory is tracemalloc's count of the history's
Python objects. Pure Python, no models; prints medians and spreads, asserts nothing.

Usage: python benchmarks/history_lookup.py [--tokens 200000] [--doc 2000] [--repeats 2000]
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VOCAB = 150_000
HEADER = 400


def documents(n_tokens: int, doc_len: int, seed: int = 0) -> list[list[int]]:
    """Documents of doc_len tokens totalling n_tokens: a shared header, then Zipf ids."""
    rng = random.Random(seed)
    cum = list(itertools.accumulate(1.0 / (r + 1) for r in range(VOCAB)))
    header = rng.choices(range(VOCAB), cum_weights=cum, k=HEADER)
    body = rng.choices(range(VOCAB), cum_weights=cum, k=n_tokens)
    step = doc_len - HEADER
    return [header + body[i : i + step] for i in range(0, n_tokens - step + 1, step)]


def timed(fn, repeats: int) -> tuple[float, float, float]:
    """(median, 10th, 90th percentile) of fn's time in microseconds, after a warm-up."""
    for _ in range(min(50, repeats)):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    q = statistics.quantiles(times, n=10)
    return statistics.median(times), q[0], q[-1]


def build(docs, max_tokens):
    from specli.core.history import DraftHistory

    history = DraftHistory(max_tokens=max_tokens)
    for d in docs:
        history.add(None, d)
    return history


def memory(docs, max_tokens) -> float:
    """MiB of Python objects the filled history holds."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    history = build(docs, max_tokens)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del history
    return used / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=200_000, help="tokens stored")
    ap.add_argument("--doc", type=int, default=2_000, help="tokens per document")
    ap.add_argument("--repeats", type=int, default=2_000, help="timed calls per figure")
    args = ap.parse_args(argv)
    from specli.core.ngram import NgramIndex

    docs = documents(args.tokens, args.doc)
    mib = memory(docs, args.tokens)
    t0 = time.perf_counter()
    history = build(docs, args.tokens)
    fill = time.perf_counter() - t0
    print(f"{len(history)} documents, {history.total_tokens} tokens: {mib:.1f} MiB "
          f"({mib * 2**20 / history.total_tokens:.0f} B/token), filled in {fill:.2f} s")
    middle = docs[-3][: args.doc // 2]  # its continuation is stored once
    cases = {
        "no match": [VOCAB + 1, VOCAB + 2, VOCAB + 3, VOCAB + 4] * 16,
        "one source (16 drafted)": middle,
        "shared header (vote)": docs[0][: HEADER // 2],  # every document agrees
        "header's end (disagree)": docs[0][:HEADER],  # every document goes on differently
    }
    flat = [t for d in docs for t in d]
    index = NgramIndex(n_max=4, n_min=2, candidates=8)
    index.extend(flat)
    for name, query in cases.items():
        med, lo, hi = timed(lambda: history.lookup(None, query, 16), args.repeats)
        tokens, match_len, count = history.lookup(None, query, 16)
        b_med, _, _ = timed(lambda: index.lookup_in(query, 16), args.repeats)
        print(f"lookup, {name:<24} {med:7.1f} us (p10 {lo:.1f}, p90 {hi:.1f}); "
              f"{len(tokens)} drafted, match {match_len}, {count} backing; "
              f"baseline NgramIndex.lookup_in {b_med:.1f} us")
    n_adds = min(args.repeats, 200)
    fresh = iter(documents((args.doc - HEADER) * (n_adds + 60), args.doc, seed=1))
    med, lo, hi = timed(lambda: history.add(None, next(fresh)), n_adds)
    print(f"add one {args.doc}-token document (evicting as much): {med / 1000:.2f} ms "
          f"(p10 {lo / 1000:.2f}, p90 {hi / 1000:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
