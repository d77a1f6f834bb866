"""Draft/target compatibility, read from GGUF metadata without loading any weights.

Speculative decoding feeds the target's token ids to the draft and the draft's proposals
back to the target, so one rule decides everything: every id both models share must mean
the same text. The check compares the tokenizer model, the token texts, the special ids,
the pre-tokenizer and the chat template, and gives a verdict:

  compatible    same vocabulary;
  masked        sizes differ (Qwen2.5's 151,936 vs 152,064) but every shared id has the
                same text: ids outside the common range are masked in both distributions;
  incompatible  the tokenizers differ, or some shared id has a different text.

The headers come from specli.llama.gguf (no llama.cpp context is created); a load reads
each file's header once and hands it to the check (see session.load_models).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from specli.errors import CompatibilityError, ModelError
from specli.llama.gguf import GGUFHeader, read_gguf

# llama.cpp's LLAMA_FTYPE_* (general.file_type) -> the usual quantization name.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}

# Special-token roles compared between draft and target (tokenizer.ggml.<role>_token_id).
SPECIAL_ROLES = (
    "bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "mask",
    "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep",
)
# Token type 3 is CONTROL in llama.cpp's vocabulary (1 normal, 5 unused, 6 byte, ...).
_TOKEN_TYPE_NAMES = {1: "normal", 2: "unknown", 3: "control", 4: "user-defined", 5: "unused", 6: "byte"}

N_SHOWN_DIFFS = 5


# --------------------------------------------------------------------------- tokenizer


@dataclass
class TokenizerInfo:
    """What the compatibility check needs from one model's vocabulary."""

    model: str | None
    pre: str | None
    tokens: list[str]
    token_types: list[int] | None
    specials: dict[str, int]
    add_bos: bool | None
    chat_template: bool

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)


def tokenizer_info(header: GGUFHeader) -> TokenizerInfo:
    """Extract the vocabulary and special ids; ModelError if the file has no vocabulary."""
    kv = header.kv
    tokens = kv.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelError(f"{header.path}: the GGUF has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    specials = {
        role: kv[f"tokenizer.ggml.{role}_token_id"]
        for role in SPECIAL_ROLES
        if isinstance(kv.get(f"tokenizer.ggml.{role}_token_id"), int)
    }
    return TokenizerInfo(
        model=kv.get("tokenizer.ggml.model"),
        pre=kv.get("tokenizer.ggml.pre"),
        tokens=tokens,
        token_types=kv.get("tokenizer.ggml.token_type"),
        specials=specials,
        add_bos=kv.get("tokenizer.ggml.add_bos_token"),
        chat_template=bool(kv.get("tokenizer.chat_template")),
    )


# --------------------------------------------------------------------------- the check


@dataclass
class CompatReport:
    """The verdict on a draft/target pair and the evidence for it.

    reasons: why the verdict is what it is (empty for plain "compatible").
    notes: differences that do not change the verdict but may lower acceptance
    (pre-tokenizer, special ids, token types, a missing chat template).
    """

    draft: str
    target: str
    verdict: str  # "compatible" | "masked" | "incompatible"
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_vocab_draft: int = 0
    n_vocab_target: int = 0
    n_vocab_common: int = 0
    tokenizer_model: tuple[str | None, str | None] = (None, None)  # (draft, target)
    pre_tokenizer: tuple[str | None, str | None] = (None, None)
    n_text_diffs: int = 0
    text_diffs: list[tuple[int, str, str]] = field(default_factory=list)  # first few (id, draft, target)
    specials: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    target_chat_template: bool = False
    draft_chat_template: bool = False

    @property
    def ok(self) -> bool:
        return self.verdict != "incompatible"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["text_diffs"] = [{"id": i, "draft": a, "target": b} for i, a, b in self.text_diffs]
        d["specials"] = {k: {"draft": a, "target": b} for k, (a, b) in self.specials.items()}
        d["tokenizer_model"] = {"draft": self.tokenizer_model[0], "target": self.tokenizer_model[1]}
        d["pre_tokenizer"] = {"draft": self.pre_tokenizer[0], "target": self.pre_tokenizer[1]}
        return d

    def summary(self) -> str:
        """One line: the verdict and its first reason."""
        head = {"compatible": "compatible", "masked": "compatible with masking", "incompatible": "incompatible"}
        first = f": {self.reasons[0]}" if self.reasons else ""
        return f"{head[self.verdict]}{first}"


def _path(model: str | Path | GGUFHeader) -> tuple[Path, GGUFHeader]:
    """A file and its header, from either (a header already read is not read again)."""
    if isinstance(model, GGUFHeader):
        return model.path, model
    return Path(model), read_gguf(model)


def check_pair(draft: str | Path | GGUFHeader, target: str | Path | GGUFHeader) -> CompatReport:
    """Compare the vocabularies of two GGUF files (metadata only) and give a verdict.
    Each may be given as a path or as its header (llama.gguf.read_gguf)."""
    (draft, d_head), (target, t_head) = _path(draft), _path(target)
    d_tok, t_tok = tokenizer_info(d_head), tokenizer_info(t_head)
    report = CompatReport(
        draft=str(draft),
        target=str(target),
        verdict="compatible",
        n_vocab_draft=d_tok.n_vocab,
        n_vocab_target=t_tok.n_vocab,
        n_vocab_common=min(d_tok.n_vocab, t_tok.n_vocab),
        tokenizer_model=(d_tok.model, t_tok.model),
        pre_tokenizer=(d_tok.pre, t_tok.pre),
        target_chat_template=t_tok.chat_template,
        draft_chat_template=d_tok.chat_template,
    )
    _compare_texts(report, d_tok, t_tok)
    _compare_specials(report, d_tok, t_tok)
    _compare_types(report, d_tok, t_tok)
    if d_tok.pre != t_tok.pre:
        report.notes.append(
            f"pre-tokenizers differ (draft {d_tok.pre}, target {t_tok.pre}): the draft reads the "
            "target's tokenization, which may lower acceptance"
        )
    if not t_tok.chat_template:
        report.notes.append("the target has no chat template: prompts need --raw")
    _decide(report, d_tok, t_tok)
    return report


