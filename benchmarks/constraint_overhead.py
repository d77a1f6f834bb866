#!/usr/bin/env python3
"""What a grammar costs constrained speculation, on the same prompts: prints figures.

Issue 25 asks constrained speculation to stay within 10% of unconstrained speculation's
tok/s on the same prompts. Three variants per prompt (the extraction prompts of
benchmarks/agent_tools.py), one loaded pair, --k auto with the hybrid drafter:

  free      no grammar
  any       a grammar that allows every text (Lark `/(?s:.*)/`): the same tokens as
            free, with every row masked, every n-gram draft checked and every model
            draft's q masked: the machinery's own cost, exactly
  schema    the prompt's JSON schema (a different text: what constrained output costs
            and gains, drafts cut at forbidden tokens included)

tok/s = new tokens / decode seconds (the prompt excluded), median over --repeats, each
repeat running the variants in turn; ratios are medians of per-(prompt, repeat) ratios.

Usage:  python benchmarks/constraint_overhead.py [--pair NAME | --target T --draft D]
            [--temperature 0] [--repeats 3] [--n 160]
Run it on a quiet machine. It asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_tools import EXTRACT  # noqa: E402


def main(argv=None) -> None:
    from specli.core.grammar import Grammar
    from specli.session import Options, open_generation

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair"), p.add_argument("--target"), p.add_argument("--draft")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n", type=int, default=160)
    a = p.parse_args(argv)
    opts = Options(pair=a.pair, target=a.target, draft=a.draft, k="auto", drafter="auto",
                   temperature=a.temperature, max_tokens=a.n)
    rows = []
    with open_generation(opts) as gen:
        anything = Grammar.lark("start: /(?s:.*)/")
        for r in range(a.repeats):
            for pid, prompt, schema in EXTRACT:
                tokens = gen.prompt_tokens(prompt)
                for name, grammar in (("free", None), ("any", anything),
                                      ("schema", Grammar.json_schema(schema))):
                    done, _ = gen.collect(gen.generate(tokens, grammar=grammar))
                    s = done.stats
                    rows.append({"variant": name, "prompt": pid, "repeat": r,
                                 "tok_s": s.tokens_per_s, "tokens": list(done.tokens),
                                 "cut": s.grammar_cut, "accepted": s.accepted,
                                 "drafted": s.drafted})
                    print(f"  {name:<7} {pid:<13} r{r} {s.tokens_per_s:6.1f} tok/s "
                          f"{s.new_tokens:4} tok drafted {s.drafted} accepted {s.accepted} "
                          f"cut {s.grammar_cut}", file=sys.stderr, flush=True)

    def ratio(x, y):
        key = {(q["prompt"], q["repeat"]): q for q in rows if q["variant"] == y}
        return [q["tok_s"] / key[(q["prompt"], q["repeat"])]["tok_s"]
                for q in rows if q["variant"] == x]

    same = all(q["tokens"] == f["tokens"] for q in rows if q["variant"] == "any"
               for f in rows if f["variant"] == "free" and (f["prompt"], f["repeat"]) ==
               (q["prompt"], q["repeat"]))
    print(f"\nT = {a.temperature}, {a.repeats} repeats x {len(EXTRACT)} prompts, --k auto")
    for name in ("free", "any", "schema"):
        med = statistics.median(q["tok_s"] for q in rows if q["variant"] == name)
        print(f"  {name:<7} {med:6.1f} tok/s")
    print(f"  any / free     {statistics.median(ratio('any', 'free')):.3f}x  "
          f"(same tokens in every run: {same})")
    print(f"  schema / free  {statistics.median(ratio('schema', 'free')):.3f}x")


if __name__ == "__main__":
    main()
