"""Drafters propose up to K tokens per round, with the distribution q each was drawn from.

KV bookkeeping contract (shared with the engine): the committed sequence is
prompt + generated text; its last token is always *pending*, i.e. not yet decoded by a
model. A drafter catches up on whatever committed tokens it has not seen, proposes, and
after verification is told how many committed tokens now exist (`rewind`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from specli.config import SamplingConfig
from specli.core.ngram import common_prefix
from specli.core.sampling import Dist, greedy_token, warp


@dataclass
class Proposal:
    """Draft tokens of one round, each with the q it was sampled from (None when greedy)."""

    tokens: list[int] = field(default_factory=list)
    q: list[Dist | None] = field(default_factory=list)
    source: str = "none"  # "model" | "ngram" | "none"
    seconds: float = 0.0  # all drafting time, for the time split
    catchup_seconds: float = 0.0  # of which: feeding the draft tokens it missed (K=0 rounds)
    catchup_tokens: int = 0  # how many it fed then (0: the usual one or two)
    q_probs: list[float] = field(default_factory=list)  # q(x) of each draft, for --k auto


# keep_drafting(i, q_prob) -> bool: asked before drafting token i+1 (i drafted so far),
# with q_prob the draft's probability of the token it just drafted. Used by --k auto.
StopRule = Callable[[int, float], bool]


class Drafter(Protocol):
    """What the engine asks of a drafter. Register a new one in DRAFTERS (below)."""

    name: str
    fallback: str | None  # another source a round may use instead (the policy decides)
    draft_model: object | None  # the LlamaModel it decodes with (None: it runs no model)

    def prefill(self, committed: Sequence[int]) -> None:
        """At the start of a generation: catch up on the prompt (or note it, lazily)."""

    def constrain(self, rules, start: int, constraint=None) -> None:
        """At the start of a generation: the logit rules p is under (core.logits.LogitRules,
        or None), with the output beginning at committed[start], and the grammar's
        core.grammar.Constraint (or None), at the committed output whenever propose is
        called. Rules in q only make drafts follow p more closely; a sampled draft must
        keep to the grammar (mask q with it, pushing and popping its own drafts), since the
        engine cuts only point-mass drafts at a forbidden token."""

    def next_source(self, committed: Sequence[int]) -> str: ...

    def match(self, committed: Sequence[int]) -> tuple[int, str]:
        """(how far back the n-gram match that would draft agrees with the end of
        `committed`, where that match is: "context", "reference" or "history"); (0, "")
        for a drafter without lookup."""

    def propose(self, committed: Sequence[int], k: int, rng: np.random.Generator,
                keep_drafting: StopRule | None = None, source: str | None = None) -> Proposal: ...

    def rewind(self, committed: Sequence[int]) -> None: ...


class ModelDrafter:
    """Drafts with a small llama.cpp model, autoregressively, one decode per token."""

    name = "model"
    fallback = None

    def __init__(self, model, sampling: SamplingConfig, n_vocab: int) -> None:
        self.model = model  # backend.LlamaModel
        self.sampling = sampling
        self.n_vocab = n_vocab  # ids >= n_vocab are masked (target/draft sizes differ)
        self.rules, self.start, self.constraint = None, 0, None  # see constrain

    def constrain(self, rules, start: int, constraint=None) -> None:
        self.rules, self.start, self.constraint = rules, start, constraint

    def prefill(self, committed: Sequence[int], lazy: bool = False) -> None:
        """Decode all but the pending last token (done with the prompt, off the round clock).

        lazy: only keep the cached prefix that still matches; the first model round then
        catches up on the rest (on the round clock), and a generation that never drafts
        with the model never decodes the prompt in it at all.
        """
        self.model.reuse_prefix(committed)
        if not lazy:
            self.model.decode(list(committed[self.model.n_past : len(committed) - 1]), 0)

    def next_source(self, committed: Sequence[int]) -> str:
        return "model"

    def match(self, committed: Sequence[int]) -> tuple[int, str]:
        return 0, ""

    def propose(self, committed, k, rng, keep_drafting=None, source=None) -> Proposal:
        t0 = time.perf_counter()
        prop = Proposal(source="model")
        # Catch up: usually just the pending token; after an all-accepted round also the
        # last draft token, which the draft proposed but never decoded itself; after K = 0
        # rounds, everything the target alone produced.
        feed = list(committed[self.model.n_past :])
        logits = self.model.decode(feed, 1)[0]
        if len(feed) > 2:
            prop.catchup_seconds = time.perf_counter() - t0
            prop.catchup_tokens = len(feed)
        grammar = self.constraint
        try:
            for i in range(k):
                row = logits[: self.n_vocab]
                if self.rules is not None:  # q under the rules p is under, after these drafts
                    row = self.rules.after(row, committed, self.start, prop.tokens)
                if grammar is not None:  # q keeps to the grammar: nothing forbidden is drafted
                    row = grammar.mask(np.array(row, dtype=np.float32) if self.rules is None
                                       else row)
                x, q = self._draw(row, rng)
                prop.tokens.append(x)
                prop.q.append(q)
                if keep_drafting is not None:
                    prop.q_probs.append(q.prob(x) if q is not None else _top_prob(row))
                if i == k - 1:
                    break  # the last draft is never decoded here: verification may reject it
                if keep_drafting is not None and not keep_drafting(i + 1, prop.q_probs[-1]):
                    break
                if grammar is not None:
                    if grammar.finished or self.model.is_eog(x):
                        break  # nothing but the end may follow: no draft after it pays
                    grammar.push(x)
                logits = self.model.decode([x], 1)[0]
        finally:
            if grammar is not None:
                grammar.pop()  # the engine's state again: the committed output
        prop.seconds = time.perf_counter() - t0
        return prop

    def _draw(self, logits: np.ndarray, rng) -> tuple[int, Dist | None]:
        if self.sampling.greedy:
            return greedy_token(logits), None
        q = warp(logits, self.sampling)
        return q.sample(rng), q

    @property
    def draft_model(self):
        return self.model

    def rewind(self, committed: Sequence[int]) -> None:
        # Keep only committed tokens; the pending last one is decoded next round.
        self.model.truncate(min(self.model.n_past, len(committed) - 1))


def _top_prob(logits: np.ndarray) -> float:
    """Greedy drafts' confidence: the softmax probability of the argmax."""
    return float(1.0 / np.exp(logits - logits.max()).sum())


