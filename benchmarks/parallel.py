#!/usr/bin/env python3
"""Concurrent clients: specli serve --parallel against itself (FIFO, --k 0) and llama-server
-np N (target alone, -md, ngram). Prints figures; asserts nothing.

Workloads (chat completions, temperature 0 unless --temperatures says more):
  code   the built-in `code` suite, one request per prompt, --n tokens each
  agent  an agent-like trace per client: an edit prompt from
         benchmarks/prompts/edit-heldout.jsonl (a file and an edit), then the same
         conversation re-sent with the reply and "Now show the whole file again with that
         change applied." (the next request copies the file and the edit)

For each concurrency C in --clients, C client threads take requests from one queue
(code: the prompts in turn, agent: each client its own conversation, --rounds of them).
Per server: aggregate tok/s (completion tokens / the pass's wall time), p50 and p95
latency (request to answer), median per-request tok/s (tokens / its own latency).

Servers (one at a time, each started once per C, same pair, threads and context):
  specli par     specli serve --parallel C (--k auto)
  specli par k0  specli serve --parallel C --k 0 (its own server: a second pass on the
                 same server would find every prompt cached)
  specli fifo    specli serve --parallel 1 (--k auto): one generation at a time
  llama target   llama-server -np C -c ctx*C
  llama -md      ... -md DRAFT --spec-type draft-simple (llama.cpp's default n_max)
  llama ngram    ... --spec-type ngram-simple --spec-draft-n-max 12

Usage:
  python benchmarks/parallel.py --llama-bin BIN [--clients 1,2,4] [--workloads code,agent]
      [--n 64] [--rounds 2] [--ctx 4096] [--threads 2] [--json OUT]
Run it alone on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve_vs_llama_server import (EDIT_HELDOUT, SAMPLING, Client, free_port,  # noqa: E402
                                   llama_env, resolve_models, running)

FOLLOW_UP = "Now show the whole file again with that change applied."
DRAFT_KEYS = ("draft_n", "draft_n_accepted", "history_draft_n", "history_draft_n_accepted")


def code_jobs(limit: int) -> list[list[dict]]:
    from specli.bench.suites import load_suite

    return [[{"role": "user", "content": p.prompt}] for p in load_suite("code")[:limit or None]]


def agent_prompts(limit: int) -> list[str]:
    from specli.bench.suites import load_prompts_file

    return [p.prompt for p in load_prompts_file(EDIT_HELDOUT)[:limit or None]]


def body(messages, a, temperature, k=None) -> dict:
    b = {"model": "bench", "messages": messages, "temperature": temperature,
         "max_tokens": a.n, "seed": 0, **SAMPLING}
    if k is not None:
        b["speculative"] = {"k": k}
    return b


def ask(client: Client, b: dict) -> dict:
    status, r, wall = client.call("POST", "/v1/chat/completions", b)
    if status != 200:
        return {"ok": False, "status": status, "wall_s": wall}
    n = r["usage"]["completion_tokens"]
    t = r.get("timings") or {}
    drafts = {key: t.get(key) or 0 for key in DRAFT_KEYS}  # specli's and llama-server's names
    return {"ok": True, "wall_s": wall, "tokens": n, "text": r["choices"][0]["message"]["content"],
            **drafts}


def one_pass(url: str, workload: str, clients: int, a, temperature: float, k=None) -> dict:
    """C clients at once; the figures of the pass."""
    lock = threading.Lock()
    rows: list[dict] = []
    if workload == "code":
        queue = code_jobs(a.limit) * max(1, a.rounds)

        def work(client: Client, i: int) -> None:
            while True:
                with lock:
                    if not queue:
                        return
                    messages = queue.pop(0)
                row = ask(client, body(messages, a, temperature, k))
                with lock:
                    rows.append(row)
    else:
        prompts = agent_prompts(0)

        def work(client: Client, i: int) -> None:
            for r in range(a.rounds):
                prompt = prompts[(i + r * clients) % len(prompts)]
                messages = [{"role": "user", "content": prompt}]
                first = ask(client, body(messages, a, temperature, k))
                with lock:
                    rows.append(first)
                if not first["ok"]:
                    continue
                messages += [{"role": "assistant", "content": first["text"]},
                             {"role": "user", "content": FOLLOW_UP}]
                second = ask(client, body(messages, a, temperature, k))
                with lock:
                    rows.append(second)

    def thread(i: int) -> None:
        c = Client(url)
        try:
            work(c, i)
        finally:
            c.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=thread, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in rows if r["ok"]]
    lat = sorted(r["wall_s"] for r in ok)
    return {"requests": len(rows), "ok": len(ok), "wall_s": wall,
            "agg_tok_s": sum(r["tokens"] for r in ok) / wall if wall else 0.0,
            "p50_s": pct(lat, 50), "p95_s": pct(lat, 95),
            "req_tok_s": statistics.median(r["tokens"] / r["wall_s"] for r in ok) if ok else None,
            "texts": [r.get("text") for r in rows],
            **{key: sum(r.get(key, 0) for r in ok) for key in DRAFT_KEYS}}


def pct(xs, q):
    if not xs:
        return None
    i = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[i]


def specli_argv(a, port: int, parallel: int, k: str = "auto") -> list[str]:
    return [sys.executable, "-m", "specli", "serve", "--target", str(a.target), "--draft",
            str(a.draft), "--threads", str(a.threads), "--ctx", str(a.ctx), "--k", k,
            "--port", str(port), "--max-queue", "64", "--max-tokens", str(a.n),
            "--parallel", str(parallel)]


def llama_argv(a, extra, port: int, parallel: int) -> list[str]:
    return [str(Path(a.llama_bin) / "llama-server"), "-m", str(a.target), "-t", str(a.threads),
            "-c", str(a.ctx * parallel), "-np", str(parallel), "--host", "127.0.0.1",
            "--port", str(port), *extra]


def servers(a, c: int):
    """(name, argv maker, env, [(label, k)]) per server for concurrency c."""
    env: dict = {}
    # Each its own server: a second pass on the same one finds the prompts cached.
    out = [("specli par", lambda p: specli_argv(a, p, c), env, [("specli par", None)]),
           ("specli par k0", lambda p: specli_argv(a, p, c, "0"), env, [("specli par k0", None)])]
    if c > 1:
        out.append(("specli fifo", lambda p: specli_argv(a, p, 1), env, [("specli fifo", None)]))
    lenv = llama_env(a)
    for name, extra in (("llama target", []),
                        ("llama -md", ["-md", str(a.draft), "--spec-type", "draft-simple",
                                       "-td", str(a.threads)]),
                        ("llama ngram", ["--spec-type", "ngram-simple",
                                         "--spec-draft-n-max", "12"])):
        out.append((name, lambda p, e=extra: llama_argv(a, e, p, c), lenv, [(name, None)]))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama-bin", required=True)
    p.add_argument("--pair"), p.add_argument("--target"), p.add_argument("--draft")
    p.add_argument("--clients", default="1,2,4")
    p.add_argument("--workloads", default="code,agent")
    p.add_argument("--temperatures", default="0")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--rounds", type=int, default=1, help="code: passes over the prompts; "
                   "agent: conversations per client")
    p.add_argument("--limit", type=int, default=8, help="code prompts used")
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="", help="comma list of server labels to run")
    p.add_argument("--json")
    a = p.parse_args(argv)
    resolve_models(a)
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    results = []
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    for c in [int(x) for x in a.clients.split(",")]:
        for name, make, env, variants in servers(a, c):
            variants = [v for v in variants if not only or v[0] in only]
            if not variants:
                continue
            port = free_port()
            with running(name, make(port), port, env=env) as url:
                warm = Client(url)
                ask(warm, body([{"role": "user", "content": "Hi"}], a, 0.0))
                warm.close()
                for workload in a.workloads.split(","):
                    for temp in [float(t) for t in a.temperatures.split(",")]:
                        for label, k in variants:
                            row = one_pass(url, workload, c, a, temp, k)
                            row.update(server=label, clients=c, workload=workload, temperature=temp)
                            results.append(row)
                            print(f"C={c} {workload:5} T={temp} {label:14} agg {row['agg_tok_s']:6.2f} tok/s"
                                  f"  p50 {row['p50_s']:.1f} s  p95 {row['p95_s']:.1f} s"
                                  f"  req {row['req_tok_s'] or 0:.2f} tok/s  ok {row['ok']}/{row['requests']}"
                                  f"  drafts {row['draft_n_accepted']}/{row['draft_n']}"
                                  f" (history {row['history_draft_n_accepted']}/{row['history_draft_n']})",
                                  flush=True)
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
