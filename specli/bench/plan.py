"""What a sweep runs: the K and drafter lists of `specli bench`, its variants, its order of
trials, and its settings (BenchConfig)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from specli.config import K_MAX, KSpec, parse_k
from specli.core.drafters import DRAFTER_NAMES, DRAFTERS
from specli.errors import UsageError

ORDER = ("for each repeat, for each prompt: K=0 (baseline), then for each drafter in --drafter "
         "order, each K in --k order")


# --------------------------------------------------------------------------- the plan


def parse_k_list(text: str) -> list[KSpec]:
    """--k for bench: "0,1,2,4,auto", "1..8" or mixes ("1..4,6,auto"); K = 0 always first.

    Order is kept (duplicates dropped), ints before "auto" as written. Raises UsageError.
    """
    out: list[KSpec] = [0]
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            raise UsageError(f"--k: empty item in {text!r} (use e.g. 0,1,2,4,auto or 1..8)")
        for k in _parse_k_item(part):
            if k not in out:
                out.append(k)
    return out


def _parse_k_item(part: str) -> list[KSpec]:
    if part == "auto":
        return ["auto"]
    if ".." in part:
        lo, _, hi = part.partition("..")
        a, b = _k_int(lo, part), _k_int(hi, part)
        if a > b:
            raise UsageError(f"--k: empty range {part!r} (write LOW..HIGH)")
        return list(range(a, b + 1))
    return [_k_int(part, part)]


def _k_int(text: str, item: str) -> int:
    """One K of a --k list (an item or the end of a range): an integer as parse_k reads it."""
    try:
        k = parse_k(text)
    except UsageError:
        k = None
    if not isinstance(k, int):
        raise UsageError(f"--k: {item!r} is not an integer in 0..{K_MAX}, a range like 1..8, "
                         "or 'auto'") from None
    return k


def parse_drafters(text: str) -> list[str]:
    """--drafter for bench: a comma list of model, ngram, auto (order kept)."""
    out: list[str] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if part not in DRAFTER_NAMES:
            raise UsageError(f"--drafter: {part!r} is not one of {', '.join(DRAFTER_NAMES)}")
        if part not in out:
            out.append(part)
    return out


@dataclass(frozen=True)
class Variant:
    """One row of the results table: a drafter and a K (drafter "none" for the baseline)."""

    k: KSpec
    drafter: str

    @property
    def is_baseline(self) -> bool:
        return self.k == 0

    @property
    def key(self) -> str:
        return f"{self.drafter}:{self.k}"

    @property
    def label(self) -> str:
        return "K 0 (target alone)" if self.is_baseline else f"K {self.k} {self.drafter}"


@dataclass(frozen=True)
class Trial:
    """One generation of the sweep, in run order (`seq`)."""

    seq: int
    repeat: int
    prompt: object  # suites.Prompt
    variant: Variant


def make_variants(ks: Sequence[KSpec], drafters: Sequence[str]) -> list[Variant]:
    """The baseline, then every (drafter, K > 0 or auto) in the given orders."""
    out = [Variant(0, "none")]
    out += [Variant(k, d) for d in drafters for k in ks if k != 0]
    return out


def plan(prompts: Sequence, variants: Sequence[Variant], repeats: int) -> list[Trial]:
    """The sweep in run order (see the module docstring); variants[0] must be the baseline."""
    if not variants or not variants[0].is_baseline:
        raise ValueError("variants must start with the K = 0 baseline")
    trials = []
    for r in range(repeats):
        for p in prompts:
            for v in variants:
                trials.append(Trial(len(trials), r, p, v))
    return trials


@dataclass(frozen=True)
class BenchConfig:
    ks: tuple[KSpec, ...]
    drafters: tuple[str, ...]
    max_tokens: int = 128
    repeats: int = 1
    warmup: int = 1
    seed: int = 0
    k_max: int = 8  # the largest K that --k auto may choose
    calibration_reps: int = 5  # before the sweep; one more before each later prompt block
    strict: bool = False  # --strict: verify in the target's batch-invariant call sizes

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise UsageError(f"--repeats must be >= 1, got {self.repeats}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {self.warmup}")
        if self.max_tokens < 1:
            raise UsageError(f"--max-tokens must be >= 1, got {self.max_tokens}")

    @property
    def n_max(self) -> int:
        """Largest verify batch any variant can use: max K + 1 (n-gram auto: up to 32)."""
        return max(self.n_core, self.n_ngram)

    @property
    def n_core(self) -> int:
        """Largest verify batch of the fixed Ks and of auto's model drafts."""
        ints = [k for k in self.ks if k != "auto"]
        return max(ints + ([self.k_max] if "auto" in self.ks else [])) + 1

    @property
    def n_ngram(self) -> int:
        """Largest verify batch of auto's n-gram drafts (1 when no variant has them)."""
        from specli.core.policy import NGRAM_K_MAX

        ngram = "auto" in self.ks and any(DRAFTERS[d].lookup for d in self.drafters)
        return NGRAM_K_MAX + 1 if ngram else 1

