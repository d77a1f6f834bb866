"""The cost model of speculative decoding: formulas, and estimators of its quantities.

Pure: no I/O, no models, no clocks, no global state. The engine measures seconds and
feeds them in; the K policies (specli.core.policy) and bench's predictions price draft
lengths with what is here.

The model (Leviathan et al., 2023, "Fast Inference from Transformers via Speculative
Decoding"), with per-token acceptance rate alpha, K drafted tokens, draft cost t_d per
token and target cost t_v(n) for verifying a batch of n tokens:

    E(K)    = sum_{j=0..K} alpha^j = (1 - alpha^(K+1)) / (1 - alpha)   (K + 1 at alpha = 1)
    T(K)    = K * t_d + t_v(K + 1)                 seconds per round
    rate(K) = E(K) / T(K)                          tokens per second; rate(0) = 1 / t_v(1)
    speedup(K) = rate(K) / rate(0) = E(K) * t_v(1) / (K * t_d + t_v(K + 1))

On a GPU t_v(n) is nearly flat in n and t_d << t_v(1), so large K pays. On a small CPU
t_v(n) grows with n and t_d is about half of t_v(1), so no K > 0 may pay; the policy
then returns K = 0 (the target alone) and re-probes now and then.
"""

from __future__ import annotations

import bisect
import math
import statistics
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Union

CostCurve = Union[Callable[[int], float], Sequence[float]]
"""t_v as a callable n -> seconds, or a sequence where t_v[n - 1] is the cost of batch n."""


# --------------------------------------------------------------------------- pure formulas


