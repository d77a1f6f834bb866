#!/usr/bin/env python3
"""Editor completions: specli serve's /infill against llama-server's, as llama.vscode sends them. Prints figures.

Cases: held-out cursors in real Python source, cut from projects installed in this
venv's site-packages (rich, click, jinja2, httpx, pydantic, typer: those present), one or
two per project, chosen with --seed. A case is a statement line of at least 20
characters in a function body, at least 3 lines below the `def`, not its last line; the
cursor stands a few characters after the indentation. It is cut as llama.vscode cuts it:

  input_prefix  the 256 lines above the cursor line, joined with "\\n", plus "\\n"
  prompt        the cursor line left of the cursor
  input_suffix  the line right of the cursor + "\\n" + the next 64 lines + "\\n"; the
                rest of the cursor line is held out (the user is typing it), so the
                editor has nothing right of the cursor and the suffix starts with "\\n"
  n_indent      the cursor line's indentation
  input_extra   two other files of the project, in chunks of 64 lines (at most 4 chunks
                a file), {"filename": path, "text": lines + "\\n"}: the plugin's ring buffer

Typing replay: per case one cache warm-up (n_predict 0, empty prefix, suffix and prompt,
the same input_extra, samplers []: the ring buffer's request; not timed), then --requests
(5) completions, the prompt growing by --step (3) of the line's real characters each time,
as the plugin's debounce sends them. Each completion is greedy so the texts can be
compared: temperature 0, samplers ["temperature"], n_predict --n-predict, n_indent, stream,
cache_prompt, id_slot 0; no t_max_predict_ms (a time limit would make the texts differ).

Servers, all started at once and sent each request in turn (the order rotated by one per
request), so that ratios pair requests seconds apart (see serve_vs_llama_server.py):
specli serve --k auto (its default drafter), specli serve --k 0 (its target alone), and
llama-server -np 1 --cache-reuse 256 -b 512 -ub 512 (llama.vscode's recommended flags)
with its target alone, with -md DRAFT --spec-type draft-simple and with ngram-simple.

Per completion: latency (request sent to the final event), time to first token (the first
event with text), tokens evaluated (timings.prompt_n), decode tok/s
(timings.predicted_per_second), predicted_n and the text. Per server: p50 and p95 of
latency, TTFT and prompt_n; median tok/s; the share of completions whose text equals
llama-server target alone's for the same request ("same greedy text"); the share whose
first line is the rest of the real line ("line right"). Headline: specli --k auto p50
latency / the best llama-server configuration's p50 latency (goal <= 0.7), and the median
of per-request latency ratios specli / that configuration.

Usage:
  python benchmarks/infill.py --llama-bin "$(../shared/anchors/build-llama-cpp-tools)"
      [--target T.gguf --draft D.gguf] [--cases 8] [--requests 5] [--step 3]
      [--n-predict 64] [--threads 2] [--ctx 4096] [--seed 0] [--json OUT.json]
  python benchmarks/infill.py --list-cases     # the cases only; no servers
Run it on a quiet machine. It asserts nothing.
"""

from __future__ import annotations

import argparse
import ast
import http.client
import importlib.util
import json
import os
import random
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_vs_llama_server import (Client, free_port, llama_argv, llama_configs,  # noqa: E402
                                   llama_env, median, percentile, resolve_models, running,
                                   specli_argv)

PROJECTS = ("rich", "click", "jinja2", "httpx", "pydantic", "typer")
N_PREFIX, N_SUFFIX = 256, 64  # llama.vscode's n_prefix, n_suffix (lines)
CHUNK_LINES, CHUNKS_PER_FILE, EXTRA_FILES = 64, 4, 2
MIN_LINE, MIN_FILE = 20, 100  # characters of a cursor line (no indentation), lines of its file
VSCODE_FLAGS = ["--cache-reuse", "256", "-b", "512", "-ub", "512"]  # llama.vscode's README
AUTO, BASE = "specli auto", "llama target"


# --------------------------------------------------------------------------- cases