class NgramDrafter:
    """Prompt-lookup drafting: propose what followed the longest earlier match of the suffix.

    Three places are looked in: the context (`index`), a request's predicted output
    (`reference`, set_reference) and earlier requests (`history`, set_history); the match
    agreeing furthest back drafts. q is a point mass on each proposed token, so
    verification accepts x with p(x) and on rejection samples p with x removed (see
    sampling.residual).
    """

    name = "ngram"
    fallback = None
    draft_model = None

    def __init__(self, n_max: int = 4, n_min: int = 2, candidates: int = 8) -> None:
        from specli.core.ngram import NgramIndex

        self.index = NgramIndex(n_max=n_max, n_min=n_min, candidates=candidates)
        self.reference = None  # an NgramIndex over a predicted output (set_reference)
        self.reference_drafted = self.reference_accepted = 0  # tokens, this generation
        self.history, self.history_key = None, None  # earlier requests (set_history)
        self.history_drafted = self.history_accepted = 0  # tokens, this generation
        # (start, tokens, source) of a reference or history draft being verified
        self._pending: tuple[int, list[int], str] | None = None

    def set_reference(self, tokens: Sequence[int] | None, anchor: Sequence[int] = ()) -> None:
        """Draft from `tokens` as well (a request's predicted output: what the reply is
        expected to repeat), as if they followed `anchor` (the end of the prompt, so that
        the first round already drafts their start). A match there wins over one in the
        context when it agrees as far back. None: no reference. Resets the counts."""
        from specli.core.ngram import NgramIndex

        self.reference, self._pending = None, None
        self.reference_drafted = self.reference_accepted = 0
        if tokens:
            i = self.index
            self.reference = NgramIndex(n_max=i.n_max, n_min=i.n_min, candidates=i.candidates)
            self.reference.extend([*anchor, *tokens])

    def set_history(self, history, key: str | None = None) -> None:
        """Draft from earlier requests as well: `history` is a core.history.DraftHistory
        (shared, e.g. by a server's slots), `key` the partition this request may read (its
        API key; None: the keyless one). A match there drafts only when it agrees further
        back than the context's and the reference's (they are this request's own). None:
        no history. Resets the counts."""
        self.history, self.history_key, self._pending = history, key, None
        self.history_drafted = self.history_accepted = 0

    def constrain(self, rules, start: int, constraint=None) -> None:
        pass  # point-mass drafts: the rules change p, verification accounts for it, and
        # the engine cuts a draft at the first token the grammar forbids

    def _lookup(self, committed: Sequence[int], k: int) -> tuple[list[int], int, str]:
        """(draft, how far back its match agrees, where it comes from: "context",
        "reference" or "history")."""
        self.sync(committed)
        tokens, length = self.index.lookup(k)
        source = "context"
        if self.reference is not None:
            ref_tokens, ref_length = self.reference.lookup_in(committed, k)
            if ref_length and ref_length >= length:
                tokens, length, source = ref_tokens, ref_length, "reference"
        if self.history is not None:  # last: the request's own sources win ties
            h_tokens, h_length, _ = self.history.lookup(self.history_key, committed, k,
                                                        longer_than=length)
            if h_length:
                tokens, length, source = h_tokens, h_length, "history"
        return tokens, length, source

    def prefill(self, committed: Sequence[int]) -> None:
        """At the start of a generation: keep only the indexed prefix that still matches."""
        n = common_prefix(self.index.tokens, committed)
        self.index.truncate(n)
        self.index.extend(committed[n:])

    def sync(self, committed: Sequence[int]) -> None:
        # Within a generation the committed sequence only grows past what was indexed.
        if len(self.index) > len(committed):
            self.index.truncate(len(committed))
        self.index.extend(committed[len(self.index) :])

    def next_source(self, committed: Sequence[int]) -> str:
        return "ngram"

    def match(self, committed: Sequence[int]) -> tuple[int, str]:
        """How far back the best earlier occurrence (in the context, the reference or the
        history: the one that would draft) agrees with the end of `committed`, and where
        it is."""
        _, length, origin = self._lookup(committed, 0)
        return length, origin

    def match_len(self, committed: Sequence[int]) -> int:
        return self.match(committed)[0]

    def propose(self, committed, k, rng, keep_drafting=None, source=None) -> Proposal:
        t0 = time.perf_counter()
        tokens, _, origin = self._lookup(committed, k)
        if origin != "context" and tokens:
            self._pending = (len(committed), list(tokens), origin)
        return Proposal(tokens, [Dist.point(x) for x in tokens], "ngram", time.perf_counter() - t0)

    def rewind(self, committed: Sequence[int]) -> None:
        if self._pending is not None:  # a reference or history draft was verified: count it
            start, tokens, source = self._pending
            self._pending = None
            kept = common_prefix(tokens, committed[start:])
            if source == "reference":
                self.reference_drafted += len(tokens)
                self.reference_accepted += kept
            else:
                self.history_drafted += len(tokens)
                self.history_accepted += kept
        self.sync(committed)


