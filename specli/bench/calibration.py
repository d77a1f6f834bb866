"""Calibration: the target's verify time t_v(n) per batch size and the draft's time per
token t_d (and its catch-up cost), timed on the pair before and during a sweep. `run
--k auto` starts from what bench calibrates (costcache), and doctor times batches here."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Sequence

from specli.config import K_MAX, SamplingConfig

# --------------------------------------------------------------------------- calibration


DRAFT_CATCHUP_SIZES = (16, 32)  # the draft's catch-up after a stretch of K = 0 rounds
NGRAM_CALIBRATION_REPS = 3  # samples of t_v(n) for n beyond auto's model K (n-gram drafts)


@dataclass(frozen=True)
class Calibration:
    """Measured costs, in seconds.

    t_verify[n - 1]: the target decoding a batch of n tokens (n logits rows, as
    verification asks). t_draft: one drafted token (a single-token draft decode plus the
    token choice the drafter makes); None without a draft model. t_draft_batch: the draft
    decoding a batch of n tokens ({n: seconds}), for its catch-up: after a round whose
    drafts were all accepted it feeds 2 tokens (the pending one and its own last draft,
    which it never decoded), and after K = 0 rounds everything the target made meanwhile.
    """

    t_verify: tuple[float, ...]
    t_draft: float | None
    reps: int
    context_tokens: int
    t_draft_batch: dict[int, float] = field(default_factory=dict)

    def t_v(self, n: int) -> float:
        """t_v(n); beyond the measured sizes, extended along the last measured step."""
        tv = self.t_verify
        if n <= len(tv):
            return tv[n - 1]
        step = tv[-1] - tv[-2] if len(tv) > 1 else tv[-1]
        return tv[-1] + step * (n - len(tv))

    def t_db(self, n: int) -> float:
        """The draft's decode of n tokens: interpolated between measured sizes (0 without one)."""
        pts = sorted(self.t_draft_batch.items())
        if not pts or n <= 0:
            return 0.0
        for (n0, t0), (n1, t1) in zip(pts, pts[1:]):
            if n <= n1:
                return t0 + (t1 - t0) * (n - n0) / (n1 - n0) if n > n0 else t0
        (n0, t0), (n1, t1) = pts[-2] if len(pts) > 1 else pts[-1], pts[-1]
        slope = (t1 - t0) / (n1 - n0) if n1 > n0 else t1
        return t1 + slope * (n - n1)

    def catchup(self, lag: int) -> float:
        """Extra draft time when a model round must first feed `lag` tokens instead of 1."""
        return max(0.0, self.t_db(lag) - self.t_db(1)) if lag > 1 else 0.0

    @property
    def t_catchup(self) -> float | None:
        """The draft's catch-up cost per token (marginal, from the largest catch-up size)."""
        n = max(DRAFT_CATCHUP_SIZES)
        if self.t_draft is None or n not in self.t_draft_batch:
            return None
        return self.catchup(n) / (n - 1)

    def to_dict(self) -> dict:
        return {"t_verify": list(self.t_verify), "t_draft": self.t_draft,
                "t_draft_batch": {str(n): t for n, t in sorted(self.t_draft_batch.items())},
                "reps": self.reps, "context_tokens": self.context_tokens,
                "draft_ratio": (self.t_draft / self.t_verify[0]) if self.t_draft else None}


