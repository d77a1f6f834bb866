"""The batch-numerics gap of the default target, and which llama.cpp settings change it.

For each prompt and sampling setting: the TV distance, at the first generated position,
between the next-token distribution from a batch-n verify decode ([pending, c1..c_{n-1}])
and from single-token decoding, for n = 2, 3, 4, 5, 8, and for the whole prompt decoded in
one pass. `--strict` rows decode the same rows the way strict verification does (chunks of
the measured invariant size). `--settings` re-measures the invariant size and the worst TV
under other kernel settings: buffer types (CPU_REPACK vs plain CPU), threads, flash
attention, n_ubatch. Prints Markdown tables (benchmarks/README.md, "Batch numerics").

    python benchmarks/batch_numerics.py [--settings] [--target PATH]
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np

from specli.config import SamplingConfig
from specli.core.numerics import measure, total_variation

PROMPTS = {
    'raw "A cat. The cat sat. … The cat"': ("A cat. The cat sat. The cat sat on the mat. The cat sat "
                                            "on the mat and looked at the cat. The cat", True),
    'chat "Name one animal…"': ("Name one animal that lives in the sea.", False),
    'chat "Write a Python function that reverses a string."':
        ("Write a Python function that reverses a string.", False),
}
SAMPLINGS = {"T=1, no warps": SamplingConfig(1.0, 0, 1.0, 0.0), "T=0.8, run's defaults": SamplingConfig()}
SIZES = (2, 3, 4, 5, 8)


def prompt_tokens(model, text: str, raw: bool) -> list[int]:
    from specli.prompt import build_prompt

    if raw:
        return model.tokenize(text)
    tokens, _ = build_prompt(model, text)
    return tokens


def first_position_tv(model, tokens, sampling, chunk: int | None) -> dict:
    """TV at the first generated position for each batch size, and for the prompt pass."""
    model.reset()
    model.decode(tokens[:-1], 0)
    ref = np.array(model.decode(tokens[-1:], 1)[0])
    fed = [tokens[-1]] + [int(np.argmax(ref))] * (max(SIZES) - 1)  # the row of interest is row 0
    out = {}
    for n in SIZES:
        model.truncate(len(tokens) - 1)
        size = min(chunk, n) if chunk else n  # strict: row 0 comes from the first chunk
        row = np.array(model.decode(fed[:size], size)[0])
        out[n] = total_variation(row[: model.n_vocab], ref[: model.n_vocab], sampling)
    model.reset()
    whole = np.array(model.decode(tokens, 1)[0])
    out["prompt pass"] = total_variation(whole[: model.n_vocab], ref[: model.n_vocab], sampling)
    model.reset()
    return out


def table(model, chunk: int | None) -> str:
    head = "| prompt | sampling | " + " | ".join(f"n = {n}" for n in SIZES) + " | prompt pass |"
    lines = [head, "|" + "---|" * (len(SIZES) + 3)]
    for label, (text, raw) in PROMPTS.items():
        toks = prompt_tokens(model, text, raw)
        for sname, s in SAMPLINGS.items():
            tv = first_position_tv(model, toks, s, chunk)
            lines.append(f"| {label} | {sname} | " + " | ".join(f"{tv[n]:.4f}" for n in SIZES)
                         + f" | {tv['prompt pass']:.4f} |")
    return "\n".join(lines)


@contextlib.contextmanager
def settings(lc, backend, placement, *, plain=False, flash=None, ubatch=None):
    orig_ctx, orig_plan = lc.llama_context_default_params, backend.plan_placement

    def ctx_params():
        p = orig_ctx()
        if flash is not None:
            p.flash_attn_type = flash
        return p

    lc.llama_context_default_params = ctx_params
    if plain:
        backend.plan_placement = lambda path, ngl, env=None, header=None: (
            placement.Placement(False, (), "plain", "no extra buffer types"), backend.cpu_extra_bufts())
    try:
        yield
    finally:
        lc.llama_context_default_params, backend.plan_placement = orig_ctx, orig_plan


def settings_table(path: str) -> str:
    import llama_cpp

    from specli.llama import backend, placement

    rows = [("default (CPU_REPACK for Q4_K, 2 threads, flash attention auto)", {}, 2, 512),
            ("plain CPU buffers (no CPU_REPACK)", {"plain": True}, 2, 512),
            ("1 thread", {}, 1, 512),
            ("flash attention off", {"flash": 0}, 2, 512),
            ("flash attention on", {"flash": 1}, 2, 512)]
    lines = ["| setting | invariant up to | worst TV n=4..9 | largest logit diff |", "|---|---|---|---|"]
    for label, kw, threads, batch in rows:
        with settings(llama_cpp, backend, placement, **kw):
            m = backend.LlamaModel(path, n_ctx=1024, n_threads=threads, n_batch=batch)
        try:
            bn = measure(m, 9)
        finally:
            m.close()
        worst = max((v for n, v in bn.tv.items() if n >= 4), default=0.0)
        diff = max(bn.max_logit_diff.values(), default=0.0)
        lines.append(f"| {label} | {bn.invariant_up_to} | {worst:.4f} | {diff:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=None)
    ap.add_argument("--settings", action="store_true")
    args = ap.parse_args()
    from busy_machine import default_target

    from specli.llama.backend import LlamaModel

    path = args.target or default_target()
    m = LlamaModel(path, n_ctx=1024)
    chunk = measure(m, 9).invariant_up_to
    print(f"## default mode (one verify batch)\n\n{table(m, None)}\n")
    print(f"## --strict (chunks of {chunk})\n\n{table(m, chunk)}\n")
    m.close()
    if args.settings:
        print(f"## kernel settings\n\n{settings_table(path)}\n")


if __name__ == "__main__":
    main()
