"""Tests for the draft history (core.history): keys, the memory bound, dedupe, exact
removal, the frequency-weighted draft, threads; the n-gram drafter reading it; and a
conversation on the tiny models drafting one reply from an earlier one, exactly."""

from __future__ import annotations

import random
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specli.core.drafters import NgramDrafter
from specli.core.history import _STRIDE, DraftHistory, _digest


def unique(n: int, start: int) -> list[int]:
    """n tokens no other document here shares."""
    return list(range(start, start + n))


def check_index(h: DraftHistory) -> None:
    """The index holds exactly the live documents' n-grams: no stale position, none missing."""
    assert h.total_tokens == sum(len(d) for part in h._parts.values() for d in part.docs.values())
    assert h.total_tokens <= h.max_tokens
    for part in h._parts.values():
        expected: dict[int, list[int]] = {}
        for doc_id, doc in sorted(part.docs.items()):
            for p, hashes in enumerate(h._grams(doc), start=1):
                for gram in hashes:
                    expected.setdefault(gram, []).append(doc_id * _STRIDE + p)
        got = {g: [v] if isinstance(v, int) else list(v) for g, v in part.starts.items()}
        assert got == expected


def brute_lookup(docs: list[list[int]], query: list[int], k: int, h: DraftHistory):
    """The documented rule, by scanning every document (oldest first): the longest n-gram,
    its `candidates` most recent occurrences weighted by how far back they agree, the
    continuation with the most weight token by token while it keeps min_share of it."""
    end = len(query)
    for n in range(min(h.n_max, end), h.n_min - 1, -1):
        occ = [(d, p) for d in docs for p in range(n, len(d)) if d[p - n : p] == query[end - n :]]
        if occ:
            break
    else:
        return [], 0, 0

    def extent(d, p):
        length, limit = 0, min(p, end, n + h.extend_cap)
        while length < limit and d[p - length - 1] == query[end - length - 1]:
            length += 1
        return length

    hits = sorted(((extent(d, p), d, p) for d, p in reversed(occ[-h.candidates :])),
                  key=lambda x: -x[0])
    total, draft, limit = sum(w for w, _, _ in hits), [], min(max(k, 1), h.len_factor * hits[0][0])
    while len(draft) < limit:
        weights: dict[int, int] = {}
        for w, d, p in hits:
            if d[p : p + len(draft)] == draft and p + len(draft) < len(d):
                weights[d[p + len(draft)]] = weights.get(d[p + len(draft)], 0) + w
        if not weights or max(weights.values()) < h.min_share * total:
            break
        draft.append(max(weights, key=weights.__getitem__))
    if not draft:
        return [], 0, 0
    backing = sum(1 for _, d, p in hits if d[p : p + len(draft)] == draft)
    if k == 0:
        return [], hits[0][0], backing
    return draft, hits[0][0], backing


# --- keys ---------------------------------------------------------------------------------


def test_a_key_never_sees_another_keys_documents():
    h = DraftHistory()
    doc = unique(40, 1000)
    h.add("key-a", doc)
    query = doc[:20]
    assert h.lookup("key-a", query, 4)[0] == doc[20:24]
    assert h.lookup("key-b", query, 4) == ([], 0, 0)
    assert h.lookup(None, query, 4) == ([], 0, 0)  # the keyless partition is another one
    h.add(None, doc)
    assert h.lookup(None, query, 4)[0] == doc[20:24]
    assert len(h) == 2  # the same tokens under two keys: two documents


def test_keys_are_held_as_digests_only(tmp_path):
    h = DraftHistory()
    h.add("sk-secret-key", unique(30, 500))
    assert "sk-secret-key" not in h._parts and _digest("sk-secret-key") in h._parts
    path = tmp_path / "history.json"
    h.save(path)
    assert "sk-secret-key" not in path.read_text()
    loaded = DraftHistory()
    loaded.load(path)
    assert loaded.lookup("sk-secret-key", unique(10, 500), 3)[0] == [510, 511, 512]
    assert loaded.lookup("another", unique(10, 500), 3) == ([], 0, 0)


