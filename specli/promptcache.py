"""Saved KV states of recent prompts, so a client that alternates between conversations
(an editor with two files open, an agent with sub-tasks, a load test) does not pay each
prompt's prefill again. The target keeps one KV sequence. Before a reply (`prepare`), if
its prompt would discard a long part of the live cache, that state is saved here first;
and a reply whose prompt shares more with a saved state than with the live cache starts
from the saved one.

Saving only when the live state is about to be lost, as llama-server saves a slot's
prompt to its `--cache-ram` cache when the slot takes a different prompt, means a
conversation that goes on (each request extends the last: chat, agents) never copies
itself. Saving after every reply instead cost 275 ms per turn at 4,000 tokens of context
on the real pair (target 196, draft 78) before save_state wrote into numpy buffers, and
48 ms + 18 ms after (4.6 ms + 0.9 ms at 400 tokens).

What such a cache is worth: in the serve benchmark's load run (4 prompts, each sent
twice) llama-server evaluated the second sending of each as 1 token where specli serve,
before it had one, decoded 186-225 of them again.

Restoring is exact: the bytes are the KV entries llama.cpp computed for those tokens.
Bounded by entries and bytes (least recently used first out). Pure bookkeeping over
`LlamaModel.save_state` / `load_state`; the caller owns the model.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from specli.core.ngram import common_prefix
from specli.config import PROMPT_CACHE_BYTES
from specli.errors import ModelError

MIN_GAIN = 16  # tokens: a shorter gain is not worth a state copy
# A state is saved only when the new prompt throws away at least this share of the cache.
# The copy costs in proportion to everything cached (130 ms for 2,093 tokens of the 1.5B
# target on a 2-core machine), and a prompt that keeps most of the cache is its own
# continuation: an editor's next keystroke (a 2,000-token FIM prompt dropping the 160
# tokens after the cursor) or a regenerated reply; their old state is not asked for again.
# Switching between conversations or files throws away far more.
SAVE_SHARE = 0.25
# The bound that matters is the bytes (as llama-server bounds its --cache-ram by size
# only). Each reply saves its own state, so a prompt answered at several temperatures or
# seeds holds several: with 8 entries, the serve benchmark's rotation (4 prompts, each
# answered at T 0 and 0.8) evicted states still wanted, and its second repeat prefilled
# 225 of an edit prompt's 249 tokens again (2.7 s) where llama-server restored them.
MAX_ENTRIES = 64
MAX_BYTES = PROMPT_CACHE_BYTES


class PromptStates:
    """An LRU of (tokens, KV bytes) for one model."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 min_gain: int = MIN_GAIN) -> None:
        self.max_entries, self.max_bytes, self.min_gain = max_entries, max_bytes, min_gain
        self._states: OrderedDict[tuple[int, ...], object] = OrderedDict()  # uint8 buffers
        self.restored = 0  # replies that started from a saved state
        self.saved = 0

    def __len__(self) -> int:
        return len(self._states)

    @property
    def nbytes(self) -> int:
        return sum(map(len, self._states.values()))

    def prepare(self, model, prompt: Sequence[int]) -> int:
        """Before a reply to `prompt`: save the live state if the prompt would discard a long
        cached part of it that is not saved already, and restore a saved state that
        shares more of the prompt than the live one does. Returns the tokens restored from a
        saved state (0: none)."""
        usable = len(prompt) - 1  # the last prompt token is always decoded with round 1
        live = min(common_prefix(model.tokens, prompt), usable)
        best_tokens, best = None, live
        for tokens in self._states:
            n = min(common_prefix(tokens, prompt), usable)
            if n > best:
                best_tokens, best = tokens, n
        # Taken before saving the live state: saving may evict it (least recently used).
        data = self._states.get(best_tokens) if best_tokens is not None else None
        thrown = len(model.tokens) - live
        if thrown >= max(self.min_gain, SAVE_SHARE * len(model.tokens)):  # about to throw
            self.keep(model)  # a long part away
        if data is None or best - live < self.min_gain:
            return 0
        try:
            model.load_state(best_tokens, data)
        except ModelError:  # the model is left empty: the prompt is simply decoded
            self._states.pop(best_tokens, None)
            return 0
        if best_tokens in self._states:
            self._states.move_to_end(best_tokens)
        self.restored += 1
        return best

    def keep(self, model) -> None:
        """Save the live state, unless it is short or saved already.

        Costs about 48 ms per 4,000 tokens of the 1.5B target here (109 MiB), against
        seconds of prefill when the conversation comes back.
        """
        if (self.max_bytes > 0 and len(model.tokens) >= self.min_gain
                and tuple(model.tokens) not in self._states):
            self._put(*model.save_state())

    def _put(self, tokens: tuple[int, ...], data) -> None:
        if not tokens or len(data) > self.max_bytes:
            return
        # A saved state that is a prefix of this one adds nothing.
        for old in [t for t in self._states if common_prefix(t, tokens) == len(t)]:
            del self._states[old]
        self._states[tokens] = data
        self.saved += 1
        while len(self._states) > self.max_entries or self.nbytes > self.max_bytes:
            self._states.popitem(last=False)