def body_lines(source: str, min_chars: int = MIN_LINE) -> list[int]:
    """0-based indexes of the lines a cursor may stand on: the first line of a statement
    in a function body, >= 3 lines below the def, not the function's last line, at least
    min_chars long without its indentation; docstrings and comments excluded."""
    lines = source.split("\n")
    out = set()
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if not isinstance(node, ast.stmt) or node is fn:
                continue
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str):
                continue  # a docstring
            text = lines[node.lineno - 1].strip()
            if node.lineno - fn.lineno >= 3 and node.lineno < fn.end_lineno \
                    and len(text) >= min_chars and not text.startswith("#"):
                out.add(node.lineno - 1)
    return sorted(out)


def cut(lines: list[str], idx: int, col: int) -> dict:
    """The case at line idx, cursor at col, cut as llama.vscode cuts it (the rest of the
    line held out: `line` keeps it for the typing replay)."""
    line = lines[idx]
    return {"line": line, "line_no": idx + 1, "col": col,
            "input_prefix": "\n".join(lines[max(0, idx - N_PREFIX):idx]) + "\n",
            "input_suffix": "\n" + "\n".join(lines[idx + 1:idx + 1 + N_SUFFIX]) + "\n",
            "n_indent": len(line) - len(line.lstrip())}


def typed(case: dict, i: int, step: int) -> tuple[str, str]:
    """Request i's prompt (the line up to the cursor after i * step more characters) and
    the rest of the real line (what a right completion's first line is)."""
    end = case["col"] + i * step
    return case["line"][:end], case["line"][end:]


def extra_chunks(rel: str, text: str) -> list[dict]:
    lines = text.split("\n")[:CHUNK_LINES * CHUNKS_PER_FILE]
    return [{"filename": rel, "text": "\n".join(lines[j:j + CHUNK_LINES]) + "\n"}
            for j in range(0, len(lines), CHUNK_LINES)]