def expected_tokens(alpha: float, k: int) -> float:
    """Expected tokens one round yields: E(K) = (1 - alpha^(K+1)) / (1 - alpha).

    The round accepts j drafts with probability alpha^j (1 - alpha) (j < K) or all K
    with probability alpha^K, and always adds one target token (the correction or the
    bonus), so E(K) = sum_{j=0..K} alpha^j. Summed directly: stable at alpha -> 1,
    where E(K) -> K + 1.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return math.fsum(alpha**j for j in range(k + 1))


def _cost_fn(t_v: CostCurve) -> Callable[[int], float]:
    if callable(t_v):
        return t_v
    return lambda n: t_v[n - 1]


def round_seconds(k: int, t_d: float, t_v: CostCurve) -> float:
    """Seconds one round costs: T(K) = K * t_d + t_v(K + 1)."""
    return k * t_d + _cost_fn(t_v)(k + 1)


def tokens_per_second(alpha: float, k: int, t_d: float, t_v: CostCurve) -> float:
    """Predicted throughput with K drafts: E(K) / (K * t_d + t_v(K + 1))."""
    return expected_tokens(alpha, k) / round_seconds(k, t_d, t_v)


def predicted_speedup(alpha: float, k: int, t_d: float, t_v: CostCurve) -> float:
    """Predicted speedup over the target alone: E(K) * t_v(1) / (K * t_d + t_v(K + 1))."""
    return expected_tokens(alpha, k) * _cost_fn(t_v)(1) / round_seconds(k, t_d, t_v)


def best_k(alpha: float, k_max: int, t_d: float, t_v: CostCurve) -> int:
    """The K in 0..k_max with the highest predicted tokens per second (ties: smaller K)."""
    rates = [tokens_per_second(alpha, k, t_d, t_v) for k in range(k_max + 1)]
    return max(range(k_max + 1), key=lambda k: (rates[k], -k))


def predicted_speedup_catchup(alpha: float, k: int, t_d: float, t_v: CostCurve,
                              catchup: float) -> float:
    """The speedup with the draft's catch-up priced: E(K) t_v(1) / (K t_d + t_v(K+1) +
    alpha^K catchup), where `catchup` is the extra draft time of a round after an
    all-accepted one (its last draft token is decoded first; probability alpha^K)."""
    cost = _cost_fn(t_v)
    return expected_tokens(alpha, k) * cost(1) / (k * t_d + cost(k + 1) + alpha**k * catchup)


def break_even_alpha(k: int, t_d: float, t_v: CostCurve, catchup: float = 0.0) -> float | None:
    """The alpha at which K drafts per round match the target alone (None: not even at 1).

    `catchup`: as in predicted_speedup_catchup (0: not priced)."""
    def speedup(alpha: float) -> float:
        return predicted_speedup_catchup(alpha, k, t_d, t_v, catchup)

    if speedup(1.0) < 1.0:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(50):  # speedup is increasing in alpha
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if speedup(mid) < 1.0 else (lo, mid)
    return hi


# --------------------------------------------------------------------------- estimators


class WindowedMedian:
    """Median of the last `window` samples; `prior` until the first sample arrives.

    A median, not a mean: one slow call (a page fault, a scheduler hiccup) must not
    move the estimate that decides K.
    """

    def __init__(self, prior: float, window: int = 9) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.prior = prior
        self._samples: deque[float] = deque(maxlen=window)
        self.count = 0  # all samples ever seen, not only those in the window

    def add(self, x: float) -> None:
        if not (x >= 0.0 and math.isfinite(x)):
            raise ValueError(f"sample must be finite and >= 0, got {x}")
        self._samples.append(x)
        self.count += 1

    @property
    def value(self) -> float:
        return statistics.median(self._samples) if self._samples else self.prior


class AcceptanceRate:
    """Per-token acceptance rate alpha, an exponential moving average over outcomes.

    A round that drafts k tokens and accepts n reveals n acceptances and, when n < k,
    one rejection. The drafts after the first rejection were never judged, so they are
    not counted as rejections (counting them would bias alpha low by a lot at large k).

    Alongside alpha it tracks the mean draft confidence q over the same judged tokens,
    so a draft's own probability can be calibrated into an acceptance probability.
    """

    def __init__(self, prior: float = 0.8, weight: float = 0.05) -> None:
        if not 0.0 <= prior <= 1.0:
            raise ValueError(f"prior must be in [0, 1], got {prior}")
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"weight must be in (0, 1], got {weight}")
        self.value = prior
        self.mean_confidence = prior
        self.weight = weight
        self.count = 0  # judged tokens seen

    def add(self, accepted: bool, confidence: float | None = None) -> None:
        """One judged draft token: alpha += w * (accepted - alpha)."""
        self.value += self.weight * (float(accepted) - self.value)
        if confidence is not None:
            self.mean_confidence += self.weight * (confidence - self.mean_confidence)
        self.count += 1

    def observe(self, k: int, n_accepted: int, draft_probs: Sequence[float] | None = None) -> None:
        """One round: k drafted, the first n_accepted accepted; draft_probs[i] is q of draft i."""
        if not 0 <= n_accepted <= k:
            raise ValueError(f"need 0 <= n_accepted <= k, got n_accepted={n_accepted}, k={k}")
        judged = min(k, n_accepted + 1)
        for i in range(judged):
            confidence = draft_probs[i] if draft_probs is not None else None
            self.add(i < n_accepted, confidence)

    def calibrate(self, q: float) -> float:
        """Acceptance probability of a draft token the draft model gave probability q.

        Scales q so that the mean calibrated value equals the measured alpha:
        clip(q * alpha / mean_q, 0, 1).
        """
        if self.mean_confidence <= 0.0:
            return self.value
        return min(1.0, max(0.0, q * self.value / self.mean_confidence))


class VerifyCost:
    """Target cost t_v(n) of one decode call over a batch of n tokens, n = 1..n_max.

    Each batch size keeps its own windowed median. An unmeasured n is estimated from
    the measured ones: with two or more sizes measured, a least-squares line a + b*n
    (slope clamped >= 0: a bigger batch never costs less); with one, the prior shape
    t1 * (1 + slope * (n - 1)) scaled through that point; with none, the prior itself.
    One instance may be shared by several policies (model drafts and n-gram drafts
    verify with the same target).
    """

    def __init__(
        self, n_max: int, *, prior_t1: float = 0.03, prior_slope: float = 0.15, window: int = 9
    ) -> None:
        if n_max < 1:
            raise ValueError(f"n_max must be >= 1, got {n_max}")
        self.n_max = n_max
        self.prior_t1 = prior_t1
        self.prior_slope = prior_slope
        self._by_n = [WindowedMedian(0.0, window) for _ in range(n_max)]
        self._seeds: dict[int, float] = {}  # remembered from earlier runs (see seed)
        self._table: list[float] | None = None  # cached estimates, invalidated on observe
        self._chunk: int | None = None  # strict mode: see set_chunk
        self.batch: tuple[int, float] = (0, 0.0)  # see set_batch

    def set_batch(self, rows: int, tokens: float) -> None:
        """The next round shares its step with other sequences: they add `rows` tokens to
        the call and get `tokens` from it (llama.batch). Policies price K at
        t_v(rows + K + 1); (0, 0.0) is a step of one's own."""
        self.batch = (max(0, min(rows, self.n_max - 1)), max(0.0, tokens))

    def set_chunk(self, chunk: int | None) -> None:
        """Strict mode verifies n tokens in decode calls of at most `chunk` tokens, so
        t_v(n) is priced as the sum over those calls (observations stay per call). The
        price assumes every chunk is decoded; a rejection that skips the last ones only
        makes a round cheaper than priced."""
        if chunk != self._chunk:  # asked every strict round: keep the cached table if unchanged
            self._chunk = chunk
            self._table = None

    def observe(self, n: int, seconds: float) -> None:
        """One decode call over n tokens took `seconds`."""
        if not 1 <= n <= self.n_max:
            raise ValueError(f"batch size must be in 1..{self.n_max}, got {n}")
        self._by_n[n - 1].add(seconds)
        self._table = None

    def count(self, n: int) -> int:
        """How many calls of batch size n have been observed (seeds not counted)."""
        return self._by_n[n - 1].count

    def seed(self, n: int, seconds: float) -> None:
        """t_v(n) remembered from earlier runs on this machine (see costcache).

        A remembered size is priced at its remembered cost times `scale()`: how much
        slower or faster this run's own measurements are than the remembered ones at the
        same sizes. A machine under load slows every batch size alike; without the scale
        a slow moment would raise the measured t_v(1) but not the remembered t_v(2..),
        and drafting would look cheaper than it is.
        """
        if 1 <= n <= self.n_max:
            if not (seconds > 0.0 and math.isfinite(seconds)):
                raise ValueError(f"seed must be finite and > 0, got {seconds}")
            self._seeds[n] = seconds
            self._table = None

    def scale(self) -> float:
        """This run's speed against the remembered one: the median ratio measured/remembered
        over the sizes that have both (1.0 when none has)."""
        ratios = [self._by_n[n - 1].value / s for n, s in self._seeds.items()
                  if self._by_n[n - 1].count]
        return statistics.median(ratios) if ratios else 1.0

    def measured(self) -> dict[int, float]:
        """{n: median seconds} of the batch sizes this run observed itself."""
        return {n: est.value for n, est in enumerate(self._by_n, start=1) if est.count}

    def __call__(self, n: int) -> float:
        if not 1 <= n <= self.n_max:
            raise ValueError(f"batch size must be in 1..{self.n_max}, got {n}")
        return self.table()[n - 1]

    def table(self) -> list[float]:
        """Estimates for n = 1..n_max (index n - 1)."""
        if self._table is None:
            calls = self._estimate()
            c = self._chunk
            self._table = calls if not c else [
                (n // c) * calls[c - 1] + (calls[n % c - 1] if n % c else 0.0)
                for n in range(1, self.n_max + 1)]
        return list(self._table)

    def _estimate(self) -> list[float]:
        measured = self.measured()
        own = dict(measured)  # this run's own measurements
        if self._seeds:
            scale = self.scale()
            for n, seconds in self._seeds.items():
                measured.setdefault(n, seconds * scale)
        line = None  # fitted only when some size lies outside the measured ones
        floor = 1e-9  # a cost of zero would make the rate infinite
        sizes = sorted(measured)
        out = []
        for n in range(1, self.n_max + 1):
            if n in measured:
                out.append(measured[n])
                continue
            i = bisect.bisect_left(sizes, n)
            if 0 < i < len(sizes):  # between two measured sizes: interpolate (the curve
                lo, hi = sizes[i - 1], sizes[i]  # has steps a straight line would miss)
                w = (n - lo) / (hi - lo)
                out.append(measured[lo] + w * (measured[hi] - measured[lo]))
            else:
                # Beyond the sizes known, extrapolate this run's own curve when it has
                # one: a size priced too high is never chosen, so never measured again,
                # and a remembered outlier would price every larger size out for good
                # (t_v(3) remembered at 0.26 s, where this run's 1,800-token context costs
                # 0.14 s: n-gram rounds stayed at K = 1, 17 tok/s, against 30 tok/s once K
                # went up to 15 on the same completions).
                if line is None:
                    line = self._line(own if len(own) >= 2 else measured)
                out.append(line[0] + line[1] * n)
        return [max(floor, x) for x in out]

    def is_measured(self, n: int) -> bool:
        """Measured in this run or remembered from an earlier one."""
        return self._by_n[n - 1].count > 0 or n in self._seeds

    def _line(self, measured: dict[int, float]) -> tuple[float, float]:
        """Intercept and slope of the curve used for unmeasured sizes."""
        if len(measured) >= 2:
            xs, ys = list(measured), list(measured.values())
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            sxx = sum((x - mx) ** 2 for x in xs)
            b = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx)
            return my - b * mx, b
        if len(measured) == 1:
            (n0, y0), = measured.items()
            t1 = y0 / (1.0 + self.prior_slope * (n0 - 1))
        else:
            t1 = self.prior_t1
        return t1 * (1.0 - self.prior_slope), t1 * self.prior_slope


