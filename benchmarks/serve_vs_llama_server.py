#!/usr/bin/env python3
"""specli serve against llama-server, the same prompts through the same OpenAI API: prints figures.

Servers (all started at once and sent each request in turn, so that every ratio pairs
requests a few seconds apart: run one server after another and this VM's speed drifted
by 20% between them, a llama-server that drafted nothing ran 1.2x the same target alone.
An idle server uses no CPU. Same pair, same threads per model, same context, one slot
each):

  specli          specli serve (--k auto, --drafter auto unless given); every request is
                  also sent with "speculative": {"k": 0}, right after, to the same server:
                  specli's target alone on the same requests
  llama target    llama-server -m TARGET
  llama -md       llama-server -m TARGET -md DRAFT --spec-type draft-simple
                  --spec-draft-n-max N (--llama-draft-max, default llama.cpp's own 3)
  llama ngram     llama-server -m TARGET --spec-type ngram-simple --spec-draft-n-max 12

Prompts: the built-in `code` suite and the held-out edit prompts
(benchmarks/prompts/edit-heldout.jsonl), as chat completions (the server applies the
target's chat template), at temperatures 0 and 0.8 (top-k 40, top-p 0.95, min-p 0.05 sent
explicitly to both), seed = the repeat's number, max_tokens --n. Order:

  warm-up: one request per variant on the first prompt (dropped)
  for repeat r: for prompt p: for temperature t: each variant once, the order rotated
  by one each time (so that no variant always follows the same one)

tok/s per request is the server's own decode rate, `timings.predicted_per_second` (both
servers report it, prompt processing excluded); wall tok/s (completion tokens / client
wall time) is shown too. Ratios are medians of per-(prompt, temperature, repeat) ratios.
Acceptance is sum(draft_n_accepted) / sum(draft_n) from the same timings.

Load run: --load-clients (4) concurrent clients send --load-requests (32) requests (code
and edit prompts in turn, temperature 0) to specli serve and to the best llama-server
configuration; completed count, p50/p95 latency and total throughput.

HTTP overhead per request: client wall time minus the time the server reports for the
generation itself (specli: queue_ms + prompt_ms + predicted_ms; llama-server: prompt_ms +
predicted_ms), median and p95 over every measured request; plus the round trip of
GET /v1/models (no generation at all).

Usage:
  python benchmarks/serve_vs_llama_server.py --llama-bin "$(../shared/anchors/build-llama-cpp-tools)"
      [--target T.gguf --draft D.gguf] [--prompts code,edit-heldout] [--limit N] [--n 128]
      [--temperatures 0,0.8] [--repeats 3] [--threads 2] [--ctx 4096] [--k auto]
      [--load-clients 4 --load-requests 32] [--skip-load] [--json OUT.json]
Run it on a quiet machine (it prints the load average before and after). It asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
EDIT_HELDOUT = HERE / "prompts" / "edit-heldout.jsonl"
SAMPLING = {"top_k": 40, "top_p": 0.95, "min_p": 0.05}
START_TIMEOUT = 600


# --------------------------------------------------------------------------- HTTP


class Client:
    """One keep-alive connection; POSTs OpenAI-shaped JSON and times the round trip."""

    def __init__(self, url: str, timeout: float = 900) -> None:
        m = re.match(r"http://([^:/]+):(\d+)", url)
        self.host, self.port, self.timeout = m.group(1), int(m.group(2)), timeout
        self.conn = None

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, float]:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (0, 1):  # a keep-alive connection the server closed: reconnect once
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            t0 = time.perf_counter()
            try:
                self.conn.request(method, path, body=data,
                                  headers={"Content-Type": "application/json"})
                r = self.conn.getresponse()
                raw = r.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
                continue
            wall = time.perf_counter() - t0
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"raw": raw.decode("utf-8", "replace")}
            return r.status, payload, wall
        raise RuntimeError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(name: str, argv: list[str], port: int, env: dict | None = None,
            cwd: str | None = None):
    """Start a server, wait for /health 200, yield its URL; stop it afterwards."""
    log = tempfile.NamedTemporaryFile("w+", prefix=f"{name.replace(' ', '_')}-", suffix=".log",
                                      delete=False)
    proc = subprocess.Popen(argv, stdout=log, stderr=log, env={**os.environ, **(env or {})},
                            cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log.name)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"  [{name}] exit {proc.returncode}; log {log.name}", file=sys.stderr)


def wait_healthy(url: str, proc, log_path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    client = Client(url, timeout=5)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited {proc.returncode}:\n{Path(log_path).read_text()[-3000:]}")
        try:
            if client.call("GET", "/health")[0] == 200:
                client.close()
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"server never became healthy: {Path(log_path).read_text()[-3000:]}")


# --------------------------------------------------------------------------- servers


def specli_argv(a, port: int) -> list[str]:
    argv = [sys.executable, "-m", "specli", "serve", "--target", str(a.target), "--draft",
            str(a.draft), "--threads", str(a.threads), "--draft-threads", str(a.threads),
            "--ctx", str(a.ctx), "--k", a.k, "--drafter", a.drafter, "--port", str(port),
            "--max-queue", str(max(16, a.load_requests)), "--max-tokens", str(a.n)]
    if a.n_gpu_layers is not None:
        argv += ["--n-gpu-layers", str(a.n_gpu_layers)]
    return argv


def llama_configs(a) -> dict[str, list[str]]:
    """name -> the arguments that make that llama-server configuration."""
    configs = {"llama target": []}
    for n in a.llama_draft_max:
        configs[f"llama -md (n_max {n})" if len(a.llama_draft_max) > 1 else "llama -md"] = [
            "-md", str(a.draft), "--spec-type", "draft-simple", "--spec-draft-n-max", str(n),
            "-td", str(a.threads)]
    configs["llama ngram"] = ["--spec-type", "ngram-simple", "--spec-draft-n-max",
                              str(a.llama_ngram_max)]
    return configs


def llama_argv(a, extra: list[str], port: int) -> list[str]:
    argv = [str(Path(a.llama_bin) / "llama-server"), "-m", str(a.target), "-t", str(a.threads),
            "-c", str(a.ctx), "-np", "1", "--host", "127.0.0.1", "--port", str(port), *extra]
    if a.n_gpu_layers is not None:
        argv += ["-ngl", str(a.n_gpu_layers)]
    if a.draft and "-md" in extra and a.n_gpu_layers is not None:
        argv += ["-ngld", str(a.n_gpu_layers)]
    return argv


def llama_env(a) -> dict:
    lib = str(Path(a.llama_bin))
    return {"LD_LIBRARY_PATH": lib + os.pathsep + os.environ.get("LD_LIBRARY_PATH", "")}


# --------------------------------------------------------------------------- requests


def body_for(prompt: str, temperature: float, seed: int, n: int, speculative=None) -> dict:
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}],
            "temperature": temperature, "max_tokens": n, "seed": seed, **SAMPLING}
    if speculative is not None:
        body["speculative"] = speculative
    return body


def measure(client: Client, body: dict) -> dict:
    """One request -> what the table needs (or an error row)."""
    status, r, wall = client.call("POST", "/v1/chat/completions", body)
    if status != 200:
        return {"ok": False, "status": status, "error": r.get("error", r), "wall_s": wall}
    t = r.get("timings") or {}
    n_out = r["usage"]["completion_tokens"]
    engine_ms = (t.get("queue_ms") or 0.0) + (t.get("prompt_ms") or 0.0) + (t.get("predicted_ms") or 0.0)
    return {"ok": True, "wall_s": wall, "completion_tokens": n_out,
            "prompt_tokens": r["usage"]["prompt_tokens"],
            "tok_s": t.get("predicted_per_second") or 0.0,
            "wall_tok_s": n_out / wall if wall > 0 else 0.0,
            "draft_n": t.get("draft_n") or 0, "draft_n_accepted": t.get("draft_n_accepted") or 0,
            "overhead_ms": 1000 * wall - engine_ms if t else None,
            "rounds": t.get("rounds"), "k_counts": t.get("k_counts"),  # specli's own fields
            "rounds_by_drafter": t.get("rounds_by_drafter"), "draft_prompt_n": t.get("draft_prompt_n"),
            "threads": t.get("threads"),
            "text": r["choices"][0]["message"]["content"],
            "finish_reason": r["choices"][0]["finish_reason"]}


def run_side_by_side(servers: dict[str, tuple[str, dict]], prompts, a) -> list[dict]:
    """Every request to every variant in turn; servers: name -> (url, {label: speculative})."""
    clients = {name: Client(url) for name, (url, _) in servers.items()}
    variants = [(name, label, spec) for name, (_, vs) in servers.items() for label, spec in vs.items()]
    for name, label, spec in variants:  # warm-up, dropped
        measure(clients[name], body_for(prompts[0][1], 0.0, 0, min(a.n, 32), spec))
    rows, turn = [], 0
    for r in range(a.repeats):
        for suite, prompt, pid in prompts:
            for temp in a.temperatures:
                shift = turn % len(variants)
                turn += 1
                for name, label, spec in variants[shift:] + variants[:shift]:
                    row = measure(clients[name], body_for(prompt, temp, r, a.n, spec))
                    row.update(server=label, suite=suite, prompt=pid, temperature=temp, repeat=r)
                    rows.append(row)
                    progress(row)
    for name, client in clients.items():
        rows.append({"server": name, "models_rtt_ms": models_rtt(client)})
        client.close()
    return rows


def models_rtt(client: Client, n: int = 50) -> float:
    """Median round trip of GET /v1/models: the HTTP path alone, no generation."""
    times = [client.call("GET", "/v1/models")[2] for _ in range(n)]
    return 1000 * statistics.median(times)


def progress(row: dict) -> None:
    if row.get("ok"):
        print(f"  {row['server']:<22} {row['suite']:<13} {row['prompt']:<14} T={row['temperature']:<4}"
              f" {row['completion_tokens']:>4} tok {row['tok_s']:7.1f} tok/s"
              f"  drafts {row['draft_n_accepted']}/{row['draft_n']}", file=sys.stderr)
    else:
        print(f"  {row['server']}: error {row.get('status')}: {row.get('error')}", file=sys.stderr)


def load_run(url: str, label: str, prompts, a) -> dict:
    """--load-clients threads send --load-requests requests between them; latencies, throughput."""
    jobs = [prompts[i % len(prompts)][1] for i in range(a.load_requests)]
    lock = threading.Lock()
    results: list[dict] = []

    def worker() -> None:
        client = Client(url)
        while True:
            with lock:
                if not jobs:
                    break
                prompt = jobs.pop(0)
            try:
                row = measure(client, body_for(prompt, 0.0, 0, a.n))
            except OSError as e:
                row = {"ok": False, "error": str(e), "wall_s": 0.0}
            with lock:
                results.append(row)
        client.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(a.load_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r.get("ok")]
    lat = sorted(r["wall_s"] for r in ok)
    return {"server": label, "requests": a.load_requests, "clients": a.load_clients,
            "completed": len(ok), "p50_s": percentile(lat, 50), "p95_s": percentile(lat, 95),
            "throughput_tok_s": sum(r["completion_tokens"] for r in ok) / wall if wall else 0.0,
            "wall_s": wall}


# --------------------------------------------------------------------------- figures


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    i = (len(xs) - 1) * q / 100
    lo, hi = int(i), min(int(i) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def keyed(rows, server):
    return {(r["suite"], r["prompt"], r["temperature"], r["repeat"]): r for r in rows
            if r.get("server") == server and r.get("ok")}


def ratios(rows, a_name, b_name, suite, temp) -> list[float]:
    """tok/s(a) / tok/s(b) for each request both sides answered (same prompt, T, repeat)."""
    a, b = keyed(rows, a_name), keyed(rows, b_name)
    return [a[k]["tok_s"] / b[k]["tok_s"] for k in a
            if k in b and k[0] == suite and k[2] == temp and b[k]["tok_s"] > 0]


def ratio_median(rows, a_name, b_name, suite, temp):
    """Median over matching requests of tok/s(a) / tok/s(b)."""
    return median(ratios(rows, a_name, b_name, suite, temp))


def spread(xs: list[float]) -> dict:
    """n and the quartiles of per-request ratios: how far one cell's median can be trusted
    (on 2 cores two identical requests differed by up to 13%)."""
    return {"n": len(xs), "q1": percentile(xs, 25), "q3": percentile(xs, 75)}


def acceptance(rows, server, suite, temp):
    sel = [r for r in rows if r.get("server") == server and r.get("ok") and r["suite"] == suite
           and r["temperature"] == temp]
    drafted = sum(r["draft_n"] for r in sel)
    return sum(r["draft_n_accepted"] for r in sel) / drafted if drafted else None


def tok_s(rows, server, suite, temp, key="tok_s"):
    return median([r[key] for r in rows if r.get("server") == server and r.get("ok")
                   and r["suite"] == suite and r["temperature"] == temp])


def summarize(rows: list[dict], llama_names: list[str], suites, temps) -> dict:
    """Per (suite, temperature): tok/s, ratios to each llama-server config and to K = 0."""
    table = []
    for suite in suites:
        for temp in temps:
            entry = {"suite": suite, "temperature": temp,
                     "specli_tok_s": tok_s(rows, "specli", suite, temp),
                     "specli_wall_tok_s": tok_s(rows, "specli", suite, temp, "wall_tok_s"),
                     "specli_k0_tok_s": tok_s(rows, "specli K=0", suite, temp),
                     "vs_k0": ratio_median(rows, "specli", "specli K=0", suite, temp),
                     "specli_acceptance": acceptance(rows, "specli", suite, temp),
                     "llama": {}}
            for name in llama_names:
                entry["llama"][name] = {
                    "tok_s": tok_s(rows, name, suite, temp),
                    "ratio": ratio_median(rows, "specli", name, suite, temp),
                    "acceptance": acceptance(rows, name, suite, temp)}
            best = max(entry["llama"].items(), key=lambda kv: kv[1]["tok_s"] or 0.0,
                       default=(None, None))
            entry["best_llama"] = best[0]
            entry["vs_best_llama"] = best[1]["ratio"] if best[1] else None
            entry["vs_best_llama_spread"] = spread(
                ratios(rows, "specli", best[0], suite, temp) if best[0] else [])
            table.append(entry)
    overhead = [r["overhead_ms"] for r in rows if r.get("server") == "specli" and r.get("ok")
                and r.get("overhead_ms") is not None]
    llama_overhead = [r["overhead_ms"] for r in rows if r.get("server") in llama_names
                      and r.get("ok") and r.get("overhead_ms") is not None]
    return {"table": table,
            "specli_http_overhead_ms": {"median": median(overhead),
                                        "p95": percentile(overhead, 95), "n": len(overhead)},
            "llama_http_overhead_ms": {"median": median(llama_overhead),
                                       "p95": percentile(llama_overhead, 95),
                                       "n": len(llama_overhead)},
            "models_rtt_ms": {r["server"]: r["models_rtt_ms"] for r in rows if "models_rtt_ms" in r},
            "greedy_text_matches": greedy_matches(rows, llama_names)}


def greedy_matches(rows, llama_names) -> dict:
    """At T = 0, how many specli replies equal llama-server's target-alone text (and K = 0's)."""
    spec = {k: r for k, r in keyed(rows, "specli").items() if k[2] == 0}
    out = {}
    for other in ("specli K=0", *[n for n in llama_names if n == "llama target"]):
        o = keyed(rows, other)
        pairs = [(spec[k]["text"], o[k]["text"]) for k in spec if k in o]
        out[other] = {"equal": sum(a == b for a, b in pairs), "of": len(pairs)}
    return out


def fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def print_report(summary: dict, loads: list[dict], llama_names: list[str]) -> None:
    head = f"{'suite':<13} {'T':>4} {'specli':>8} {'K=0':>8} {'/K=0':>6}"
    for n in llama_names:
        head += f" | {n[:16]:>16} {'ratio':>6} {'acc':>5}"
    head += f" | {'acc':>5} {'vs best':>7}"
    print("\ntok/s per request (server-reported decode rate, median); ratios: median per request")
    print(head)
    for e in summary["table"]:
        line = (f"{e['suite']:<13} {e['temperature']:>4} {fmt(e['specli_tok_s'], '.1f'):>8} "
                f"{fmt(e['specli_k0_tok_s'], '.1f'):>8} {fmt(e['vs_k0']):>6}")
        for n in llama_names:
            v = e["llama"][n]
            line += (f" | {fmt(v['tok_s'], '.1f'):>16} {fmt(v['ratio']):>6} "
                     f"{fmt(v['acceptance'], '.0%'):>5}")
        line += f" | {fmt(e['specli_acceptance'], '.0%'):>5} {fmt(e['vs_best_llama']):>7}"
        print(line)
    print("specli ÷ the best llama config, per request: " + "; ".join(
        f"{e['suite']} T {e['temperature']}: quartiles {fmt(e['vs_best_llama_spread']['q1'])}"
        f"–{fmt(e['vs_best_llama_spread']['q3'])} (n={e['vs_best_llama_spread']['n']})"
        for e in summary["table"]))
    o, lo = summary["specli_http_overhead_ms"], summary["llama_http_overhead_ms"]
    print(f"\nHTTP overhead per request (client wall - server's generation time): specli median "
          f"{fmt(o['median'])} ms, p95 {fmt(o['p95'])} ms (n={o['n']}); llama-server median "
          f"{fmt(lo['median'])} ms, p95 {fmt(lo['p95'])} ms (n={lo['n']})")
    print("GET /v1/models round trip: " + ", ".join(
        f"{k} {v:.2f} ms" for k, v in summary["models_rtt_ms"].items()))
    print("greedy text equal to specli's: " + ", ".join(
        f"{k} {v['equal']}/{v['of']}" for k, v in summary["greedy_text_matches"].items()))
    if loads:
        print("\nload run")
        for ld in loads:
            print(f"  {ld['server']:<22} {ld['completed']}/{ld['requests']} completed, "
                  f"{ld['clients']} clients, p50 {fmt(ld['p50_s'])} s, p95 {fmt(ld['p95_s'])} s, "
                  f"throughput {fmt(ld['throughput_tok_s'], '.1f')} tok/s")


# --------------------------------------------------------------------------- main


def load_prompts(a) -> list[tuple[str, str, str]]:
    """(suite, prompt text, id) for each prompt source in --prompts."""
    from specli.bench.suites import load_prompts_file, load_suite

    out = []
    for name in a.prompts:
        ps = load_prompts_file(EDIT_HELDOUT) if name == "edit-heldout" else (
            load_prompts_file(name) if name.endswith(".jsonl") else load_suite(name))
        out += [(name, p.prompt, p.id) for p in ps[: a.limit or None]]
    return out


def resolve_models(a) -> None:
    if a.target and a.draft:
        return
    from specli.session import resolve_paths

    paths = resolve_paths(pair=a.pair, target=a.target, draft=a.draft)
    a.target, a.draft = paths.target, paths.draft


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-bin", required=True, help="folder holding llama-server (and its .so files)")
    p.add_argument("--pair"), p.add_argument("--target"), p.add_argument("--draft")
    p.add_argument("--prompts", default="code,edit-heldout",
                   type=lambda s: [x.strip() for x in s.split(",") if x.strip()])
    p.add_argument("--limit", type=int, default=0, help="first N prompts of each source")
    p.add_argument("--n", type=int, default=128, help="max_tokens per request")
    p.add_argument("--temperatures", default="0,0.8",
                   type=lambda s: [float(x) for x in s.split(",")])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--n-gpu-layers", type=int, default=None)
    p.add_argument("--k", default="auto"), p.add_argument("--drafter", default="auto")
    p.add_argument("--llama-draft-max", default="3", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--llama-ngram-max", type=int, default=12)
    p.add_argument("--load-clients", type=int, default=4)
    p.add_argument("--load-requests", type=int, default=32)
    p.add_argument("--skip-load", action="store_true")
    p.add_argument("--json", help="write rows and summary to this file")
    return p.parse_args(argv)


def main(argv=None) -> None:
    a = parse_args(argv)
    if not (Path(a.llama_bin) / "llama-server").exists():
        sys.exit(f"no llama-server in {a.llama_bin} (build it with ../shared/anchors/build-llama-cpp-tools)")
    resolve_models(a)
    prompts = load_prompts(a)
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    loads = []
    configs = llama_configs(a)
    with ExitStack() as stack:
        port = free_port()
        servers = {"specli": (stack.enter_context(running("specli", specli_argv(a, port), port)),
                              {"specli": None, "specli K=0": {"k": 0}})}
        for name, extra in configs.items():
            port = free_port()
            url = stack.enter_context(running(name, llama_argv(a, extra, port), port, llama_env(a)))
            servers[name] = (url, {name: None})
        rows = run_side_by_side(servers, prompts, a)
        suites = list(dict.fromkeys(s for s, _, _ in prompts))
        summary = summarize(rows, list(configs), suites, a.temperatures)
        if not a.skip_load:  # one server at a time: the others sit idle
            best = max(configs, key=lambda n: median([r["tok_s"] for r in rows
                                                      if r.get("server") == n and r.get("ok")]) or 0)
            loads.append(load_run(servers["specli"][0], "specli", prompts, a))
            loads.append(load_run(servers[best][0], best, prompts, a))
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    print(f"target {Path(a.target).name}, draft {Path(a.draft).name}, threads {a.threads}, "
          f"ctx {a.ctx}, n {a.n}, repeats {a.repeats}, specli --k {a.k} --drafter {a.drafter}")
    print_report(summary, loads, list(configs))
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "summary": summary, "load": loads,
                                            "args": {k: str(v) for k, v in vars(a).items()}},
                                           indent=2))


if __name__ == "__main__":
    main()