def project_files(name: str) -> list[tuple[str, Path]]:
    """(path relative to site-packages, path) of a project's .py files; [] if absent."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(list(spec.submodule_search_locations)[0])
    return [(p.relative_to(root.parent).as_posix(), p) for p in sorted(root.rglob("*.py"))]


def find_cases(n: int, seed: int, requests: int, step: int) -> list[dict]:
    """n cases, projects in turn, deterministic for one seed and one venv."""
    rng = random.Random(seed)
    projects = [(name, fs) for name in PROJECTS if (fs := project_files(name))]
    if not projects:
        sys.exit(f"none of {', '.join(PROJECTS)} is installed")
    cases, used = [], set()
    for i in range(n):
        name, files = projects[i % len(projects)]
        order = files[:]
        rng.shuffle(order)
        for rel, path in order:
            if rel in used:
                continue
            source = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
            try:
                idxs = body_lines(source)
            except SyntaxError:
                continue
            lines = source.split("\n")
            if len(lines) < MIN_FILE:
                continue
            offset = rng.randint(2, 5)
            need = offset + (requests - 1) * step + 4  # characters left after the last prompt
            idxs = [j for j in idxs if len(lines[j].strip()) >= need]
            if not idxs:
                continue
            idx = rng.choice(idxs)
            indent = len(lines[idx]) - len(lines[idx].lstrip())
            others = [f for f in files if f[0] != rel and f[1].stat().st_size > 0]
            extra = []
            for orel, opath in rng.sample(others, min(EXTRA_FILES, len(others))):
                extra += extra_chunks(orel, opath.read_text(encoding="utf-8", errors="replace"))
            used.add(rel)
            cases.append({"id": f"{name}-{i}", "project": name, "file": rel,
                          **cut(lines, idx, indent + offset), "input_extra": extra})
            break
    return cases


def print_cases(cases: list[dict], a) -> None:
    for c in cases:
        first, _ = typed(c, 0, a.step)
        last, rest = typed(c, a.requests - 1, a.step)
        extra = sum(len(x["text"]) for x in c["input_extra"])
        print(f"{c['id']:<11} {c['file']}:{c['line_no']}  n_indent {c['n_indent']}\n"
              f"    prompt {first!r} .. {last!r}, then {rest!r}\n"
              f"    prefix {c['input_prefix'].count(chr(10))} lines / {len(c['input_prefix'])} ch, "
              f"suffix {c['input_suffix'].count(chr(10)) - 1} lines / {len(c['input_suffix'])} ch, "
              f"extra {len(c['input_extra'])} chunks of "
              f"{len({x['filename'] for x in c['input_extra']})} files / {extra} ch")


# --------------------------------------------------------------------------- requests


def infill_request(case: dict, prompt: str, n_predict: int) -> dict:
    return {"id_slot": 0, "input_prefix": case["input_prefix"], "input_suffix": case["input_suffix"],
            "input_extra": case["input_extra"], "prompt": prompt, "n_predict": n_predict,
            "n_indent": case["n_indent"], "temperature": 0, "samplers": ["temperature"],
            "stream": True, "cache_prompt": True}


def warm_request(case: dict) -> dict:
    return {"id_slot": 0, "input_prefix": "", "input_suffix": "", "input_extra": case["input_extra"],
            "prompt": "", "n_predict": 0, "samplers": [], "cache_prompt": True}


def stream(client: Client, body: dict) -> dict:
    """POST /infill with stream true; read its events until stop: true. Client's own
    keep-alive connection, reconnecting once if the server closed it."""
    data = json.dumps(body).encode()
    for attempt in (0, 1):
        if client.conn is None:
            client.conn = http.client.HTTPConnection(client.host, client.port, timeout=client.timeout)
        t0 = time.perf_counter()
        try:
            client.conn.request("POST", "/infill", body=data,
                                headers={"Content-Type": "application/json"})
            r = client.conn.getresponse()
            if r.status != 200:
                return {"ok": False, "error": f"HTTP {r.status}: {r.read()[:300]!r}"}
            text, ttft, final = "", None, None
            while final is None:
                line = r.readline()
                if not line:
                    return {"ok": False, "error": "the stream ended before stop: true"}
                if not line.startswith(b"data: "):
                    continue
                ev = json.loads(line[6:])
                if "error" in ev:
                    r.read()
                    return {"ok": False, "error": str(ev["error"])[:300]}
                if ev.get("content") and ttft is None:
                    ttft = time.perf_counter() - t0
                text += ev.get("content") or ""
                final = ev if ev.get("stop") else None
            latency = time.perf_counter() - t0
            r.read()  # the end of the chunked body, so the connection can be reused
            break
        except (http.client.HTTPException, OSError):
            client.conn.close()
            client.conn = None
            if attempt:
                raise
    t = final.get("timings") or {}
    return {"ok": True, "latency_ms": 1000 * latency, "ttft_ms": None if ttft is None else 1000 * ttft,
            "prompt_n": t.get("prompt_n"), "cache_n": t.get("cache_n"),
            "predicted_n": t.get("predicted_n"), "tok_s": t.get("predicted_per_second"),
            "draft_n": t.get("draft_n"), "draft_n_accepted": t.get("draft_n_accepted"),
            "k_counts": t.get("k_counts"), "rounds_by_drafter": t.get("rounds_by_drafter"),
            "prediction_draft_n_accepted": t.get("prediction_draft_n_accepted"),
            "tokens_cached": final.get("tokens_cached"), "truncated": final.get("truncated"),
            "content": text}


def replay(clients: dict[str, Client], cases: list[dict], a) -> list[dict]:
    names = list(clients)
    warm = {**cases[0], "input_extra": [], "input_prefix": "def f(x):\n", "input_suffix": "\n"}
    for name in names:  # one short completion per server first, dropped (first-call costs)
        stream(clients[name], infill_request(warm, "    return", 8))
    rows, turn = [], 0
    for case in cases:
        for name in names:  # the ring buffer's warm-up: not timed
            clients[name].call("POST", "/infill", warm_request(case))
        for i in range(a.requests):
            prompt, rest = typed(case, i, a.step)
            shift = turn % len(names)
            turn += 1
            for name in names[shift:] + names[:shift]:
                row = stream(clients[name], infill_request(case, prompt, a.n_predict))
                row.update(server=name, case=case["id"], request=i, prompt=prompt,
                           n_indent=case["n_indent"])
                if row["ok"]:
                    row["line_right"] = row["content"].split("\n")[0].rstrip() == rest.rstrip()
                    print(f"  {name:<13} {case['id']:<11} #{i} {row['latency_ms']:7.0f} ms "
                          f"ttft {row['ttft_ms'] or 0:6.0f} ms  prompt_n {row['prompt_n']!s:>5} "
                          f"{row['predicted_n']!s:>3} tok {row['tok_s'] or 0:6.1f} tok/s "
                          f"{row['content'][:40]!r}", file=sys.stderr, flush=True)
                else:
                    print(f"  {name:<13} {case['id']:<11} #{i} ERROR {row['error']}", file=sys.stderr)
                rows.append(row)
    return rows


# --------------------------------------------------------------------------- figures


def shown(text: str, n_indent: int) -> str:
    """The completion as a plugin gets it (not streamed), trailing blanks aside.

    Streamed, llama-server has sent a line before n_indent judges it, and the judged-out
    part stays in what the stream carried; not streamed (as the plugins ask), it is cut
    at the first character after a short indentation (a blank line's newline included).
    specli holds a line back until it is judged, so its stream is already cut."""
    lines = text.split("\n")
    out = lines[:1]
    for line in lines[1:]:
        body = line.lstrip(" \t")
        if n_indent and len(line) - len(body) < n_indent:
            out.append(line[: len(line) - len(body)])
            break
        out.append(line)
    return "\n".join(out).rstrip()


def summarize(rows: list[dict], names: list[str]) -> dict:
    ok = [r for r in rows if r.get("ok")]
    key = lambda r: (r["case"], r["request"])  # noqa: E731
    text = lambda r: shown(r["content"], r.get("n_indent", 0))  # noqa: E731
    base = {key(r): text(r) for r in ok if r["server"] == BASE}
    servers = {}
    for name in names:
        rs = [r for r in ok if r["server"] == name]
        pick = lambda f: [r[f] for r in rs if r.get(f) is not None]  # noqa: E731
        same = [text(r) == base[key(r)] for r in rs if key(r) in base]
        servers[name] = {
            "n": len(rs), "errors": sum(1 for r in rows if r["server"] == name and not r.get("ok")),
            **{f"{f}_{q}": percentile(pick(f), p) for f in ("latency_ms", "ttft_ms", "prompt_n")
               for q, p in (("p50", 50), ("p95", 95))},
            "tok_s_median": median([x for x in pick("tok_s") if x > 0]),
            "same_greedy_text": sum(same) / len(same) if same else None,
            "line_right": sum(r["line_right"] for r in rs) / len(rs) if rs else None}
    llamas = [n for n in names if n.startswith("llama") and servers[n]["latency_ms_p50"]]
    best = min(llamas, key=lambda n: servers[n]["latency_ms_p50"], default=None)
    out = {"servers": servers, "best_llama": best, "p50_ratio": None, "per_request_ratio": None}
    if best and servers.get(AUTO, {}).get("latency_ms_p50"):
        out["p50_ratio"] = servers[AUTO]["latency_ms_p50"] / servers[best]["latency_ms_p50"]
        b = {key(r): r["latency_ms"] for r in ok if r["server"] == best}
        per = [r["latency_ms"] / b[key(r)] for r in ok if r["server"] == AUTO and key(r) in b]
        out["per_request_ratio"] = {"median": median(per), "q1": percentile(per, 25),
                                    "q3": percentile(per, 75), "n": len(per)}
    return out


def fmt(x, spec=".0f"):
    return "-" if x is None else format(x, spec)


def markdown(s: dict) -> str:
    out = ["| server | latency p50 | p95 | TTFT p50 | p95 | prompt_n p50 | p95 | tok/s | "
           "same greedy text | line right | n |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in s["servers"].items():
        err = f" ({v['errors']} errors)" if v["errors"] else ""
        out.append(f"| {name} | {fmt(v['latency_ms_p50'])} ms | {fmt(v['latency_ms_p95'])} ms | "
                   f"{fmt(v['ttft_ms_p50'])} ms | {fmt(v['ttft_ms_p95'])} ms | "
                   f"{fmt(v['prompt_n_p50'])} | {fmt(v['prompt_n_p95'])} | "
                   f"{fmt(v['tok_s_median'], '.1f')} | {fmt(v['same_greedy_text'], '.0%')} | "
                   f"{fmt(v['line_right'], '.0%')} | {v['n']}{err} |")
    return "\n".join(out)


def print_report(s: dict, a) -> None:
    print(f"\ntarget {Path(a.target).name}, draft {Path(a.draft).name}, threads {a.threads}, "
          f"ctx {a.ctx}, n_predict {a.n_predict}, {a.cases} cases x {a.requests} requests "
          f"(+{a.step} characters each), seed {a.seed}\n")
    print(markdown(s))
    pr = s["per_request_ratio"]
    if s["p50_ratio"] is None:
        print("\nno headline: specli auto or every llama-server configuration answered nothing")
        return
    print(f"\nHEADLINE  specli --k auto p50 latency / {s['best_llama']} p50 latency: "
          f"{s['p50_ratio']:.2f} (goal <= 0.7); per request, median {fmt(pr['median'], '.2f')} "
          f"(quartiles {fmt(pr['q1'], '.2f')}-{fmt(pr['q3'], '.2f')}, n={pr['n']})")


# --------------------------------------------------------------------------- main


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-bin", help="folder holding llama-server (required unless --list-cases)")
    p.add_argument("--target"), p.add_argument("--draft"), p.add_argument("--pair")
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--requests", type=int, default=5, help="completions per case, typing between")
    p.add_argument("--step", type=int, default=3, help="characters typed per request")
    p.add_argument("--n-predict", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--chunks", type=int, default=2,
                   help="input_extra chunks kept per other file (so that the prompt fits: "
                        "llama-server's budgets can overfill a full context by a few tokens, "
                        "where specli cuts the extra chunks a little further)")
    p.add_argument("--n-gpu-layers", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the cases, rows and summary to this file")
    p.add_argument("--list-cases", action="store_true", help="print the cases; start no server")
    a = p.parse_args(argv)
    cases = find_cases(a.cases, a.seed, a.requests, a.step)
    for c in cases:
        seen: dict[str, int] = {}
        kept = []
        for chunk in c["input_extra"]:
            seen[chunk["filename"]] = seen.get(chunk["filename"], 0) + 1
            if seen[chunk["filename"]] <= a.chunks:
                kept.append(chunk)
        c["input_extra"] = kept
    if a.list_cases:
        print_cases(cases, a)
        return
    if not a.llama_bin or not (Path(a.llama_bin) / "llama-server").exists():
        p.error("--llama-bin: a folder holding llama-server (../shared/anchors/build-llama-cpp-tools)")
    # what the helpers of serve_vs_llama_server.py read
    a.k, a.drafter, a.n, a.load_requests, a.llama_draft_max, a.llama_ngram_max = (
        "auto", "auto", a.n_predict, 0, [3], 12)
    resolve_models(a)
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    with ExitStack() as stack:
        urls = {}
        # specli's target alone gets a server of its own rather than "speculative": {"k": 0}
        # on the first one: sharing a server, the second variant to get a request would find
        # the whole prompt already evaluated by the first (and the typing replay's cache
        # state would be a mix of both), while an infill's cost is mostly its prompt.
        for name, k in ((AUTO, "auto"), ("specli k0", "0")):
            port = free_port()
            argv_ = specli_argv(argparse.Namespace(**{**vars(a), "k": k}), port)
            urls[name] = stack.enter_context(running(name, argv_, port))
        for name, extra in llama_configs(a).items():
            port = free_port()
            urls[name] = stack.enter_context(running(
                name, llama_argv(a, [*extra, *VSCODE_FLAGS], port), port, env=llama_env(a)))
        clients = {name: Client(url) for name, url in urls.items()}
        rows = replay(clients, cases, a)
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    summary = summarize(rows, list(urls))
    print_report(summary, a)
    if a.json:
        meta = [{k: c[k] for k in ("id", "project", "file", "line_no", "col", "line", "n_indent")}
                for c in cases]
        Path(a.json).write_text(json.dumps({"cases": meta, "rows": rows, "summary": summary,
                                            "args": {k: str(v) for k, v in vars(a).items()}},
                                           indent=1))


if __name__ == "__main__":
    main()