class HybridDrafter:
    """n-gram proposals when a long enough match exists, the draft model otherwise."""

    name = "auto"
    fallback = "model"  # an n-gram round may go to the model instead (the policy decides)

    def __init__(self, model_drafter: ModelDrafter, ngram: NgramDrafter, min_match: int = 3) -> None:
        self.model_drafter = model_drafter
        self.ngram = ngram
        self.min_match = min_match

    @property
    def draft_model(self):
        return self.model_drafter.model

    def prefill(self, committed: Sequence[int]) -> None:
        # The draft model is a fallback here: where the text repeats, or where model drafts
        # do not pay (--k auto), it may never run. So its prompt is decoded on first use.
        # On a 2-core CPU the 0.5B draft's prefill was ~15% of a 64-token reply's time.
        self.model_drafter.prefill(committed, lazy=True)
        self.ngram.prefill(committed)

    def constrain(self, rules, start: int, constraint=None) -> None:
        self.model_drafter.constrain(rules, start, constraint)

    def next_source(self, committed: Sequence[int]) -> str:
        return "ngram" if self.ngram.match_len(committed) >= self.min_match else "model"

    def match(self, committed: Sequence[int]) -> tuple[int, str]:
        return self.ngram.match(committed)

    def propose(self, committed, k, rng, keep_drafting=None, source=None) -> Proposal:
        if (source or self.next_source(committed)) == "ngram":
            prop = self.ngram.propose(committed, k, rng)
            if prop.tokens:
                return prop
        return self.model_drafter.propose(committed, k, rng, keep_drafting)

    def rewind(self, committed: Sequence[int]) -> None:
        self.model_drafter.rewind(committed)
        self.ngram.rewind(committed)


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class DrafterKind:
    """A drafter by name: how to build it and what it needs (for --drafter, bench, serve)."""

    name: str
    build: Callable[..., Drafter]  # (draft_model | None, sampling, n_vocab, ngram) -> Drafter
    loads_model: bool  # a draft model is loaded for it (the builder says if it must be)
    lookup: bool = False  # drafts by n-gram lookup: the context's, and a request's prediction