def test_save_and_load_keep_the_documents_and_their_order_of_use(tmp_path):
    h = DraftHistory(max_tokens=100)
    docs = [unique(30, 100 * i) for i in range(3)]
    for d in docs:
        h.add(None, d)
    h.lookup(None, docs[0][:10], 4)  # the oldest is now the most recently used
    h.save(tmp_path / "h.json")
    small = DraftHistory(max_tokens=60)
    small.load(tmp_path / "h.json")  # room for two: the two most recently used stay
    assert small.lookup(None, docs[0][:10], 2)[0] == docs[0][10:12]
    assert small.lookup(None, docs[2][:10], 2)[0] == docs[2][10:12]
    assert small.lookup(None, docs[1][:10], 2) == ([], 0, 0)
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError):
        small.load(tmp_path / "other.json")


# --- the memory bound and LRU eviction -----------------------------------------------------


def test_total_tokens_never_exceed_the_bound_and_the_least_recently_used_goes_first():
    h = DraftHistory(max_tokens=100)
    docs = [unique(30, 100 * i) for i in range(6)]
    for d in docs[:3]:
        h.add(None, d)
    assert h.total_tokens == 90
    assert h.lookup(None, docs[0][:10], 4)[0] == docs[0][10:14]  # a use: now the most recent
    h.add(None, docs[3])  # 120 > 100: the least recently used goes (docs[1])
    assert h.total_tokens == 90 and len(h) == 3
    assert h.lookup(None, docs[2][:10], 0)[1] == 10  # a match length drafts nothing: no use
    h.add(None, docs[4])  # so docs[2] goes, not docs[0]
    h.add(None, docs[5])  # then docs[0]
    assert [h.lookup(None, d[:10], 1)[0] for d in docs] == [[], [], [], [310], [410], [510]]
    assert h.total_tokens == 90
    check_index(h)


def test_a_document_longer_than_the_bound_keeps_its_end():
    h = DraftHistory(max_tokens=50)
    doc = unique(80, 0)
    h.add(None, doc)
    assert h.total_tokens == 50
    assert h.lookup(None, doc[:25], 2) == ([], 0, 0)  # its start went
    assert h.lookup(None, doc[:60], 2)[0] == [60, 61]
    check_index(h)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "lookup"]), st.sampled_from([None, "a"]),
                          st.lists(st.integers(0, 4), min_size=0, max_size=30)),
                max_size=25),
       st.integers(0, 60))
def test_any_sequence_of_adds_and_lookups_keeps_the_bound_and_an_exact_index(ops, bound):
    """Whatever happens, the store is at most max_tokens and its index is exactly that
    of the documents it holds; and every lookup agrees with a scan of those documents."""
    h = DraftHistory(max_tokens=bound, n_max=3, n_min=2, candidates=4, extend_cap=5)
    for op, key, tokens in ops:
        if op == "add":
            h.add(key, tokens)
            assert h.total_tokens <= bound
        else:
            part = h._parts.get(_digest(key))
            docs = [d.tolist() for _, d in sorted(part.docs.items())] if part else []
            assert h.lookup(key, tokens, 3) == brute_lookup(docs, tokens, 3, h)
    check_index(h)


# --- dedupe -------------------------------------------------------------------------------


def test_a_conversation_grown_by_a_turn_replaces_its_earlier_document():
    h = DraftHistory()
    turn1 = unique(50, 0)
    turn2 = turn1 + unique(30, 1000)  # the same conversation re-sent, with its next turn
    h.add("k", turn1)
    h.add("k", turn2)
    assert len(h) == 1 and h.total_tokens == len(turn2)
    h.add("k", turn2)  # the identical request again: stored once
    h.add("k", turn1[:30])  # a request an earlier one already starts with: nothing new
    assert len(h) == 1 and h.total_tokens == len(turn2)
    h.add("other", turn1)  # another key's documents are never merged with these
    assert len(h) == 2
    _, match_len, count = h.lookup("k", turn1[:20], 4)
    assert count == 1  # one occurrence, not one per copy
    check_index(h)