def _compare_texts(report: CompatReport, d: TokenizerInfo, t: TokenizerInfo) -> None:
    n = report.n_vocab_common
    d_tokens, t_tokens = d.tokens[:n], t.tokens[:n]
    if d_tokens == t_tokens:  # the common case, at C speed
        return
    diffs = [i for i in range(n) if d_tokens[i] != t_tokens[i]]
    report.n_text_diffs = len(diffs)
    report.text_diffs = [(i, d_tokens[i], t_tokens[i]) for i in diffs[:N_SHOWN_DIFFS]]


def _compare_specials(report: CompatReport, d: TokenizerInfo, t: TokenizerInfo) -> None:
    for role in SPECIAL_ROLES:
        ids = (d.specials.get(role), t.specials.get(role))
        if ids == (None, None):
            continue
        report.specials[role] = ids
        if ids[0] is not None and ids[1] is not None and ids[0] != ids[1]:
            report.notes.append(f"{role} token ids differ (draft {ids[0]}, target {ids[1]})")
    for role, tid in t.specials.items():
        if role in ("eos", "eot", "eom") and tid >= report.n_vocab_common:
            report.notes.append(
                f"the target's {role} token {tid} is outside the common range: the draft never proposes it"
            )
    if d.add_bos is not None and t.add_bos is not None and d.add_bos != t.add_bos:
        report.notes.append(f"add_bos differs (draft {d.add_bos}, target {t.add_bos})")


def _compare_types(report: CompatReport, d: TokenizerInfo, t: TokenizerInfo) -> None:
    if d.token_types is None or t.token_types is None:
        return
    n = report.n_vocab_common
    if d.token_types[:n] == t.token_types[:n]:
        return
    diffs = [i for i in range(n) if d.token_types[i] != t.token_types[i]]
    i = diffs[0]
    names = (_TOKEN_TYPE_NAMES.get(d.token_types[i], "?"), _TOKEN_TYPE_NAMES.get(t.token_types[i], "?"))
    report.notes.append(f"{len(diffs)} shared ids differ in token type (first: id {i}, {names[0]} vs {names[1]})")


def _decide(report: CompatReport, d: TokenizerInfo, t: TokenizerInfo) -> None:
    if d.model != t.model:
        report.reasons.append(f"tokenizer models differ (draft {d.model}, target {t.model})")
    if report.n_text_diffs:
        i, a, b = report.text_diffs[0]
        report.reasons.append(
            f"{report.n_text_diffs} of {report.n_vocab_common} shared token ids have different texts "
            f"(first: id {i} is {a!r} in the draft, {b!r} in the target)"
        )
    if report.reasons:
        report.verdict = "incompatible"
    elif d.n_vocab != t.n_vocab:
        report.verdict = "masked"
        report.reasons.append(
            f"vocabulary sizes differ (draft {d.n_vocab:,}, target {t.n_vocab:,}) but the "
            f"{report.n_vocab_common:,} shared ids agree: ids from {report.n_vocab_common:,} up are "
            "masked in both distributions"
        )


def _label(path: str | Path, other: str | Path) -> str:
    """A short name for messages: the file name, or the full path when both names match."""
    p, o = Path(path), Path(other)
    return str(p) if p.name == o.name else p.name


def ensure_compatible(draft: str | Path | GGUFHeader, target: str | Path | GGUFHeader,
                      force: bool = False) -> CompatReport:
    """check_pair, raising CompatibilityError for an incompatible pair unless `force`.

    With force the report comes back (verdict "incompatible") and the caller warns.
    """
    report = check_pair(draft, target)
    if report.verdict == "incompatible" and not force:
        raise CompatibilityError(
            f"draft {_label(report.draft, report.target)} and target "
            f"{_label(report.target, report.draft)} are incompatible: "
            f"{report.reasons[0]} (--force runs them anyway)"
        )
    return report


# --------------------------------------------------------------------------- models info


def model_info(path: str | Path) -> dict[str, Any]:
    """Architecture, size, quantization, parameters, context, vocabulary and chat template
    of a GGUF file, read from its header only (for `specli models info`)."""
    header = read_gguf(path, tensors=True)
    kv = header.kv
    tokens = kv.get("tokenizer.ggml.tokens") or []
    file_type = kv.get("general.file_type")
    return {
        "path": str(header.path),
        "name": kv.get("general.name"),
        "architecture": header.architecture,
        "file_size": header.file_size,
        "quantization": FILE_TYPES.get(file_type, f"type {file_type}") if file_type is not None else None,
        "parameters": header.n_params,
        "context_length": header.arch_key("context_length"),
        "embedding_length": header.arch_key("embedding_length"),
        "layers": header.arch_key("block_count"),
        "vocab_size": len(tokens),
        "tokenizer_model": kv.get("tokenizer.ggml.model"),
        "pre_tokenizer": kv.get("tokenizer.ggml.pre"),
        "chat_template": bool(kv.get("tokenizer.chat_template")),
        "gguf_version": header.version,
        "tensors": header.n_tensors,
    }
