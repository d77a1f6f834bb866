"""The two halves of --k auto: KPolicy prices model drafts (measured t_d, i.i.d. alpha, the
draft's own confidence deciding when to stop); NgramPolicy prices n-gram drafts (free,
acceptance by the match behind them). AutoK (specli.core.policy) runs one of each over a
shared verify-cost curve. Pure: the engine feeds in seconds and outcomes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from specli.core.costs import (AcceptanceRate, MatchAcceptance, VerifyCost, WindowedMedian,
                               predicted_speedup)

CATCHUP_PRIOR = 0.1
"""t_c / t_v(1) assumed before the draft's catch-up cost is measured (0.08 to 0.11 on a
2-core CPU; a GPU decodes such a batch in about one step's time, and measures it soon)."""
NGRAM_K_MAX = 31
"""The longest n-gram draft --k auto considers (a verify batch of 32)."""
BATCH_ROWS_MAX = 96
"""The most rows of other sequences a shared step is priced with (llama.batch); beyond,
they are priced as this many (8 sequences drafting 11 tokens each)."""


# --------------------------------------------------------------------------- --k auto: model drafts


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
        rows, e_o = self.verify.batch  # other sequences in the step (0, 0.0 alone)
        rates, e_k, a_k = [], 0.0, 1.0
        for k in range(self.k_max + 1):
            e_k, a_k = e_k + a_k, a_k * alpha
            rates.append((e_o + e_k) / (k * t_d + t_v[rows + k]))
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

    def repays_catchup(self, k: int, n_catchup: int, left: int) -> bool:
        """Whether drafting K with the model can repay first feeding it `n_catchup` tokens
        (a prompt it has not decoded: the hybrid drafter decodes it on first use) within
        the `left` tokens still to generate, each coming at rate(k) instead of one per
        t_v(1). Short replies to long prompts (an editor's completion: a 2,000-token FIM
        prompt, 20 tokens out) do not: there the draft's prefill would cost more than it
        saves. With no catch-up cost measured or remembered, t_c is taken as
        CATCHUP_PRIOR x t_v(1): without it, a first request to a fresh server fed a
        1,800-token FIM prompt to the draft (10 s) for a 36-token completion."""
        t_c = self.t_catchup
        if t_c is None:  # not measured or remembered yet: a CPU's ratio (see the class doc)
            t_c = CATCHUP_PRIOR * self.verify(1)
        if k <= 0 or n_catchup <= 2:
            return True
        saved = left * (1.0 / self.rate(0) - 1.0 / self.rate(k))
        return saved > n_catchup * t_c

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
        """t_v of a round's step for K = 0..k_max (with other sequences' rows in it)."""
        t_v = self.verify.table()
        rows = self.verify.batch[0]
        return [t if self.verify.is_measured(n) else t * self.optimism
                for n, t in enumerate(t_v[rows : rows + self.k_max + 1], start=rows + 1)]

    def rates(self, match_len: int, acceptance: MatchAcceptance | None = None) -> list[float]:
        """Predicted tokens per second for K = 0..k_max after a match of match_len tokens
        (of the whole step when other sequences share it: see AutoK.price_batch), with
        acceptance by `acceptance` (default: this policy's own, per reply)."""
        t_v = self._costs()
        e_o = self.verify.batch[1]
        rates, e_k, p_all = [(e_o + 1.0) / t_v[0]], 1.0, 1.0
        table = acceptance if acceptance is not None else self.acceptance
        for k, a in enumerate(table.profile(match_len, self.k_max), start=1):
            p_all *= a
            e_k += p_all
            rates.append((e_o + e_k) / t_v[k])
        return rates

    def best(self, match_len: int,
             acceptance: MatchAcceptance | None = None) -> tuple[int, float]:
        """(K, predicted rate) of the best K for this match, ties to the smaller K."""
        if match_len <= 0:
            rows, e_o = self.verify.batch
            return 0, (e_o + 1.0) / self.verify(rows + 1)
        rates = self.rates(match_len, acceptance)
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
                      verify_seconds: float | None,
                      acceptance: MatchAcceptance | None = None) -> None:
        """Learn from one round; its drafts' outcome goes to `acceptance` when they were
        priced by it (AutoK.price_history), else to this policy's own table."""
        if verify_seconds is not None:  # None: observed per decode call (strict mode)
            self.verify.observe(k + 1, verify_seconds)
        self.rounds += 1
        if k == 0:
            self._since_baseline = 0
            return
        self._since_baseline += 1
        (acceptance if acceptance is not None else self.acceptance).observe(match_len, k,
                                                                              n_accepted)


