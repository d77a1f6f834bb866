"""Tiny real GGUF models for the test suite, written with the `gguf` package.

Each model is a llama-architecture network (2 layers, 64-wide, GQA 4/2 heads) with
seeded random F32 weights and a gpt2-style byte-level BPE vocabulary laid out like
Qwen2.5's: 256 byte tokens, then merged tokens (learnt from a fixed corpus below),
then the special tokens <|endoftext|> (bos, pad), <|im_start|>, <|im_end|> (eos, eot),
then optional "[PAD{i}]" padding tokens. A file is ~0.5 MB, writes in a few ms and
loads in llama.cpp in milliseconds (pass n_threads=1: on a busy machine ggml's
thread pool makes these tiny graphs 50x slower).

Measured with the defaults: greedy text after "The quick brown fox" has ~49 distinct
tokens in 64 and no end-of-generation token for 128 steps (after a ChatML prompt
greedy emits <|endoftext|> at step 13); a perturb_scale=0.04 draft predicts the
target's greedy token ~73-78% of the time, and sum(min(p, q)) at temperature 1 is ~0.85.

Variants used as drafts:
  perturb_of=S   the weights of the model with seed S plus small noise drawn from
                 `seed`: a draft that agrees with target S most of the time, not always.
  n_vocab_extra  padding tokens appended to the vocabulary; every shared id keeps its
                 text and its weights (like Qwen's 151,936 vs 152,064 vocabularies).
  token_text_override
                 {id: text} replacing token texts; `swapped_token_texts()` gives a
                 consistent override (pairs of merged tokens swapped) for an
                 incompatible draft with the same vocabulary size.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
N_MERGES = 120
RMS_EPS = 1e-5
# Extra vocabulary of the padded draft (Qwen2.5 pads 151,936 to 152,064: also 128).
N_VOCAB_PADDING = 128

EOT_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (EOT_TEXT, IM_START, IM_END)
# Qwen2.5-Coder's fill-in-the-middle tokens, appended by write_tiny_model(fim=True). The
# first three are named in the metadata (tokenizer.ggml.fim_*_token_id); llama.cpp finds
# the others by their text, as it does for GGUFs converted without those keys.
FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>",
              "<|repo_name|>", "<|file_sep|>")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# ChatML with tools in the Hermes form Qwen2.5 uses (written here, shorter than Qwen's):
# tools listed in a system turn, calls as <tool_call> JSON blocks, results as <tool_response>.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n"
    "Call a function as <tool_call>\n{\"name\": ..., \"arguments\": ...}\n</tool_call>"
    "<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% for call in message.get('tool_calls') or [] %}"
    "{{ '<tool_call>\n' }}{{ {'name': call['function']['name'], "
    "'arguments': call['function']['arguments']} | tojson }}{{ '\n</tool_call>' }}"
    "{% endfor %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama 3.x's tool calling (written here, shorter than Meta's 3.1 template, with its rules):
# header tokens as plain text (this vocabulary lacks them), tools listed as JSON in a system
# turn, a call written back as {"name": ..., "parameters": ...} (one per turn, as Meta's
# template insists), results in `ipython` turns.
LLAMA3_TOOLS_TEMPLATE = (
    "{% if tools %}<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
    "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument "
    "name and its value}.\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}"
    "<|eot_id|>{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] in ('tool', 'ipython') %}"
    "{{ '<|start_header_id|>ipython<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% elif message.get('tool_calls') %}"
    "{% if message['tool_calls'] | length != 1 %}"
    "{{ raise_exception('This model only supports single tool-calls at once!') }}{% endif %}"
    "{% set call = message['tool_calls'][0]['function'] %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"' + call['name'] "
    "+ '\", \"parameters\": ' }}{{ call['arguments'] | tojson }}{{ '}<|eot_id|>' }}"
    "{% else %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' "
    "+ message['content'] + '<|eot_id|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

# Gains of the random weights (a matrix [out, in] gets std gain / sqrt(in)), chosen so
# that greedy text does not collapse into one repeated token and temperature-1
# sampling keeps a spread-out distribution. OUT_GAIN is about the std of the logits.
ATTN_GAIN = 1.5
FFN_GAIN = 1.0
OUT_GAIN = 2.5

# BPE merges are learnt from this text, so the vocabulary holds plausible pieces.
_CORPUS = """
The quick brown fox jumps over the lazy dog. The cat sat on the mat, and the dog
ran in the park. This is a test of the tiny model; it is not a real model at all.
def main():
    for i in range(10):
        print(i)
    return None
import numpy as np
class Model:
    def __init__(self, name):
        self.name = name
