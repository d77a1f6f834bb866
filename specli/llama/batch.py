"""Several generations in one llama.cpp context: sequences decoded in shared steps.

A multi-sequence LlamaModel (`n_seq` > 1) holds one KV stream per sequence. A `SeqView`
is one of those sequences with the interface the engine reads of a model (decode,
truncate, n_past, reuse_prefix, save/load state; the vocabulary is the model's), so each
generation runs the unchanged engine, with its own drafts, rng and verification: its
output is distributed exactly as its target alone.

A `StepGroup` batches them. A generating thread is a member; each decode a member asks
for waits until every member has asked for one (or left), and then one llama_decode
holds every waiting member's tokens on that model: each sequence's pending token and its
drafts, a prompt chunk of a sequence that just joined, the drafts of every sequence that
drafts with the model. The draft model's asks are decoded first (a step's drafts come
before its verification), but never twice in a row with prompt chunks while the target's
asks wait, so a draft's long catch-up does not stall the others' verification. A
sequence's prompt is decoded at most `prefill_share` tokens per step while others
generate, so a long prompt delays the others by a bounded amount per step (fairness).

A `solo` view (--strict) is always decoded in calls of its own: strict's bit-for-bit
promise holds only for batches of the shape it measured. A thread that is not a member
(a cache warm-up, a measurement) decodes at once, alone.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from specli.core.ngram import common_prefix
from specli.errors import ContextFullError, ModelError

SHARED_PREFILL = 128
"""Prompt tokens of one sequence per shared step while other sequences generate. At about
90 prompt tokens/s for the 1.5B target on 2 cores, 128 tokens add about 1.4 s to each of
the others' steps; the whole prompt still goes in ceil(n / 128) steps."""


@dataclass
class _Ask:
    """One decode a member is waiting for."""

    view: "SeqView"
    tokens: list[int]  # still to decode
    n_logits: int
    rows: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


class StepGroup:
    """Members generating at once; their decodes batched per step (see the module doc)."""

    def __init__(self, first=None, prefill_share: int = SHARED_PREFILL) -> None:
        """`first`: the model whose asks are decoded first when both have some (the draft)."""
        self.first, self.prefill_share = first, prefill_share
        self._cv = threading.Condition()
        self._members: dict[int, "SeqView"] = {}  # member id -> its target view (load stats)
        self._asks: list[_Ask] = []
        self._busy = False
        self._last_prefill_first = False  # the last step was the first model's prompt chunks
        self.steps = 0  # llama_decode calls made for members
        self.rows = 0  # tokens they held
        self.shared = 0  # calls that held more than one sequence

    @contextmanager
    def member(self, view: "SeqView"):
        """While inside, this thread's decodes wait for the other members' (see module doc)."""
        key = threading.get_ident()
        with self._cv:
            self._members[key] = view
        try:
            yield
        finally:
            with self._cv:
                self._members.pop(key, None)
                self._cv.notify_all()  # the others may all be waiting now

    def is_member(self) -> bool:
        return threading.get_ident() in self._members

    def load(self, view: "SeqView") -> tuple[int, float]:
        """(rows, tokens) the other members put into a step, for pricing this sequence's
        drafts: one row and one token each, as if they ran the target alone.

        So a sequence drafts only where its drafts pay against a step of the others at
        K = 0: the comparison the server's promise is about (never slower than --k 0).
        Their own last rounds are no forecast of this step, since they plan it at the same
        moment: priced beside another sequence's last 25-row copy, a 3-token match drafted
        20 tokens as if its rows were nearly free, in a step where that copy had ended
        (4 rows without it), and none was accepted (issue 27, 4 clients, code prompts).
        And their tokens per step, smoothed over rounds, counted a newcomer's prompt as
        made tokens for a dozen steps (up to 62 where 3 were right)."""
        with self._cv:
            n = sum(1 for v in self._members.values() if v is not view)
        return n, float(n)

    def decode(self, ask: _Ask) -> None:
        """Wait until `ask` is decoded, decoding the step ourselves when it is due."""
        with self._cv:
            self._asks.append(ask)
            self._cv.notify_all()
            while not ask.done:
                if not self._busy and len(self._asks) >= len(self._members):
                    self._step()
                else:
                    self._cv.wait()
        if ask.error is not None:
            raise ask.error

    def _step(self) -> None:
        """Decode one step (called holding the condition, which it releases meanwhile)."""
        parts = self._take()
        self._busy = True
        self._cv.release()
        try:
            _run(parts)
        finally:
            self._cv.acquire()
            self._busy = False
            self.steps += 1
            self.rows += sum(len(t) for _, t, _ in parts)
            self.shared += len(parts) > 1
            for ask, _, _ in parts:
                if ask.done:
                    self._asks.remove(ask)
            self._cv.notify_all()

    def _take(self) -> list[tuple[_Ask, list[int], int]]:
        """The asks of one step: (ask, tokens this call, logits rows this call)."""
        model = self._model_now()
        asks = [a for a in self._asks if a.view.model is model]
        solo = [a for a in asks if a.view.solo]
        if solo:  # strict: a call of its own, as it was measured
            a = solo[0]
            return [(a, list(a.tokens), a.n_logits)]
        asks = [a for a in asks if not a.view.solo]
        asks.sort(key=lambda a: len(a.tokens))  # verify rows first, then prompt chunks
        budget, outputs = model.n_batch, model.n_outputs_max
        cap = self.prefill_share if len(asks) > 1 or len(self._members) > 1 else model.n_batch
        parts = []
        for a in asks:
            n, room = len(a.tokens), min(budget, max(cap, a.n_logits))
            if n <= room and a.n_logits <= outputs:
                parts.append((a, list(a.tokens), a.n_logits))
                budget, outputs = budget - n, outputs - a.n_logits
            elif n - a.n_logits > 0 and room > 0:  # a chunk of its prompt, no rows yet
                take = min(room, n - a.n_logits)
                parts.append((a, a.tokens[:take], 0))
                budget -= take
            if budget <= 0:
                break
        self._last_prefill_first = model is self.first and any(r == 0 for _, _, r in parts)
        return parts

    def _model_now(self):
        """The first model while it has asks, except right after a step of its prompt
        chunks when the other model's asks wait (see the module doc)."""
        models = {id(a.view.model): a.view.model for a in self._asks}
        if len(models) == 1:
            return next(iter(models.values()))
        others = [m for m in models.values() if m is not self.first]
        if self.first is not None and id(self.first) in models and not self._last_prefill_first:
            return self.first
        return others[0]


