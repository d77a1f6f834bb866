"""Write synthetic GGUF models shaped like the Qwen2.5-Coder 1.5B target / 0.5B draft.

Architecture "qwen2" (q/k/v biases, tied embeddings: no output.weight), the real
pair's layer counts, widths, heads and 151,936-token vocabulary, seeded random weights.
The vocabulary is the test suite's tiny byte-level BPE one (tests/tinymodels.py)
padded with "[PAD{i}]" tokens up to 151,936 ids, so llama.cpp builds a full-size
vocabulary and lm head. The rows of the special tokens are zero, so their logit is 0
and a random model never ends the generation (<|im_end|>) by chance.

Weights are Q8_0 (default; written directly as random int8 blocks with one f16 scale,
no float quantisation pass, so the 1.5B model writes in seconds) or F16. Q8_0 runs
through the same quantised mat-vec kernels (mmvq/mmq) as the real Q4_K_M files.

  python3 benchmarks/gpu/gen_models.py OUTDIR [--dtype q8_0|f16] [--small] [--only target|draft]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import tinymodels  # noqa: E402  (the suite's vocabulary; nothing else from it)

N_VOCAB = 151936

# name: (n_layer, n_embd, n_ff, n_head, n_head_kv)
SHAPES = {
    "target": (28, 1536, 8960, 12, 2),  # Qwen2.5-Coder-1.5B
    "draft": (24, 896, 4864, 14, 2),  # Qwen2.5-Coder-0.5B
}
SMALL_SHAPES = {
    "target": (4, 256, 512, 4, 2),
    "draft": (2, 128, 256, 2, 1),
}
QK8_0 = 32
INT8_STD = 73.9  # std of int8 drawn uniformly from -128..127


def _q8_0(rng: np.random.Generator, rows: int, cols: int, std: float) -> np.ndarray:
    """Random Q8_0 bytes [rows, cols/32*34]: each block one f16 scale then 32 int8."""
    if cols % QK8_0:
        raise ValueError(f"Q8_0 needs a row length divisible by 32, got {cols}")
    nb = cols // QK8_0
    out = np.empty((rows, nb, 2 + QK8_0), dtype=np.uint8)
    out[:, :, :2] = np.frombuffer(np.float16(std / INT8_STD).tobytes(), dtype=np.uint8)
    out[:, :, 2:] = np.frombuffer(rng.bytes(rows * nb * QK8_0), dtype=np.uint8).reshape(rows, nb, QK8_0)
    return out.reshape(rows, nb * (2 + QK8_0))


def _f16(rng: np.random.Generator, rows: int, cols: int, std: float) -> np.ndarray:
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    x *= std
    return x.astype(np.float16)


def write_model(path: Path, shape: tuple[int, int, int, int, int], *, seed: int, dtype: str = "q8_0",
                n_vocab: int = N_VOCAB, name: str = "specli-synthetic") -> Path:
    import gguf

    n_layer, n_embd, n_ff, n_head, n_head_kv = shape
    head_dim = n_embd // n_head
    n_kv = n_head_kv * head_dim
    rng = np.random.default_rng(seed)
    if dtype == "q8_0":
        def mat(rows, cols, std):
            return _q8_0(rng, rows, cols, std), gguf.GGMLQuantizationType.Q8_0
        file_type = gguf.LlamaFileType.MOSTLY_Q8_0
    elif dtype == "f16":
        def mat(rows, cols, std):
            return _f16(rng, rows, cols, std), None
        file_type = gguf.LlamaFileType.MOSTLY_F16
    else:
        raise ValueError(f"dtype must be q8_0 or f16, got {dtype!r}")

    n_extra = n_vocab - tinymodels.n_vocab_base()
    tokens = tinymodels.vocab_tokens(n_extra)
    _, merges = tinymodels.base_vocab()
    n_special_start = tinymodels.n_vocab_base() - len(tinymodels.SPECIAL_TOKENS)
    types = ([gguf.TokenType.NORMAL] * n_special_start + [gguf.TokenType.CONTROL] * len(tinymodels.SPECIAL_TOKENS)
             + [gguf.TokenType.UNUSED] * n_extra)

    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name(name)
    w.add_file_type(file_type)
    w.add_context_length(32768)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(list(merges))
    w.add_bos_token_id(tinymodels.special_id(tinymodels.EOT_TEXT))
    w.add_eos_token_id(tinymodels.special_id(tinymodels.IM_END))
    w.add_eot_token_id(tinymodels.special_id(tinymodels.IM_END))
    w.add_pad_token_id(tinymodels.special_id(tinymodels.EOT_TEXT))
    w.add_add_bos_token(False)
    w.add_chat_template(tinymodels.CHATML_TEMPLATE)

    def add(tname, arr_dtype):
        arr, raw = arr_dtype
        w.add_tensor(tname, arr, raw_dtype=raw)

    # Tied embeddings: token_embd is also the lm head; logit std ~ 2.5.
    emb, raw = mat(n_vocab, n_embd, 2.5 / np.sqrt(n_embd))
    emb[n_special_start:n_special_start + len(tinymodels.SPECIAL_TOKENS)] = 0  # logit 0: never chosen
    add("token_embd.weight", (emb, raw))
    ones = np.ones(n_embd, dtype=np.float32)
    w.add_tensor("output_norm.weight", ones)
    attn_std, ffn_std = 1.5, 1.0
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones)
        add(p + "attn_q.weight", mat(n_embd, n_embd, attn_std / np.sqrt(n_embd)))
        w.add_tensor(p + "attn_q.bias", (rng.standard_normal(n_embd, dtype=np.float32) * 0.02))
        add(p + "attn_k.weight", mat(n_kv, n_embd, attn_std / np.sqrt(n_embd)))
        w.add_tensor(p + "attn_k.bias", (rng.standard_normal(n_kv, dtype=np.float32) * 0.02))
        add(p + "attn_v.weight", mat(n_kv, n_embd, attn_std / np.sqrt(n_embd)))
        w.add_tensor(p + "attn_v.bias", (rng.standard_normal(n_kv, dtype=np.float32) * 0.02))
        add(p + "attn_output.weight", mat(n_embd, n_embd, attn_std / np.sqrt(n_embd)))
        w.add_tensor(p + "ffn_norm.weight", ones)
        add(p + "ffn_gate.weight", mat(n_ff, n_embd, ffn_std / np.sqrt(n_embd)))
        add(p + "ffn_up.weight", mat(n_ff, n_embd, ffn_std / np.sqrt(n_embd)))
        add(p + "ffn_down.weight", mat(n_embd, n_ff, ffn_std / np.sqrt(n_ff)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--dtype", default="q8_0", choices=("q8_0", "f16"))
    ap.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke test), same vocabulary")
    ap.add_argument("--only", choices=("target", "draft"))
    args = ap.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    shapes = SMALL_SHAPES if args.small else SHAPES
    for seed, role in enumerate(("target", "draft")):
        if args.only and role != args.only:
            continue
        t0 = time.perf_counter()
        path = args.outdir / f"{role}.gguf"
        write_model(path, shapes[role], seed=seed, dtype=args.dtype, name=f"specli-synthetic-{role}")
        print(f"wrote {path} {shapes[role]} {args.dtype}: {path.stat().st_size / 2**20:.0f} MiB "
              f"in {time.perf_counter() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
