"""K policies: how many tokens to draft each round, and where a policy's memory comes from.

A policy answers `plan(source, match_len, fallback, origin=...) -> (source, K)` before each round and
learns from `observe_round(...)` after it. `FixedK` is `--k N`; `AutoK` is `--k auto`, a
policy per drafter source (`KPolicy` for model drafts, `NgramPolicy` for n-gram drafts,
both in specli.core.kpolicy) over one shared verify-cost curve, priced with the cost
model in specli.core.costs.

The life cycle lives here too: `make_policy` builds the policy for a SpecConfig and seeds
--k auto from the costs remembered on this machine (specli.core.costcache); `remember`
keeps what a generation measured for the next one.

Pure apart from that cache: no models, no clocks. The engine measures seconds and feeds
them in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from specli.config import SpecConfig
from specli.core.costs import VerifyCost
from specli.core.drafters import StopRule
from specli.core.kpolicy import BATCH_ROWS_MAX, NGRAM_K_MAX, CostSnapshot, KPolicy, NgramPolicy

__all__ = ["AutoK", "CostSnapshot", "FixedK", "KPolicy", "NGRAM_K_MAX", "NgramPolicy",
           "Policy", "make_policy", "remember", "seed_policy"]




class Policy(Protocol):
    """What the engine asks of a K policy, and what a session does with it."""

    keep_drafting: StopRule | None  # None: draft all K tokens

    def plan(self, source: str, match_len: int = 0, fallback: str | None = None,
             catchup: int = 0, left: int | None = None,
             origin: str = "context") -> tuple[str, int]: ...

    def observe_round(self, **measured) -> None: ...

    def new_reply(self) -> None:
        """A conversation's next reply begins (what is per reply starts afresh)."""

    def price_chunk(self, chunk: int | None) -> None:
        """Strict mode verifies in calls of at most `chunk` tokens: price rounds so."""

    def price_batch(self, rows: int, tokens: float) -> None:
        """Other sequences share the next step (llama.batch): they put `rows` tokens into
        its decode and get `tokens` from it. Price drafts by the whole step."""

    def price_history(self, acceptance) -> None:
        """Price drafts from earlier requests (origin "history") by `acceptance`, a
        costs.MatchAcceptance shared by every reply that drafts from that history (None:
        price them as the reply's own matches)."""

    def seed(self, t_verify: Mapping[int, float], t_draft: float | None = None,
             t_catchup: float | None = None) -> None:
        """Start from costs measured on this machine before."""

    def measured(self):
        """What this run measured, to remember: ({n: t_v(n)}, t_d), or None."""


class FixedK:
    """The K policy of `--k N`: always N. It measures nothing and remembers nothing."""

    keep_drafting = None  # fixed K drafts all K tokens

    def __init__(self, k: int) -> None:
        self.k = k

    def plan(self, source: str, match_len: int = 0, fallback: str | None = None,
             catchup: int = 0, left: int | None = None,
             origin: str = "context") -> tuple[str, int]:
        return source, self.k

    def observe_round(self, **_) -> None:
        pass

    def new_reply(self) -> None:
        pass

    def price_chunk(self, chunk: int | None) -> None:
        pass

    def price_batch(self, rows: int, tokens: float) -> None:
        pass

    def price_history(self, acceptance) -> None:
        pass

    def seed(self, t_verify, t_draft=None, t_catchup=None) -> None:
        pass

    def measured(self) -> None:
        return None


# --------------------------------------------------------------------------- life cycle


def make_policy(spec: SpecConfig, costs=None, target=None, draft=None) -> Policy:
    """FixedK for --k N; for --k auto, AutoK seeded from the costs remembered for these
    models (`costs`: a costcache.CostCache, or None to start from the priors)."""
    if spec.k != "auto":
        return FixedK(spec.k)
    policy = AutoK(spec.k_max)
    seed_policy(policy, costs, target, draft)
    return policy


def seed_policy(policy: Policy, costs, target, draft) -> None:
    """Give a policy the costs remembered for these models (a fixed K ignores them)."""
    if costs is None:
        return
    from specli.core.costcache import model_key

    d_key = model_key(draft) if draft is not None else None
    policy.seed(costs.t_verify(model_key(target)),
                costs.t_draft(d_key) if d_key else None,
                costs.t_catchup(d_key) if d_key else None)


def remember(policy: Policy, costs, target, draft) -> None:
    """Blend what a policy measured into the cost cache: nothing for a fixed K, nothing
    measured beside other work (threads.Governor.take_busy)."""
    gov = getattr(target, "governor", None)
    if gov is not None and gov.take_busy():
        # Measured beside other work, maybe on fewer threads than the cache key says:
        # such t_v, t_d and t_catchup would seed the next idle run's --k auto wrongly.
        return
    measured = policy.measured()
    if measured is None or costs is None:
        return
    from specli.core.costcache import store_measured

    store_measured(costs, target, draft, *measured, t_catchup=policy.model.measured_catchup)