class CostSampler:
    """Collects calibration samples over the whole sweep; `result()` takes the medians.

    `bench` samples `reps` times before the sweep and once more before each later
    prompt block, so the costs are measured under the same conditions as the runs they
    predict (on a shared machine, load comes and goes within minutes).
    """

    def __init__(self, target, draft, n_max: int, sampling: SamplingConfig, n_vocab: int,
                 draft_sizes: Sequence[int] = ()) -> None:
        self.target, self.draft, self.n_max = target, draft, n_max
        self.sampling, self.n_vocab = sampling, n_vocab
        self.verify_sizes = list(range(1, n_max + 1))
        self.draft_sizes = sorted({1, 2, 4, 8, *DRAFT_CATCHUP_SIZES, *draft_sizes})
        self.t_verify: dict[int, list[float]] = {n: [] for n in self.verify_sizes}
        self.t_draft_batch: dict[int, list[float]] = {n: [] for n in self.draft_sizes}
        self.t_choice: float | None = None
        self.context_tokens = 0
        self.reps = 0

    def sample(self, context: Sequence[int], reps: int = 1, n_limit: int | None = None) -> None:
        """`reps` more samples of every batch size (up to n_limit), decoded after `context`."""
        self.context_tokens = self.context_tokens or len(context)
        sizes = [n for n in self.verify_sizes if n_limit is None or n <= n_limit]
        for n, ts in time_batches(self.target, context, sizes, reps).items():
            self.t_verify[n] += ts
        if self.draft is not None:
            for n, ts in time_batches(self.draft, context, self.draft_sizes, reps,
                                       all_logits=False).items():
                self.t_draft_batch[n] += ts
            if self.t_choice is None:
                self.t_choice = _time_choice(self.draft, context, self.sampling, self.n_vocab)
        self.reps += reps

    def sample_range(self, context: Sequence[int], lo: int, hi: int, reps: int) -> None:
        """`reps` samples of the target's batch sizes lo..hi only."""
        for n, ts in time_batches(self.target, context, range(lo, hi + 1), reps).items():
            self.t_verify[n] += ts

    def result(self) -> Calibration | None:
        if not self.reps:
            return None
        med = statistics.median
        t_verify = tuple(med(self.t_verify[n]) for n in self.verify_sizes if self.t_verify[n])
        if self.draft is None:
            return Calibration(t_verify, None, self.reps, self.context_tokens)
        t_db = {n: med(v) for n, v in self.t_draft_batch.items()}
        return Calibration(t_verify, t_db[1] + (self.t_choice or 0.0), self.reps,
                           self.context_tokens, t_db)


def calibrate(target, draft, context: Sequence[int], n_max: int, sampling: SamplingConfig,
              n_vocab: int, reps: int = 5) -> Calibration:
    """Time t_v(n) for n = 1..n_max, the draft's per-token cost and its batch costs.

    Each sample decodes a batch at the end of `context` and truncates it away again, so
    the caches end as they began (holding the context minus its pending last token).
    Batch sizes are interleaved within each repetition so drift spreads over all of them;
    each figure is the median of `reps` samples, after one untimed decode per model.
    """
    sampler = CostSampler(target, draft, n_max, sampling, n_vocab)
    sampler.sample(context, reps)
    return sampler.result()


def time_batches(model, context: Sequence[int], sizes, reps: int,
                  all_logits: bool = True) -> dict[int, list[float]]:
    """{n: [seconds, ...]}: `reps` timings of decoding n tokens after `context`.

    all_logits: n rows of logits, as verification asks; else one row, as the drafter asks
    (with a 150k vocabulary the output rows are a good part of a small model's cost).
    """
    context = list(context)
    sizes = list(sizes)
    filler = (context * (max(sizes) // max(1, len(context)) + 1))[: max(sizes)]
    model.reuse_prefix(context)
    model.decode(context[model.n_past : -1], 0)
    base = model.n_past
    model.decode(context[-1:], 1)  # untimed: the first decode after loading is slow
    model.truncate(base)
    samples: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(reps):
        for n in sizes:
            batch = context[-1:] + filler[: n - 1]
            t0 = time.perf_counter()
            model.decode(batch, min(n, K_MAX + 1) if all_logits else 1)
            samples[n].append(time.perf_counter() - t0)
            model.truncate(base)
    return samples


def _time_choice(draft, context, sampling, n_vocab, reps: int = 9) -> float:
    """The drafter's token choice from one row of logits: argmax, or warp + sample."""
    import numpy as np

    from specli.core.sampling import greedy_token, warp

    rng = np.random.default_rng(0)
    base = draft.n_past
    logits = np.array(draft.decode(list(context[-1:]), 1)[0][:n_vocab])
    draft.truncate(base)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        if sampling.greedy:
            greedy_token(logits)
        else:
            warp(logits, sampling).sample(rng)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def one_target_step_seconds(target, reps: int = 5) -> float:
    """Median time of one single-token target decode at the current position (then undone):
    what a round's verify time compares with."""
    n = target.n_past
    token = target.tokens[-1] if target.tokens else 0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        target.decode([token], 1)
        times.append(time.perf_counter() - t0)
        target.truncate(n)
    return statistics.median(times)
