"""Prompt-lookup (n-gram) drafting: propose tokens by copying what followed an earlier match.

The drafter needs no model: if the last few tokens of the context occurred earlier (code,
quoted prompts, repeated identifiers), the tokens that followed that earlier occurrence are
a cheap guess at what comes next. The target model still verifies every drafted token, so
a bad guess costs speed, never correctness.

`NgramIndex` keeps, for every n-gram length n in [n_min, n_max], a map from each n-gram to
the stack of positions where a continuation of it starts. Appending a token pushes at most
n_max - n_min + 1 positions; rolling back pops them again, so the engine's
draft -> verify -> rewind rounds cost O(1) per token touched, never a rescan of the context.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["NgramIndex"]


class _TokensView(Sequence):
    """Read-only view of the index's token list (no copy; reflects later changes)."""

    __slots__ = ("_tokens",)

    def __init__(self, tokens: list[int]) -> None:
        self._tokens = tokens

    def __getitem__(self, i):
        return self._tokens[i]  # a slice returns a copy, so the view cannot be mutated

    def __len__(self) -> int:
        return len(self._tokens)

    def __repr__(self) -> str:
        return f"_TokensView({self._tokens!r})"


class NgramIndex:
    """Incremental n-gram index over a token sequence, for prompt-lookup drafting.

    Invariant: for each position p in 1..len-1 and each n in [n_min, min(n_max, p)], the
    key ``tuple(tokens[p-n:p])`` maps to a stack holding p, in increasing order. Only
    positions with at least one token after the n-gram are recorded, which is exactly what
    makes the current suffix (which has no continuation yet) never match itself.
    """

    def __init__(self, n_max: int = 4, n_min: int = 1, *, candidates: int = 1,
                 extend_cap: int = 64) -> None:
        if n_min < 1 or n_max < n_min:
            raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
        if candidates < 1 or extend_cap < 0:
            raise ValueError(f"need candidates >= 1 and extend_cap >= 0, got {candidates}, {extend_cap}")
        self.n_min = n_min
        self.n_max = n_max
        # Among the `candidates` most recent occurrences of the longest matching n-gram,
        # prefer the one whose match runs furthest back (up to extend_cap more tokens):
        # when the answer copies a passage, that is the copy's true source.
        self.candidates = candidates
        self.extend_cap = extend_cap
        self._tokens: list[int] = []
        # n-gram tuple -> continuation starts, oldest first. Tuples of different lengths
        # never compare equal, so one dict serves every n.
        self._starts: dict[tuple[int, ...], list[int]] = {}
        # The best match depends only on the sequence: cached until it changes (a round asks
        # for it up to three times: which drafter, how long a match, which tokens).
        self._version = 0
        self._match: tuple[int, tuple[int, int, int]] | None = None

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> Sequence[int]:
        """The indexed sequence, as a read-only view."""
        return _TokensView(self._tokens)

    def _keys_before(self, p: int) -> Iterable[tuple[int, ...]]:
        """The n-grams ending just before position p (those whose continuation starts at p)."""
        t = self._tokens
        for n in range(self.n_min, min(self.n_max, p) + 1):
            yield tuple(t[p - n : p])

    def extend(self, tokens: Iterable[int]) -> None:
        """Append tokens; O(n_max - n_min + 1) index pushes per token, no rescan."""
        for tok in tokens:
            p = len(self._tokens)
            self._tokens.append(int(tok))  # plain ints: numpy scalars would leak into drafts
            for key in self._keys_before(p):
                self._starts.setdefault(key, []).append(p)
            self._version += 1

    def truncate(self, n: int) -> None:
        """Roll back to the first n tokens, exactly as if the rest had never been appended.

        Cost is proportional to the tokens removed: each removed position pops the entries
        its own append pushed (always the tops of their stacks, since positions only grow).
        """
        if not 0 <= n <= len(self._tokens):
            raise ValueError(f"cannot truncate {len(self._tokens)} tokens to {n}")
        for p in range(len(self._tokens) - 1, n - 1, -1):
            for key in self._keys_before(p):
                self._pop(key, p)
        if n < len(self._tokens):
            self._version += 1
        del self._tokens[n:]

    def _pop(self, key: tuple[int, ...], p: int) -> None:
        stack = self._starts[key]
        assert stack[-1] == p, "index out of step with tokens"  # a bug, never user input
        stack.pop()
        if not stack:
            del self._starts[key]  # keep the dict the same as a fresh build's

    def propose_with_len(self, k: int) -> tuple[list[int], int]:
        """Draft up to k tokens and report the n-gram length of the match behind them.

        Takes the longest suffix (n_max down to n_min) that occurred earlier, picks one of
        its earlier occurrences (the most recent; with candidates > 1, see _best_match),
        and returns the tokens that followed it (fewer than k if the sequence ends first).
        Returns ([], 0) when no suffix matches. The length does not depend on k, so
        ``propose_with_len(0)`` is a cheap "is there a match?".
        """
        tokens, n, _ = self._draft(k)
        return tokens, n

    def lookup(self, k: int) -> tuple[list[int], int]:
        """Like propose_with_len, but report how far back the chosen occurrence agrees.

        That length is at least the n-gram length and at most n_max + extend_cap: a long
        match predicts that the copy goes on far better than the n-gram length alone.
        """
        tokens, _, length = self._draft(k)
        return tokens, length

    def _draft(self, k: int) -> tuple[list[int], int, int]:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        start, n, length = self._best_match()
        if n == 0:
            return [], 0, 0
        return self._tokens[start : start + k], n, length

    def propose(self, k: int) -> list[int]:
        """Draft up to k tokens by prompt lookup; [] when nothing matches or k == 0."""
        return self.propose_with_len(k)[0]

    def _best_match(self) -> tuple[int, int, int]:
        """(continuation start, n-gram length, full match length) of the best match.

        The longest n-gram wins; among its `candidates` most recent occurrences, the one
        agreeing furthest back, ties to the most recent. (0, 0, 0) if nothing matches.
        """
        if self._match is None or self._match[0] != self._version:
            self._match = (self._version, self._find_match())
        return self._match[1]

    def _find_match(self) -> tuple[int, int, int]:
        return self._find(self._tokens)

    def lookup_in(self, query: Sequence[int], k: int) -> tuple[list[int], int]:
        """Like lookup, for the end of another sequence: where in this index's tokens does
        the suffix of `query` occur, and what followed it (up to k tokens)? Returns
        (tokens, how far back the occurrence agrees with `query`), ([], 0) for no match.
        (For a reference text, such as a request's predicted output.)"""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        start, n, length = self._find(query)
        return (self._tokens[start : start + k], length) if n else ([], 0)

    def _find(self, query: Sequence[int]) -> tuple[int, int, int]:
        end = len(query)
        for n in range(min(self.n_max, end), self.n_min - 1, -1):
            stack = self._starts.get(tuple(query[end - n : end]))
            if stack:
                best, best_len = stack[-1], self._extent(query, stack[-1], n)
                for start in stack[-2 : -self.candidates - 1 : -1]:
                    length = self._extent(query, start, n)
                    if length > best_len:
                        best, best_len = start, length
                return best, n, best_len
        return 0, 0, 0

    def _extent(self, query: Sequence[int], start: int, n: int) -> int:
        """How many tokens before `start` agree with the tokens before the end of `query`
        (>= n)."""
        t, end = self._tokens, len(query)
        length, limit = n, min(start, end, n + self.extend_cap)
        while length < limit and t[start - length - 1] == query[end - length - 1]:
            length += 1
        return length


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two sequences share (lists, tuples, any sliceable sequence).

    Compares slices, so the elements are compared in C: blocks of doubling size while
    they agree, then a bisection of the block that does not. Over two equal 4,000-token
    prompts that takes 45 us where a token-by-token Python loop took 164 (300 tokens: 6-8
    against 12.5); the saved prompt states (promptcache) compare each request's prompt
    with every state they hold.
    """
    limit = min(len(a), len(b))
    lo, step = 0, 16
    while True:  # invariant: a[:lo] == b[:lo]
        hi = min(limit, lo + step)
        if not _same(a[lo:hi], b[lo:hi]):
            break
        if hi == limit:
            return limit
        lo, step = hi, step * 2
    while hi - lo > 8:  # a[lo:hi] holds the first difference
        mid = (lo + hi) // 2
        if _same(a[lo:mid], b[lo:mid]):
            lo = mid
        else:
            hi = mid
    while a[lo] == b[lo]:
        lo += 1
    return lo


def _same(x: Sequence[int], y: Sequence[int]) -> bool:
    """Element-wise equality of two slices (a list never equals a tuple in Python)."""
    if type(x) is type(y):
        return x == y
    return list(x) == list(y)
