"""Constraint libraries for structured output, measured on the target's vocabulary: prints figures.

Issue 25 (tools and structured output under speculation) asks for the constraint library
to be chosen by measurement. For each candidate this walks the token path of a JSON
answer that validates against an extraction schema and times, per position:

  mask     the allowed-token set over the whole vocabulary (151,936 ids on Qwen2.5),
           as speculation needs it at every verified position;
  advance  consuming the accepted token;
  draft    checking a drafted continuation of 8 tokens at once (how many the grammar
           allows: an n-gram draft is cut there before it costs a verify row) and rolling
           back after a rejection.

It also reports the one-time cost of building the tokenizer and compiling the schema,
whether rollback exists, and the installed size. Nothing here asserts.

    pip install llguidance outlines-core      # xgrammar needs torch, see the README
    python benchmarks/constraint_libs.py                      # the default pair's target
    python benchmarks/constraint_libs.py --target ./model.gguf --json out.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "dependencies": {"type": "array", "items": {"type": "string"}},
        "license": {"type": "string", "enum": ["MIT", "Apache-2.0", "BSD-3-Clause"]},
        "python": {"type": "integer"},
    },
    "required": ["name", "version", "dependencies", "license", "python"],
    "additionalProperties": False,
}
ANSWER = ('{"name": "specli", "version": "0.1.0", "dependencies": ["llama-cpp-python", '
          '"typer", "rich", "huggingface-hub", "numpy"], "license": "MIT", "python": 311}')
DRAFT = 8


def _ms(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median_ms": round(statistics.median(xs) * 1e3, 4),
            "p95_ms": round(xs[int(0.95 * (len(xs) - 1))] * 1e3, 4), "n": len(xs)}


def _installed_mib(dist: str) -> float | None:
    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        return None
    return round(sum(f.locate().stat().st_size for f in files if f.locate().exists()) / 2**20, 1)


def bench_llguidance(model, path: list[int]) -> dict:
    import llguidance
    import numpy as np
    from llguidance.llamacpp import lltokenizer_from_vocab
    from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

    t0 = time.perf_counter()
    tok = lltokenizer_from_vocab(model._vocab)
    t_tok = time.perf_counter() - t0
    t0 = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA)
    m = llguidance.LLMatcher(tok, grammar)
    t_compile = time.perf_counter() - t0
    mask = allocate_token_bitmask(1, tok.vocab_size)
    masks, advances, drafts, rollbacks, allowed_ok = [], [], [], [], True
    for i, t in enumerate(path):
        t0 = time.perf_counter()
        fill_next_token_bitmask(m, mask)
        masks.append(time.perf_counter() - t0)
        allowed_ok &= bool((int(mask[0, t // 32]) >> (t % 32)) & 1)
        draft = path[i : i + DRAFT]
        t0 = time.perf_counter()
        n_ok = m.validate_tokens(draft)
        drafts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        m.consume_tokens(draft[: max(1, n_ok)])
        m.rollback(max(1, n_ok))
        rollbacks.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        m.consume_token(t)
        advances.append(time.perf_counter() - t0)
    return {"library": "llguidance", "version": llguidance.get_version() if hasattr(
                llguidance, "get_version") else metadata.version("llguidance"),
            "installed_mib": _installed_mib("llguidance"), "tokenizer_s": round(t_tok, 3),
            "compile_s": round(t_compile, 4), "mask": _ms(masks), "advance": _ms(advances),
            "draft_check": _ms(drafts), "consume_and_rollback": _ms(rollbacks),
            "rollback": "yes (rollback(n), validate_tokens(draft))",
            "path_allowed": allowed_ok and not m.is_error() and m.is_accepting(),
            "reads": "token bytes from llama.cpp's vocab (llguidance.llamacpp)"}


def bench_outlines(model, path: list[int], token_bytes: list[bytes], eos: int) -> dict:
    import numpy as np
    import outlines_core as oc
    from outlines_core.json_schema import build_regex_from_schema

    t0 = time.perf_counter()
    vocab_map: dict[bytes, list[int]] = {}
    for i, b in enumerate(token_bytes):
        if i != eos and b:
            vocab_map.setdefault(b, []).append(i)
    vocab = oc.Vocabulary(eos, vocab_map)
    t_tok = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = oc.Index(build_regex_from_schema(json.dumps(SCHEMA)), vocab)
    t_compile = time.perf_counter() - t0
    guide = oc.Guide(index, max_rollback=DRAFT + 1)
    n_words = (len(token_bytes) + 31) // 32
    mask = np.zeros(n_words, dtype=np.int32)
    masks, advances, drafts, rollbacks, allowed_ok = [], [], [], [], True
    for i, t in enumerate(path):
        t0 = time.perf_counter()
        guide.write_mask_into(mask.ctypes.data, mask.size, mask.itemsize)
        masks.append(time.perf_counter() - t0)
        allowed_ok &= bool((int(mask[t // 32]) >> (t % 32)) & 1)
        draft = path[i : i + DRAFT]
        t0 = time.perf_counter()
        guide.accepts_tokens(draft)
        drafts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        guide.advance(draft[0])
        guide.rollback_state(1)
        rollbacks.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        guide.advance(t)
        advances.append(time.perf_counter() - t0)
    return {"library": "outlines-core", "version": metadata.version("outlines-core"),
            "installed_mib": _installed_mib("outlines-core"), "tokenizer_s": round(t_tok, 3),
            "compile_s": round(t_compile, 3), "mask": _ms(masks), "advance": _ms(advances),
            "draft_check": _ms(drafts), "consume_and_rollback": _ms(rollbacks),
            "rollback": "yes (rollback_state(n), up to max_rollback; accepts_tokens(draft) "
                        "says yes/no only)",
            "path_allowed": allowed_ok and guide.is_finished(),
            "reads": "a {token bytes: ids} map (built here from llama.cpp's vocab)"}


def bench_llama_grammar(model, path: list[int]) -> dict:
    import llama_cpp
    import numpy as np
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    lc = llama_cpp
    n_vocab = model.n_vocab
    t0 = time.perf_counter()
    gbnf = json_schema_to_gbnf(json.dumps(SCHEMA))
    smpl = lc.llama_sampler_init_grammar(model._vocab, gbnf.encode(), b"root")
    t_compile = time.perf_counter() - t0
    if not smpl:
        return {"library": "llama.cpp grammar", "error": "llama_sampler_init_grammar failed"}
    data = (lc.llama_token_data * n_vocab)()
    ids = np.arange(n_vocab, dtype=np.int32)
    view = np.ctypeslib.as_array(ctypes.cast(data, ctypes.POINTER(ctypes.c_byte)),
                                 shape=(n_vocab * ctypes.sizeof(lc.llama_token_data),))
    rec = view.view(np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)]))
    arr = lc.llama_token_data_array(data, n_vocab, -1, False)
    masks, advances, allowed_ok = [], [], True
    for t in path:
        rec["id"], rec["logit"], rec["p"] = ids, 0.0, 0.0
        arr.size, arr.selected, arr.sorted = n_vocab, -1, False
        t0 = time.perf_counter()
        lc.llama_sampler_apply(smpl, ctypes.byref(arr))
        masks.append(time.perf_counter() - t0)
        allowed_ok &= bool(np.isfinite(rec["logit"][t]))
        t0 = time.perf_counter()
        lc.llama_sampler_accept(smpl, t)
        advances.append(time.perf_counter() - t0)
    lc.llama_sampler_free(smpl)
    return {"library": "llama.cpp grammar (C API)", "version": metadata.version("llama_cpp_python"),
            "installed_mib": 0.0, "tokenizer_s": 0.0, "compile_s": round(t_compile, 4),
            "mask": _ms(masks), "advance": _ms(advances), "draft_check": None,
            "consume_and_rollback": None,
            "rollback": "no: a draft needs llama_sampler_clone of the whole grammar state",
            "path_allowed": allowed_ok, "reads": "llama.cpp's own vocab (no copy)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", help="a GGUF (default: the default pair's target)")
    ap.add_argument("--json", type=Path, help="write the rows as JSON here")
    ap.add_argument("--only", help="comma list: llguidance, outlines, llama")
    args = ap.parse_args(argv)
    from specli.llama.backend import LlamaModel
    from specli.session import resolve_paths

    target = Path(args.target) if args.target else resolve_paths(
        pair=None, target=None, draft=None, progress=False).target
    model = LlamaModel(target, n_ctx=512, n_threads=1)
    try:
        path = model.tokenize(ANSWER, add_special=False, parse_special=False)
        token_bytes = [model.token_bytes(i) for i in range(model.n_vocab)]
        print(f"target {target.name}: vocabulary {model.n_vocab}, answer {len(path)} tokens",
              file=sys.stderr)
        only = set((args.only or "llguidance,outlines,llama").split(","))
        rows = []
        runs = [("llguidance", lambda: bench_llguidance(model, path)),
                ("outlines", lambda: bench_outlines(model, path, token_bytes, model.eos)),
                ("llama", lambda: bench_llama_grammar(model, path))]
        for name, run in runs:
            if name not in only:
                continue
            try:
                rows.append(run())
            except Exception as e:  # noqa: BLE001 - a library that fails is a finding
                rows.append({"library": name, "error": f"{type(e).__name__}: {e}"})
            print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        model.close()
    print("| library | installed | tokenizer | compile | mask / token (median, p95) | "
          "advance | check a draft of 8 | consume + roll back | rollback | path allowed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['library']} | error: {r['error']} |")
            continue
        f = lambda d: f"{d['median_ms']:.3f} ms" if d else "–"  # noqa: E731
        print(f"| {r['library']} {r.get('version', '')} | {r['installed_mib']} MiB | "
              f"{r['tokenizer_s']} s | {r['compile_s']} s | {r['mask']['median_ms']:.3f} ms, "
              f"{r['mask']['p95_ms']:.3f} ms | {f(r['advance'])} | {f(r['draft_check'])} | "
              f"{f(r['consume_and_rollback'])} | {r['rollback']} | {r['path_allowed']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
