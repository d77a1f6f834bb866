"""Drafts from every earlier request: an n-gram store over finished requests' tokens.

Agents re-send the same files and write the same edits, tool calls and boilerplate
request after request; the prompt-lookup index (core.ngram) sees only the current prompt.
`DraftHistory` keeps *documents*, one per finished request (its prompt tokens followed by
its output tokens), and answers the same question as the prompt's index: where did the
end of the committed sequence occur before, and what followed it? (SuffixDecoding, and
vLLM's `suffix` speculative method, are the model; llama.cpp's ngram-mod pool the
nearest relative.)

- Keyed: documents are partitioned by a key (an API key, or None); a lookup under one key
  never sees another key's documents. Keys are held as SHA-256 digests, so a saved
  history never holds an API key.
- Bounded: at most `max_tokens` tokens are stored, the least recently used documents
  evicted first (a document is used when added and when a lookup drafts from it).
  Eviction removes the document's index entries, so nothing stale is ever drafted.
- Deduplicated: a conversation grown by a turn re-sends the previous request whole, so a
  document that starts with an earlier one of the same key replaces it, and one that an
  earlier document already starts with (an identical request) is not stored again.
- Frequency-weighted: among the occurrences of the longest match, the draft follows, token
  by token, the continuation most occurrences agree on (each weighted by how far back it
  agrees with the committed sequence), and stops where that agreement falls below
  `min_share` of the whole, or at `len_factor` times the match length, or at k.

Costs, measured with benchmarks/history_lookup.py (2-core CPU, CPython 3, 200,000 tokens
stored as 100 documents of Zipf-distributed ids over a 150k vocabulary, so nearly every
n-gram is distinct: the worst case for memory): 45 MiB of Python objects (tracemalloc;
~240 bytes per stored token, nearly all of it the n-gram dict); a lookup takes 3-5 us
with no match or one occurrence, 30 us when 32 occurrences disagree at once, 160 us
when 32 agree on a 16-token draft (the vote), beside 1-40 us for NgramIndex.lookup_in
over as many tokens; adding a 2,000-token document and evicting one about 13 ms, of
which the n-gram hashing (3 ms) is done outside the lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from specli.core.costs import SharedMatchAcceptance

__all__ = ["DraftHistory", "DEFAULT_MAX_TOKENS", "check_history_path", "open_history", "save_history", "vocab_stamp"]

DEFAULT_MAX_TOKENS = 200_000  # ~45 MiB at worst (see above): a few agent sessions' worth
MAX_ACCEPTANCE_TABLES = 16  # sampling settings whose history-draft acceptance is kept
_STRIDE = 1 << 32  # a stored position is doc_id * _STRIDE + p: one int, sortable by doc
_FORMAT = "specli-draft-history/1"


class _Part:
    """One key's documents and their n-gram index."""

    __slots__ = ("docs", "starts")

    def __init__(self) -> None:
        self.docs: dict[int, array] = {}  # doc id -> its tokens
        # hash of an n-gram -> the stored position where a continuation of it starts (an
        # int: most n-grams occur once, and a list costs 64 bytes more), or a list of them
        # in increasing order: doc ids only grow and positions grow within a document, so
        # removing a document is a bisection and one slice per n-gram, never a scan. A
        # hash, not the tuple, to save 30-40 bytes an entry: lookups check the tokens.
        self.starts: dict[int, int | list[int]] = {}

    def push(self, gram: int, pos: int) -> None:
        have = self.starts.get(gram)
        if have is None:
            self.starts[gram] = pos
        elif type(have) is int:
            self.starts[gram] = [have, pos]
        else:
            have.append(pos)

    def drop(self, gram: int, lo: int, hi: int) -> None:
        """Remove the positions in [lo, hi) (one document's) stored under `gram`."""
        have = self.starts[gram]
        if type(have) is int:
            if lo <= have < hi:
                del self.starts[gram]
            return
        del have[bisect_left(have, lo) : bisect_left(have, hi)]
        if len(have) <= 1:
            if have:
                self.starts[gram] = have[0]
            else:
                del self.starts[gram]

    def recent(self, gram: int, n: int) -> Sequence[int]:
        """The n most recently stored positions under `gram`, newest first."""
        have = self.starts.get(gram)
        if have is None:
            return ()
        return (have,) if type(have) is int else have[: -n - 1 : -1]