def _run(parts: list[tuple[_Ask, list[int], int]]) -> None:
    """One llama_decode over the parts, and each ask's bookkeeping."""
    model = parts[0][0].view.model
    try:
        with model.lock:
            rows, dt = model.decode_parts([(a.view.seq, a.view.n_past, t, r)
                                           for a, t, r in parts])
    except BaseException as e:  # noqa: BLE001 - every waiter must hear of it
        for a, _, _ in parts:
            a.error, a.done = (e if isinstance(e, ModelError) else ModelError(str(e))), True
        return
    total = sum(len(t) for _, t, _ in parts)
    for (a, tokens, r), out in zip(parts, rows):
        a.view.tokens.extend(tokens)
        a.view.decode_seconds += dt
        del a.tokens[: len(tokens)]
        if not a.tokens:
            a.rows, a.done = out, True
            a.view.last_rows, a.view.last_seconds = total, dt


@dataclass(eq=False)
class SeqView:
    """Sequence `seq` of a multi-sequence LlamaModel, read as a model of its own."""

    model: object  # backend.LlamaModel with n_seq > seq
    seq: int
    group: StepGroup
    tokens: list[int] = field(default_factory=list)  # exactly what its KV cells hold
    decode_seconds: float = 0.0
    solo: bool = False  # --strict: decoded in calls of its own (see the module doc)
    last_rows: int = 0  # tokens in the last decode call it took part in (all sequences')
    last_seconds: float = 0.0  # that call's llama_decode time

    def __getattr__(self, name: str):  # the vocabulary, n_ctx, path... are the model's
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.model, name)

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def decode(self, tokens: Sequence[int], n_logits: int = 1) -> np.ndarray:
        """As LlamaModel.decode, for this sequence; rows are copies (see decode_parts)."""
        n = len(tokens)
        if not 0 <= n_logits <= n:
            raise ValueError(f"n_logits={n_logits} for {n} tokens")
        if self.n_past + n > self.model.n_ctx:
            raise ContextFullError(f"context full: {self.n_past} + {n} tokens exceed "
                                   f"--ctx {self.model.n_ctx}")
        ask = _Ask(self, list(tokens), n_logits)
        if n == 0:
            return np.empty((0, self.model.n_vocab), dtype=np.float32)
        if self.group.is_member():
            self.group.decode(ask)
        else:  # not generating with the others: at once, alone (in n_batch chunks)
            while not ask.done:
                step = ask.tokens[: self.model.n_batch]
                last = len(step) == len(ask.tokens)
                if not last and len(ask.tokens) - len(step) < n_logits:
                    step = ask.tokens[: len(ask.tokens) - n_logits]
                _run([(ask, step, n_logits if len(step) == len(ask.tokens) else 0)])
                if ask.error is not None:
                    raise ask.error
        return ask.rows

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self.n_past:
            raise ValueError(f"truncate({n}) with n_past={self.n_past}")
        with self.model.lock:
            self.model.seq_rm(self.seq, n)
        del self.tokens[n:]

    def reuse_prefix(self, tokens: Sequence[int]) -> int:
        n = min(common_prefix(self.tokens, tokens), len(tokens) - 1)
        self.truncate(n)
        return n

    def reset(self) -> None:
        self.truncate(0)

    def save_state(self):
        with self.model.lock:
            buf, n = self.model.seq_state(self.seq)
        if n == 0 and self.tokens:
            raise ModelError(f"llama.cpp could not save the KV state of {self.model.path.name}")
        return tuple(self.tokens), buf

    def load_state(self, tokens: Sequence[int], data) -> None:
        self.reset()
        if not tokens:
            return
        with self.model.lock:
            ok = self.model.set_seq_state(self.seq, data)
        if not ok:
            self.reset()
            raise ModelError(f"llama.cpp could not restore a KV state of {self.model.path.name}")
        self.tokens = list(tokens)

    def batch_load(self) -> tuple[int, float]:
        """(rows, tokens) the other generating sequences put into a step (StepGroup.load)."""
        return self.group.load(self)


def views(model, group: StepGroup) -> list[SeqView]:
    """One SeqView per sequence of `model`."""
    return [SeqView(model, s, group) for s in range(model.n_seq)]