def _model(draft, sampling, n_vocab, ngram) -> Drafter:
    if draft is None:
        from specli.errors import UsageError

        raise UsageError("--drafter model needs a draft model: give --draft or --pair")
    return ModelDrafter(draft, sampling, n_vocab)


def _ngram(draft, sampling, n_vocab, ngram) -> Drafter:
    return ngram if ngram is not None else NgramDrafter()


def _hybrid(draft, sampling, n_vocab, ngram) -> Drafter:
    ngram = _ngram(draft, sampling, n_vocab, ngram)
    if draft is None:  # no draft model: n-gram lookup alone
        return ngram
    return HybridDrafter(ModelDrafter(draft, sampling, n_vocab), ngram)


DRAFTERS: dict[str, DrafterKind] = {k.name: k for k in (
    DrafterKind("model", _model, loads_model=True),  # the draft model, token by token
    DrafterKind("ngram", _ngram, loads_model=False, lookup=True),  # prompt lookup (free)
    DrafterKind("auto", _hybrid, loads_model=True, lookup=True),  # n-gram, else the model
)}
DRAFTER_NAMES = tuple(DRAFTERS)


def drafter_kind(name: str) -> DrafterKind:
    """The registered drafter `name`; a UsageError naming the choices otherwise."""
    kind = DRAFTERS.get(name)
    if kind is None:
        from specli.errors import UsageError

        raise UsageError(f"--drafter must be {_choices()}, got {name!r}")
    return kind


def _choices() -> str:
    names = list(DRAFTER_NAMES)
    return ", ".join(names[:-1]) + " or " + names[-1]


def make_drafter(name: str, draft_model, sampling: SamplingConfig, n_vocab: int,
                 ngram: NgramDrafter | None = None) -> Drafter:
    """The drafter `name` over `draft_model` (None when none is loaded).

    `ngram`: an NgramDrafter to reuse (its index keeps the prefix a new prompt shares with
    the last one, so a conversation is not re-indexed from scratch every reply).
    """
    return drafter_kind(name).build(draft_model, sampling, n_vocab, ngram)