class AutoK:
    """The engine's policy for --k auto: a policy per drafter source, one shared t_v curve.

    Model drafts are priced at their measured cost (KPolicy, i.i.d. alpha, with the
    draft's own confidence deciding when to stop). N-gram drafts are free and priced by
    the match behind them (NgramPolicy). With a hybrid drafter, each round with an n-gram
    match takes whichever source predicts the higher rate, so a weak match does not
    displace a good draft model, and both may settle at K = 0 where nothing pays.
    """

    def __init__(self, k_max: int, ngram_k_max: int = NGRAM_K_MAX, **kwargs) -> None:
        # Sizes up to a shared step's (llama.batch): other sequences' rows plus this one's.
        self.verify = VerifyCost(max(k_max, ngram_k_max) + 1 + BATCH_ROWS_MAX)
        self.model = KPolicy(k_max, verify=self.verify, **kwargs)
        self.ngram = NgramPolicy(ngram_k_max, verify=self.verify)
        self._p_all = 1.0
        self._source = "model"
        self._match_len = 0
        self._history = None  # the shared acceptance of history drafts (price_history)
        self._table = None  # the acceptance this round's n-gram draft was priced by

    def new_reply(self) -> None:
        """Called before each reply of a conversation or server (see NgramPolicy.new_reply)."""
        self.ngram.new_reply()

    def price_chunk(self, chunk: int | None) -> None:
        """Strict mode: price each round as the sequence of verify calls it makes."""
        self.verify.set_chunk(chunk)

    def price_batch(self, rows: int, tokens: float) -> None:
        """A shared step: round K is worth (tokens + E(K)) / (K t_d + t_v(rows + K + 1)),
        the whole step's rate, so a sequence drafts only where that beats its K = 0 share
        (tokens + 1) / t_v(rows + 1): speculation never slows the batch (issue 27)."""
        self.verify.set_batch(min(rows, BATCH_ROWS_MAX), tokens)

    def price_history(self, acceptance) -> None:
        """Drafts from earlier requests are priced by their own acceptance table, shared
        by every reply and slot that drafts from the history and kept for its life: a
        match into another request's reply (boilerplate, a shared opening) holds far less
        often than a copy of the reply's own prompt of the same length, and one reply
        alone sees too few of them to learn that before they have cost their rows (issue
        27: 10 of 50 history draft tokens accepted in a 4-client pass, each rejected row
        also slowing the other three sequences)."""
        self._history = acceptance

    def plan(self, source: str, match_len: int = 0, fallback: str | None = None,
             catchup: int = 0, left: int | None = None,
             origin: str = "context") -> tuple[str, int]:
        """(source, K) for the next round.

        source: what the drafter offers ("model" or "ngram"); match_len: the n-gram
        match behind an "ngram" offer; origin: where that match is ("context",
        "reference", "history": see price_history); fallback: another source the drafter can use
        instead ("model" for the hybrid drafter); catchup: tokens the draft model must
        decode before it can draft (0: none), left: tokens still to generate (None: no
        limit): the model is not used where catching it up cannot pay in what is left.
        """
        self._p_all = 1.0
        self._match_len = match_len

        def model_k() -> int:
            k = self.model.choose_k()
            if left is not None and not self.model.repays_catchup(k, catchup, left):
                return 0
            return k

        if source == "ngram":
            self._table = self._history if origin == "history" else None
            k, rate = self.ngram.best(match_len, self._table)
            if fallback == "model":
                k_model = model_k()
                if k_model > 0 and self.model.rate(k_model) > rate:
                    self._source = "model"
                    return "model", k_model
            self._source = "ngram"
            return "ngram", self.ngram.gate(k)
        self._source = "model"
        return "model", model_k()

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
        if verify_calls is not None and (len(verify_calls) != 1 or verify_calls[0][0] != k + 1):
            # several calls (strict), or one shared with other sequences (llama.batch)
            for n, seconds in verify_calls:
                if n <= self.verify.n_max:  # a shared call may hold another's prompt chunk
                    self.verify.observe(n, seconds)
            verify_seconds = None  # already observed, per call
        if source == "ngram" or (source == "none" and self._source == "ngram"):
            self.ngram.observe_round(self._match_len, k, n_accepted, verify_seconds,
                                     acceptance=self._table)
            return
        self.model.observe_round(k, n_accepted, draft_seconds, verify_seconds,
                                 draft_probs=draft_probs if draft_probs else None,
                                 catchup=catchup)
