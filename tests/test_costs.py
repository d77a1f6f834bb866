"""The cost model and K policy: formulas, estimators, and decisions on synthetic curves."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from specli.core.costs import (AcceptanceRate, VerifyCost, WindowedMedian, best_k, expected_tokens,
                               predicted_speedup, tokens_per_second)
from specli.core.policy import KPolicy

T1 = 0.032  # seconds per target token, as measured for the 1.5B target on the CPU


def cpu_curve(n: int) -> float:
    """Verify cost growing ~0.6 * t_v(1) per extra token, as on a 2-core CPU."""
    return T1 * (1.0 + 0.6 * (n - 1))


def gpu_curve(n: int) -> float:
    """Verify cost flat in batch size, as on a GPU."""
    return T1


def simulate_round(rng: np.random.Generator, alpha: float, k: int) -> int:
    """Drafts accepted in one round when each is accepted independently with prob alpha."""
    n = 0
    while n < k and rng.random() < alpha:
        n += 1
    return n


def run_rounds(policy: KPolicy, rounds: int, alpha: float, t_d: float, t_v, seed: int = 0):
    """Drive the policy with synthetic timings; return the K it chose each round."""
    rng = np.random.default_rng(seed)
    ks = []
    for _ in range(rounds):
        k = policy.choose_k()
        ks.append(k)
        policy.observe_round(k, simulate_round(rng, alpha, k), k * t_d, t_v(k + 1))
    return ks


# --------------------------------------------------------------------------- E(K)


@given(st.floats(0.0, 0.999), st.integers(0, 64))
def test_expected_tokens_matches_closed_form(alpha, k):
    closed = (1 - alpha ** (k + 1)) / (1 - alpha)
    assert math.isclose(expected_tokens(alpha, k), closed, rel_tol=1e-9)


@given(st.floats(0.0, 1.0), st.integers(0, 20))
def test_expected_tokens_matches_enumeration(alpha, k):
    # P(j accepted) = alpha^j (1 - alpha) for j < k, alpha^k for j = k; tokens = j + 1.
    enumerated = sum((j + 1) * alpha**j * (1 - alpha) for j in range(k)) + (k + 1) * alpha**k
    assert math.isclose(expected_tokens(alpha, k), enumerated, rel_tol=1e-9, abs_tol=1e-12)


def test_expected_tokens_matches_simulation():
    rng = np.random.default_rng(1)
    alpha, k, rounds = 0.7, 5, 40_000
    mean = np.mean([simulate_round(rng, alpha, k) + 1 for _ in range(rounds)])
    assert mean == pytest.approx(expected_tokens(alpha, k), rel=0.02)


@pytest.mark.parametrize("k", [0, 1, 4, 64])
def test_expected_tokens_alpha_one_limit(k):
    assert expected_tokens(1.0, k) == k + 1
    assert expected_tokens(1.0 - 1e-12, k) == pytest.approx(k + 1)
    assert expected_tokens(0.0, k) == 1.0


def test_expected_tokens_rejects_bad_input():
    with pytest.raises(ValueError):
        expected_tokens(1.5, 2)
    with pytest.raises(ValueError):
        expected_tokens(0.5, -1)


def test_speedup_formula_and_curve_forms():
    table = [cpu_curve(n) for n in range(1, 10)]
    for k in range(8):
        by_fn = predicted_speedup(0.9, k, 0.55 * T1, cpu_curve)
        by_table = predicted_speedup(0.9, k, 0.55 * T1, table)
        expected = expected_tokens(0.9, k) * T1 / (k * 0.55 * T1 + cpu_curve(k + 1))
        assert by_fn == pytest.approx(expected) == pytest.approx(by_table)
    assert predicted_speedup(0.9, 0, 0.55 * T1, cpu_curve) == pytest.approx(1.0)
    assert tokens_per_second(0.9, 0, 0.0, gpu_curve) == pytest.approx(1 / T1)


def test_best_k_on_known_curves():
    assert best_k(0.9, 8, 0.55 * T1, cpu_curve) == 0
    assert best_k(0.9, 8, 0.1 * T1, gpu_curve) == 8
    assert best_k(0.9, 16, 0.1 * T1, gpu_curve) in (9, 10)
    assert best_k(0.9, 8, 0.0, cpu_curve) in (2, 3)


# --------------------------------------------------------------------------- estimators


def test_windowed_median_prior_then_robust_to_outlier():
    est = WindowedMedian(prior=0.5, window=5)
    assert est.value == 0.5
    for x in [1.0, 1.1, 50.0, 0.9, 1.0]:
        est.add(x)
    assert est.value == 1.0
    assert est.count == 5


def test_acceptance_counts_only_judged_drafts():
    acc = AcceptanceRate(prior=0.5, weight=1.0)  # weight 1: value is the last outcome
    acc.observe(8, 8)
    assert acc.value == 1.0 and acc.count == 8
    acc.observe(8, 2)  # two accepted, one rejected, five never judged
    assert acc.value == 0.0 and acc.count == 8 + 3


def test_acceptance_calibration_mean_matches_alpha():
    acc = AcceptanceRate(prior=0.5, weight=0.02)
    for _ in range(500):
        acc.observe(4, 2, draft_probs=[0.9, 0.8, 0.3, 0.1])
    # judged tokens: q = 0.9, 0.8 (accepted) and 0.3 (rejected): alpha ~ 2/3, mean q ~ 2/3.
    assert acc.value == pytest.approx(2 / 3, abs=0.03)
    assert acc.calibrate(acc.mean_confidence) == pytest.approx(acc.value)
    assert acc.calibrate(0.0) == 0.0 and acc.calibrate(1.0) <= 1.0


def test_verify_cost_prior_one_point_and_fit():
    vc = VerifyCost(9, prior_t1=0.03, prior_slope=0.15)
    assert vc(1) == pytest.approx(0.03)
    assert vc(5) == pytest.approx(0.03 * (1 + 0.15 * 4))
    vc.observe(5, 0.16)  # one point: the prior shape scaled through it
    assert vc(5) == pytest.approx(0.16)
    assert vc(1) == pytest.approx(0.16 / 1.6)
    for n in (1, 3):  # two or more points: an affine fit on the CPU curve
        vc.observe(n, cpu_curve(n))
    vc.observe(5, cpu_curve(5))
    vc.observe(5, cpu_curve(5))  # the median of (0.16, c5, c5) is c5
    for n in range(1, 10):
        assert vc(n) == pytest.approx(cpu_curve(n), rel=1e-6)


def test_verify_cost_slope_never_negative():
    vc = VerifyCost(5)
    vc.observe(1, 0.05)
    vc.observe(3, 0.03)  # noise: a bigger batch measured cheaper
    assert vc(5) >= vc(3) and vc(2) > 0


# --------------------------------------------------------------------------- the policy


def test_cpu_curve_speculation_cannot_pay_so_k_is_zero():
    policy = KPolicy(8)
    ks = run_rounds(policy, 200, alpha=0.9, t_d=0.55 * T1, t_v=cpu_curve)
    assert ks[-1] == 0
    assert policy.greedy_k() == 0
    assert policy.snapshot().speedup == pytest.approx(1.0)
    assert policy.t_draft == pytest.approx(0.55 * T1)
    # Settled: nearly every late round is K = 0, the rest are single probes.
    assert ks[100:].count(0) >= 90


def test_no_probes_when_even_perfect_acceptance_cannot_pay():
    """The CPU curve with t_d = 0.55 t_v(1): no K pays even at alpha = 1, so once the draft
    cost is measured, probing (and the draft catch-up it costs) stops."""
    policy = KPolicy(8, probe_every=16, probe_k=2)
    ks = run_rounds(policy, 300, alpha=0.9, t_d=0.55 * T1, t_v=cpu_curve)
    assert policy.hopeless()
    assert ks[100:].count(0) == 200


def test_cpu_probe_then_back_to_zero():
    """A cheaper draft (0.2 t_v(1)) with poor acceptance: K = 0 now, but alpha near 1 would
    pay, so the policy re-probes now and then, each unproductive probe doubling the wait."""
    policy = KPolicy(8, probe_every=16, probe_k=2)
    ks = run_rounds(policy, 600, alpha=0.3, t_d=0.2 * T1, t_v=cpu_curve)
    assert not policy.hopeless()
    late = ks[40:]
    probes = [i for i, k in enumerate(late) if k > 0]
    assert probes, "no re-probe while at K = 0"
    assert all(late[i] == 2 for i in probes)
    for i in probes:  # each probe is a single round, followed by K = 0 again
        if i + 1 < len(late):
            assert late[i + 1] == 0
    gaps = np.diff([i for i, k in enumerate(ks) if k > 0]).tolist()
    assert gaps[-3:] == [65, 65, 65]  # backed off to probe_max = 64 K = 0 rounds
    assert gaps == sorted(gaps) and gaps[0] < 65, gaps


def test_a_productive_probe_resets_the_wait():
    """When acceptance rises, the probe that finds it makes K > 0 pay; after it falls
    again, probing restarts at the short interval."""
    policy = KPolicy(8, probe_every=16, probe_k=2)
    run_rounds(policy, 400, alpha=0.3, t_d=0.2 * T1, t_v=cpu_curve)
    assert policy._probe_gap > 16
    ks = run_rounds(policy, 1500, alpha=0.95, t_d=0.2 * T1, t_v=cpu_curve)
    assert max(ks[-50:]) > 0 and policy._probe_gap == 16


def run_rounds_catching_up(policy: KPolicy, rounds: int, alpha: float, t_d: float, t_v,
                           t_c: float, seed: int = 0):
    """run_rounds, with the draft's catch-up after K = 0 stretches reported as the engine does:
    a model round after L rounds at K = 0 first feeds L + 1 tokens, t_d + L * t_c seconds."""
    rng = np.random.default_rng(seed)
    ks, behind = [], 0
    for _ in range(rounds):
        k = policy.choose_k()
        ks.append(k)
        catchup = (behind + 1, t_d + behind * t_c) if k > 0 and behind + 1 > 2 else None
        behind = behind + 1 if k == 0 else 0
        policy.observe_round(k, simulate_round(rng, alpha, k), k * t_d, t_v(k + 1),
                             catchup=catchup)
    return ks


def test_dear_catchup_stops_probing_once_k_settles_at_zero():
    """CPU: catching the draft up costs 0.11 t_v(1) per token (a batched draft decode), so
    every probe costs ~11% of the K = 0 stretch before it, found or not: after the first
    probe measures that, the policy stops probing. Everything else as in
    test_cpu_probe_then_back_to_zero, where probes go on for ever."""
    policy = KPolicy(8, probe_every=16, probe_k=2)
    ks = run_rounds_catching_up(policy, 600, alpha=0.3, t_d=0.2 * T1, t_v=cpu_curve,
                                t_c=0.11 * T1)
    assert policy.t_catchup == pytest.approx(0.11 * T1)
    assert policy.probing_too_dear()
    late = ks[60:]
    assert sum(ks[:60]) > 0 and not any(late), "probed although catch-up costs more than it can win"


def test_cheap_catchup_keeps_probing():
    """GPU-like: a catch-up costs 0.005 t_v(1) per token, under the 2% budget: probes go on."""
    policy = KPolicy(8, probe_every=16, probe_k=2)
    ks = run_rounds_catching_up(policy, 600, alpha=0.3, t_d=0.2 * T1, t_v=cpu_curve,
                                t_c=0.005 * T1)
    assert not policy.probing_too_dear()
    assert any(ks[300:]), "stopped probing although catch-up is cheap"


def test_remembered_catchup_means_no_probe_at_all():
    """With t_c remembered from an earlier run (scaled like t_v), not even a first probe."""
    policy = KPolicy(8, probe_every=16, probe_k=2)
    policy.seed_catchup(0.11 * T1)
    ks = run_rounds_catching_up(policy, 400, alpha=0.3, t_d=0.2 * T1, t_v=cpu_curve,
                                t_c=0.11 * T1)
    first_zero = ks.index(0)
    assert not any(ks[first_zero + 20:])
    with pytest.raises(ValueError):
        policy.seed_catchup(float("nan"))


def test_catchup_does_not_stop_drafting_that_pays():
    """Dear catch-up only gates probes from K = 0: where drafting pays it keeps drafting."""
    policy = KPolicy(8, probe_every=16)
    policy.seed_catchup(0.5 * T1)
    ks = run_rounds_catching_up(policy, 300, alpha=0.9, t_d=0.1 * T1, t_v=gpu_curve,
                                t_c=0.5 * T1)
    assert np.mean([k > 0 for k in ks[50:]]) > 0.9


def test_probing_is_deterministic_and_choose_k_idempotent():
    a = run_rounds(KPolicy(8), 150, alpha=0.9, t_d=0.55 * T1, t_v=cpu_curve, seed=3)
    b = run_rounds(KPolicy(8), 150, alpha=0.9, t_d=0.55 * T1, t_v=cpu_curve, seed=3)
    assert a == b
    policy = KPolicy(8)
    run_rounds(policy, 40, alpha=0.9, t_d=0.55 * T1, t_v=cpu_curve)
    assert len({policy.choose_k() for _ in range(5)}) == 1


def test_gpu_flat_curve_picks_large_k():
    policy = KPolicy(8)
    ks = run_rounds(policy, 200, alpha=0.9, t_d=0.1 * T1, t_v=gpu_curve)
    assert ks[-1] >= 4
    assert min(ks[50:]) >= 4
    assert policy.alpha == pytest.approx(0.9, abs=0.08)
    assert policy.snapshot().speedup > 2.0


def test_baseline_is_measured_while_speculating():
    policy = KPolicy(8, min_baseline_samples=3, probe_every=16)
    ks = run_rounds(policy, 100, alpha=0.9, t_d=0.1 * T1, t_v=gpu_curve)
    assert ks[1] == 0  # the second round measures t_v(1)
    assert policy.verify.count(1) == 3
    assert policy.t_verify(1) == pytest.approx(T1)


def test_falling_alpha_lowers_k():
    policy = KPolicy(8)
    high = run_rounds(policy, 100, alpha=1.0, t_d=0.1 * T1, t_v=gpu_curve)
    k_high = high[-1]
    low = run_rounds(policy, 100, alpha=0.1, t_d=0.1 * T1, t_v=gpu_curve)
    assert k_high == 8
    assert low[-1] < k_high
    assert policy.greedy_k() <= 2
    assert policy.alpha < 0.3


def test_rising_alpha_is_noticed_by_probes_with_free_drafts():
    policy = KPolicy(8, draft_cost=0.0)
    run_rounds(policy, 100, alpha=0.05, t_d=0.0, t_v=cpu_curve)
    assert policy.greedy_k() == 0
    ks = run_rounds(policy, 300, alpha=0.95, t_d=0.0, t_v=cpu_curve)
    assert ks[-1] > 0


def test_free_drafts_on_cpu_curve_pay():
    policy = KPolicy(8, draft_cost=0.0)
    ks = run_rounds(policy, 200, alpha=0.9, t_d=0.0, t_v=cpu_curve)
    assert ks[-1] > 0
    assert policy.t_draft == 0.0
    # The same policy state, asked about a costly drafter, says no.
    assert policy.greedy_k(draft_cost=0.55 * T1) == 0
    # And a model-draft policy answers "free" through the override.
    model = KPolicy(8)
    run_rounds(model, 200, alpha=0.9, t_d=0.55 * T1, t_v=cpu_curve)
    assert model.choose_k() == 0
    assert model.greedy_k(draft_cost=0.0) > 0


def test_shared_verify_cost_between_policies():
    shared = VerifyCost(9)
    model = KPolicy(8, verify=shared)
    ngram = KPolicy(8, verify=shared, draft_cost=0.0)
    run_rounds(model, 100, alpha=0.9, t_d=0.55 * T1, t_v=cpu_curve)
    assert ngram.t_verify(3) == pytest.approx(cpu_curve(3), rel=1e-6)
    with pytest.raises(ValueError):
        KPolicy(16, verify=shared)


def test_keep_drafting_stops_on_low_confidence_and_at_k_max():
    policy = KPolicy(8)
    run_rounds(policy, 200, alpha=0.9, t_d=0.1 * T1, t_v=gpu_curve)
    assert policy.keep_drafting(0, 1.0)
    assert policy.keep_drafting(3, 0.9**3)
    assert not policy.keep_drafting(3, 0.01)  # the draft is unsure: stop here
    assert not policy.keep_drafting(8, 1.0)  # k_max reached


def test_keep_drafting_agrees_with_choose_k_when_confidence_is_alpha():
    policy = KPolicy(16, draft_cost=0.1 * T1, prior_alpha=0.9, alpha_weight=1e-6)
    for n in range(1, 18):
        policy.verify.observe(n, gpu_curve(n))
    n, p = 0, 1.0
    while policy.keep_drafting(n, p):
        n, p = n + 1, p * policy.alpha
    assert abs(n - policy.choose_k()) <= 1


def test_keep_drafting_on_cpu_curve_never_drafts():
    policy = KPolicy(8)
    run_rounds(policy, 200, alpha=0.9, t_d=0.55 * T1, t_v=cpu_curve)
    assert not policy.keep_drafting(0, 1.0)


def test_keep_drafting_looks_past_a_step_in_the_curve():
    """Stepped CPU curve (1.00 1.56 2.10 1.82 2.50 x t_v(1)), t_d = 0.3 t_v(1), alpha 0.9:
    only K = 3 pays (a batch of 4 is cheaper than one of 3). After one confident draft the
    next token alone costs more than it gains, but the two after it pay: draft on to 3.
    The one-step rule stopped at 1 draft, the length that cannot pay there."""
    steps = [1.00, 1.56, 2.10, 1.82, 2.50, 2.91, 3.40, 3.68, 3.93]
    policy = KPolicy(8, draft_cost=0.3 * T1, prior_alpha=0.9, alpha_weight=1e-6)
    for n, r in enumerate(steps, start=1):
        policy.verify.observe(n, r * T1)
    assert policy.greedy_k() == 3
    n, p = 0, 1.0
    while policy.keep_drafting(n, p):
        n, p = n + 1, p * policy.alpha
    assert n == 3
    assert policy.keep_drafting(2, 0.81)  # the 4th verify row is cheaper than the 3rd
    assert not policy.keep_drafting(1, 0.05)  # an unsure draft still stops the round


def test_observe_round_rejects_bad_counts():
    policy = KPolicy(4)
    with pytest.raises(ValueError):
        policy.observe_round(5, 0, 0.1, 0.1)
    with pytest.raises(ValueError):
        policy.observe_round(2, 3, 0.1, 0.1)


def test_k_max_zero_always_zero():
    policy = KPolicy(0)
    assert run_rounds(policy, 40, alpha=0.9, t_d=0.0, t_v=gpu_curve) == [0] * 40


@given(st.floats(0.0, 1.0), st.floats(0.0, 0.05), st.integers(0, 16))
def test_policy_greedy_k_matches_pure_best_k(alpha, t_d, k_max):
    policy = KPolicy(k_max, draft_cost=t_d)
    for n in range(1, k_max + 2):
        policy.verify.observe(n, cpu_curve(n))
    assert policy.greedy_k(alpha=alpha) == best_k(alpha, k_max, t_d, cpu_curve)


# --------------------------------------------------------------------------- n-gram drafts

from specli.core.costs import MatchAcceptance, match_prior  # noqa: E402
from specli.core.policy import AutoK, NgramPolicy  # noqa: E402


def stepped_curve(n: int) -> float:
    """A CPU-like curve with a step: a batch of 16 costs less than one of 15 (GEMM tiles)."""
    return T1 * (1.0 + 0.45 * (n - 1)) if n != 16 else T1 * 6.0


def test_match_prior_rises_with_length():
    values = [match_prior(n) for n in (1, 2, 4, 8, 16, 64)]
    assert values == sorted(values) and values[0] < 0.4 and values[-1] > 0.95


def test_match_acceptance_learns_per_bucket_and_ignores_unjudged_drafts():
    acc = MatchAcceptance(prior_weight=2.0, window=50)
    for _ in range(200):
        acc.observe(match_len=1, k=4, n_accepted=0)  # short matches: first draft wrong
        acc.observe(match_len=40, k=4, n_accepted=4)  # long matches: every draft right
    assert acc(1) < 0.05 and acc(40) > 0.95
    assert acc(2) == pytest.approx(match_prior(2))  # never judged: drafts after a rejection
    with pytest.raises(ValueError):
        acc.observe(match_len=3, k=2, n_accepted=3)


def test_shared_match_acceptance_lets_evidence_win_over_untouched_priors():
    """Rejections at one length are not averaged with the priors of lengths never judged
    (MatchAcceptance's pooling would price them at 0.46); the fit stays non-decreasing."""
    from specli.core.costs import SharedMatchAcceptance

    pooled, shared = MatchAcceptance(), SharedMatchAcceptance()
    for acc in (pooled, shared):
        for _ in range(12):
            acc.observe(match_len=12, k=4, n_accepted=0)
    assert pooled(12) > 0.4 and shared(12) < 0.25
    assert all(shared(n) <= shared(12) for n in (1, 2, 4, 8))  # shorter: no more likely
    assert shared(64) == pytest.approx(pooled(64))  # longer ones keep their prior
    for _ in range(30):
        shared.observe(match_len=3, k=1, n_accepted=1)  # short matches that do hold
    values = [shared(n) for n in (1, 2, 3, 4, 8, 12, 16, 64)]
    assert values == sorted(values) and shared(3) == shared(12) > 0.5  # pooled: evidence both


@given(st.lists(st.tuples(st.integers(1, 80), st.integers(1, 8), st.integers(0, 8)),
                max_size=60))
def test_shared_match_acceptance_is_always_non_decreasing(rounds):
    from specli.core.costs import SharedMatchAcceptance

    acc = SharedMatchAcceptance()
    for length, k, n in rounds:
        acc.observe(length, k, min(n, k))
    values = [acc(n) for n in range(1, 130)]
    assert values == sorted(values) and all(0.0 <= v <= 1.0 for v in values)


def test_ngram_policy_drafts_long_on_long_matches_and_not_on_short_ones():
    verify = VerifyCost(32)
    for n in range(1, 33):
        verify.observe(n, stepped_curve(n))
    policy = NgramPolicy(31, verify=verify)
    assert policy.best(0) == (0, pytest.approx(1 / T1))
    assert policy.choose_k(1) == 0  # a one-token match: prior acceptance 0.33, no K pays
    k_long = policy.choose_k(64)
    assert k_long == 15  # the step: verifying 16 costs less than 15, so K = 15 wins
    for _ in range(100):  # the text turns out not to copy, even after long matches
        policy.observe_round(64, 15, 0, stepped_curve(16))
    assert policy.choose_k(64) == 0


def test_ngram_policy_tries_an_unmeasured_size_once():
    verify = VerifyCost(32)
    for n in range(1, 16):
        verify.observe(n, stepped_curve(n))
    policy = NgramPolicy(31, verify=verify)
    verify.observe(17, stepped_curve(17))  # 16 unmeasured: interpolated, priced optimistically
    assert policy.choose_k(64) == 15
    policy.observe_round(64, 15, 15, T1 * 20)  # it turns out expensive
    assert policy.choose_k(64) != 15


def test_autok_hybrid_picks_the_source_with_the_higher_rate():
    auto = AutoK(8)
    for n in range(1, 33):
        for _ in range(3):
            auto.verify.observe(n, gpu_curve(n) * (1 + 0.02 * n))
    model = auto.model
    for _ in range(50):  # a cheap, accurate draft model (GPU-like)
        model.observe_round(4, 4, 4 * 0.05 * T1, gpu_curve(5))
    assert auto.plan("ngram", match_len=2, fallback="model")[0] == "model"  # weak match
    assert auto.plan("ngram", match_len=2)[0] == "ngram"  # no fallback: n-gram it is
    source, k = auto.plan("ngram", match_len=64, fallback="model")
    assert source == "ngram" and k > 8  # a long copy beats the model
    assert auto.plan("model") == ("model", model.choose_k())


def test_ngram_policy_skips_near_break_even_drafts():
    verify = VerifyCost(32)
    for n in range(1, 33):
        verify.observe(n, cpu_curve(n))
    policy = NgramPolicy(31, verify=verify)
    rates = policy.rates(8)
    gain = max(rates) / rates[0]
    assert 1.05 < gain < 1.2  # a modest predicted gain at a match of 8 on a steep CPU curve
    assert policy.choose_k(8) > 0
    policy.margin = gain - 1.0 + 0.01  # demand a little more than that gain
    assert policy.choose_k(8) == 0


def test_match_acceptance_stays_non_decreasing_in_match_length():
    # A few rejections after long matches (a copy that ends at an edit) must not price a
    # long match below a short one: that stopped drafting in the middle of long copies.
    acc = MatchAcceptance()
    for _ in range(6):
        acc.observe(match_len=40, k=1, n_accepted=0)
    values = [acc(n) for n in (1, 2, 4, 8, 16, 32, 40, 64, 100)]
    assert values == sorted(values)
    assert acc(40) < match_prior(40)  # the rejections still count
    assert acc(1) == pytest.approx(match_prior(1))  # short matches were never judged


def test_probe_length_follows_the_stepped_curve():
    """On a CPU curve with a step (t_v(4) < t_v(3), as measured on AVX-512: 1.00 1.56 2.10
    1.82 2.50 x t_v(1)), probes draft the K that pays best at alpha = 1 (K = 3), not K = 2."""
    steps = [1.00, 1.56, 2.10, 1.82, 2.50, 2.91, 3.40, 3.68, 3.93]

    def stepped(n: int) -> float:
        return T1 * steps[n - 1]

    policy = KPolicy(8, probe_every=16)
    for n in range(1, 10):  # remembered from a calibration, as run and bench start
        policy.verify.seed(n, stepped(n))
    ks = run_rounds(policy, 200, alpha=0.5, t_d=0.48 * T1, t_v=stepped)
    probes = [k for k in ks[30:] if k > 0]
    assert probes and set(probes) == {3}
    assert KPolicy(8, probe_k=2).probe_size() == 2  # a fixed probe length still wins


def test_a_new_reply_starts_from_the_match_priors_and_keeps_the_costs():
    """What n-gram matches did in one reply (edits: long copies hold) is not carried into
    the next (a code request's paraphrase of its prompt); the measured t_v is."""
    auto = AutoK(8)
    for n in range(1, 33):
        auto.verify.observe(n, stepped_curve(n))
    for _ in range(60):
        auto.ngram.observe_round(7, 15, 15, stepped_curve(16))
    assert auto.ngram.acceptance(7) > 0.95
    costs = auto.verify.measured()
    auto.new_reply()
    assert auto.ngram.acceptance(7) == pytest.approx(match_prior(8))  # bucket (6, 8]: prior
    assert auto.verify.measured() == costs