# --------------------------------------------------------------------------- n-gram acceptance


MATCH_EDGES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
"""Buckets of match length: bucket i holds lengths in (MATCH_EDGES[i-1], MATCH_EDGES[i]]."""


def match_prior(length: int) -> float:
    """Prior acceptance of an n-gram draft token with `length` agreeing tokens behind it.

    1 - 1 / (1 + length / 2): 0.33 at 1, 0.67 at 4, 0.89 at 16, 0.97 at 64. Measured on
    the default pair (edit and summarize prompts, temperature 0) the rates were 0.29, 0.81,
    0.93 and 0.98: a copy that has held for a while tends to go on holding.
    """
    return 1.0 - 1.0 / (1.0 + 0.5 * max(0, length))


class MatchAcceptance:
    """Acceptance of n-gram drafts as a function of the match length behind each token.

    Prompt-lookup acceptance is bursty, not the i.i.d. alpha of the Leviathan model:
    while the answer copies a passage nearly every draft is accepted, and a fresh, short
    match is mostly wrong. Draft i of a round (0-based) whose lookup matched L tokens has
    L + i agreeing tokens behind it if drafts 0..i-1 were accepted, so its acceptance is
    estimated per bucket of L + i: a running mean over the last `window` judged tokens of
    that bucket, starting from match_prior with `prior_weight` pseudo-observations. The
    estimates are kept non-decreasing in L (weighted isotonic regression over the
    buckets): a few rejections in one long bucket (a copy that ends at an edit) must not
    price long matches below short ones.
    """

    def __init__(self, prior_weight: float = 4.0, window: int = 64) -> None:
        if prior_weight <= 0 or window < 1:
            raise ValueError(f"need prior_weight > 0 and window >= 1, got {prior_weight}, {window}")
        self.window = window
        self._value = [match_prior(e) for e in MATCH_EDGES] + [match_prior(2 * MATCH_EDGES[-1])]
        self._weight = [prior_weight] * len(self._value)
        self._smooth: list[float] | None = None
        self.count = 0  # judged tokens seen

    @staticmethod
    def bucket(length: int) -> int:
        return bisect.bisect_left(MATCH_EDGES, max(1, length))

    def __call__(self, length: int) -> float:
        """Estimated acceptance of a draft token with `length` agreeing tokens behind it."""
        if self._smooth is None:
            self._smooth = self._fit()
        return self._smooth[self.bucket(length)]

    def _fit(self) -> list[float]:
        """The estimates, non-decreasing in the match length."""
        return _isotonic(self._value, self._weight)

    def add(self, length: int, accepted: bool) -> None:
        b = self.bucket(length)
        self._weight[b] = min(self._weight[b] + 1.0, float(self.window))
        self._value[b] += (float(accepted) - self._value[b]) / self._weight[b]
        self._smooth = None
        self.count += 1

    def observe(self, match_len: int, k: int, n_accepted: int) -> None:
        """One round: k drafts from a match of match_len tokens, the first n_accepted accepted."""
        if not 0 <= n_accepted <= k:
            raise ValueError(f"need 0 <= n_accepted <= k, got n_accepted={n_accepted}, k={k}")
        for i in range(min(k, n_accepted + 1)):  # drafts after a rejection were never judged
            self.add(match_len + i, i < n_accepted)

    def profile(self, match_len: int, k_max: int) -> list[float]:
        """Acceptance of drafts 0..k_max-1 of a round, each given all before it accepted."""
        return [self(match_len + i) for i in range(k_max)]