def test_a_retry_with_a_different_reply_keeps_both():
    h = DraftHistory()
    prompt = unique(20, 0)
    h.add(None, prompt + [500, 501, 502])
    h.add(None, prompt + [600, 601, 602])
    assert len(h) == 2


# --- exact removal ------------------------------------------------------------------------


def test_an_evicted_document_is_never_drafted_from_again():
    h = DraftHistory(max_tokens=60)
    shared = [7, 8, 9, 10]
    old = unique(10, 100) + shared + [111, 112, 113] + unique(10, 200)
    h.add(None, old)
    query = unique(5, 900) + shared
    assert h.lookup(None, query, 3)[0] == [111, 112, 113]
    h.add(None, unique(30, 300) + shared + [311, 312] + unique(3, 400))  # evicts `old`
    for _ in range(3):  # whatever the query, old's tokens are gone
        assert h.lookup(None, query, 8)[0][:2] == [311, 312]
        assert h.lookup(None, unique(10, 100), 4) == ([], 0, 0)
    check_index(h)


# --- the frequency-weighted draft -----------------------------------------------------------


def test_the_continuation_most_occurrences_agree_on_wins():
    h = DraftHistory()
    pattern = [1, 2, 3, 4]
    for i in range(3):
        h.add(None, [100 + i] + pattern + [10, 11, 12, 13] + [200 + i])
    h.add(None, [150] + pattern + [20, 21, 22, 23] + [250])  # the most recent: one vote
    tokens, match_len, count = h.lookup(None, [99] + pattern, 4)
    assert (tokens, match_len, count) == ([10, 11, 12, 13], 4, 3)


def test_an_occurrence_agreeing_further_back_weighs_more():
    h = DraftHistory()
    context = unique(12, 500)
    h.add(None, context + [1, 2, 3, 4, 30, 31])  # agrees 16 tokens back with the query
    for i in range(2):  # agree 4 back each: 8 in all against 16
        h.add(None, [100 + i] + [1, 2, 3, 4, 40, 41])
    assert h.lookup(None, context + [1, 2, 3, 4], 2)[:2] == ([30, 31], 16)
    h.add(None, [102] + [1, 2, 3, 4, 40, 41])
    h.add(None, [103] + [1, 2, 3, 4, 40, 41])
    h.add(None, [104] + [1, 2, 3, 4, 40, 41])  # 20 against 16 now
    assert h.lookup(None, context + [1, 2, 3, 4], 2)[0] == [40, 41]


def test_the_draft_stops_where_the_occurrences_part_ways():
    h = DraftHistory()
    pattern = [1, 2, 3, 4]
    for i, fork in enumerate([50, 60, 70]):  # agree on two tokens, then three ways
        h.add(None, [100 + i] + pattern + [10, 11, fork, fork + 1, fork + 2, fork + 3])
    assert h.lookup(None, [99] + pattern, 8)[0] == [10, 11]
    h2 = DraftHistory()  # the same with one of them only: it drafts on
    h2.add(None, [100] + pattern + [10, 11, 50, 51, 52, 53])
    assert h2.lookup(None, [99] + pattern, 8)[0] == [10, 11, 50, 51, 52, 53]


def test_a_match_that_disagrees_at_once_is_no_match():
    h = DraftHistory()
    for i, nxt in enumerate([10, 20, 30]):
        h.add(None, [100 + i, 1, 2, 3, 4, nxt, 0])
    assert h.lookup(None, [99, 1, 2, 3, 4], 4) == ([], 0, 0)
    assert h.lookup(None, [99, 1, 2, 3, 4], 0) == ([], 0, 0)


def test_draft_length_follows_the_match_length_and_k():
    h = DraftHistory(len_factor=2)
    h.add(None, [100, 1, 2] + unique(20, 300))
    assert h.lookup(None, [99, 1, 2], 16) == ([300, 301, 302, 303], 2, 1)  # 2 x 2 tokens
    assert h.lookup(None, [100, 1, 2], 16)[0] == unique(6, 300)  # a 3-token match: 6
    assert h.lookup(None, [100, 1, 2], 3)[0] == [300, 301, 302]  # never more than k
    assert h.lookup(None, [100, 1, 2], 0) == ([], 3, 1)


