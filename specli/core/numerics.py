"""The batch-numerics gap: does a verify batch compute the logits single-token decoding does?

Speculative verification feeds the target [pending, d1..dK] in one decode call and reads
K + 1 rows of logits. The algorithm is exact with respect to *those* rows. The target
alone (K = 0) decodes one token per call. llama.cpp's CPU kernels switch with the batch
size (the repacked Q4_K/Q4_0 matmuls run a GEMV per row below 4 rows and a 4-row GEMM
from 4 on, for one), so a row of a 4-token batch can differ from the same position
decoded alone. `measure` finds, for the loaded target on this machine, how far apart
they are for each batch size n and the largest n up to which every row (and so every
KV entry the rows depend on) is bit-identical: `invariant_up_to`. Strict mode verifies
in chunks of at most that size (engine.speculative_generate(verify_chunk=...)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from specli.config import SamplingConfig

# Texts that reach the kernel switch: a repetitive one (long confident copies) and a
# chat-style one. Tokenized with the target's own vocabulary at measurement time.
PROBE_TEXTS = (
    "A cat. The cat sat. The cat sat on the mat. The cat sat on the mat and the cat",
    "<|im_start|>user\nWrite a Python function that reverses a string.<|im_end|>\n"
    "<|im_start|>assistant\n",
)


@dataclass
class BatchNumerics:
    """Per batch size n (2..n_max): the largest TV distance and logit difference found
    between a row of a batch-n decode and the same position decoded alone."""

    tv: dict[int, float] = field(default_factory=dict)
    max_logit_diff: dict[int, float] = field(default_factory=dict)
    invariant_up_to: int = 1  # every batch of at most this many tokens is bit-identical
    n_max: int = 1
    prompts: int = 0
    sampling: dict = field(default_factory=dict)  # the warps the TV figures were taken under
    # {context length: invariant size there}: llama.cpp's CPU flash attention takes a
    # split-KV path for single-token decodes once the (256-padded) KV view reaches 512
    # cells, so past ~256 tokens only batches of 1 match single-token decoding here.
    invariant_by_length: dict[int, int] = field(default_factory=dict)

    def chunk_rule(self) -> "ChunkRule":
        return ChunkRule({0: self.invariant_up_to, **self.invariant_by_length})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tv"] = {str(n): v for n, v in self.tv.items()}
        d["max_logit_diff"] = {str(n): v for n, v in self.max_logit_diff.items()}
        d["invariant_by_length"] = {str(n): v for n, v in self.invariant_by_length.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BatchNumerics":
        return cls(tv={int(n): float(v) for n, v in d["tv"].items()},
                   max_logit_diff={int(n): float(v) for n, v in d["max_logit_diff"].items()},
                   invariant_up_to=int(d["invariant_up_to"]), n_max=int(d["n_max"]),
                   prompts=int(d.get("prompts", 0)), sampling=dict(d.get("sampling", {})),
                   invariant_by_length={int(n): int(v) for n, v in d["invariant_by_length"].items()})


def total_variation(a: np.ndarray, b: np.ndarray, sampling: SamplingConfig) -> float:
    """TV distance between the warped next-token distributions of two logit rows."""
    from specli.core.sampling import warp

    p, q = warp(a, sampling), warp(b, sampling)
    ids = np.union1d(p.ids, q.ids)
    return 0.5 * float(np.abs(p.at(ids) - q.at(ids)).sum())


def _reference(target, prompt: list[int], n: int) -> tuple[list[int], list[np.ndarray]]:
    """Decode the prompt, then n positions one token per call (greedy continuation):
    the tokens fed [pending, c1..c_{n-1}] and a copy of each single-token row."""
    target.reset()
    target.decode(prompt[:-1], 0)
    fed, rows = [prompt[-1]], []
    for i in range(n):
        row = np.array(target.decode([fed[i]], 1)[0])
        rows.append(row)
        if i + 1 < n:
            fed.append(int(np.argmax(row[: target.n_vocab])))
    return fed, rows


def measure(target, n_max: int, sampling: SamplingConfig | None = None,
            prompts: list[list[int]] | None = None) -> BatchNumerics:
    """Compare batch-n verify rows with single-token rows, n = 2..n_max, on a few prompts.

    Leaves the target's KV cache empty. Costs about n_max single decodes plus n_max - 1
    batch decodes per prompt.
    """
    sampling = sampling or SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    if prompts is None:
        prompts = [target.tokenize(t, add_special=True, parse_special=True) for t in PROBE_TEXTS]
    prompts = [p for p in prompts if len(p) >= 2 and len(p) + n_max < target.n_ctx]
    out = BatchNumerics(n_max=n_max, prompts=len(prompts), sampling=asdict(sampling))
    identical = {n: True for n in range(2, n_max + 1)}
    for prompt in prompts:
        fed, ref = _reference(target, prompt, n_max)
        for n in range(2, n_max + 1):
            target.truncate(len(prompt) - 1)
            batch = target.decode(fed[:n], n)  # [n, V]
            for j in range(n):
                a, b = batch[j], ref[j]
                diff = float(np.max(np.abs(a - b)))
                if diff != 0.0 or not np.array_equal(a, b):
                    identical[n] = False
                out.max_logit_diff[n] = max(out.max_logit_diff.get(n, 0.0), diff)
                tv = total_variation(a[: target.n_vocab], b[: target.n_vocab], sampling)
                out.tv[n] = max(out.tv.get(n, 0.0), tv)
    target.reset()
    if prompts:
        n = 1
        while n + 1 <= n_max and identical[n + 1]:
            n += 1
        out.invariant_up_to = n
    return out


@dataclass(frozen=True)
class ChunkRule:
    """Strict mode's verify-call size at a given context length: the smallest invariant
    size measured at any probed length the call reaches (lengths past the longest probe
    take the smallest size seen at all: never larger than anything measured)."""

    by_length: dict[int, int]

    def __call__(self, n_past: int) -> int:
        sizes = sorted(self.by_length.items())
        chunk = sizes[0][1]
        for length, inv in sizes[1:]:
            if length <= n_past + chunk:  # the call's last position reaches this probe
                chunk = min(chunk, inv)
        if n_past + chunk > sizes[-1][0] and len(sizes) > 1:
            chunk = min(inv for _, inv in sizes)
        return max(1, chunk)


LONG_PROBES = (256, 512)  # context lengths probed besides the short probe prompts


def measure_lengths(target, n_max: int, lengths=LONG_PROBES) -> dict[int, int]:
    """The invariant size at each context length that fits (a probe prompt repeated)."""
    base = target.tokenize(PROBE_TEXTS[0] * 64, add_special=True)
    out = {}
    for length in lengths:
        if length + n_max < target.n_ctx and length <= len(base):
            out[length] = measure(target, n_max, prompts=[base[:length]]).invariant_up_to
    return out


def cached_or_measure(target, cache, n_max: int, sampling: SamplingConfig | None = None, *,
                      fresh: bool = False) -> BatchNumerics:
    """The target's batch numerics remembered on this machine (costcache), else (or when
    `fresh`) measured now, under `sampling`, and remembered. The invariant size belongs
    to the model file, the build, the kernels chosen and the threads (the cache key)."""
    from specli.core.costcache import model_key

    key = model_key(target)
    found = cache.numerics(key) if cache is not None and not fresh else None
    if found is not None:
        try:
            got = BatchNumerics.from_dict(found)
            if got.n_max >= n_max or got.invariant_up_to < got.n_max:
                return got
        except (KeyError, TypeError, ValueError):
            pass
    if sampling is not None and sampling.greedy:  # TV of argmaxes is 0 or 1: use T = 1
        sampling = None
    got = measure(target, n_max, sampling)
    got.invariant_by_length = measure_lengths(target, n_max)
    if cache is not None:
        cache.set_numerics(key, got.to_dict())
        cache.save()
    return got
