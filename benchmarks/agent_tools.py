#!/usr/bin/env python3
"""Structured output and tool calls: specli serve against llama-server on agent requests. Prints figures.

Issue 25's benchmark. Two kinds of request, sent as chat completions with the same
schema or tools to every server:

  extract   JSON-schema extraction (response_format json_schema, strict) whose answer
            copies from the input: a changelog entry, a dependency list, a stack trace,
            a function signature
  agent     turns of a short coding-agent transcript with tools (read_file, write_file):
            the user asks for an edit; the model reads the file; the tool result holds
            it; the next reply writes the edited file back (a write_file call whose
            arguments copy most of the tool result, JSON-escaped). tool_choice required,
            parallel_tool_calls false, for every server: under auto Qwen2.5-Coder 1.5B
            writes its calls as text at random (0 of 8 valid on llama-server, 2 of 8 on
            specli in a first run), and with parallel calls allowed it goes on writing
            more calls until max_tokens

Servers, all started at once and sent each request in turn (ratios pair requests seconds
apart; see serve_vs_llama_server.py for why): specli serve --k auto (hybrid drafter),
the same requests with "speculative": {"k": 0} (specli's target alone), and llama-server
--jinja with its target alone, with -md (draft-simple) and with ngram-simple.

Per request: the server's decode tok/s (timings.predicted_per_second), and validity: the
reply parses and validates against the schema (extract), or is a tool call whose
arguments validate against the tool's parameters (agent; a text reply under auto counts
as invalid, and is reported). Medians per server and temperature; specli --k auto over
each other server, the median of per-request ratios.

Usage:
  python benchmarks/agent_tools.py --llama-bin "$(../shared/anchors/build-llama-cpp-tools)"
      [--target T.gguf --draft D.gguf] [--temperatures 0,0.8] [--repeats 2] [--n 512]
      [--threads 2] [--ctx 4096] [--json OUT.json]
Run it on a quiet machine. It asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_vs_llama_server import (Client, free_port, llama_argv, llama_configs,  # noqa: E402
                                   llama_env, resolve_models, running)

SAMPLING = {"top_k": 40, "top_p": 0.95, "min_p": 0.05}

EXTRACT = [
    ("changelog", "Extract the release as JSON.\n\n## 2.4.0 (2026-11-02)\n- Added `--cache-reuse` "
     "to the server\n- Fixed a crash when the prompt is empty\n- Deprecated `--mlock`",
     {"type": "object", "properties": {
         "version": {"type": "string"}, "date": {"type": "string"},
         "added": {"type": "array", "items": {"type": "string"}},
         "fixed": {"type": "array", "items": {"type": "string"}},
         "deprecated": {"type": "array", "items": {"type": "string"}}},
      "required": ["version", "date", "added", "fixed", "deprecated"], "additionalProperties": False}),
    ("dependencies", "List the dependencies with their version constraints as JSON.\n\n"
     "dependencies = [\n  \"llama-cpp-python>=0.3.10,<0.4\",\n  \"typer>=0.12\",\n  \"rich>=13\",\n"
     "  \"huggingface-hub>=1.0\",\n  \"numpy>=1.24\",\n  \"fastapi>=0.110\",\n  \"uvicorn>=0.29\",\n]",
     {"type": "object", "properties": {"dependencies": {"type": "array", "items": {
         "type": "object", "properties": {"name": {"type": "string"}, "constraint": {"type": "string"}},
         "required": ["name", "constraint"], "additionalProperties": False}}},
      "required": ["dependencies"], "additionalProperties": False}),
    ("traceback", "Extract the frames of this traceback as JSON (file, line, function).\n\n"
     "Traceback (most recent call last):\n  File \"/srv/app/main.py\", line 42, in handle\n"
     "    result = process(payload)\n  File \"/srv/app/pipeline.py\", line 118, in process\n"
     "    rows = load_rows(conn, query)\n  File \"/srv/app/db.py\", line 27, in load_rows\n"
     "    cursor.execute(query)\nsqlite3.OperationalError: no such table: events",
     {"type": "object", "properties": {"frames": {"type": "array", "items": {
         "type": "object", "properties": {"file": {"type": "string"}, "line": {"type": "integer"},
                                          "function": {"type": "string"}},
         "required": ["file", "line", "function"], "additionalProperties": False}},
         "error": {"type": "string"}}, "required": ["frames", "error"], "additionalProperties": False}),
    ("signature", "Describe this function's parameters as JSON.\n\n"
     "def speculative_generate(target, drafter, prompt_tokens, sampling, spec, policy=None,\n"
     "                         n_vocab=None, verify_chunk=None, trace=False, rules=None):",
     {"type": "object", "properties": {"name": {"type": "string"}, "parameters": {"type": "array",
         "items": {"type": "object", "properties": {"name": {"type": "string"},
                                                    "default": {"type": ["string", "null"]}},
                   "required": ["name", "default"], "additionalProperties": False}}},
      "required": ["name", "parameters"], "additionalProperties": False}),
]

TOOLS = [
    {"type": "function", "function": {
        "name": "read_file", "description": "Read a file of the project; returns its content.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                       "required": ["path"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "write_file", "description": "Replace a file of the project with new content.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"},
                                                        "content": {"type": "string"}},
                       "required": ["path", "content"], "additionalProperties": False}}},
]
SYSTEM = ("You are a coding agent. You change files only through the tools: read a file with "
          "read_file before editing it, then write the whole new file with write_file.")
DB_PY = '''import sqlite3


def connect(path):
    """Open the database at path."""
    return sqlite3.connect(path)


def fetch_rows(conn, query, params=()):
    """Run query and return every row."""
    cursor = conn.cursor()
    cursor.execute(query, params)
    return cursor.fetchall()


def count_rows(conn, table):
    rows = fetch_rows(conn, f"SELECT COUNT(*) FROM {table}")
    return rows[0][0]


def latest(conn, table, n=10):
    return fetch_rows(conn, f"SELECT * FROM {table} ORDER BY id DESC LIMIT ?", (n,))
'''
EDITS = [("rename", "In db.py, rename fetch_rows to load_rows everywhere."),
         ("docstring", "In db.py, add a docstring to count_rows and to latest.")]


def agent_turns() -> list[tuple[str, list[dict]]]:
    """(id, messages) of each agent turn: the read, then the write after the tool result."""
    turns = []
    for name, ask in EDITS:
        first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ask}]
        call = {"id": "call_read0", "type": "function",
                "function": {"name": "read_file", "arguments": json.dumps({"path": "db.py"})}}
        second = first + [{"role": "assistant", "content": None, "tool_calls": [call]},
                          {"role": "tool", "tool_call_id": "call_read0", "content": DB_PY}]
        turns += [(f"{name}/read", first), (f"{name}/write", second)]
    return turns


def validity(kind: str, schema, choice: dict) -> tuple[bool, str]:
    import jsonschema

    msg = choice["message"]
    try:
        if kind == "extract":
            jsonschema.validate(json.loads(msg["content"]), schema)
            return True, "json"
        calls = msg.get("tool_calls") or []
        if not calls:
            return False, "text"
        for c in calls:
            tool = next(t for t in TOOLS if t["function"]["name"] == c["function"]["name"])
            jsonschema.validate(json.loads(c["function"]["arguments"]),
                                tool["function"]["parameters"])
        return True, "+".join(c["function"]["name"] for c in calls)
    except Exception as e:  # noqa: BLE001 - a reply that does not validate, whatever why
        return False, f"{type(e).__name__}"


def request_body(kind, payload, temperature, seed, n, spec):
    if kind == "extract":
        prompt, schema = payload
        body = {"messages": [{"role": "user", "content": prompt}],
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "out", "schema": schema, "strict": True}}}
    else:
        body = {"messages": payload, "tools": TOOLS, "tool_choice": "required",
                "parallel_tool_calls": False}
    body.update(model="bench", temperature=temperature, seed=seed, max_tokens=n, **SAMPLING)
    if spec is not None:
        body["speculative"] = spec
    return body


def one(client, kind, payload, schema, temperature, seed, n, spec) -> dict:
    status, r, wall = client.call("POST", "/v1/chat/completions",
                                  request_body(kind, payload, temperature, seed, n, spec))
    if status != 200:
        return {"ok": False, "valid": False, "why": f"HTTP {status}: {r.get('error', r)}"}
    t = r.get("timings") or {}
    valid, why = validity(kind, schema, r["choices"][0])
    return {"ok": True, "valid": valid, "why": why, "tok_s": t.get("predicted_per_second") or 0.0,
            "completion_tokens": r["usage"]["completion_tokens"], "wall_s": wall,
            "draft_n": t.get("draft_n") or 0, "draft_n_accepted": t.get("draft_n_accepted") or 0,
            "finish_reason": r["choices"][0]["finish_reason"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama-bin", required=True)
    p.add_argument("--target"), p.add_argument("--draft"), p.add_argument("--pair")
    p.add_argument("--temperatures", default="0,0.8")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--json")
    a = p.parse_args(argv)
    a.n_gpu_layers, a.llama_draft_max, a.llama_ngram_max = None, [3], 12
    resolve_models(a)
    temps = [float(t) for t in a.temperatures.split(",")]
    cases = [("extract", pid, (prompt, schema), schema) for pid, prompt, schema in EXTRACT]
    cases += [("agent", pid, msgs, None) for pid, msgs in agent_turns()]
    rows = []
    with ExitStack() as stack:
        servers = {}
        port = free_port()
        servers["specli"] = stack.enter_context(running("specli", [
            sys.executable, "-m", "specli", "serve", "--target", str(a.target), "--draft",
            str(a.draft), "--threads", str(a.threads), "--draft-threads", str(a.threads),
            "--ctx", str(a.ctx), "--k", "auto", "--drafter", "auto", "--port", str(port)], port))
        for name, extra in llama_configs(a).items():
            port = free_port()
            servers[name] = stack.enter_context(running(
                name, llama_argv(a, ["--jinja", *extra], port), port, env=llama_env(a)))
        variants = [("specli auto", "specli", None), ("specli k0", "specli", {"k": 0})]
        variants += [(name, name, None) for name in servers if name != "specli"]
        clients = {name: Client(url) for name, url in servers.items()}
        for label, server, spec in variants:  # warm-up, dropped
            kind, _, payload, schema = cases[0]
            one(clients[server], kind, payload, schema, 0.0, 0, 16, spec)
        turn = 0
        for r in range(a.repeats):
            for kind, pid, payload, schema in cases:
                for temp in temps:
                    shift = turn % len(variants)
                    turn += 1
                    for label, server, spec in variants[shift:] + variants[:shift]:
                        row = one(clients[server], kind, payload, schema, temp, r, a.n, spec)
                        row.update(server=label, kind=kind, case=pid, temperature=temp, repeat=r)
                        rows.append(row)
                        print(f"  {label:<14} {kind:<8} {pid:<18} T={temp:<4} "
                              f"{row.get('tok_s', 0):6.1f} tok/s  {row.get('completion_tokens', 0):4} tok "
                              f"{'valid' if row['valid'] else 'INVALID'} ({row['why']})",
                              file=sys.stderr, flush=True)
    report(rows, [v[0] for v in variants], temps)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


def report(rows, labels, temps) -> None:
    def sel(label, kind, temp):
        return [r for r in rows if r["server"] == label and r["kind"] == kind
                and r["temperature"] == temp and r["ok"]]

    def paired(a, b, kind, temp):
        key = lambda r: (r["case"], r["repeat"])  # noqa: E731
        bs = {key(r): r for r in sel(b, kind, temp)}
        return [r["tok_s"] / bs[key(r)]["tok_s"] for r in sel(a, kind, temp)
                if key(r) in bs and bs[key(r)]["tok_s"] > 0]

    for kind in ("extract", "agent"):
        for temp in temps:
            print(f"\n{kind}, T = {temp}")
            print(f"  {'server':<14} {'tok/s med':>9} {'valid':>7} {'accept':>7} {'auto/this':>10}")
            for label in labels:
                rs = sel(label, kind, temp)
                if not rs:
                    continue
                med = statistics.median(r["tok_s"] for r in rs)
                valid = sum(r["valid"] for r in rs)
                dn = sum(r["draft_n"] for r in rs)
                acc = sum(r["draft_n_accepted"] for r in rs) / dn if dn else 0.0
                ratio = paired("specli auto", label, kind, temp)
                rtxt = f"{statistics.median(ratio):.2f}x" if ratio and label != "specli auto" else "-"
                print(f"  {label:<14} {med:9.1f} {valid:>3}/{len(rs):<3} {acc:7.2f} {rtxt:>10}")


if __name__ == "__main__":
    main()
