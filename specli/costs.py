"""A measured cost model for speculative decoding and a per-round K policy.

Pure: no I/O, no models, no clocks, no global state. The engine measures seconds and
feeds them in; the policy answers "how many tokens to draft this round".

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
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
                if line is None:
                    line = self._line(measured)
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


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class CostSnapshot:
    """What the policy currently believes, for stats and rendering."""

    alpha: float
    t_draft: float  # seconds per draft token
    t_verify: tuple[float, ...]  # t_verify[n - 1] = seconds to verify a batch of n
    k_best: int  # the greedy choice, before any probing
    speedup: float  # predicted speedup of k_best over the target alone


PROBE_K_MAX = 4  # a probe's draft length when it is chosen from the cost curve


class KPolicy:
    """Chooses K per round from measured costs and acceptance; see the module docstring.

    Use one policy per drafter. For a free drafter (n-gram lookup) pass draft_cost=0.0;
    to let two policies learn the same target curve pass one VerifyCost as `verify`.

    Probing (deterministic, no RNG): while the greedy choice is 0, after `probe_every`
    observed rounds it returns a probe K once, so a falling cost or rising alpha is
    noticed. A probe that leaves the greedy choice at 0 doubles the wait before the next
    one (up to `probe_max`); one that makes K > 0 pay resets it. Each probe first feeds the
    draft every token it missed and then drafts at a predicted loss, so where drafting is
    marginal, fixed-interval probes cost more than they find (auto ran 0.93x the target
    alone there, with 27 probes in 240 rounds). The probe K is `probe_k` if given, else
    the K that would pay best if every draft were accepted (at most PROBE_K_MAX): on a
    stepped CPU curve (t_v(4) < t_v(3)) a fixed K = 2 probe is both the dearest and the
    least informative one. While the greedy choice is > 0 and t_v(1) has fewer than
    `min_baseline_samples` measurements, it returns 0 in the second round and then once
    every `probe_every` rounds, so the baseline it compares against is measured.

    Catch-up is priced: a probe after a stretch of L tokens at K = 0 first decodes those L
    tokens in the draft, t_c seconds each (measured per caught-up token, or remembered).
    Whatever the backoff, every probe catches up on everything since the last one, so
    probing costs about t_c / t_v(1) of the time spent at K = 0, found or not. When that
    exceeds `probe_budget` (2%: "never below 0.98x the target alone"), the policy stops
    probing once the greedy choice has settled at 0. On a 2-core CPU t_c / t_v(1) was about
    0.11 (a batched draft decode of 16 to 64 tokens), and probing cost 10% on code and chat
    prompts where drafting did not pay; a GPU decodes such a batch in about the time of one
    token, and there probing stays on.
    """

    def __init__(
        self,
        k_max: int,
        *,
        verify: VerifyCost | None = None,
        draft_cost: float | None = None,
        prior_alpha: float = 0.8,
        prior_draft_ratio: float = 0.25,
        alpha_weight: float = 0.05,
        probe_every: int = 16,
        probe_k: int | None = None,
        min_baseline_samples: int = 3,
        window: int = 9,
        probe_max: int = 64,
        probe_budget: float = 0.02,
    ) -> None:
        if k_max < 0:
            raise ValueError(f"k_max must be >= 0, got {k_max}")
        if verify is not None and verify.n_max < k_max + 1:
            raise ValueError(f"verify covers batches up to {verify.n_max}, need {k_max + 1}")
        if probe_every < 1:
            raise ValueError(f"probe_every must be >= 1, got {probe_every}")
        self.k_max = k_max
        self.verify = verify if verify is not None else VerifyCost(k_max + 1, window=window)
        self.acceptance = AcceptanceRate(prior_alpha, alpha_weight)
        self.fixed_draft_cost = draft_cost
        self.prior_draft_ratio = prior_draft_ratio
        self._draft = WindowedMedian(math.nan, window)
        self._draft_seed: float | None = None  # remembered t_d (see seed_draft)
        self._catchup = WindowedMedian(math.nan, window)  # seconds per caught-up token
        self._catchup_seed: float | None = None  # remembered (see seed_catchup)
        self.probe_budget = probe_budget
        self.probe_every = probe_every
        self.probe_max = max(probe_every, probe_max)
        self._probe_gap = probe_every  # rounds at K = 0 before the next probe (see class doc)
        self.probe_k = (min(max(1, probe_k), k_max) if k_max else 0) if probe_k is not None else None
        self.min_baseline_samples = min_baseline_samples
        self.rounds = 0
        self._since_spec = 0  # observed rounds since the last K > 0 round
        self._since_baseline = 0  # observed rounds since the last K = 0 round

    # ---- current estimates

    @property
    def alpha(self) -> float:
        return self.acceptance.value

    @property
    def t_draft(self) -> float:
        """Seconds per draft token: fixed if given, else measured, else a prior ratio of t_v(1)."""
        if self.fixed_draft_cost is not None:
            return self.fixed_draft_cost
        if self._draft.count:
            return self._draft.value
        if self._draft_seed is not None:  # remembered: scaled to this run's speed, as t_v is
            return self._draft_seed * self.verify.scale()
        return self.prior_draft_ratio * self.verify(1)

    def t_verify(self, n: int) -> float:
        return self.verify(n)

    @property
    def t_catchup(self) -> float | None:
        """Seconds per token the draft catches up on after K = 0 rounds; None if unknown."""
        if self._catchup.count:
            return self._catchup.value
        if self._catchup_seed is not None:
            return self._catchup_seed * self.verify.scale()
        return None

    def probing_too_dear(self) -> bool:
        """True when catching the draft up costs more than `probe_budget` of a target step
        per token skipped (see the class doc): then no probe is worth its catch-up."""
        t_c = self.t_catchup
        return t_c is not None and t_c > self.probe_budget * self.verify(1)

    def _rates(self, alpha: float, t_d: float) -> list[float]:
        """rate(K) for K = 0..k_max; E(K) built incrementally (E(K) = E(K-1) + alpha^K)."""
        t_v = self.verify.table()
        rates, e_k, a_k = [], 0.0, 1.0
        for k in range(self.k_max + 1):
            e_k, a_k = e_k + a_k, a_k * alpha
            rates.append(e_k / (k * t_d + t_v[k]))
        return rates

    def _resolve(self, alpha: float | None, draft_cost: float | None) -> tuple[float, float]:
        return (self.alpha if alpha is None else alpha,
                self.t_draft if draft_cost is None else draft_cost)

    # ---- decisions

    def rate(self, k: int) -> float:
        """Predicted tokens per second with K = k at the current estimates."""
        return self._rates(*self._resolve(None, None))[k]

    def greedy_k(self, *, alpha: float | None = None, draft_cost: float | None = None) -> int:
        """argmax_K E(K) / (K * t_d + t_v(K + 1)) over 0..k_max, without probing."""
        alpha, t_d = self._resolve(alpha, draft_cost)
        rates = self._rates(alpha, t_d)
        return max(range(self.k_max + 1), key=lambda k: (rates[k], -k))

    def choose_k(self, *, alpha: float | None = None, draft_cost: float | None = None) -> int:
        """K for the next round: the greedy choice, except on a probe round (see class doc).

        Depends only on what has been observed, so calling it twice without an
        observe_round in between returns the same K.
        """
        k = self.greedy_k(alpha=alpha, draft_cost=draft_cost)
        if (k == 0 and self._since_spec >= self._probe_gap and not self.hopeless(draft_cost)
                and not self.probing_too_dear()):
            return self.probe_size(draft_cost)
        return 0 if k > 0 and _baseline_due(self) else k

    def probe_size(self, draft_cost: float | None = None) -> int:
        """K of a probe round: fixed, or the best K at alpha = 1 (capped)."""
        if self.probe_k is not None or self.k_max == 0:
            return self.probe_k or 0
        return max(1, min(PROBE_K_MAX, self.k_max,
                          self.greedy_k(alpha=1.0, draft_cost=draft_cost)))

    def hopeless(self, draft_cost: float | None = None) -> bool:
        """True when the measured costs rule speculation out even at alpha = 1.

        Then a probe cannot find a better K, only waste time: a probe of the draft model
        after a long K = 0 stretch first has to feed it every token the target made alone.
        t_v is measured every round, so a change of hardware costs is still noticed; only
        a measured draft cost counts (the prior alone never rules speculation out).
        """
        measured = (self.fixed_draft_cost is not None or draft_cost is not None
                    or self._draft.count > 0 or self._draft_seed is not None)
        return measured and self.greedy_k(alpha=1.0, draft_cost=draft_cost) == 0

    def keep_drafting(
        self, n_drafted: int, p_all_accepted: float, *, draft_cost: float | None = None
    ) -> bool:
        """Whether to draft token n_drafted + 1, given n_drafted drafts so far.

        p_all_accepted: predicted probability that all n_drafted drafts are accepted,
        e.g. the product of token_accept_prob(q_i) over them (1.0 when n_drafted = 0).
        The next draft is predicted accepted with probability alpha. Drafting it adds
        P(all n_drafted + 1 accepted) expected tokens, each worth the time a token costs
        at the best rate, 1 / max_K rate(K) (= t_v(1) when K = 0 is best); it costs
        t_d + t_v(n_drafted + 2) - t_v(n_drafted + 1). Valuing a token at t_v(1) instead
        would overshoot the rate-optimal K.

        It looks past the next token: drafting on to m > n_drafted gains
        p_all * (alpha + ... + alpha^(m - n_drafted)) tokens for (m - n_drafted) t_d +
        t_v(m + 1) - t_v(n_drafted + 1), and it drafts on while some m gains more than it
        costs. On a stepped CPU curve (t_v(4) < t_v(3)) the next token alone never pays
        while the one after it does: a one-step rule chose K = 3 and stopped at 1, the
        one length that cannot pay there (the verify batch of 2 costs 1.6 t_v(1)).
        """
        if n_drafted >= self.k_max:
            return False
        alpha, t_d = self._resolve(None, draft_cost)
        seconds_per_token = 1.0 / max(self._rates(alpha, t_d))
        base = self.verify(n_drafted + 1)
        gain, p = 0.0, p_all_accepted
        for m in range(n_drafted + 1, self.k_max + 1):
            p *= alpha
            gain += p * seconds_per_token
            cost = (m - n_drafted) * t_d + self.verify(m + 1) - base
            if gain > cost:
                return True
        return False

    def token_accept_prob(self, q_token_prob: float) -> float:
        """Calibrated acceptance probability of a draft token with draft probability q."""
        return self.acceptance.calibrate(q_token_prob)

    # ---- learning

    def observe_round(
        self,
        k: int,
        n_accepted: int,
        draft_seconds: float,
        verify_seconds: float | None,
        *,
        draft_probs: Sequence[float] | None = None,
        catchup: tuple[int, float] | None = None,
    ) -> None:
        """Learn from one finished round.

        k: drafts sent to the target (the verify batch was k + 1 tokens); n_accepted:
        how many of them were accepted; draft_seconds: time spent drafting those k
        tokens (exclude catching the draft's cache up after K = 0 rounds); verify_seconds:
        the one target decode call over k + 1 tokens; draft_probs: the draft model's
        probability of each drafted token, to calibrate token_accept_prob; catchup:
        (tokens, seconds) of the draft's catch-up decode before this round, when it fed
        more than the usual one or two tokens.
        """
        if not 0 <= k <= self.k_max:
            raise ValueError(f"k must be in 0..{self.k_max}, got {k}")
        if verify_seconds is not None:  # None: the caller observed each decode call itself
            self.verify.observe(k + 1, verify_seconds)
        if catchup is not None and catchup[0] > 2 and catchup[1] >= 0.0:
            # Marginal cost per token: the one-token decode it replaces is t_d's business.
            n, seconds = catchup
            self._catchup.add(max(0.0, seconds - self._one_decode()) / (n - 1))
        self.rounds += 1
        if k == 0:
            self._since_spec += 1
            self._since_baseline = 0
            return
        self._since_baseline += 1
        self._since_spec = 0
        self.acceptance.observe(k, n_accepted, draft_probs)
        if self.fixed_draft_cost is None:
            self._draft.add(draft_seconds / k)
        # A probe that found nothing waits twice as long for the next one.
        self._probe_gap = (self.probe_every if self.greedy_k() > 0
                           else min(2 * self._probe_gap, self.probe_max))

    def _one_decode(self) -> float:
        """A single-token draft decode, the part of a catch-up a normal round pays too."""
        t_d = self.t_draft
        return t_d if math.isfinite(t_d) else 0.0

    def seed_catchup(self, seconds_per_token: float) -> None:
        """t_c remembered from earlier runs on this machine (see costcache)."""
        if not (seconds_per_token >= 0.0 and math.isfinite(seconds_per_token)):
            raise ValueError(f"seed must be finite and >= 0, got {seconds_per_token}")
        self._catchup_seed = seconds_per_token

    @property
    def measured_catchup(self) -> float | None:
        """This run's own median catch-up cost per token; None if it caught up on nothing."""
        return self._catchup.value if self._catchup.count else None

    def seed_draft(self, seconds_per_token: float) -> None:
        """t_d remembered from earlier runs on this machine (see costcache)."""
        if not (seconds_per_token > 0.0 and math.isfinite(seconds_per_token)):
            raise ValueError(f"seed must be finite and > 0, got {seconds_per_token}")
        self._draft_seed = seconds_per_token

    @property
    def measured_draft(self) -> float | None:
        """This run's own median draft cost per token; None if it drafted nothing."""
        return self._draft.value if self._draft.count else None

    def snapshot(self) -> CostSnapshot:
        k = self.greedy_k()
        t_v = self.verify.table()
        return CostSnapshot(
            alpha=self.alpha,
            t_draft=self.t_draft,
            t_verify=tuple(t_v),
            k_best=k,
            speedup=predicted_speedup(self.alpha, k, self.t_draft, t_v),
        )


def _baseline_due(policy) -> bool:
    """Whether a policy drafting K > 0 should run the target alone this round instead.

    t_v(1) is measured early (the second round) and then now and then until it has
    `min_baseline_samples` samples: extrapolated from larger batches it may be far off,
    and it is the baseline every K > 0 is compared against.
    """
    n_baseline = policy.verify.count(1)
    gap = 1 if n_baseline == 0 else policy.probe_every
    return policy._since_baseline >= gap and n_baseline < policy.min_baseline_samples


# --------------------------------------------------------------------------- n-gram drafts


NGRAM_K_MAX = 31
"""The longest n-gram draft --k auto considers (a verify batch of 32)."""

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
            self._smooth = _isotonic(self._value, self._weight)
        return self._smooth[self.bucket(length)]

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


class NgramPolicy:
    """K for free n-gram drafts, from the match length and the measured t_v(n) curve.

    E(K) = 1 + sum_{j=1..K} prod_{i<j} a(L + i) with a() from MatchAcceptance, and
    rate(K) = E(K) / t_v(K + 1) (drafting is free). A batch size never measured is
    priced at `optimism` times its interpolated cost, so a size that might pay gets tried
    once and from then on is priced at what it measured: on CPUs t_v(n) has steps (here a
    batch of 16 cost less than one of 15) that no smooth prior predicts. K > 0 is chosen
    only when it predicts `margin` more than the target alone.
    """

    def __init__(self, k_max: int = NGRAM_K_MAX, *, verify: VerifyCost | None = None,
                 optimism: float = 0.8, margin: float = 0.05, min_baseline_samples: int = 3,
                 probe_every: int = 16) -> None:
        if k_max < 1:
            raise ValueError(f"k_max must be >= 1, got {k_max}")
        if verify is not None and verify.n_max < k_max + 1:
            raise ValueError(f"verify covers batches up to {verify.n_max}, need {k_max + 1}")
        if not 0.0 < optimism <= 1.0:
            raise ValueError(f"optimism must be in (0, 1], got {optimism}")
        self.k_max = k_max
        self.verify = verify if verify is not None else VerifyCost(k_max + 1)
        self.acceptance = MatchAcceptance()
        self.optimism = optimism
        self.margin = margin  # draft only when predicted >= (1 + margin) x the target alone
        self.min_baseline_samples = min_baseline_samples
        self.probe_every = probe_every
        self._since_baseline = 0
        self.rounds = 0

    def new_reply(self) -> None:
        """A new reply starts from the priors of match acceptance (t_v is kept).

        Learned across replies, it cost and did not pay: in serve, after two edit requests
        (long copies of the prompt hold), a code request drafted 15 tokens on a 7-token
        paraphrase of its prompt and ran 11.7-12.3 tok/s instead of 13.6-14.8, while the
        edit requests themselves were no faster the second time (21.1-22.7 against
        19.7-22.5); replayed over the six held-out edit prompts, carrying the table over
        gave 1.72-1.76x against 1.73x afresh."""
        self.acceptance = MatchAcceptance()

    def _costs(self) -> list[float]:
        t_v = self.verify.table()
        return [t if self.verify.is_measured(n) else t * self.optimism
                for n, t in enumerate(t_v[: self.k_max + 1], start=1)]

    def rates(self, match_len: int) -> list[float]:
        """Predicted tokens per second for K = 0..k_max after a match of match_len tokens."""
        t_v = self._costs()
        rates, e_k, p_all = [1.0 / t_v[0]], 1.0, 1.0
        for k, a in enumerate(self.acceptance.profile(match_len, self.k_max), start=1):
            p_all *= a
            e_k += p_all
            rates.append(e_k / t_v[k])
        return rates

    def best(self, match_len: int) -> tuple[int, float]:
        """(K, predicted rate) of the best K for this match, ties to the smaller K."""
        if match_len <= 0:
            return 0, 1.0 / self.verify(1)
        rates = self.rates(match_len)
        k = max(range(len(rates)), key=lambda j: (rates[j], -j))
        if rates[k] < rates[0] * (1.0 + self.margin):
            return 0, rates[0]  # a near break-even gamble loses to noise as often as it wins
        return k, rates[k]

    def choose_k(self, match_len: int) -> int:
        return self.gate(self.best(match_len)[0])

    def gate(self, k: int) -> int:
        """K as chosen by `best`, or 0 when a baseline round is due (see _baseline_due)."""
        return 0 if k > 0 and _baseline_due(self) else k

    def observe_round(self, match_len: int, k: int, n_accepted: int,
                      verify_seconds: float | None) -> None:
        if verify_seconds is not None:  # None: observed per decode call (strict mode)
            self.verify.observe(k + 1, verify_seconds)
        self.rounds += 1
        if k == 0:
            self._since_baseline = 0
            return
        self._since_baseline += 1
        self.acceptance.observe(match_len, k, n_accepted)


class AutoK:
    """The engine's policy for --k auto: a policy per drafter source, one shared t_v curve.

    Model drafts are priced at their measured cost (KPolicy, i.i.d. alpha, with the
    draft's own confidence deciding when to stop). N-gram drafts are free and priced by
    the match behind them (NgramPolicy). With a hybrid drafter, each round with an n-gram
    match takes whichever source predicts the higher rate, so a weak match does not
    displace a good draft model, and both may settle at K = 0 where nothing pays.
    """

    def __init__(self, k_max: int, ngram_k_max: int = NGRAM_K_MAX, **kwargs) -> None:
        self.verify = VerifyCost(max(k_max, ngram_k_max) + 1)
        self.model = KPolicy(k_max, verify=self.verify, **kwargs)
        self.ngram = NgramPolicy(ngram_k_max, verify=self.verify)
        self._p_all = 1.0
        self._source = "model"
        self._match_len = 0

    def new_reply(self) -> None:
        """Called before each reply of a conversation or server (see NgramPolicy.new_reply)."""
        self.ngram.new_reply()

    def plan(self, source: str, match_len: int = 0, fallback: str | None = None) -> tuple[str, int]:
        """(source, K) for the next round.

        source: what the drafter offers ("model" or "ngram"); match_len: the n-gram
        match behind an "ngram" offer; fallback: another source the drafter can use
        instead ("model" for the hybrid drafter).
        """
        self._p_all = 1.0
        self._match_len = match_len
        if source == "ngram":
            k, rate = self.ngram.best(match_len)
            if fallback == "model":
                k_model = self.model.choose_k()
                if k_model > 0 and self.model.rate(k_model) > rate:
                    self._source = "model"
                    return "model", k_model
            self._source = "ngram"
            return "ngram", self.ngram.gate(k)
        self._source = "model"
        return "model", self.model.choose_k()

    def seed(self, t_verify: Mapping[int, float], t_draft: float | None = None,
             t_catchup: float | None = None) -> None:
        """Start from costs measured on this machine before: {n: t_v(n)}, t_d and t_c
        (the draft's catch-up cost per token, see KPolicy).

        A size this run has measured is priced at its own measurements; the others at
        the remembered cost scaled to this run's speed (VerifyCost.seed). Without seeds
        every batch size must be tried before it can be priced, and those trials cost
        more than a short generation gains.
        """
        for n, seconds in t_verify.items():
            self.verify.seed(int(n), seconds)
        if t_draft is not None:
            self.model.seed_draft(t_draft)
        if t_catchup is not None:
            self.model.seed_catchup(t_catchup)

    def measured(self) -> tuple[dict[int, float], float | None]:
        """What this run measured itself: ({n: t_v(n)}, t_d or None), to remember."""
        return self.verify.measured(), self.model.measured_draft

    def keep_drafting(self, n_drafted: int, q_token_prob: float) -> bool:
        policy = self.model
        self._p_all *= policy.token_accept_prob(q_token_prob)
        return policy.keep_drafting(n_drafted, self._p_all)

    def observe_round(self, *, k: int, n_accepted: int, draft_seconds: float,
                      verify_seconds: float, source: str = "model",
                      draft_probs: Sequence[float] | None = None,
                      verify_calls: Sequence[tuple[int, float]] | None = None,
                      catchup: tuple[int, float] | None = None) -> None:
        """Learn from one round. `verify_calls` lists (tokens, seconds) per target decode
        call when verification took several (strict mode); the default is one call of
        k + 1 tokens taking verify_seconds."""
        if verify_calls is not None and len(verify_calls) != 1:
            for n, seconds in verify_calls:
                self.verify.observe(n, seconds)
            verify_seconds = None  # already observed, per call
        if source == "ngram" or (source == "none" and self._source == "ngram"):
            self.ngram.observe_round(self._match_len, k, n_accepted, verify_seconds)
            return
        self.model.observe_round(k, n_accepted, draft_seconds, verify_seconds,
                                 draft_probs=draft_probs if draft_probs else None,
                                 catchup=catchup)
