#!/usr/bin/env python3
"""Turn latency of a growing conversation through `specli serve`, paired across builds.

An agent or an editor's chat pane re-sends its whole history every turn and sends the
next request as soon as the last reply is in. This script plays that client: a long
system message (a source file), then short questions, each request the previous one plus
a turn, `max_tokens` small so that what happens between replies shows. It starts one
`specli serve` per build (a source tree put first on PYTHONPATH, all loaded at once, the
default pair), runs the same conversations through each in turn, alternating which goes
first, and prints per build the median client-side latency of turns 2.. and the median
`timings.queue_ms` (how long a request waited for the worker: bookkeeping left over from
the previous reply shows here).

Usage:
  python benchmarks/serve_turns.py --build old=/path/to/checkout --build new=.
      [--doc-chars 14000] [--turns 8] [--conversations 3] [--max-tokens 8] [--json OUT]
      [--serve-arg=--target=T.gguf ...]
Run it on an idle machine: both servers sit beside each other, only one generates at once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from serve_vs_llama_server import free_port, running  # the same server start and health wait

QUESTIONS = ["What does this file do?", "Which events does it yield?", "How is K chosen?",
             "What happens on an interrupt?", "Summarise it in one line.", "Any bugs?",
             "Name one function.", "Thanks."]


def conversation(client, doc: str, turns: int, max_tokens: int) -> list[dict]:
    messages = [{"role": "system", "content": doc}]
    rows = []
    for i in range(turns):
        messages.append({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]})
        t0 = time.perf_counter()
        r = client.chat.completions.create(model="specli", messages=messages,
                                           max_tokens=max_tokens, temperature=0)
        seconds = time.perf_counter() - t0
        messages.append({"role": "assistant", "content": r.choices[0].message.content})
        t = r.model_extra["timings"]
        rows.append({"turn": i + 1, "seconds": seconds, "queue_ms": t.get("queue_ms", 0.0),
                     "prompt_tokens": r.usage.prompt_tokens, "prompt_n": t["prompt_n"]})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", action="append", required=True, metavar="NAME=PATH",
                    help="a source tree to serve from (repeat: at least one)")
    ap.add_argument("--doc-chars", type=int, default=14000,
                    help="characters of specli/engine.py in the system message")
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--conversations", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                    help="passed on to every specli serve (repeat), e.g. --serve-arg=--target=X.gguf")
    args = ap.parse_args(argv)

    from openai import OpenAI

    builds = dict(b.split("=", 1) for b in args.build)
    doc_src = Path(__file__).resolve().parent.parent / "specli" / "engine.py"
    doc = "Here is a file:\n```python\n" + doc_src.read_text()[: args.doc_chars] + "\n```\n"
    extra = ["--ctx", str(args.ctx)] + (["--threads", str(args.threads)] if args.threads else [])
    extra += args.serve_arg
    clients = {}
    results: dict[str, list[dict]] = {name: [] for name in builds}
    with ExitStack() as servers:
        for name, src in builds.items():
            port = free_port()
            # PYTHONPATH puts the tree first; cwd "/" keeps `python -m` from importing the
            # specli of whatever directory this runs in before it.
            url = servers.enter_context(running(
                f"specli {name}", [sys.executable, "-m", "specli", "serve", "--port", str(port), *extra],
                port, env={"PYTHONPATH": str(Path(src).resolve())}, cwd="/"))
            clients[name] = OpenAI(base_url=f"{url}/v1", api_key="none")
        names = list(builds)
        for c in range(args.conversations):
            for name in names[c % len(names):] + names[: c % len(names)]:
                rows = conversation(clients[name], doc, args.turns, args.max_tokens)
                results[name] += rows[1:]  # turn 1 is the prefill
                print(f"{name} conversation {c + 1}: turns 2-{args.turns} median "
                      f"{statistics.median(r['seconds'] for r in rows[1:]):.3f} s, queue_ms "
                      f"{[round(r['queue_ms']) for r in rows[1:]]}, prompt "
                      f"{rows[-1]['prompt_tokens']} tokens", file=sys.stderr, flush=True)
    print(f"{'build':<10}{'turn latency':>14}{'queue_ms':>10}{'prompt_n':>10}")
    summary = {}
    for name, rows in results.items():
        summary[name] = {"median_seconds": statistics.median(r["seconds"] for r in rows),
                         "median_queue_ms": statistics.median(r["queue_ms"] for r in rows),
                         "median_prompt_n": statistics.median(r["prompt_n"] for r in rows),
                         "turns": len(rows)}
        s = summary[name]
        print(f"{name:<10}{s['median_seconds']:>12.3f} s{s['median_queue_ms']:>10.1f}"
              f"{s['median_prompt_n']:>10.0f}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "turns": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
