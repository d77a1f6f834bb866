"""Logit rules a request may set: OpenAI's logit_bias, presence_penalty and frequency_penalty,
and llama.cpp's repeat_penalty.

A rule changes the target's logits at every position, before the warps (temperature,
top-k, top-p, min-p), as a function of the output so far. Under speculation the output
"so far" at a verified position includes the drafted tokens before it, so the engine
applies the rules row by row with that prefix (engine._RuledRows): each row of p is then
exactly the row the target alone would sample from under the same rules, and rejection
sampling keeps the output distributed as the target's. The model drafter applies them to
its own logits too, so that q follows p and fewer drafts are rejected; exactness does not
depend on that.

Presence and frequency penalties count the generated tokens only, not the prompt (as vLLM
and OpenAI do): logit[j] -= frequency * count[j] + presence * (count[j] > 0).
repeat_penalty is llama.cpp's: for each distinct token among the last `repeat_last_n`
tokens of the context (the prompt's end included, then the output), a positive logit is
divided by it and a negative one multiplied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

BIAS_RANGE = 100.0  # OpenAI: logit_bias values in [-100, 100]
PENALTY_RANGE = 2.0  # OpenAI: presence/frequency penalties in [-2, 2]
REPEAT_MAX = 10.0  # repeat_penalty in (0, 10]; 1 is off (llama.cpp's default)
REPEAT_LAST_N = 64  # llama.cpp's default window


@dataclass(frozen=True)
class LogitRules:
    """logit_bias ({token id: added logit}), the presence and frequency penalties, and the
    repeat penalty over the last `repeat_last_n` tokens."""

    bias: tuple[tuple[int, float], ...] = ()
    presence: float = 0.0
    frequency: float = 0.0
    repeat: float = 1.0
    repeat_last_n: int = REPEAT_LAST_N
    _ids: np.ndarray = field(init=False, repr=False, compare=False)
    _values: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for tok, value in self.bias:
            if not (isinstance(tok, int) and tok >= 0):
                raise ValueError(f"logit_bias: token ids are integers >= 0, got {tok!r}")
            if not -BIAS_RANGE <= value <= BIAS_RANGE:
                raise ValueError(f"logit_bias: values are in [-100, 100], got {value}")
        for name in ("presence", "frequency"):
            value = getattr(self, name)
            if not -PENALTY_RANGE <= value <= PENALTY_RANGE:
                raise ValueError(f"{name}_penalty must be in [-2, 2], got {value}")
        if not 0.0 < self.repeat <= REPEAT_MAX:
            raise ValueError(f"repeat_penalty must be in (0, 10], got {self.repeat}")
        if not 0 <= self.repeat_last_n <= 1 << 20:
            raise ValueError(f"repeat_last_n must be >= 0, got {self.repeat_last_n}")
        object.__setattr__(self, "_ids", np.array([t for t, _ in self.bias], dtype=np.int64))
        object.__setattr__(self, "_values", np.array([v for _, v in self.bias], dtype=np.float32))

    @classmethod
    def of(cls, bias: Mapping[int, float] | None = None, presence: float = 0.0,
           frequency: float = 0.0, repeat: float = 1.0,
           repeat_last_n: int = REPEAT_LAST_N) -> "LogitRules | None":
        """The rules, or None when they change nothing (the engine's fast path)."""
        rules = cls(tuple(sorted((bias or {}).items())), presence, frequency, repeat,
                    repeat_last_n)
        return rules if rules.active else None

    @property
    def active(self) -> bool:
        return (bool(self.bias) or self.presence != 0.0 or self.frequency != 0.0
                or self._repeating)

    @property
    def _repeating(self) -> bool:
        return self.repeat != 1.0 and self.repeat_last_n > 0

    @property
    def window(self) -> int:
        """How many tokens before the output the rules read (the prompt's end)."""
        return self.repeat_last_n if self._repeating else 0

    def after(self, logits: np.ndarray, committed: Sequence[int], start: int,
              drafts: Sequence[int] = ()) -> np.ndarray:
        """apply() at the position after committed + drafts, the output beginning at
        committed[start] (what comes before it is the prompt, for the repeat window)."""
        before = committed[max(0, start - self.window) : start] if self.window else ()
        return self.apply(logits, [*committed[start:], *drafts], before)

    def apply(self, logits: np.ndarray, output: Sequence[int],
              before: Sequence[int] = ()) -> np.ndarray:
        """A new row: `logits` (one position, [V]) under the rules, after `output`, which
        follows `before` (the prompt's last `window` tokens: the repeat penalty's)."""
        out = np.array(logits, dtype=np.float32)  # a copy: rows may be llama.cpp's buffer
        n = len(out)
        if self._repeating:
            last = [*before, *output][-self.repeat_last_n:]
            if last:
                ids = np.unique(np.asarray(last, dtype=np.int64))
                ids = ids[ids < n]
                vals = out[ids]
                out[ids] = np.where(vals > 0, vals / self.repeat, vals * self.repeat)
        if len(self._ids):
            keep = self._ids < n
            out[self._ids[keep]] += self._values[keep]
        if (self.presence or self.frequency) and len(output):
            ids, counts = np.unique(np.asarray(output, dtype=np.int64), return_counts=True)
            keep = ids < n
            out[ids[keep]] -= self.frequency * counts[keep] + self.presence
        return out