Speculative decoding drafts tokens with a small model and verifies them with a large
one. The target model checks the draft tokens in one pass, and the output is exact.
Hello, world! How are you today? I am fine, thank you. What is the answer?
"""


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (as in tiktoken / HF)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def _encode_bytes(text: str) -> str:
    table = _byte_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


@lru_cache(maxsize=1)
def base_vocab() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tokens, merges) of the shared vocabulary, specials excluded; deterministic."""
    table = _byte_to_unicode()
    byte_tokens = [table[b] for b in range(256)]
    words = re.findall(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+", _CORPUS)
    seqs = [list(_encode_bytes(w)) for w in words]
    merges: list[str] = []
    merged: list[str] = []
    known = set(byte_tokens)
    while len(merges) < N_MERGES:
        counts: dict[tuple[str, str], int] = {}
        for seq in seqs:
            for pair in zip(seq, seq[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        # Most frequent pair; ties broken by the pair itself so the result is stable.
        (a, b), _ = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append(f"{a} {b}")
        if a + b not in known:
            merged.append(a + b)
            known.add(a + b)
        seqs = [_merge_pair(seq, a, b) for seq in seqs]
    return tuple(byte_tokens + merged), tuple(merges)


def _merge_pair(seq: list[str], a: str, b: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(seq):
        if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def vocab_tokens(n_vocab_extra: int = 0) -> list[str]:
    """All token texts in id order: bytes, merged pieces, specials, padding."""
    tokens, _ = base_vocab()
    return [*tokens, *SPECIAL_TOKENS, *(f"[PAD{i}]" for i in range(n_vocab_extra))]


def special_id(text: str) -> int:
    """Id of a special token (the same in every tiny model)."""
    return len(base_vocab()[0]) + SPECIAL_TOKENS.index(text)


def fim_id(text: str) -> int:
    """Id of a FIM token in a tiny model written with fim=True."""
    return n_vocab_base() + FIM_TOKENS.index(text)


def n_vocab_base() -> int:
    return len(base_vocab()[0]) + len(SPECIAL_TOKENS)


def swapped_token_texts(n_pairs: int = 8) -> dict[int, str]:
    """An override swapping the texts of pairs of merged tokens.

    The vocabulary stays a valid BPE vocabulary (same set of texts, same merges) but
    ids no longer mean the same text: a draft that must be refused as incompatible.
    """
    tokens, _ = base_vocab()
    first = 256
    override: dict[int, str] = {}
    for k in range(n_pairs):
        a, b = first + 2 * k, first + 2 * k + 1
        override[a], override[b] = tokens[b], tokens[a]
    return override


def _shapes(n_layer: int) -> dict[str, tuple[int, int] | tuple[int]]:
    """Tensor shapes in numpy order [out, in] (gguf reverses them to ggml's order)."""
    n_kv = N_HEAD_KV * (N_EMBD // N_HEAD)
    shapes: dict[str, tuple[int, int] | tuple[int]] = {"output_norm.weight": (N_EMBD,)}
    for i in range(n_layer):
        p = f"blk.{i}."
        shapes |= {
            p + "attn_norm.weight": (N_EMBD,),
            p + "attn_q.weight": (N_EMBD, N_EMBD),
            p + "attn_k.weight": (n_kv, N_EMBD),
            p + "attn_v.weight": (n_kv, N_EMBD),
            p + "attn_output.weight": (N_EMBD, N_EMBD),
            p + "ffn_norm.weight": (N_EMBD,),
            p + "ffn_gate.weight": (N_FF, N_EMBD),
            p + "ffn_up.weight": (N_FF, N_EMBD),
            p + "ffn_down.weight": (N_EMBD, N_FF),
        }
    return shapes


def _gain(name: str) -> float:
    if ".attn_" in name:
        return ATTN_GAIN
    return FFN_GAIN


def _random_weights(seed: int, n_layer: int) -> dict[str, np.ndarray]:
    """Seeded weights over the shared vocabulary (padding rows are added afterwards)."""
    rng = np.random.default_rng(seed)
    n_vocab = n_vocab_base()
    w: dict[str, np.ndarray] = {
        "token_embd.weight": rng.standard_normal((n_vocab, N_EMBD)),
        "output.weight": rng.standard_normal((n_vocab, N_EMBD)) * OUT_GAIN / np.sqrt(N_EMBD),
    }
    for name, shape in _shapes(n_layer).items():
        if len(shape) == 1:
            w[name] = np.ones(shape)
        else:
            w[name] = rng.standard_normal(shape) * _gain(name) / np.sqrt(shape[1])
    return w


def _pad_vocab(w: dict[str, np.ndarray], seed: int, n_vocab_extra: int) -> dict[str, np.ndarray]:
    """Append rows for padding tokens; the shared rows are left exactly as they are."""
    rng = np.random.default_rng([seed, n_vocab_extra])
    out = dict(w)
    out["token_embd.weight"] = np.concatenate([w["token_embd.weight"], rng.standard_normal((n_vocab_extra, N_EMBD))])
    extra_out = rng.standard_normal((n_vocab_extra, N_EMBD)) * OUT_GAIN / np.sqrt(N_EMBD)
    out["output.weight"] = np.concatenate([w["output.weight"], extra_out])
    return out


def _perturb(w: dict[str, np.ndarray], seed: int, scale: float) -> dict[str, np.ndarray]:
    """Add relative Gaussian noise (scale x each tensor's std) to every matrix."""
    rng = np.random.default_rng([seed, 7919])
    out = {}
    for name, x in w.items():
        out[name] = x + rng.standard_normal(x.shape) * scale * x.std() if x.ndim == 2 else x
    return out


def write_tiny_model(
    path: str | Path,
    *,
    seed: int = 0,
    perturb_of: int | None = None,
    perturb_scale: float = 0.04,
    n_vocab_extra: int = 0,
    token_text_override: dict[int, str] | None = None,
    chat_template: str | None = CHATML_TEMPLATE,
    n_layer: int = 2,
    n_ctx_train: int = 4096,
    fim: bool = False,
) -> Path:
    """Write a tiny llama GGUF model to `path` and return the path.

    perturb_of: when given, the weights are those of the model written with
    seed=perturb_of plus noise drawn from `seed` (relative scale perturb_scale),
    which makes a draft that mostly agrees with that target.
    n_vocab_extra: "[PAD{i}]" tokens appended after the shared vocabulary.
    token_text_override: {id: text} replacing token texts (see swapped_token_texts).
    chat_template: the tokenizer.chat_template metadata; None leaves it out.
    fim: append FIM_TOKENS after the specials (rows drawn from the base seed, so a
    perturbed draft has them too, perturbed); not combined with n_vocab_extra.
    """
    import gguf

    path = Path(path)
    base = seed if perturb_of is None else perturb_of
    weights = _random_weights(base, n_layer)
    if fim:
        if n_vocab_extra:
            raise ValueError("fim and n_vocab_extra are not combined")
        weights = _pad_vocab(weights, base, len(FIM_TOKENS))
    if perturb_of is not None:
        weights = _perturb(weights, seed, perturb_scale)
    if n_vocab_extra:
        weights = _pad_vocab(weights, seed, n_vocab_extra)
    tokens = vocab_tokens(n_vocab_extra)
    if fim:
        tokens += FIM_TOKENS
    for token_id, text in (token_text_override or {}).items():
        tokens[token_id] = text
    if len(set(tokens)) != len(tokens):
        raise ValueError("token_text_override makes two ids share one text")

    writer = gguf.GGUFWriter(str(path), "llama")
    _write_metadata(writer, n_layer, n_ctx_train, seed)
    _write_tokenizer(writer, tokens, n_vocab_extra, chat_template, fim)
    for name, array in weights.items():
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _write_metadata(writer, n_layer: int, n_ctx_train: int, seed: int) -> None:
    import gguf

    writer.add_name(f"specli-tiny-{seed}")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(RMS_EPS)


def _write_tokenizer(writer, tokens: list[str], n_vocab_extra: int, chat_template: str | None,
                     fim: bool = False) -> None:
    import gguf

    _, merges = base_vocab()
    n_fim = len(FIM_TOKENS) if fim else 0
    n_special_start = len(tokens) - n_vocab_extra - len(SPECIAL_TOKENS) - n_fim
    types = [gguf.TokenType.NORMAL] * n_special_start
    types += [gguf.TokenType.CONTROL] * (len(SPECIAL_TOKENS) + n_fim)
    types += [gguf.TokenType.UNUSED] * n_vocab_extra
    if fim:
        first = n_vocab_base()
        for i, role in enumerate(("fim_pre", "fim_suf", "fim_mid")):
            writer.add_uint32(f"tokenizer.ggml.{role}_token_id", first + i)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(list(merges))
    # Laid out like Qwen2.5-Instruct: no BOS added, <|im_end|> ends a turn.
    writer.add_bos_token_id(special_id(EOT_TEXT))
    writer.add_eos_token_id(special_id(IM_END))
    writer.add_eot_token_id(special_id(IM_END))
    writer.add_pad_token_id(special_id(EOT_TEXT))
    writer.add_add_bos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