class DraftHistory:
    """A bounded, keyed, thread-safe n-gram store over earlier requests, for drafting.

    `add(key, tokens)` when a request finishes; `lookup(key, committed, k)` every round.
    n_max/n_min: the n-gram lengths matched (as NgramIndex); candidates: how many of the
    most recent occurrences of the match are weighed; extend_cap: how far past the n-gram
    the agreement is measured; min_share: the weighted share of occurrences a draft must
    keep agreeing with; len_factor: a match of n tokens drafts at most len_factor * n.
    """

    def __init__(self, max_tokens: int = DEFAULT_MAX_TOKENS, n_max: int = 4, n_min: int = 2,
                 *, candidates: int = 32, extend_cap: int = 64, min_share: float = 0.5,
                 len_factor: int = 2) -> None:
        if n_min < 1 or n_max < n_min:
            raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
        if max_tokens < 0 or candidates < 1 or extend_cap < 0 or len_factor < 1:
            raise ValueError("need max_tokens >= 0, candidates >= 1, extend_cap >= 0 and "
                             "len_factor >= 1")
        if not 0.0 < min_share <= 1.0:
            raise ValueError(f"min_share must be in (0, 1], got {min_share}")
        self.max_tokens, self.n_max, self.n_min = max_tokens, n_max, n_min
        self.candidates, self.extend_cap = candidates, extend_cap
        self.min_share, self.len_factor = min_share, len_factor
        self._lock = threading.Lock()
        self._parts: dict[str | None, _Part] = {}  # by key digest
        self._lru: OrderedDict[int, str | None] = OrderedDict()  # doc id -> part, oldest use first
        self._total = 0  # tokens stored, all keys together
        self._next_id = 0
        self._acceptance: OrderedDict[object, SharedMatchAcceptance] = OrderedDict()
        self.path: Path | None = None  # the file it is saved to (open_history), if any
        self.vocab: str | None = None  # the vocabulary's stamp written with it

    # --- how its drafts fare -------------------------------------------------------------
    def acceptance_for(self, sampling) -> SharedMatchAcceptance:
        """How drafts from this history fare under `sampling` (a config.SamplingConfig;
        every greedy setting is one), by match length: one table per setting, shared by
        every reply that drafts from the history under it (a server's slots, a chat's
        turns), so --k auto learns it from all of them at once (AutoK.price_history).

        Per setting, since a point-mass draft is kept with the target's probability of it:
        the same match that a greedy reply copies whole is cut short at T = 0.8 (4 clients,
        code prompts: 117 of 224 history draft tokens kept at T = 0.8 after a greedy pass had
        taught one shared table that they hold). At most MAX_ACCEPTANCE_TABLES settings are
        kept, the least recently used dropped. Not saved with the documents.
        """
        key = "greedy" if sampling is None or sampling.greedy else sampling
        with self._lock:
            table = self._acceptance.get(key)
            if table is None:
                table = self._acceptance[key] = SharedMatchAcceptance()
                while len(self._acceptance) > MAX_ACCEPTANCE_TABLES:
                    self._acceptance.popitem(last=False)
            else:
                self._acceptance.move_to_end(key)
            return table

    # --- size -------------------------------------------------------------------------
    def __len__(self) -> int:
        """Documents stored, all keys together."""
        return len(self._lru)

    @property
    def total_tokens(self) -> int:
        """Tokens stored, all keys together (never more than max_tokens)."""
        return self._total

    # --- adding -----------------------------------------------------------------------
    def add(self, key: str | None, tokens: Sequence[int]) -> None:
        """Store one finished request: its prompt tokens followed by its output tokens.

        A document longer than max_tokens keeps its last max_tokens tokens (the output and
        what it answered); one too short to hold an n-gram and a continuation is dropped.
        """
        doc = self._document(tokens)
        if doc is None:
            return
        grams = self._grams(doc)  # outside the lock: the slots' lookups need not wait
        with self._lock:
            self._add(_digest(key), doc, grams)

    def _document(self, tokens: Sequence[int]) -> array | None:
        doc = array("i", tokens[max(0, len(tokens) - self.max_tokens) :] if self.max_tokens else ())
        return doc if len(doc) > self.n_min else None

    def _add(self, pid: str | None, doc: array, grams: list[tuple[int, ...]]) -> None:
        part = self._parts.setdefault(pid, _Part())
        for doc_id, old in list(part.docs.items()):
            if _starts_with(old, doc):  # nothing new (the same request again)
                self._lru.move_to_end(doc_id)
                return
            if _starts_with(doc, old):  # the same conversation, grown: store it once
                self._remove(doc_id)
        # Room first, so that the bound holds at every moment (len(doc) <= max_tokens).
        while self._total + len(doc) > self.max_tokens:
            self._remove(next(iter(self._lru)))
        part = self._parts.setdefault(pid, _Part())  # _remove drops an emptied part
        self._store(pid, part, doc, grams)

    def _store(self, pid: str | None, part: _Part, doc: array,
               grams: list[tuple[int, ...]]) -> None:
        doc_id, self._next_id = self._next_id, self._next_id + 1
        part.docs[doc_id] = doc
        base = doc_id * _STRIDE
        for p, hashes in enumerate(grams, start=1):
            pos = base + p  # one int object for all of p's n-grams: 32 bytes, not 96
            for gram in hashes:
                part.push(gram, pos)
        self._lru[doc_id] = pid
        self._total += len(doc)

    def _remove(self, doc_id: int) -> None:
        """Forget a document and every index entry it made."""
        pid = self._lru.pop(doc_id)
        part = self._parts[pid]
        doc = part.docs.pop(doc_id)
        lo, hi = doc_id * _STRIDE, (doc_id + 1) * _STRIDE
        for gram in {gram for hashes in self._grams(doc) for gram in hashes}:
            part.drop(gram, lo, hi)
        if not part.docs:
            del self._parts[pid]
        self._total -= len(doc)

    def _grams(self, doc: array) -> list[tuple[int, ...]]:
        """For p in 1..len-1, the hashes of the n-grams ending just before position p:
        only positions with a continuation are recorded (as in NgramIndex)."""
        t, ns = doc.tolist(), range(self.n_min, self.n_max + 1)
        return [tuple(hash(tuple(t[p - n : p])) for n in ns if n <= p) for p in range(1, len(t))]

    # --- looking up -------------------------------------------------------------------
    def lookup(self, key: str | None, committed: Sequence[int], k: int, *,
               longer_than: int = 0) -> tuple[list[int], int, int]:
        """Draft up to k tokens continuing `committed` from this key's earlier requests.

        Returns (tokens, match_len, count): match_len is how far back the best occurrence
        agrees with the end of `committed` (n_min .. n_max + extend_cap; 0: no match, or
        one whose occurrences disagree on the very next token), count how many of the
        weighed occurrences back the whole draft (with k = 0: its first token).
        ``lookup(key, committed, 0)`` is a cheap "how long a match?". longer_than: a match
        agreeing no further back than this is reported as none (the caller has as good a
        match elsewhere). Drafting tokens counts as a use of the documents they came from
        (LRU); a match length alone does not.
        """
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        with self._lock:
            part = self._parts.get(_digest(key))
            hits = self._occurrences(part, committed) if part is not None else []
            if not hits or hits[0][0] <= longer_than:
                return [], 0, 0
            match_len = hits[0][0]
            # Always draft one token: a match whose occurrences disagree at once is no match.
            tokens, backers = self._vote(hits, min(max(k, 1), self.len_factor * match_len))
            if not tokens:
                return [], 0, 0
            if k == 0:
                return [], match_len, len(backers)
            for _, doc_id, _, _ in backers:
                self._lru.move_to_end(doc_id)
            return tokens, match_len, len(backers)

    def _occurrences(self, part: _Part, committed: Sequence[int]) -> list[tuple]:
        """(agreement, doc id, doc, continuation start) of the `candidates` most recent
        occurrences of the longest n-gram ending `committed`; the furthest-agreeing first,
        ties to the most recent. [] when no n-gram matches."""
        end = len(committed)
        width = min(end, self.n_max + self.extend_cap)
        tail = array("i", committed[end - width :])  # compared in C, against doc slices
        for n in range(min(self.n_max, end), self.n_min - 1, -1):
            positions = part.recent(hash(tuple(tail[width - n :])), self.candidates)
            hits = []
            for pos in positions:
                doc_id, p = divmod(pos, _STRIDE)
                doc = part.docs[doc_id]
                length = self._extent(doc, p, tail, n)
                if length:  # 0: another n-gram with the same hash
                    hits.append((length, doc_id, doc, p))
            if hits:
                hits.sort(key=lambda h: -h[0])  # stable: equal agreement stays most recent first
                return hits
        return []

    def _extent(self, doc: array, p: int, tail: array, n: int) -> int:
        """How many tokens before doc[p] agree with the end of `tail`, up to n +
        extend_cap; 0 if fewer than n do (the n-gram's hash matched, its tokens did not)."""
        width = len(tail)
        if p < n:  # a shorter n-gram's hash: too near its document's start to be this one
            return 0
        limit = min(p, width, n + self.extend_cap)
        # Repeated requests agree all the way to the cap: one comparison settles them.
        if doc[p - limit : p] == (tail if limit == width else tail[width - limit :]):
            return limit
        if doc[p - n : p] != tail[width - n :]:
            return 0
        length = n
        while doc[p - length - 1] == tail[width - length - 1]:
            length += 1  # stops before limit: the slice compared first differs somewhere
        return length

    def _vote(self, hits: list[tuple], limit: int) -> tuple[list[int], list[tuple]]:
        """Build the draft token by token from the continuation the most agreement-weight
        backs; stop when the occurrences still backing it weigh less than min_share of
        all. Returns (draft, the occurrences that back all of it)."""
        total = sum(h[0] for h in hits)
        draft: list[int] = []
        voters = hits
        while len(draft) < limit:
            i = len(draft)
            if len(voters) == 1:  # nothing left to disagree: copy the rest
                _, _, doc, p = voters[0]
                draft += doc[p + i : p + limit].tolist()
                break
            tally: dict[int, int] = {}
            for weight, _, doc, p in voters:
                if p + i < len(doc):
                    tally[doc[p + i]] = tally.get(doc[p + i], 0) + weight
            if not tally:
                break
            tok = max(tally, key=tally.__getitem__)  # ties: the furthest-agreeing voter's
            if tally[tok] < self.min_share * total:
                break
            draft.append(tok)
            voters = [h for h in voters if h[3] + i < len(h[2]) and h[2][h[3] + i] == tok]
        return draft, voters

    # --- on disk (only when asked) ----------------------------------------------------
    def save(self, path: str | os.PathLike, vocab: str | None = None) -> None:
        """Write every document (keys as digests only), least recently used first.
        `vocab`: the tokenizer's stamp (vocab_stamp), which load checks."""
        with self._lock:
            docs = [{"key": pid, "tokens": self._parts[pid].docs[doc_id].tolist()}
                    for doc_id, pid in self._lru.items()]
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"format": _FORMAT, "vocab": vocab, "documents": docs}))
        os.replace(tmp, path)  # a reader never sees half a file

    def load(self, path: str | os.PathLike, vocab: str | None = None) -> None:
        """Add the documents of a file `save` wrote, keeping their order of use (the most
        recent survive when they do not all fit). ValueError for another kind of file, or
        one saved under another tokenizer than `vocab` (its token ids mean other text)."""
        try:
            data = json.loads(Path(path).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a saved draft history")
        if vocab is not None and data.get("vocab") not in (None, vocab):
            raise ValueError(f"{path} was saved with another model's vocabulary; "
                             "use another file for this model")
        for saved in data["documents"]:
            doc = self._document([int(t) for t in saved["tokens"]])
            if doc is not None:
                grams = self._grams(doc)
                with self._lock:
                    self._add(saved["key"], doc, grams)  # the key is stored as its digest


def vocab_stamp(model) -> str:
    """A short digest of `model`'s vocabulary (its size and every 97th token's bytes): a
    saved history's token ids are only worth drafting from under the same tokenizer."""
    h = hashlib.sha256(str(model.n_vocab).encode())
    for t in range(0, model.n_vocab, 97):
        h.update(model.token_bytes(t) + b"\0")
    return h.hexdigest()[:16]


def check_history_path(path: str | os.PathLike | None) -> None:
    """--draft-history FILE, before anything loads: UsageError unless FILE is a file or
    can become one (its folder exists)."""
    from specli.errors import UsageError

    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"--draft-history: {p} is a folder; give a file")
    if not p.exists() and not p.parent.is_dir():
        raise UsageError(f"--draft-history: the folder {p.parent} does not exist")


