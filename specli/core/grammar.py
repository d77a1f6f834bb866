"""Grammars for structured output (JSON schema, JSON, GBNF, Lark, regex), exact under speculation.

A grammar limits which tokens may come next, as a function of the output so far. The
library is llguidance (chosen by measurement, see benchmarks/README.md: 0.014 ms per mask
over Qwen's 151,936 ids, token-level rollback, drafts checked in one call). specli uses
it in three places, all in the engine's round (core.engine):

  n-gram drafts   cut at the first token the grammar forbids, before they cost a verify
                  row (Constraint.allowed_prefix). A point-mass draft cut by a rule of
                  the context stays a draft that verification makes exact;
  model drafts    q is masked at each drafted position, after the drafts before it
                  (Constraint.push / pop around the draft loop): a forbidden token is
                  never drafted, so nothing is cut afterwards (cutting a sampled draft
                  would bias the residual it is replaced from);
  verification    row i of p is masked with the grammar's state after the output and
                  drafts[:i] (engine._RuledRows): p is then the target's distribution
                  under the grammar, and rejection sampling keeps the output distributed
                  exactly as the target alone under the same grammar. After the round the
                  matcher rolls back the drafts and advances along what was committed.

A masked logit is -inf; the model's end-of-generation tokens are allowed where the grammar
may end, and only they once it has ended.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from specli.errors import SpecliError


# Between JSON tokens: nothing, a space, or a line break or two and up to 20 spaces or tabs
# (llama.cpp's json-schema-to-grammar `space` rule). Unbounded whitespace, llguidance's
# default, let a small model write newlines until max_tokens.
JSON_LAYOUT = {"whitespace_pattern": r"(?: |\n{1,2}[ \t]{0,20})?"}


class GrammarError(SpecliError):
    """A grammar or schema that cannot be compiled (the message says why, and where)."""


@dataclass(frozen=True)
class Grammar:
    """A compiled-on-use grammar: llguidance's grammar text, and what it was made from."""

    source: str  # llguidance's top-level grammar (JSON text)
    kind: str  # "json_schema" | "json_object" | "gbnf" | "lark" | "regex" | "tool_calls"

    @classmethod
    def json_schema(cls, schema: dict | str, kind: str = "json_schema") -> "Grammar":
        """Output that parses as JSON and validates against `schema` (a dict or JSON text)."""
        import llguidance as llg

        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise GrammarError(f"the JSON schema is not JSON: {e}") from None
        if not isinstance(schema, dict):
            raise GrammarError("a JSON schema is an object")
        if "x-guidance" not in schema:  # whitespace as llama.cpp's json-schema grammars allow
            schema = {**schema, "x-guidance": JSON_LAYOUT}
        return cls(_compile(lambda: llg.LLMatcher.grammar_from_json_schema(schema)), kind)

    @classmethod
    def json_object(cls) -> "Grammar":
        """Any JSON object (OpenAI's response_format json_object)."""
        return cls.json_schema({"type": "object"}, kind="json_object")

    @classmethod
    def gbnf(cls, text: str) -> "Grammar":
        """A llama.cpp GBNF grammar (its `root` rule), converted to llguidance's Lark."""
        from llguidance.gbnf_to_lark import gbnf_to_lark

        try:
            lark = gbnf_to_lark(text)
        except Exception as e:  # the converter raises plain exceptions with a useful message
            raise GrammarError(f"GBNF: {_first_line(e)}") from None
        return cls.lark(lark, kind="gbnf")

    @classmethod
    def lark(cls, text: str, kind: str = "lark") -> "Grammar":
        import llguidance as llg

        return cls(_compile(lambda: llg.LLMatcher.grammar_from_lark(text)), kind)

    @classmethod
    def regex(cls, pattern: str) -> "Grammar":
        import llguidance as llg

        return cls(_compile(lambda: llg.LLMatcher.grammar_from_regex(pattern)), "regex")

    def check(self, tokenizer) -> None:
        """Raise GrammarError unless the grammar compiles against `tokenizer` (an
        llguidance LLTokenizer: see llama.backend.LlamaModel.grammar_tokenizer)."""
        import llguidance as llg

        error = llg.LLMatcher.validate_grammar(self.source, tokenizer)
        if error:
            raise GrammarError(f"{self.kind}: {_first_line(error)}")

    def constraint(self, tokenizer, eog: Sequence[int]) -> "Constraint":
        """A fresh matcher at the start of the output; `eog`: the model's end-of-generation
        ids (the tokenizer's eos set: see LlamaModel.grammar_tokenizer)."""
        import llguidance as llg

        self.check(tokenizer)
        return Constraint(llg.LLMatcher(tokenizer, self.source), tokenizer.vocab_size, eog)


