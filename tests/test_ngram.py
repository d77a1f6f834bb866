"""Tests for the prompt-lookup drafter: match selection, caps, and exact rollback."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specli.core.ngram import NgramIndex


def build(tokens, n_max=4, n_min=1) -> NgramIndex:
    index = NgramIndex(n_max=n_max, n_min=n_min)
    index.extend(tokens)
    return index


def brute_propose(tokens, k, n_max=4, n_min=1) -> tuple[list[int], int]:
    """Reference: scan every earlier position for the longest suffix, newest first."""
    t = list(tokens)
    end = len(t)
    for n in range(min(n_max, end), n_min - 1, -1):
        suffix = t[end - n :]
        # j is where the continuation starts; j == end would be the suffix itself.
        for j in range(end - 1, n - 1, -1):
            if t[j - n : j] == suffix:
                return t[j : j + k], n
    return [], 0


# --- match selection -------------------------------------------------------------------


def test_prefers_longest_match_over_more_recent_shorter_one():
    # Suffix (1, 2, 3): "1 2 3" -> 10 occurs early; "3" -> 20 occurs later.
    index = build([1, 2, 3, 10, 11, 3, 20, 21, 1, 2, 3], n_max=3)
    assert index.propose_with_len(2) == ([10, 11], 3)


def test_most_recent_occurrence_wins_among_equal_lengths():
    index = build([5, 6, 7, 5, 6, 8, 9, 5, 6], n_max=2)
    assert index.propose_with_len(3) == ([8, 9, 5], 2)


def test_falls_back_to_shorter_match_and_reports_its_length():
    index = build([4, 9, 1, 7, 4], n_max=3)
    assert index.propose_with_len(5) == ([9, 1, 7, 4], 1)


def test_no_match_gives_empty_and_zero():
    index = build([1, 2, 3, 4])
    assert index.propose_with_len(3) == ([], 0)
    assert NgramIndex().propose_with_len(3) == ([], 0)


def test_suffix_never_matches_itself():
    assert build([7]).propose(3) == []
    assert build([1, 2, 3, 1, 2, 3], n_max=3).propose(1) == [1]  # earlier "1 2 3", not the tail


def test_n_min_excludes_short_matches():
    index = build([1, 2, 9, 3, 2], n_max=3, n_min=2)
    assert index.propose_with_len(4) == ([], 0)


def test_overlapping_occurrence_is_a_valid_match():
    # In "a a a a" the suffix "a a a" also occurs at 0..3, overlapping the suffix itself.
    assert build([0, 0, 0, 0], n_max=3).propose_with_len(5) == ([0], 3)


# --- caps ------------------------------------------------------------------------------


def test_proposal_capped_at_k():
    index = build([1, 2, 3, 4, 5, 6, 1, 2])
    assert index.propose(3) == [3, 4, 5]
    assert index.propose(1) == [3]


def test_k_zero_gives_empty_but_still_reports_match_length():
    index = build([1, 2, 3, 1, 2])
    assert index.propose(0) == []
    assert index.propose_with_len(0) == ([], 2)


def test_continuation_runs_to_end_of_sequence():
    index = build([1, 2, 3, 4, 2])
    assert index.propose(10) == [3, 4, 2]


def test_negative_k_rejected():
    with pytest.raises(ValueError):
        build([1, 1]).propose(-1)


# --- construction, view, rollback edges -----------------------------------------------


@pytest.mark.parametrize("n_max, n_min", [(0, 1), (3, 0), (2, 3)])
def test_bad_n_range_rejected(n_max, n_min):
    with pytest.raises(ValueError):
        NgramIndex(n_max=n_max, n_min=n_min)


def test_tokens_view_is_read_only_and_live():
    index = build([1, 2, 3])
    view = index.tokens
    assert list(view) == [1, 2, 3] and len(index) == 3
    with pytest.raises(TypeError):
        view[0] = 9  # type: ignore[index]
    index.extend([4])
    assert list(view) == [1, 2, 3, 4]


def test_numpy_tokens_come_back_as_plain_ints():
    index = build(np.array([3, 4, 3], dtype=np.int32))
    draft = index.propose(2)
    assert draft == [4, 3] and all(type(t) is int for t in draft)


@pytest.mark.parametrize("n", [-1, 4])
def test_truncate_out_of_range_rejected(n):
    with pytest.raises(ValueError):
        build([1, 2, 3]).truncate(n)


def test_truncate_then_extend_forgets_rolled_back_tokens():
    index = build([1, 2, 3, 9, 9, 1, 2])
    index.truncate(4)  # [1, 2, 3, 9]: the rolled-back "1 2" at 5..7 must be forgotten
    index.extend([1, 2])
    assert index.propose(3) == [3, 9, 1]
    index.truncate(0)
    assert len(index) == 0 and index.propose(3) == [] and index._starts == {}


# --- property: any extend/truncate history equals a fresh build and the brute force ---

ALPHABET = st.integers(min_value=0, max_value=3)  # small, so matches are frequent
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("extend"), st.lists(ALPHABET, max_size=8)),
        st.tuples(st.just("truncate"), st.integers(min_value=0, max_value=8)),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, n_min=st.integers(1, 3), extra=st.integers(0, 3))
def test_history_matches_fresh_index_and_brute_force(ops, n_min, extra):
    n_max = n_min + extra
    index = NgramIndex(n_max=n_max, n_min=n_min)
    model: list[int] = []
    for op, arg in ops:
        if op == "extend":
            index.extend(arg)
            model.extend(arg)
        else:
            keep = max(0, len(model) - arg)  # the engine rolls back a few rejected tokens
            index.truncate(keep)
            del model[keep:]
        fresh = build(model, n_max=n_max, n_min=n_min)
        assert list(index.tokens) == model
        assert index._starts == fresh._starts  # exact: same state, not just same answers
        for k in (0, 1, 3, 10):
            expected = brute_propose(model, k, n_max=n_max, n_min=n_min)
            assert index.propose_with_len(k) == expected
            assert fresh.propose_with_len(k) == expected


# --- structure: extend and truncate touch O(n_max - n_min + 1) entries, never rescan ---


class CountingDict(dict):
    """A dict that counts every lookup and update made through its methods."""

    ops = 0

    def _count(self):
        self.ops += 1

    def get(self, *a):
        self._count()
        return super().get(*a)

    def setdefault(self, *a):
        self._count()
        return super().setdefault(*a)

    def __getitem__(self, key):
        self._count()
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        self._count()
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._count()
        super().__delitem__(key)

    def pop(self, *a):
        self._count()
        return super().pop(*a)


def ops_for(action, context_len: int, n_max=4, n_min=1) -> int:
    rng = np.random.default_rng(context_len)
    index = build(rng.integers(0, 5, size=context_len), n_max=n_max, n_min=n_min)
    index._starts = counting = CountingDict(index._starts)
    action(index)
    return counting.ops


@pytest.mark.parametrize("n_max, n_min", [(4, 1), (3, 2), (1, 1)])
def test_extend_by_one_touches_at_most_one_entry_per_n(n_max, n_min):
    def extend_one(index):
        index.extend([2])

    budget = n_max - n_min + 1
    counts = [ops_for(extend_one, size, n_max, n_min) for size in (10, 1_000, 20_000)]
    assert all(c <= budget for c in counts)
    assert len(set(counts)) == 1  # independent of context length: no rescan


def test_truncate_by_one_cost_independent_of_context_length():
    def drop_one(index):
        index.truncate(len(index) - 1)

    counts = [ops_for(drop_one, size) for size in (10, 1_000, 20_000)]
    assert all(c <= 2 * 4 for c in counts)  # one pop (+ maybe one delete) per n


def test_propose_lookups_bounded_by_number_of_lengths():
    counts = [ops_for(lambda index: index.propose(8), size) for size in (10, 1_000, 20_000)]
    assert all(c <= 4 for c in counts)


# --- choosing among occurrences: the copy's true source ---------------------------------


def test_lookup_prefers_the_occurrence_that_agrees_furthest_back():
    # Suffix "7 8": occurs after "1 2 3" (agrees 4 back with the tail "... 2 3 7 8") and,
    # more recently, after "9 9". The most-recent rule picks 50; the furthest-back rule 40.
    seq = [1, 2, 3, 7, 8, 40, 41, 9, 9, 7, 8, 50, 51, 1, 2, 3, 7, 8]
    old = build(seq, n_max=2)
    assert old.propose_with_len(2) == ([50, 51], 2)
    index = NgramIndex(n_max=2, n_min=1, candidates=8)
    index.extend(seq)
    assert index.lookup(2) == ([40, 41], 5)  # 1 2 3 7 8 agree; the token before differs
    assert index.propose_with_len(2) == ([40, 41], 2)  # same choice; n-gram length reported


def test_lookup_length_is_capped_and_ties_go_to_most_recent():
    seq = [5] * 30
    index = NgramIndex(n_max=3, n_min=1, candidates=4, extend_cap=10)
    index.extend(seq)
    tokens, length = index.lookup(3)
    assert length == 3 + 10 and tokens == [5]  # the most recent occurrence, capped extension
    assert NgramIndex(candidates=3).lookup(4) == ([], 0)
    with pytest.raises(ValueError):
        NgramIndex(candidates=0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=60), st.integers(1, 6))
def test_lookup_matches_brute_force(tokens, candidates):
    index = NgramIndex(n_max=3, n_min=1, candidates=candidates, extend_cap=20)
    index.extend(tokens)
    t, end = list(tokens), len(tokens)
    expected = ([], 0)
    for n in range(min(3, end), 0, -1):
        starts = [j for j in range(end - 1, n - 1, -1) if t[j - n : j] == t[end - n :]]
        if starts:
            def extent(j):
                length = n
                while length < min(j, n + 20) and t[j - length - 1] == t[end - length - 1]:
                    length += 1
                return length
            best = max(starts[:candidates], key=lambda j: (extent(j), j))
            expected = (t[best : best + 4], extent(best))
            break
    assert index.lookup(4) == expected


# --- a reference text (a request's predicted output): lookup_in ----------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=40),
       st.lists(st.integers(0, 3), min_size=0, max_size=20), st.integers(1, 6))
def test_lookup_in_matches_brute_force(reference, query, candidates):
    """The end of another sequence, looked up in this index: the same rule as lookup."""
    index = NgramIndex(n_max=3, n_min=1, candidates=candidates, extend_cap=20)
    index.extend(reference)
    r, q, end = list(reference), list(query), len(query)
    expected = ([], 0)
    for n in range(min(3, end), 0, -1):
        starts = [j for j in range(len(r) - 1, n - 1, -1) if r[j - n : j] == q[end - n :]]
        if starts:
            def extent(j):
                length = n
                while (length < min(j, end, n + 20)
                       and r[j - length - 1] == q[end - length - 1]):
                    length += 1
                return length
            best = max(starts[:candidates], key=lambda j: (extent(j), j))
            expected = (r[best : best + 4], extent(best))
            break
    assert index.lookup_in(q, 4) == expected


def test_a_reference_drafts_from_the_first_round_and_counts_what_was_kept():
    from specli.core.drafters import NgramDrafter

    prompt, predicted = [1, 2, 3, 4, 5, 6, 7, 8, 9], [20, 21, 22, 23, 24, 25]
    d = NgramDrafter()
    d.prefill(prompt)
    assert d.match_len(prompt) == 0  # nothing in the prompt repeats
    d.set_reference(predicted, anchor=prompt[-8:])
    assert d.match_len(prompt) == 8 and d.propose(prompt, 4, None).tokens == [20, 21, 22, 23]
    committed = prompt + [20, 21, 99]  # two kept, the third replaced by the target
    d.rewind(committed)
    assert (d.reference_drafted, d.reference_accepted) == (4, 2)
    assert d.propose(committed, 4, None).tokens == []  # 99 is not in the prediction
    committed += [22, 23]  # back on the prediction (2 tokens: n_min): drafts on from there
    assert d.propose(committed, 4, None).tokens == [24, 25]
    d.set_reference(None)
    assert d.propose(committed, 4, None).tokens == [] and d.reference_drafted == 0
