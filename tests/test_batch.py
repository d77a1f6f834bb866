"""Several sequences in one llama.cpp context, decoded in shared steps (llama.batch):
each sequence's output is its own target's alone, its KV cells are its own, strict
sequences run in calls of their own, and drafts are priced by the whole step."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pytest

from specli.config import SamplingConfig, SpecConfig
from specli.core.drafters import ModelDrafter, NgramDrafter
from specli.core.engine import Done, Round, speculative_generate
from specli.core.policy import AutoK
from specli.llama.backend import LlamaModel
from specli.llama.batch import StepGroup, views

from test_engine import chi_square, exact_two_token_distribution

GREEDY = SamplingConfig(temperature=0.0)
PROMPTS = ["The quick brown fox", "Once upon a time there was", "def main():\n    x = 1",
           "one two three one two three one two"]


@pytest.fixture(scope="module")
def solo(tiny_target, tiny_draft):
    t = LlamaModel(tiny_target, n_ctx=256, n_threads=1)
    d = LlamaModel(tiny_draft, n_ctx=256, n_threads=1)
    yield t, d
    t.close()
    d.close()


@pytest.fixture(scope="module")
def shared(tiny_target, tiny_draft):
    t = LlamaModel(tiny_target, n_ctx=256, n_threads=1, n_seq=4)
    d = LlamaModel(tiny_draft, n_ctx=256, n_threads=1, n_seq=4)
    yield t, d
    t.close()
    d.close()


def run(target, draft, prompt, k, drafter="model", sampling=GREEDY, max_tokens=40, seed=0,
        strict=False, check=None):
    """The engine's Done for one sequence; `check(committed)` after every round."""
    tokens = target.tokenize(prompt, add_special=False) if isinstance(prompt, str) else prompt
    d = None
    if k:
        d = (ModelDrafter(draft, sampling, target.n_vocab) if drafter == "model"
             else NgramDrafter())
    committed = list(tokens)
    done = None
    for ev in speculative_generate(target, d, tokens, sampling,
                                   SpecConfig(k=k, max_tokens=max_tokens, seed=seed),
                                   verify_chunk=1 if strict else None):
        if isinstance(ev, Round):
            committed += list(ev.draft_tokens[: ev.n_accepted]) + [ev.token]
            if check:
                check(committed)
        else:
            done = ev
    assert isinstance(done, Done)
    return done


def together(jobs):
    """Run each job (a function of nothing) on its own thread, at once; their results."""
    out, errors = [None] * len(jobs), []
    start = threading.Barrier(len(jobs))

    def go(i, job):
        try:
            start.wait()
            out[i] = job()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i, j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def member_job(group, tv, job, n=None):
    """`job` run as a member of `group`; with `n`, once all n such jobs have joined (so
    that none runs alone before the others are there)."""
    barrier = _barriers.setdefault((id(group), n), threading.Barrier(n)) if n else None

    def go():
        with group.member(tv):
            if barrier is not None:
                barrier.wait()
            return job()
    return go


_barriers: dict = {}


def test_sequences_batched_together_each_give_the_target_alone_output(solo, shared):
    st, sd = solo
    t, d = shared
    settings = [(0, "model"), (4, "model"), (3, "ngram"), (6, "model")]
    expected = [run(st, sd, p, 0).tokens for p in PROMPTS]
    group = StepGroup(first=d)
    tvs, dvs = views(t, group), views(d, group)
    calls = []
    real = t.decode_parts

    def spy(parts):
        calls.append(sorted({seq for seq, *_ in parts}))
        return real(parts)

    t.decode_parts = spy
    try:
        def job(i):
            tv, dv = tvs[i], dvs[i]
            k, drafter = settings[i]

            def check(committed):  # each sequence's cache holds exactly its own tokens
                assert tv.tokens == committed[:-1]
            return member_job(group, tv, lambda: run(tv, dv, PROMPTS[i], k, drafter,
                                                      check=check), n=4)
        dones = together([job(i) for i in range(4)])
    finally:
        del t.decode_parts
    for i, done in enumerate(dones):
        assert done.tokens == expected[i], f"sequence {i} ({settings[i]}) diverged"
    assert max(len(c) for c in calls) >= 2, "no step held two sequences"
    assert group.rows > group.steps  # steps were shared