# --- threads --------------------------------------------------------------------------------


def test_slots_sharing_one_history_from_threads():
    """Adds and lookups from several threads at once: no error, the bound and the index hold."""
    h = DraftHistory(max_tokens=2_000)
    errors: list[BaseException] = []

    def slot(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(60):
                doc = [rng.randrange(50) for _ in range(rng.randrange(5, 120))]
                h.add(rng.choice([None, "a", "b"]), doc)
                h.lookup(rng.choice([None, "a", "b"]), doc[: len(doc) // 2], 8)
                assert h.total_tokens <= 2_000
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=slot, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors
    check_index(h)


def test_history_drafts_are_learned_per_sampling_setting():
    """Greedy settings share one table; a sampled one learns its own (a point-mass draft is
    kept with the target's probability of it); the tables are bounded."""
    from specli.config import SamplingConfig
    from specli.core.history import MAX_ACCEPTANCE_TABLES

    h = DraftHistory()
    greedy = h.acceptance_for(SamplingConfig(temperature=0.0))
    assert h.acceptance_for(SamplingConfig(temperature=0.0, top_k=5)) is greedy
    assert h.acceptance_for(None) is greedy
    warm = h.acceptance_for(SamplingConfig(temperature=0.8))
    assert warm is not greedy and h.acceptance_for(SamplingConfig(temperature=0.8)) is warm
    warm.observe(match_len=12, k=4, n_accepted=0)
    assert greedy.count == 0
    for i in range(MAX_ACCEPTANCE_TABLES):
        h.acceptance_for(SamplingConfig(temperature=1.0 + i))
    assert h.acceptance_for(SamplingConfig(temperature=0.8)) is not warm  # least recently used
    assert len(h._acceptance) == MAX_ACCEPTANCE_TABLES


# --- the n-gram drafter reading it ------------------------------------------------------------


def test_the_drafter_drafts_from_the_history_and_counts_what_was_kept():
    h = DraftHistory()
    earlier = unique(12, 100) + [500, 501, 502, 503, 504]
    h.add("k", earlier)
    d = NgramDrafter()
    prompt = unique(6, 900) + unique(12, 100)  # ends as the earlier request did
    d.prefill(prompt)
    assert d.match_len(prompt) == 0  # nothing in the prompt repeats
    d.set_history(h, "k")
    assert d.match_len(prompt) == 12  # priced by --k auto as any 12-token match
    assert d.propose(prompt, 4, None).tokens == [500, 501, 502, 503]
    d.rewind(prompt + [500, 501, 99])  # two kept
    assert (d.history_drafted, d.history_accepted) == (4, 2)
    assert (d.reference_drafted, d.reference_accepted) == (0, 0)
    d.set_history(h, "another key")
    assert d.match_len(prompt) == 0 and d.history_drafted == 0
    d.set_history(None)
    assert d.propose(prompt, 4, None).tokens == []


def test_the_context_wins_a_tie_with_the_history():
    h = DraftHistory()
    text = [1, 2, 3, 4, 5, 6]
    h.add(None, [7] + text + [40, 41, 42])
    d = NgramDrafter()
    d.set_history(h)
    committed = [7] + text + [30, 31, 32, 8, 7] + text  # the context has the same match
    d.prefill(committed)
    assert d.propose(committed, 3, None).tokens == [30, 31, 32]
    d.rewind(committed + [30])
    assert d.history_drafted == 0
    longer = [9, 9] + [7] + text
    h.add(None, [9, 9] + [7] + text + [40, 41, 42])  # agrees further back than the context
    committed = [7] + text + [30, 31, 32, 8] + longer
    d.prefill(committed)
    assert d.propose(committed, 3, None).tokens == [40, 41, 42]


# --- a conversation on the tiny models --------------------------------------------------------


@pytest.fixture(scope="module")
def conversation_pair(tiny_target):
    from specli.llama.backend import LlamaModel
    from specli.session import Loaded

    target = LlamaModel(tiny_target, n_ctx=512, n_threads=1)
    loaded = Loaded(target, None, target.n_vocab)
    yield loaded
    loaded.close()


def make_conversation(loaded, tiny_target, history):
    from specli.config import SamplingConfig, SpecConfig
    from specli.conversation import Conversation
    from specli.session import Generation, ModelPaths

    gen = Generation(loaded, ModelPaths(tiny_target, None), SamplingConfig(temperature=0.0),
                     SpecConfig(k=4, max_tokens=48, seed=0, drafter="ngram"), "ngram")
    return Conversation(gen, history=history)


def test_a_reply_drafts_from_an_earlier_reply_and_changes_nothing(conversation_pair, tiny_target,
                                                                  monkeypatch):
    """The same request again (an agent's retry) drafts the first reply's tokens from the
    history under --k auto: nearly all accepted, and the greedy output is the target's
    alone (K = 0)."""
    import dataclasses

    from specli.core.engine import Done

    monkeypatch.setenv("SPECLI_COST_CACHE", "off")
    history = DraftHistory()
    conv = make_conversation(conversation_pair, tiny_target, history)
    prompt = conv.tokens([{"role": "user", "content": "Hello, world! How are you today?"}])

    def run(k, key=None):
        spec = dataclasses.replace(conv.gen.spec, k=k, strict=True)
        reply = conv.reply(list(prompt), spec, conv.gen.sampling, "ngram", history_key=key)
        done = next(ev for ev in reply.events if isinstance(ev, Done))
        reply.finish(done)
        return list(done.tokens), done.stats, reply.history_counts

    out, _, counts = run(0)  # K = 0: nothing drafts, but the reply goes into the history
    assert counts is None and len(out) > 16 and len(history) == 1
    got, _, counts = run(4)  # a fixed K drafts from the request alone (seeds reproduce)
    assert got == out and counts is None
    got, stats, (drafted, accepted) = run("auto")
    assert got == out  # exact: drafts change how fast, never what
    assert drafted >= len(out) // 3 and accepted >= drafted - 4
    assert stats.rounds <= len(out) - drafted // 2
    # their outcomes went to the history's own acceptance table, shared by every reply
    assert history.acceptance_for(conv.gen.sampling).count >= accepted
    assert len(history) == 1  # the identical request was not stored twice
    got, _, counts = run("auto", key="another key")  # that key has no history yet
    assert got == out and counts == (0, 0)
    assert len(history) == 2


def test_without_a_history_nothing_changes(conversation_pair, tiny_target, monkeypatch):
    import dataclasses

    from specli.core.engine import Done

    monkeypatch.setenv("SPECLI_COST_CACHE", "off")
    conv = make_conversation(conversation_pair, tiny_target, None)
    prompt = conv.tokens([{"role": "user", "content": "Hello, world! How are you today?"}])
    spec = dataclasses.replace(conv.gen.spec, k=4, strict=True)
    for _ in range(2):
        reply = conv.reply(list(prompt), spec, conv.gen.sampling, "ngram")
        done = next(ev for ev in reply.events if isinstance(ev, Done))
        reply.finish(done)
        assert reply.history_counts is None and conv._ngram.history is None


# --- on disk: --draft-history --------------------------------------------------------------
class _Vocab:
    """What vocab_stamp reads of a model."""

    def __init__(self, n_vocab: int, salt: bytes = b"") -> None:
        self.n_vocab, self.salt = n_vocab, salt

    def token_bytes(self, t: int) -> bytes:
        return self.salt + str(t).encode()


def test_a_history_file_belongs_to_one_vocabulary(tmp_path):
    from specli.core.history import open_history, save_history, vocab_stamp
    from specli.errors import UsageError

    path = tmp_path / "h.json"
    mine, other = _Vocab(1000), _Vocab(1000, salt=b"x")
    assert vocab_stamp(mine) == vocab_stamp(_Vocab(1000)) != vocab_stamp(other)
    h = open_history(path, mine)  # no file yet: empty, written back later
    assert len(h) == 0 and not path.exists()
    h.add(None, unique(40, 10))
    assert save_history(h) is None and path.exists()
    again = open_history(path, mine)
    assert len(again) == 1 and again.lookup(None, unique(40, 10)[:20], 4)[0] == unique(4, 30)
    with pytest.raises(UsageError, match="another model's vocabulary"):
        open_history(path, other)
    path.write_bytes(b"\xff\xfe not json")
    with pytest.raises(UsageError, match="not a saved draft history"):
        open_history(path, mine)


def test_without_a_file_nothing_is_written(tmp_path):
    from specli.core.history import open_history, save_history

    h = open_history(None, _Vocab(10))
    h.add(None, unique(40, 10))
    assert h.path is None and save_history(h) is None and list(tmp_path.iterdir()) == []


def test_an_unwritable_history_file_is_a_warning_not_a_crash(tmp_path):
    from specli.core.history import open_history, save_history

    path = tmp_path / "sub" / "h.json"
    (tmp_path / "sub").mkdir()
    h = open_history(path, _Vocab(10))
    (tmp_path / "sub").rmdir()  # gone before the save
    assert "could not save the draft history" in save_history(h)


@pytest.mark.parametrize("command", ["serve", "chat"])
@pytest.mark.parametrize("where", ["folder", "no-folder"])
def test_a_bad_draft_history_path_is_a_one_line_error(tiny_target, tmp_path, command, where):
    import subprocess

    path = tmp_path if where == "folder" else tmp_path / "missing" / "h.json"
    r = subprocess.run([sys.executable, "-m", "specli", command, "--target", tiny_target,
                        "--k", "0", "--draft-history", str(path)], capture_output=True,
                       text=True, timeout=60, input="")
    assert r.returncode == 2, r.stderr
    assert "--draft-history" in r.stderr and "Traceback" not in r.stderr


def test_serve_keeps_its_draft_history_between_runs(tiny_target, tmp_path):
    """A server stopped and started again with the same --draft-history drafts a repeated
    request from what the first run wrote (and answers it the same)."""
    import json as _json

    from serveutil import request
    from test_serve import start

    path = tmp_path / "history.json"
    args = ["--target", tiny_target, "--threads", "1", "--ctx", "512", "--k", "auto",
            "--draft-history", str(path)]
    body = {"messages": [{"role": "user", "content": "Write a haiku about the sea"}],
            "temperature": 0, "max_tokens": 48}
    replies = []
    for run in ("first", "second"):
        s = start(args, tmp_path, run)
        status, _, raw = request(s, "POST", "/v1/chat/completions", body)
        assert status == 200, raw
        replies.append(_json.loads(raw))
        assert s.stop() == 0 and "Traceback" not in s.log, s.log
        assert path.exists()
    first, second = (r["timings"] for r in replies)
    assert first.get("history_draft_n", 0) == 0  # nothing earlier to draft from
    assert second["history_draft_n"] > 0 and second["history_draft_n_accepted"] > 0
    assert replies[0]["choices"][0]["message"] == replies[1]["choices"][0]["message"]
    saved = _json.loads(path.read_text())
    assert saved["format"].startswith("specli-draft-history") and len(saved["documents"]) == 1


def test_chat_writes_its_draft_history_at_exit_and_reads_it_next_time(tiny_target, tmp_path):
    import json as _json
    import subprocess

    path = tmp_path / "chat-history.json"
    argv = [sys.executable, "-m", "specli", "chat", "--target", tiny_target, "--threads", "1",
            "--ctx", "512", "--temperature", "0", "-n", "24", "--draft-history", str(path)]
    for n, line in enumerate(["Write a haiku about the sea", "List three colours",
                              "Write a haiku about the sea"], start=1):
        r = subprocess.run(argv, input=line + "\n", capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        # each session adds its turn to what the earlier ones wrote (a repeat: stored once)
        assert len(_json.loads(path.read_text())["documents"]) == min(n, 2)