def open_history(path: str | os.PathLike | None, model) -> DraftHistory:
    """A DraftHistory for `model`'s tokens, with what `path` holds if it exists (serve and
    chat --draft-history; `save_history` writes it back). UsageError, one line, for a file
    that is not one or belongs to another vocabulary."""
    from specli.errors import UsageError

    history = DraftHistory()
    if path is None:
        return history
    history.path, history.vocab = Path(path), vocab_stamp(model)
    if history.path.exists():
        try:
            history.load(path, history.vocab)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"--draft-history: {e}") from None
    return history


def save_history(history: DraftHistory) -> str | None:
    """Write `history` back to the file it was opened from (nothing if none): None, or the
    error in one line."""
    if history.path is None:
        return None
    try:
        history.save(history.path, history.vocab)
    except OSError as e:
        return f"could not save the draft history to {history.path}: {e.strerror or e}"
    return None


def _digest(key: str | None) -> str | None:
    """The partition of `key`: a digest, so that nothing here (or on disk) holds the key."""
    return None if key is None else hashlib.sha256(key.encode()).hexdigest()


def _starts_with(seq: array, prefix: array) -> bool:
    """Whether `seq` begins with the whole of `prefix` (cheap rejections first)."""
    n = len(prefix)
    return (n <= len(seq) and seq[0] == prefix[0] and seq[n - 1] == prefix[n - 1]
            and seq[:n] == prefix)