def test_a_sequences_cells_are_its_own(solo, shared):
    """Truncating or refilling one sequence leaves another's cache as it was."""
    st, _ = solo
    t, _ = shared
    group = StepGroup()
    a, b = views(t, group)[:2]
    pa = t.tokenize(PROMPTS[0], add_special=False)
    pb = t.tokenize(PROMPTS[1], add_special=False)
    a.reset(), b.reset()
    a.decode(pa, 1)
    row_b = b.decode(pb, 1)[0].copy()
    a.truncate(0)
    a.decode(pb, 1)  # the same tokens, in another sequence
    b.truncate(len(pb) - 1)
    again = b.decode(pb[-1:], 1)[0]
    st.reset()
    alone = st.decode(pb, 1)[0]
    assert np.argmax(again) == np.argmax(row_b) == np.argmax(alone)
    assert np.allclose(again, row_b, atol=1e-3)
    assert b.tokens == pb and a.tokens == pb
    # a saved state of one sequence restores into another
    tokens, data = a.save_state()
    c = views(t, group)[2]
    c.load_state(tokens, data)
    assert c.tokens == pb
    assert np.argmax(c.decode([pb[-1]], 1)[0]) == np.argmax(a.decode([pb[-1]], 1)[0])


def test_strict_sequences_decode_in_calls_of_their_own(solo, shared):
    st, sd = solo
    t, d = shared
    group = StepGroup(first=d)
    tvs, dvs = views(t, group), views(d, group)
    tvs[0].solo = True
    calls = []
    real = t.decode_parts

    def spy(parts):
        calls.append({seq for seq, *_ in parts})
        return real(parts)

    t.decode_parts = spy
    try:
        dones = together([
            member_job(group, tvs[0], lambda: run(tvs[0], dvs[0], PROMPTS[2], 4, strict=True),
                       n=2),
            member_job(group, tvs[1], lambda: run(tvs[1], dvs[1], PROMPTS[3], 0, max_tokens=60),
                       n=2),
        ])
    finally:
        del t.decode_parts
    assert all(c == {0} for c in calls if 0 in c), "a strict sequence shared a call"
    assert dones[0].tokens == run(st, sd, PROMPTS[2], 0).tokens


def test_one_sequence_sampled_beside_another_follows_the_target(solo, shared):
    """While another sequence generates beside it in the same steps, one sequence's
    sampled output (T = 1, model drafts, K = 4) follows its target's exact distribution."""
    st, _ = solo
    t, d = shared
    cfg = SamplingConfig(temperature=1.0, top_k=6, top_p=1.0, min_p=0.0)
    prompt = st.tokenize(PROMPTS[0], add_special=False)
    joint = exact_two_token_distribution(st, prompt, cfg)
    group = StepGroup(first=d)
    tvs, dvs = views(t, group), views(d, group)
    stop = threading.Event()
    beside_steps = []

    def beside():
        with group.member(tvs[1]):
            while not stop.is_set():
                done = run(tvs[1], dvs[1], PROMPTS[1], 2, sampling=cfg, max_tokens=30,
                           seed=len(beside_steps))
                beside_steps.append(done.stats.rounds)

    n, counts, shared_steps = 1200, Counter(), 0
    other = threading.Thread(target=beside)
    other.start()
    try:
        with group.member(tvs[0]):
            for seed in range(n):
                before = group.rows - group.steps
                done = run(tvs[0], dvs[0], prompt, 4, sampling=cfg, max_tokens=2, seed=seed)
                counts[tuple(done.tokens[:2])] += 1
                shared_steps += (group.rows - group.steps) > before
    finally:
        stop.set()
        other.join()
    assert beside_steps and shared_steps > n // 2  # it really ran beside
    assert set(counts) <= set(joint)
    chi2, crit, dof = chi_square(counts, joint, n)
    assert chi2 < crit, f"chi2={chi2:.1f} >= {crit:.1f} (dof={dof})"


def test_a_long_prompt_joins_in_chunks_without_stalling_the_others(shared):
    t, _ = shared
    group = StepGroup(prefill_share=16)
    tvs = views(t, group)
    long_prompt = t.tokenize(" ".join(["word"] * 150), add_special=False)[:150]
    sizes = []
    real = t.decode_parts

    def spy(parts):
        sizes.append({seq: len(toks) for seq, _, toks, _ in parts})
        return real(parts)

    t.decode_parts = spy
    try:
        together([
            member_job(group, tvs[0], lambda: run(tvs[0], None, PROMPTS[1], 0, max_tokens=30),
                       n=2),
            member_job(group, tvs[1], lambda: run(tvs[1], None, long_prompt, 0, max_tokens=4),
                       n=2),
        ])
    finally:
        del t.decode_parts
    chunks = [s[1] for s in sizes if 1 in s and 0 in s]
    assert chunks and max(chunks) <= 16  # its prompt went in chunks beside the other's rows
    assert sum(s.get(1, 0) for s in sizes) >= len(long_prompt)