class SharedMatchAcceptance(MatchAcceptance):
    """A MatchAcceptance that several threads read and update at once (a server's slots
    drafting from one core.history.DraftHistory): each call holds a lock, so an estimate
    never mixes two updates.

    Its monotone fit lets evidence win over priors: the buckets with observations are
    fitted (isotonic, as MatchAcceptance), and a bucket without any keeps its prior only
    as far as the fitted buckets around it allow. Pooled as MatchAcceptance pools them,
    twelve rejections at match length 12 (matches into other requests' replies that part
    ways at once) were averaged with the untouched priors of lengths 1..8 to 0.46, and
    12-token history matches went on drafting; fitted so, they are priced at 0.21.
    """

    def __init__(self, prior_weight: float = 4.0, window: int = 64) -> None:
        super().__init__(prior_weight, window)
        self._lock = threading.RLock()  # profile() reads through __call__
        self._prior_weight = prior_weight

    def _fit(self) -> list[float]:
        seen = [w > self._prior_weight for w in self._weight]
        fitted = _isotonic([v for v, s in zip(self._value, seen) if s],
                           [w for w, s in zip(self._weight, seen) if s])
        out, it = [], iter(fitted)
        observed = [next(it) if s else None for s in seen]
        for b, value in enumerate(self._value):
            if observed[b] is not None:
                out.append(observed[b])
                continue
            below = [x for x in observed[:b] if x is not None]
            above = [x for x in observed[b + 1 :] if x is not None]
            lo, hi = (below[-1] if below else 0.0), (above[0] if above else 1.0)
            out.append(min(max(value, lo), hi))
        return out

    def __call__(self, length: int) -> float:
        with self._lock:
            return super().__call__(length)

    def add(self, length: int, accepted: bool) -> None:
        with self._lock:
            super().add(length, accepted)

    def profile(self, match_len: int, k_max: int) -> list[float]:
        with self._lock:  # one fit for the whole profile
            return super().profile(match_len, k_max)


def _isotonic(values: Sequence[float], weights: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to `values` in weighted least squares (PAV)."""
    blocks: list[list[float]] = []  # [mean, weight, size]
    for v, w in zip(values, weights):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    out: list[float] = []
    for mean, _, size in blocks:
        out.extend([mean] * size)
    return out


