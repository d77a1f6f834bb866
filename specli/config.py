"""Frozen, validated configuration objects. Validation raises UsageError (exit 2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from specli.errors import UsageError

K_MAX = 64
PARALLEL_MAX = 16  # serve --parallel: sequences in one context
PROMPT_CACHE_MB = 512  # saved prompt states per model (specli.promptcache; serve --cache-mb)
PROMPT_CACHE_BYTES = PROMPT_CACHE_MB * 2**20
KSpec = Union[int, Literal["auto"]]


@dataclass(frozen=True)
class SamplingConfig:
    """How logits become a distribution; applied identically to target (p) and draft (q).

    Order: temperature, then top-k, top-p, min-p (as in Hugging Face transformers).
    temperature == 0 means exact greedy: argmax, ties to the lowest token id.
    top_k == 0, top_p == 1.0 and min_p == 0.0 each disable that filter.
    `infill`: llama.cpp's infill sampler after them (what editor plugins ask llama-server
    for), given the target's vocabulary as a core.sampling.InfillVocab; None: off.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    infill: object | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise UsageError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UsageError(f"--top-k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            raise UsageError(f"--min-p must be in [0, 1), got {self.min_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class SpecConfig:
    """How much to draft and how long to generate."""

    k: KSpec = 4
    max_tokens: int = 256
    seed: int = 0
    drafter: str = "model"  # a name in core.drafters.DRAFTERS
    k_max: int = 8  # upper bound used by k="auto"
    strict: bool = False  # verify in batch-invariant chunks (see specli.core.numerics)

    def __post_init__(self) -> None:
        if self.k != "auto" and not (isinstance(self.k, int) and 0 <= self.k <= K_MAX):
            raise UsageError(f"--k must be an integer in 0..{K_MAX} or 'auto', got {self.k!r}")
        if self.max_tokens < 1:
            raise UsageError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        if self.seed < 0:  # numpy's generators take no negative seed
            raise UsageError(f"--seed must be >= 0, got {self.seed}")
        if not 1 <= self.k_max <= K_MAX:
            raise UsageError(f"k_max must be in 1..{K_MAX}, got {self.k_max}")


def parse_k(text: str) -> KSpec:
    """Parse a --k value: an integer 0..64 or 'auto'."""
    text = text.strip().lower()
    if text == "auto":
        return "auto"
    try:
        k = int(text)
    except ValueError:
        raise UsageError(f"--k must be an integer in 0..{K_MAX} or 'auto', got {text!r}") from None
    if not 0 <= k <= K_MAX:
        raise UsageError(f"--k must be an integer in 0..{K_MAX} or 'auto', got {k}")
    return k


@dataclass(frozen=True)
class RuntimeConfig:
    """How llama.cpp runs each model."""

    n_ctx: int = 4096
    n_threads: int | None = None  # None: physical cores
    draft_n_threads: int | None = None  # None: same as n_threads
    n_gpu_layers: int | None = None  # None: all when llama.cpp supports GPU offload, else 0
    draft_n_gpu_layers: int | None = None  # None: same as n_gpu_layers
    n_batch: int = 512
    n_seq: int = 1  # sequences per context (serve --parallel), each with n_ctx cells

    def __post_init__(self) -> None:
        if self.n_ctx < 16:
            raise UsageError(f"--ctx must be >= 16, got {self.n_ctx}")
        if not 1 <= self.n_seq <= PARALLEL_MAX:
            raise UsageError(f"--parallel must be in 1..{PARALLEL_MAX}, got {self.n_seq}")
        for name, v in (("--threads", self.n_threads), ("--draft-threads", self.draft_n_threads)):
            if v is not None and v < 1:
                raise UsageError(f"{name} must be >= 1, got {v}")
        for name, v in (("--n-gpu-layers", self.n_gpu_layers),
                        ("--draft-n-gpu-layers", self.draft_n_gpu_layers)):
            if v is not None and v < -1:
                raise UsageError(f"{name} must be -1 (all) or >= 0, got {v}")
