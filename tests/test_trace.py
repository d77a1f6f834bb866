"""Trace collection: off, the events carry nothing; on, the same tokens plus what verification
saw, agreeing with the round; and both acceptances (rejection sampling, exact match) in Stats."""

from __future__ import annotations

import numpy as np
import pytest

from specli.llama.backend import LlamaModel
from specli.config import SamplingConfig, SpecConfig
from specli.core.drafters import HybridDrafter, ModelDrafter, NgramDrafter
from specli.core.engine import Round, speculative_generate
from specli.core.sampling import Dist, overlap, top_entries

SAMPLED = SamplingConfig(temperature=0.8, top_k=40, top_p=0.95, min_p=0.0)
GREEDY = SamplingConfig(temperature=0.0)
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def models(tiny_target, tiny_draft):
    t = LlamaModel(tiny_target, n_ctx=512, n_threads=1)
    d = LlamaModel(tiny_draft, n_ctx=512, n_threads=1)
    yield t, d
    t.close()
    d.close()


def run(target, draft, sampling, *, k=4, trace=False, chunk=None, max_tokens=40, seed=0,
        drafter=None):
    tokens = target.tokenize(PROMPT, add_special=False)
    drafter = drafter or ModelDrafter(draft, sampling, target.n_vocab)
    events = list(speculative_generate(target, drafter, tokens, sampling,
                                       SpecConfig(k=k, max_tokens=max_tokens, seed=seed),
                                       verify_chunk=chunk, trace=trace))
    return [e for e in events if isinstance(e, Round)], events[-1]


def test_overlap_and_top_entries():
    p = Dist(np.array([0, 1, 2, 3]), np.array([.4, .5, .05, .05]))
    q = Dist(np.array([0, 1, 2, 3]), np.array([.35, .3, .15, .2]))
    beta, pq = overlap(p, q)
    assert beta == pytest.approx(0.75) and pq == pytest.approx(0.3075)
    assert overlap(p, Dist.point(1)) == pytest.approx((0.5, 0.5))
    assert top_entries(p, 2) == [(1, 0.5), (0, 0.4)]


@pytest.mark.parametrize("sampling", [SAMPLED, GREEDY], ids=["sampled", "greedy"])
def test_trace_off_carries_nothing(models, sampling):
    rounds, done = run(*models, sampling)
    assert rounds and all(r.trace is None for r in rounds)


@pytest.mark.parametrize("chunk", [None, 2], ids=["batched", "strict"])
def test_trace_on_same_tokens_and_agrees_with_rounds(models, chunk):
    off_rounds, off = run(*models, SAMPLED, chunk=chunk)
    rounds, done = run(*models, SAMPLED, trace=True, chunk=chunk)
    assert done.tokens == off.tokens  # recording the draws draws nothing more
    assert [r.accept_probs for r in rounds] == [r.accept_probs for r in off_rounds]
    seen = set()
    for r in rounds:
        t = r.trace
        assert [pos.accept for pos in t.positions] == list(r.accept_probs)
        for pos in t.positions:
            assert pos.accepted == (pos.u < pos.accept)
            assert pos.accept == pytest.approx(min(1.0, pos.p_x / pos.q_x))
            assert 0 <= pos.exact_match <= pos.beta <= 1 + 1e-12
            assert len(pos.p_top) <= 5 and pos.p_top[0][2] >= pos.p_top[-1][2]
        assert t.token == r.token and t.token_prob > 0
        assert t.source == ("p" if r.bonus else "residual")
        seen.add(t.source)
    assert seen == {"p", "residual"}  # both a rejection and an all-accepted round
    assert done.stats.overlap_positions == sum(len(r.accept_probs) for r in rounds)
    assert 0 < done.stats.exact_match_acceptance <= done.stats.expected_acceptance < 1


def test_stats_have_no_overlap_when_greedy_or_ngram(models):
    _, done = run(*models, GREEDY)
    assert done.stats.expected_acceptance is None and done.stats.exact_match_acceptance is None
    assert done.stats.to_dict()["expected_acceptance"] is None
    _, done = run(*models, SAMPLED, drafter=NgramDrafter(n_min=1))
    assert done.stats.overlap_positions == 0


def test_greedy_trace_shows_argmax_agreement(models):
    rounds, _ = run(*models, GREEDY, trace=True)
    for r in rounds:
        assert r.trace.greedy and r.trace.source == "argmax"
        for pos in r.trace.positions:
            assert pos.accepted == (pos.token == pos.target_argmax)
        assert r.trace.p_top[0][0] == r.token  # the target's token is its argmax


def test_trace_with_hybrid_drafter(models):
    target, draft = models
    hybrid = HybridDrafter(ModelDrafter(draft, SAMPLED, target.n_vocab), NgramDrafter(n_min=1),
                           min_match=2)
    rounds, _ = run(target, draft, SAMPLED, trace=True, drafter=hybrid, max_tokens=60)
    assert all(r.trace is not None for r in rounds)


@pytest.mark.parametrize("n,cut", [(6, False), (6, True), (5000, False), (5000, True)])
def test_overlap_matches_dense_sums(n, cut):
    """Every path of overlap (aligned, sparse lookup, dense scatter) equals the dense sums."""
    rng = np.random.default_rng(n)
    pd, qd = rng.random(n), rng.random(n)
    if cut:
        pd[rng.random(n) < 0.4] = 0.0
        qd[rng.random(n) < 0.4] = 0.0
    pd, qd = pd / pd.sum(), qd / qd.sum()

    def sparse(d):
        ids = np.flatnonzero(d)
        return Dist(ids, d[ids])

    beta, pq = overlap(sparse(pd), sparse(qd))
    assert beta == pytest.approx(np.minimum(pd, qd).sum()) and pq == pytest.approx(pd @ qd)
