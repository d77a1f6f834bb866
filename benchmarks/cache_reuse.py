#!/usr/bin/env python3
"""What llama-server's --cache-reuse would cost in exactness, on FIM prompts. Prints figures.

--cache-reuse N: when a new prompt is the cached one with something removed before a
chunk of at least N tokens (an editor's oldest extra chunk evicted, the prefix window
sliding down a line), llama-server removes the stale cells and shifts the chunk's cells
to their new positions (llama_memory_seq_add) instead of evaluating it again. The chunk's
keys and values were computed attending to what was removed, so what follows is not what
the target computes on the new prompt. This measures how far off it is, on the default
target and the FIM prompts specli builds (fim.py), against a fresh decode of the same new
prompt: the TV distance of the next-token distribution at the FIM middle (T = 1, no
warps), and whether the greedy completions (--n tokens) are the same text. For scale, the
same figures between a fresh decode and a fresh decode in another batch shape (the whole
prompt in one batch vs in chunks of 16: the batch-numerics gap that --strict removes).

Cases: Python files of this venv's site-packages (rich, click, jinja2...), cut at a
function body line; three chunks (--chunk-lines) of two other files as input_extra; the reuse
case drops the first chunk.

    python benchmarks/cache_reuse.py [--target PATH] [--cases 6] [--n 32] [--threads 2]
        [--chunk-lines 24]
Run it on a quiet machine. It asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infill import find_cases  # noqa: E402


def softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max()
    p = np.exp(z)
    return p / p.sum()


def greedy(model, first_logits: np.ndarray, n: int) -> list[int]:
    out = [int(np.argmax(first_logits))]
    while len(out) < n and not model.is_eog(out[-1]):
        out.append(int(np.argmax(model.decode([out[-1]], 1)[0])))
    return out


def fresh(model, tokens: list[int], chunk: int | None = None) -> np.ndarray:
    """Logits after decoding `tokens` from an empty cache (in chunks of `chunk` if given)."""
    model.reset()
    if chunk is None:
        return model.decode(tokens, 1)[0].copy()
    for i in range(0, len(tokens) - 1, chunk):
        model.decode(tokens[i: min(i + chunk, len(tokens) - 1)], 0)
    return model.decode(tokens[-1:], 1)[0].copy()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", type=Path)
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--n", type=int, default=32, help="greedy tokens compared")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk-lines", type=int, default=24, help="lines per extra chunk")
    a = ap.parse_args(argv)
    from specli.fim import Chunk, infill_tokens
    from specli.llama.backend import LlamaModel

    if a.target is None:
        from specli.session import resolve_paths

        a.target = resolve_paths(pair=None, target=None, draft=None).target  # the default pair's
    model = LlamaModel(str(a.target), n_ctx=4096, n_threads=a.threads)
    cases = find_cases(a.cases, a.seed, 1, 3)
    rows = []
    for c in cases:
        chunks = [Chunk("\n".join(x["text"].split("\n")[: a.chunk_lines]) + "\n", x["filename"])
                  for x in c["input_extra"][:3]]
        if len(chunks) < 3:
            continue
        prompt = c["line"][: c["col"]]
        old = infill_tokens(model, c["input_prefix"], c["input_suffix"], chunks, prompt).tokens
        new = infill_tokens(model, c["input_prefix"], c["input_suffix"], chunks[1:], prompt).tokens
        # The new prompt is the old one less the first chunk (the repo header stays).
        drop = len(old) - len(new)
        start = next((i for i in range(len(new)) if old[i] != new[i]), None)
        if start is None or old[:start] + old[start + drop:] != new:
            continue
        lf = fresh(model, new)
        lf_chunks = fresh(model, new, chunk=16)
        g_fresh = greedy(model, lf, a.n)
        # llama-server's reuse: decode the old prompt, remove the dropped chunk's cells,
        # shift what followed it left, and decode the last token again for its logits.
        model.reset()
        model.decode(old[:-1], 0)
        lc, mem = model._lc, model._mem  # noqa: SLF001 - llama.cpp's own calls, measured
        lc.llama_memory_seq_rm(mem, 0, start, start + drop)
        lc.llama_memory_seq_add(mem, 0, start + drop, -1, -drop)
        del model.tokens[start: start + drop]
        assert model.tokens == new[:-1]
        ls = model.decode(new[-1:], 1)[0].copy()
        g_shift = greedy(model, ls, a.n)
        p, q, r = softmax(lf), softmax(ls), softmax(lf_chunks)
        rows.append({"case": f"{c['file']}:{c['line_no']}",
                     "prompt": len(new), "moved": len(new) - start,
                     "tv_shift": 0.5 * float(np.abs(p - q).sum()),
                     "tv_batch": 0.5 * float(np.abs(p - r).sum()),
                     "same_greedy": g_fresh == g_shift,
                     "same_argmax": int(np.argmax(lf)) == int(np.argmax(ls))})
        r_ = rows[-1]
        print(f"{r_['case']}: prompt {r_['prompt']}, {r_['moved']} shifted, TV shifted "
              f"{r_['tv_shift']:.4f} vs batch gap {r_['tv_batch']:.4f}, same greedy "
              f"{r_['same_greedy']}", file=sys.stderr)
    model.close()
    if not rows:
        print("no case could be cut")
        return
    print("| case | prompt tokens | tokens shifted | TV, shifted vs fresh | TV, batch shape (gap) | same greedy text |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['prompt']} | {r['moved']} | {r['tv_shift']:.4f} | "
              f"{r['tv_batch']:.4f} | {'yes' if r['same_greedy'] else 'no'} |")
    print(f"\nmedian TV shifted {statistics.median(r['tv_shift'] for r in rows):.4f}, "
          f"batch gap {statistics.median(r['tv_batch'] for r in rows):.4f}; same greedy "
          f"{sum(r['same_greedy'] for r in rows)}/{len(rows)}")


if __name__ == "__main__":
    main()