def _compile(build) -> str:
    try:
        return build()
    except (ValueError, TypeError, RuntimeError) as e:
        raise GrammarError(_first_line(e)) from None


def _first_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def masked(row: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """`row` with the ids not in `ok` (bool, over the grammar's vocabulary) at -inf, in place."""
    n = min(len(row), len(ok))
    row[:n][~ok[:n]] = -np.inf
    row[n:] = -np.inf
    return row


class Constraint:
    """One generation's matcher: its state is the committed output, plus drafts pushed
    while a round examines them (push/pop); masks rows of logits with it."""

    def __init__(self, matcher, n_vocab: int, eog: Sequence[int]) -> None:
        self.matcher = matcher
        self.n_vocab = n_vocab
        self.eog = frozenset(int(t) for t in eog)
        self._end = np.zeros(n_vocab, dtype=bool)
        self._end[[t for t in self.eog if t < n_vocab]] = True
        self.pushed = 0  # tokens beyond the committed output (drafts under examination)
        self._consumed = 0  # of which the matcher consumed (the rest follow an end)

    def allowed(self) -> np.ndarray:
        """Which ids may come next: bool [n_vocab]."""
        if self._consumed < self.pushed:
            return self._end  # past a drafted end of generation: only the end again
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        ok = np.unpackbits(bits, bitorder="little")[: self.n_vocab].astype(bool)
        if not ok.any():
            raise GrammarError(f"grammar: no token may follow ({self.matcher.get_error() or 'dead end'})")
        return ok

    def mask(self, row: np.ndarray) -> np.ndarray:
        """`row` (one position's logits) with the ids forbidden now at -inf, in place."""
        return masked(row, self.allowed())

    def allowed_prefix(self, tokens: Sequence[int]) -> int:
        """How many of `tokens`, from the committed output, the grammar allows in a row
        (an end-of-generation token where the grammar may end, and nothing after it)."""
        tokens = [int(t) for t in tokens]
        end = next((i for i, t in enumerate(tokens) if t in self.eog), len(tokens))
        n = int(self.matcher.validate_tokens(tokens[:end])) if end else 0
        if n < end or end == len(tokens):
            return n
        if n:  # may the grammar end after them? (llguidance validates its own eos only)
            self.matcher.consume_tokens(tokens[:n])
        ends = self.matcher.is_accepting() or self.matcher.is_stopped()
        if n:
            self.matcher.rollback(n)
        return n + 1 if ends else n

    def push(self, token: int) -> None:
        """Consume a draft token under examination (undone by pop). An end-of-generation
        token is not given to the matcher (llguidance's rollback would not count it): the
        rows after it, which the output never reaches, allow only the end again."""
        if self._consumed == self.pushed and int(token) not in self.eog:
            if not self.matcher.consume_token(int(token)):
                raise GrammarError(f"grammar: token {token} is not allowed here")
            self._consumed += 1
        self.pushed += 1

    def pop(self) -> None:
        """Roll back every pushed draft token: the state is the committed output again."""
        if self._consumed:
            self.matcher.rollback(self._consumed)
        self.pushed = self._consumed = 0

    def commit(self, tokens: Sequence[int]) -> None:
        """Advance along tokens appended to the output (after pop), up to its end."""
        for t in tokens:
            if int(t) in self.eog:
                break  # the engine stops there
            if not self.matcher.consume_token(int(t)):
                raise GrammarError(f"grammar: committed token {t} is not allowed")

    @property
    def finished(self) -> bool:
        """The grammar has ended: only end-of-generation tokens may follow."""
        return bool(self.matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        """The output so far is a complete sentence of the grammar."""
        return bool(self.matcher.is_accepting())