# --- pricing a shared step ---------------------------------------------------------------
def cpu_curve(policy, t1=0.068, slope=0.02, n=80):
    for size in range(1, n + 1):
        for _ in range(3):
            policy.verify.observe(size, t1 + slope * (size - 1))


def test_a_draft_that_pays_alone_may_not_pay_beside_others():
    """On a CPU-like curve (every row costs), a middling n-gram match pays for a sequence
    alone, but not once three other sequences' rows share the step: their tokens do not
    grow with this one's drafts, its rows slow them all."""
    policy = AutoK(8)
    cpu_curve(policy)
    alone = policy.plan("ngram", match_len=6)[1]
    policy.price_batch(3, 3.0)
    beside = policy.plan("ngram", match_len=6)[1]
    assert alone > 0 and beside < alone
    # where the step's rows are nearly free (a GPU), drafting pays beside others too
    flat = AutoK(8)
    cpu_curve(flat, slope=0.0005)
    flat.price_batch(3, 3.0)
    assert flat.plan("ngram", match_len=6)[1] > 0
    # and a sequence alone again is priced as before
    policy.price_batch(0, 0.0)
    assert policy.plan("ngram", match_len=6)[1] == alone


def test_other_sequences_are_priced_at_one_row_and_one_token_each():
    """A sequence prices its drafts against a step of the others at K = 0, whatever they
    drafted last: they plan this step at the same moment, so their last rounds are no
    forecast of it."""
    from specli.llama.batch import SeqView, StepGroup

    group = StepGroup()
    seqs = [SeqView(model=None, seq=i, group=group) for i in range(3)]
    seqs[1].last_rows = 26  # a long copy last step
    inside, leave = threading.Barrier(len(seqs) + 1), threading.Event()

    def generate(view):
        with group.member(view):
            inside.wait()
            leave.wait()

    threads = [threading.Thread(target=generate, args=(v,)) for v in seqs]
    for t in threads:
        t.start()
    inside.wait()
    try:
        assert [group.load(v) for v in seqs] == [(2, 2.0)] * 3
    finally:
        leave.set()
        for t in threads:
            t.join()
    assert group.load(seqs[0]) == (0, 0.0)  # alone again


def test_history_drafts_are_priced_by_one_table_shared_by_every_slot():
    """Drafts from earlier requests learn their acceptance in a table of their own, shared
    by the slots and kept across replies: once history matches have failed in one slot,
    no slot drafts from a history match of that length any more, while the same length
    in a reply's own context still drafts (issue 27: history drafts wasted shared rows)."""
    from specli.core.costs import SharedMatchAcceptance

    table = SharedMatchAcceptance()
    slots = [AutoK(8), AutoK(8)]
    for policy in slots:
        cpu_curve(policy)
        policy.price_history(table)
    first = slots[0]
    assert first.plan("ngram", match_len=12, origin="history")[1] > 0  # the prior: it may pay
    for _ in range(12):  # boilerplate matches into other replies: the first draft is wrong
        _, k = first.plan("ngram", match_len=12, origin="history")
        first.observe_round(k=max(k, 1), n_accepted=0, draft_seconds=0.0,
                            verify_seconds=None, source="ngram")  # costs: the curve's
        first.new_reply()  # the replies end; the table is kept
    assert table.count >= 12 and first.ngram.acceptance.count == 0
    for policy in slots:  # the other slot never drafted from the history, and knows too
        assert policy.plan("ngram", match_len=12, origin="history")[1] == 0
        assert policy.plan("ngram", match_len=12, origin="context")[1] > 0
    slots[1].price_history(None)  # no history table: priced as the reply's own matches
    assert slots[1].plan("ngram", match_len=12, origin="history")[1] > 0


def test_a_shared_calls_cost_is_learned_at_its_whole_size():
    policy = AutoK(8)
    policy.observe_round(k=2, n_accepted=1, draft_seconds=0.01, verify_seconds=0.5,
                         source="model", verify_calls=[(7, 0.5)])
    assert policy.verify.measured() == {7: 0.5}
