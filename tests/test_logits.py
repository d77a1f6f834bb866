"""Logit rules (logit_bias, presence and frequency penalties) under speculation.

A rule changes p at every position as a function of the output so far, drafts included:
the engine must apply it row by row with the drafted prefix, or the output is not the
target's under the same rule. These tests would fail if the rules were applied to the
committed output only, ignored in verification, or left out of the model drafter's q
without the verification noticing.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from specli.config import SamplingConfig, SpecConfig
from specli.core.drafters import ModelDrafter, NgramDrafter
from specli.core.engine import Done, speculative_generate
from specli.core.logits import LogitRules
from specli.core.sampling import warp
from test_engine import REPEATING, chi_square, models  # noqa: F401  (the tiny pair)

CFG = SamplingConfig(temperature=1.0, top_k=6, top_p=1.0, min_p=0.0)
GREEDY = SamplingConfig(temperature=0.0)


# --- the rules themselves -------------------------------------------------------------------
@given(st.lists(st.integers(0, 11), max_size=30),
       st.dictionaries(st.integers(0, 15), st.floats(-100, 100), max_size=4),
       st.floats(-2, 2), st.floats(-2, 2))
def test_apply_is_openais_definition(output, bias, presence, frequency):
    """logit[j] + bias[j] - frequency * count[j] - presence * (count[j] > 0), over the
    output only; ids beyond the row are ignored; the input row is left as it was."""
    rng = np.random.default_rng(len(output))
    row = rng.normal(size=12).astype(np.float32)
    before = row.copy()
    rules = LogitRules(tuple(sorted(bias.items())), presence, frequency)
    got = rules.apply(row, output)
    want = before.astype(np.float64)
    for j in range(12):
        c = output.count(j)
        want[j] += bias.get(j, 0.0) - frequency * c - (presence if c else 0.0)
    assert np.allclose(got, want, atol=1e-3)
    assert np.array_equal(row, before)


def test_inactive_rules_are_none_and_out_of_range_values_are_refused():
    assert LogitRules.of({}, 0.0, 0.0) is None
    assert LogitRules.of({3: 0.5}) is not None
    for bad in (dict(bias={1: 101.0}), dict(presence=2.5), dict(frequency=-2.01)):
        with pytest.raises(ValueError):
            LogitRules.of(**bad)


# --- exactness under speculation ------------------------------------------------------------
def rules_for(target, prompt, penalty: float = 1.75) -> LogitRules:
    """Rules that move the first two tokens a lot: the likeliest first token banned, the
    second boosted, and penalties on repeating a token (negative: rewards for it)."""
    row = target.decode(prompt, 1)[0].copy()
    target.reset()
    top = np.argsort(row)[::-1]
    return LogitRules(((int(top[0]), -100.0), (int(top[1]), 2.0)), presence=penalty,
                      frequency=penalty)


def exact_joint(target, prompt, cfg, rules):
    """p(y1) p(y2 | y1) of the target alone under `rules`, from its logits."""
    target.reset()
    p1 = warp(rules.apply(target.decode(prompt, 1)[0], []) if rules else
              target.decode(prompt, 1)[0].copy(), cfg)
    joint, base = {}, target.n_past
    for y1, pr1 in zip(p1.ids.tolist(), p1.probs):
        row = target.decode([y1], 1)[0]
        p2 = warp(rules.apply(row, [y1]) if rules else row.copy(), cfg)
        target.truncate(base)
        for y2, pr2 in zip(p2.ids.tolist(), p2.probs):
            joint[(y1, y2)] = pr1 * pr2
    target.reset()
    return joint


def run(target, drafter, prompt, k, cfg, seed, rules, max_tokens=2):
    target.reset()
    if drafter is not None and getattr(drafter, "model", None) is not None:
        drafter.model.reset()
    for ev in speculative_generate(target, drafter, prompt, cfg,
                                   SpecConfig(k=k, max_tokens=max_tokens, seed=seed),
                                   n_vocab=target.n_vocab, rules=rules):
        if isinstance(ev, Done):
            return ev
    raise AssertionError("no Done")


@pytest.mark.parametrize("kind", ["model", "ngram"])
def test_sampled_output_is_the_targets_under_the_rules(models, kind):
    """Over 1,000 fixed seeds at T = 1, K = 4, the first two tokens follow the exact joint
    of the target alone under the rules (chi-square), and that joint is far from the one
    without them, so rules left out anywhere would fail the test. The penalties reward
    repeating the first token, so a second row priced without the drafted first token
    (the output so far, drafts included) would be far off too."""
    target, draft = models
    text = REPEATING if kind == "ngram" else "The quick brown fox"
    prompt = target.tokenize(text, add_special=False)
    rules = rules_for(target, prompt, penalty=-2.0)
    joint = exact_joint(target, prompt, CFG, rules)
    plain = exact_joint(target, prompt, CFG, None)
    tv = 0.5 * sum(abs(joint.get(c, 0) - plain.get(c, 0)) for c in set(joint) | set(plain))
    assert tv > 0.3
    n = 1000
    counts = Counter()
    drafted = 0
    for seed in range(n):
        drafter = (ModelDrafter(draft, CFG, target.n_vocab) if kind == "model"
                   else NgramDrafter(n_min=1))
        done = run(target, drafter, prompt, 4, CFG, seed, rules)
        counts[tuple(done.tokens[:2])] += 1
        drafted += done.stats.drafted
    assert drafted >= n  # drafts were verified under the rules in every run
    assert set(counts) <= set(joint)
    chi2, crit, dof = chi_square(counts, joint, n)
    assert chi2 < crit, f"chi2={chi2:.1f} >= {crit:.1f} (dof={dof})"


@pytest.mark.parametrize("kind", ["model", "ngram"])
@pytest.mark.parametrize("which", ["bias_and_penalties", "repeat"])
def test_greedy_under_the_rules_equals_the_target_alone(models, kind, which):
    """Greedy, 40 tokens: K = 4 gives the target alone's output under the same rules,
    and the rules change that output. repeat: llama.cpp's repeat_penalty, whose window
    holds the prompt's end and the drafts before each verified position."""
    target, draft = models
    text = REPEATING if kind == "ngram" or which == "repeat" else "Once upon a time there was"
    prompt = target.tokenize(text, add_special=False)
    rules = (rules_for(target, prompt) if which == "bias_and_penalties"
             else LogitRules(repeat=3.0, repeat_last_n=16))
    alone = run(target, None, prompt, 0, GREEDY, 0, rules, max_tokens=40)
    drafter = (ModelDrafter(draft, GREEDY, target.n_vocab) if kind == "model"
               else NgramDrafter(n_min=1))
    spec = run(target, drafter, prompt, 4, GREEDY, 0, rules, max_tokens=40)
    assert spec.tokens == alone.tokens and spec.stats.drafted > 0
    assert alone.tokens != run(target, None, prompt, 0, GREEDY, 0, None, max_tokens=40).tokens


