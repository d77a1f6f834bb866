"""Saved prompt states (specli.promptcache) over real llama.cpp: exact restores, LRU bounds,
and a client alternating between two conversations through the server."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from specli.llama.backend import LlamaModel
from specli.promptcache import PromptStates, common_prefix

TEXT_A = "the quick brown fox jumps over the lazy dog and runs far away into the green woods " * 2
TEXT_B = "a small red hen finds a grain of wheat and asks who will help her plant it today " * 2


@pytest.fixture(scope="module")
def target(tiny_target):
    m = LlamaModel(tiny_target, n_ctx=512, n_threads=1)
    yield m
    m.close()


def next_logits(model, prompt):
    """Decode what the cache lacks of prompt[:-1], then the pending last token: its logits."""
    model.reuse_prefix(prompt)
    model.decode(prompt[model.n_past:-1], 0)
    return np.array(model.decode(prompt[-1:], 1)[0])


def test_save_and_load_state_are_exact(target):
    prompt = target.tokenize(TEXT_A, add_special=False)
    target.reset()
    fresh = next_logits(target, prompt)
    target.truncate(len(prompt) - 1)
    tokens, data = target.save_state()
    assert list(tokens) == prompt[:-1] and len(data) > 0
    target.reset()
    target.decode(target.tokenize(TEXT_B, add_special=False)[:20], 0)  # something else meanwhile
    target.load_state(tokens, data)
    assert target.n_past == len(prompt) - 1
    np.testing.assert_array_equal(np.array(target.decode(prompt[-1:], 1)[0]), fresh)
    target.load_state(tokens, bytes(data))  # any buffer of the same bytes will do
    np.testing.assert_array_equal(np.array(target.decode(prompt[-1:], 1)[0]), fresh)


def test_alternating_prompts_restore_instead_of_prefilling(target):
    a = target.tokenize(TEXT_A, add_special=False)
    b = target.tokenize(TEXT_B, add_special=False)
    assert common_prefix(a, b) < 4 and len(a) > 40 and len(b) > 40
    states = PromptStates()
    target.reset()
    assert states.prepare(target, a) == 0  # nothing saved yet
    want_a = next_logits(target, a)
    assert states.prepare(target, b) == 0 and len(states) == 1  # A's state saved, B is new
    want_b = next_logits(target, b)
    assert states.prepare(target, a) == len(a) - 1  # A is back: restored, not prefilled
    assert target.reuse_prefix(a) == len(a) - 1
    np.testing.assert_array_equal(np.array(target.decode(a[-1:], 1)[0]), want_a)
    assert states.prepare(target, b) == len(b) - 1
    target.reuse_prefix(b)
    np.testing.assert_array_equal(np.array(target.decode(b[-1:], 1)[0]), want_b)
    assert states.restored == 2


def test_small_gains_and_bounds(target):
    a = target.tokenize(TEXT_A, add_special=False)
    states = PromptStates(max_entries=2)
    target.reset()
    next_logits(target, a)
    # A prompt that shares all of the live cache: nothing to save, nothing to restore.
    assert states.prepare(target, a + a[:5]) == 0 and len(states) == 0
    for i in range(4):  # distinct prompts, each discarding the last: at most 2 kept
        p = [a[i]] * 3 + a
        states.prepare(target, p)
        next_logits(target, p)
    assert len(states) == 2
    assert PromptStates(max_bytes=1)._put((1, 2), b"xx") is None  # over the byte bound: dropped


def test_restoring_a_state_that_saving_the_live_one_evicts(target):
    """One slot: the live state (B) must be saved, which evicts the state to restore (A).
    The restore still happens (its bytes were taken first), and is exact."""
    a = target.tokenize(TEXT_A, add_special=False)
    b = target.tokenize(TEXT_B, add_special=False)
    states = PromptStates(max_entries=1)
    target.reset()
    want_a = next_logits(target, a)
    states.prepare(target, b)  # saves A
    next_logits(target, b)
    assert states.prepare(target, a) == len(a) - 1  # saves B (evicting A), restores A
    target.reuse_prefix(a)
    np.testing.assert_array_equal(np.array(target.decode(a[-1:], 1)[0]), want_a)
    assert len(states) == 1


def test_a_kept_state_is_not_saved_again_before_the_next_prompt(target):
    """`keep` saves the live state once; the next prompt that discards it finds it saved
    already and copies nothing on its way in."""
    a = target.tokenize(TEXT_A, add_special=False)
    b = target.tokenize(TEXT_B, add_special=False)
    states = PromptStates()
    target.reset()
    states.prepare(target, a)
    want_a = next_logits(target, a)
    states.keep(target)
    states.keep(target)  # the same state twice: one copy
    assert (len(states), states.saved) == (1, 1)
    assert states.prepare(target, b) == 0 and states.saved == 1  # nothing copied before B
    next_logits(target, b)
    short = PromptStates()
    target.reset()
    target.decode(a[:5], 0)
    short.keep(target)  # shorter than the smallest gain worth a restore: not kept
    assert len(short) == 0
    assert states.prepare(target, a) == len(a) - 1  # A restored from what keep saved
    target.reuse_prefix(a)
    np.testing.assert_array_equal(np.array(target.decode(a[-1:], 1)[0]), want_a)


@given(st.lists(st.integers(0, 3), max_size=300), st.integers(0, 300),
       st.lists(st.integers(0, 3), max_size=80))
def test_common_prefix_is_the_length_of_the_shared_start(a, cut, tail):
    b = a[:cut] + tail
    want = 0
    while want < min(len(a), len(b)) and a[want] == b[want]:
        want += 1
    for x, y in ((a, b), (tuple(a), b), (b, tuple(a)), (tuple(a), tuple(b))):
        assert common_prefix(x, y) == want


def test_a_prompt_answered_several_times_does_not_evict_other_prompts(target):
    """Four prompts, each answered three times differently (other temperatures or seeds):
    with the default bounds every prompt is still restored when it comes back."""
    base = target.tokenize(TEXT_A, add_special=False)
    prompts = [[base[i]] * 2 + base for i in range(4)]
    assert len({p[0] for p in prompts}) == 4
    states = PromptStates()
    target.reset()
    for p in prompts:
        for reply in range(3):
            states.prepare(target, p)
            next_logits(target, p)
            target.decode([base[reply + 5], base[reply + 9]], 0)  # this reply's own tokens
            states.keep(target)
    assert len(states) == 12
    for p in prompts:
        assert states.prepare(target, p) == len(p) - 1


def test_zero_bytes_keeps_nothing_and_copies_nothing(target):
    a = target.tokenize(TEXT_A, add_special=False)
    b = target.tokenize(TEXT_B, add_special=False)
    states = PromptStates(max_bytes=0)
    target.reset()
    next_logits(target, a)
    states.keep(target)
    assert states.prepare(target, b) == 0
    assert (len(states), states.saved) == (0, 0)
