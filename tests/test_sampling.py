"""Exactness of the sampling math: warps, the acceptance rule, the residual, greedy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specli.config import SamplingConfig
from specli.errors import UsageError
from specli.core.sampling import (Dist, accept_probability, greedy_token, residual, verify,
                             verify_greedy, warp)


def dense(d: Dist, n: int) -> np.ndarray:
    out = np.zeros(n)
    out[d.ids] = d.probs
    return out


def dist_from(weights) -> Dist:
    w = np.asarray(weights, dtype=float)
    ids = np.nonzero(w > 0)[0]
    return Dist(ids.astype(np.int64), w[ids] / w[ids].sum())


weights = st.lists(st.floats(0.0, 10.0), min_size=2, max_size=8).filter(lambda w: sum(w) > 1e-3)


def pair_of_weights():
    return st.integers(2, 8).flatmap(lambda n: st.tuples(
        st.lists(st.floats(0.0, 10.0), min_size=n, max_size=n).filter(lambda w: sum(w) > 1e-3),
        st.lists(st.floats(0.0, 10.0), min_size=n, max_size=n).filter(lambda w: sum(w) > 1e-3)))


def one_step_output(p: Dist, q: Dist, n: int) -> np.ndarray:
    """Exact distribution of the token emitted at one position, by enumerating the draft x."""
    out = np.zeros(n)
    for x, qx in zip(q.ids, q.probs):
        a = accept_probability(p, q, int(x))
        out[x] += qx * a
        out += qx * (1 - a) * dense(residual(p, q), n)
    return out


@settings(max_examples=300, deadline=None)
@given(pair_of_weights())
def test_one_verification_step_emits_exactly_p(pw):
    p, q = dist_from(pw[0]), dist_from(pw[1])
    n = len(pw[0])
    np.testing.assert_allclose(one_step_output(p, q, n), dense(p, n), atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 8).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0.0, 10.0), min_size=n, max_size=n).filter(lambda w: sum(w) > 1e-3),
    st.integers(0, n - 1))))
def test_point_mass_draft_emits_exactly_p(pw):
    """An n-gram proposal (q = delta_x): accept with p(x), else p without x, renormalised."""
    w, x = pw
    p, q, n = dist_from(w), Dist.point(x), len(w)
    assert accept_probability(p, q, x) == pytest.approx(p.prob(x))
    np.testing.assert_allclose(one_step_output(p, q, n), dense(p, n), atol=1e-9)
    if p.prob(x) < 1 - 1e-9:
        r = dense(residual(p, q), n)
        assert r[x] == 0
        expect = dense(p, n)
        expect[x] = 0
        np.testing.assert_allclose(r, expect / expect.sum(), atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(pair_of_weights())
def test_residual_is_a_distribution(pw):
    p, q = dist_from(pw[0]), dist_from(pw[1])
    r = residual(p, q)
    assert (r.probs >= 0).all()
    assert r.probs.sum() == pytest.approx(1.0)
    assert np.all(np.diff(r.ids) > 0)


def test_two_round_chi_square_matches_target_joint():
    """K = 2 with position-dependent p and q: the first two emitted tokens follow p exactly.

    Seeded, so it cannot flake; a biased rule (e.g. accepting with q/p) fails it badly.
    """
    rng = np.random.default_rng(1234)
    V = 4
    p1 = rng.dirichlet(np.ones(V))
    p2 = rng.dirichlet(np.ones(V), size=V)  # p2[y1] = p(. | y1)
    q1 = rng.dirichlet(np.ones(V))
    q2 = rng.dirichlet(np.ones(V), size=V)
    P = lambda v: Dist(np.arange(V), v / v.sum())  # noqa: E731
    counts = np.zeros((V, V))
    n = 40_000
    for _ in range(n):
        x1 = P(q1).sample(rng)
        x2 = P(q2[x1]).sample(rng)
        v = verify([x1, x2], [P(q1), P(q2[x1])], [P(p1), P(p2[x1]), P(p1)], rng)
        if v.n_accepted == 0:
            y1 = v.token
            y2 = P(p2[y1]).sample(rng)  # the next round samples from the target given y1
        else:
            y1 = x1
            y2 = x2 if v.n_accepted == 2 else v.token
        counts[y1, y2] += 1
    expected = n * p1[:, None] * p2
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 40.8  # chi-square, 15 degrees of freedom, p = 0.0005


def test_verify_bonus_when_all_accepted():
    rng = np.random.default_rng(0)
    p = Dist(np.array([0, 1]), np.array([0.5, 0.5]))
    q = Dist(np.array([0, 1]), np.array([0.5, 0.5]))  # p == q: always accepted
    bonus = Dist.point(1)
    v = verify([0, 1, 0], [q, q, q], [p, p, p, bonus], rng)
    assert v.n_accepted == 3 and v.bonus and v.token == 1
    assert v.accept_probs == (1.0, 1.0, 1.0)


def test_verify_rejects_token_target_never_emits():
    rng = np.random.default_rng(0)
    p = Dist(np.array([1]), np.array([1.0]))
    q = Dist.point(0)
    v = verify([0], [q], [p, p], rng)
    assert v.n_accepted == 0 and v.token == 1 and not v.bonus and v.accept_probs == (0.0,)


def test_greedy_ties_go_to_lowest_id():
    logits = np.array([0.0, 3.0, 1.0, 3.0], dtype=np.float32)
    assert greedy_token(logits) == 1
    assert warp(logits, SamplingConfig(temperature=0.0)).ids.tolist() == [1]


def test_verify_greedy_prefix_and_target_token():
    v = verify_greedy([5, 6, 7], [5, 6, 9, 1])
    assert (v.n_accepted, v.token, v.bonus, v.accept_probs) == (2, 9, False, (1.0, 1.0, 0.0))
    v = verify_greedy([5, 6], [5, 6, 3])
    assert (v.n_accepted, v.token, v.bonus) == (2, 3, True)
    v = verify_greedy([], [4])
    assert (v.n_accepted, v.token, v.bonus) == (0, 4, True)


def reference_warp(logits: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """Dense, sort-everything reference of temperature -> top-k -> top-p -> min-p."""
    z = logits.astype(np.float64) / cfg.temperature
    if 0 < cfg.top_k < len(z):
        keep = np.lexsort((np.arange(len(z)), -z))[: cfg.top_k]  # ties: lowest ids first
        mask = np.full(len(z), -np.inf)
        mask[keep] = 0.0
        z = z + mask
    p = np.exp(z - z.max())
    p /= p.sum()
    if cfg.top_p < 1:
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        drop = order[before >= cfg.top_p]
        p[drop] = 0
    if cfg.min_p > 0:
        p[p < cfg.min_p * p.max()] = 0
    return p / p.sum()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-8, 8), min_size=3, max_size=40, unique=True),
       st.floats(0.1, 3.0), st.integers(0, 10), st.floats(0.05, 1.0), st.floats(0.0, 0.5))
def test_warp_matches_dense_reference(logits, temp, top_k, top_p, min_p):
    cfg = SamplingConfig(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p)
    x = np.array(logits, dtype=np.float32)
    got = dense(warp(x, cfg), len(x))
    np.testing.assert_allclose(got, reference_warp(x, cfg), atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 60), st.integers(1, 50), st.floats(0.3, 1.5))
def test_warp_under_a_grammar_mask_matches_dense_reference(seed, allowed, top_k, temp):
    """Most logits -inf (a grammar's mask), so whole top-k chunks are masked: the same
    distribution as the dense reference, whether fewer, as many or more ids than k are
    allowed, ties included."""
    rng = np.random.default_rng(seed)
    x = np.full(3000, -np.inf, dtype=np.float32)
    ids = rng.choice(3000, size=allowed, replace=False)
    x[ids] = rng.integers(-3, 4, size=allowed).astype(np.float32)  # ties across the boundary
    cfg = SamplingConfig(temperature=temp, top_k=top_k, top_p=0.95, min_p=0.05)
    np.testing.assert_allclose(dense(warp(x, cfg), len(x)), reference_warp(x, cfg), atol=1e-9)


def test_warp_is_applied_identically_to_p_and_q():
    """The same logits and config give the same distribution whichever model they came from,
    and a draft with equal logits is therefore always accepted."""
    rng = np.random.default_rng(7)
    logits = rng.normal(size=500).astype(np.float32)
    cfg = SamplingConfig(temperature=0.7, top_k=40, top_p=0.9, min_p=0.02)
    p, q = warp(logits, cfg), warp(logits.copy(), cfg)
    assert np.array_equal(p.ids, q.ids) and np.array_equal(p.probs, q.probs)
    for _ in range(50):
        x = q.sample(rng)
        assert accept_probability(p, q, x) == 1.0


def test_top_k_ties_go_to_the_lowest_ids():
    logits = np.array([1.0, 5.0, 1.0, 1.0, 5.0, 1.0], dtype=np.float32)
    d = warp(logits, SamplingConfig(temperature=1.0, top_k=3, top_p=1.0, min_p=0.0))
    assert d.ids.tolist() == [0, 1, 4]


def test_warp_top_k_keeps_k_tokens():
    logits = np.arange(100, dtype=np.float32)
    d = warp(logits, SamplingConfig(temperature=1.0, top_k=5, top_p=1.0, min_p=0.0))
    assert d.ids.tolist() == [95, 96, 97, 98, 99]


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5),
                                    dict(top_k=-1), dict(min_p=1.0)])
def test_bad_sampling_values_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        SamplingConfig(**kwargs)