def test_a_banned_token_never_appears_though_the_lookup_drafts_it(models):
    """The text repeats, so the n-gram lookup drafts its next word; banned with -100,
    that token is rejected every time and never reaches the output."""
    target, _ = models
    prompt = target.tokenize(REPEATING, add_special=False)
    plain = run(target, NgramDrafter(n_min=1), prompt, 4, GREEDY, 0, None, max_tokens=12)
    banned = plain.tokens[0]
    rules = LogitRules(((banned, -100.0),))
    for seed in range(40):
        done = run(target, NgramDrafter(n_min=1), prompt, 4, CFG, seed, rules, max_tokens=12)
        assert banned not in done.tokens


# --- logprobs --------------------------------------------------------------------------------
def test_logprobs_are_the_targets_log_softmax_at_each_position(models):
    """K = 0: each token's logprob is the log-softmax of the target's own logits after the
    output before it (decoded here one token at a time), and its alternatives are the
    likeliest tokens there, in order. K = 4 (model drafts, verified in batches) reports
    the same tokens with the same logprobs, up to the batch-shape numerics."""
    from specli.core.engine import collect

    target, draft = models
    prompt = target.tokenize("Once upon a time there was", add_special=False)

    def logprobs(k):
        target.reset()
        draft.reset()
        drafter = ModelDrafter(draft, GREEDY, target.n_vocab) if k else None
        done, rounds = collect(speculative_generate(
            target, drafter, prompt, GREEDY, SpecConfig(k=k, max_tokens=16, seed=0),
            n_vocab=target.n_vocab, logprobs=3))
        return done, [lp for r in rounds for lp in r.logprobs]

    done, alone = logprobs(0)
    assert [lp.token for lp in alone] == list(done.tokens)
    target.reset()
    row = target.decode(prompt, 1)[0]
    for i, lp in enumerate(alone):
        z = np.asarray(row, dtype=np.float64)
        want = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
        assert lp.logprob == pytest.approx(want[lp.token], abs=1e-4)  # prefill splits differ
        assert [t for t, _, _ in lp.top] == list(np.argsort(-want, kind="stable")[:3])
        assert lp.top[0][0] == lp.token  # greedy: the likeliest token was emitted
        assert lp.bytes == target.token_bytes(lp.token)
        row = target.decode([lp.token], 1)[0]
    target.reset()
    done_k, spec = logprobs(4)
    assert done_k.tokens == done.tokens and done_k.stats.accepted > 0
    assert np.allclose([lp.logprob for lp in spec], [lp.logprob for lp in alone], atol=0.02)


# --- llama.cpp's repeat_penalty ---------------------------------------------------------------
@given(st.lists(st.integers(0, 11), max_size=30), st.lists(st.integers(0, 11), max_size=10),
       st.floats(0.1, 10), st.integers(0, 12))
def test_repeat_penalty_is_llama_cpps_definition(output, before, repeat, last_n):
    """Each distinct token among the last `last_n` of before + output: a positive logit
    divided by the penalty, a negative one multiplied; the others untouched."""
    rng = np.random.default_rng(len(output) + 7 * len(before))
    row = rng.normal(size=12).astype(np.float32)
    rules = LogitRules(repeat=repeat, repeat_last_n=last_n)
    got = rules.apply(row, output, before)
    window = set(([*before, *output][-last_n:]) if last_n else [])
    for j in range(12):
        x = float(row[j])
        want = (x / repeat if x > 0 else x * repeat) if (j in window and repeat != 1) else x
        assert got[j] == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_repeat_penalty_out_of_range_is_refused_and_1_is_off():
    assert LogitRules.of(repeat=1.0) is None and LogitRules.of(repeat=1.3, repeat_last_n=0) is None
    for bad in (dict(repeat=0.0), dict(repeat=10.5), dict(repeat=1.1, repeat_last_n=-1)):
        with pytest.raises(ValueError):
            LogitRules.of(**bad)
