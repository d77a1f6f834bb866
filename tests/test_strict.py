"""Strict mode: verification in batch-invariant chunks, so speculative output equals K = 0's
bit for bit; and the batch-numerics measurement that sizes the chunks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from specli.config import SamplingConfig, SpecConfig
from specli.core.costs import VerifyCost
from specli.core.drafters import HybridDrafter, ModelDrafter, NgramDrafter
from specli.core.engine import Round, speculative_generate
from specli.core.numerics import measure
from specli.core.policy import make_policy
from test_engine import models  # noqa: F401  (the tiny pair, loaded once per module)

GREEDY = SamplingConfig(temperature=0.0)
REPEATING = "the cat sat on the mat. the cat sat on the mat. the cat sat on the"
PROMPTS = ["The quick brown fox", REPEATING]


def drafter_for(kind, draft, sampling, n_vocab):
    if kind == "ngram":
        return NgramDrafter(n_min=1)
    model = ModelDrafter(draft, sampling, n_vocab)
    return model if kind == "model" else HybridDrafter(model, NgramDrafter(n_min=1), min_match=2)


def run(target, drafter, tokens, k, *, chunk=None, sampling=GREEDY, max_tokens=40, seed=0,
        rows_log=None):
    spec = SpecConfig(k=k, max_tokens=max_tokens, seed=seed)
    policy = make_policy(spec)
    if chunk and hasattr(policy, "verify"):
        policy.verify.set_chunk(chunk)
    events = list(speculative_generate(target, drafter if k != 0 else None, tokens, sampling, spec,
                                       policy=policy, verify_chunk=chunk))
    return [e for e in events if isinstance(e, Round)], events[-1]


def test_numerics_measurement_reports_what_it_finds(models):
    """Whatever the tiny model's kernels do is measured, not assumed: the figures are
    consistent with each other and the cache is left empty."""
    target, _ = models
    prompts = [target.tokenize(p, add_special=False) for p in PROMPTS]
    got = measure(target, 6, prompts=prompts)
    assert got.n_max == 6 and got.prompts == 2 and target.n_past == 0
    assert set(got.tv) == set(got.max_logit_diff) == set(range(2, 7))
    assert 1 <= got.invariant_up_to <= 6
    for n in range(2, got.invariant_up_to + 1):
        assert got.tv[n] == 0.0 and got.max_logit_diff[n] == 0.0
    if got.invariant_up_to < 6:  # the first size that differs shows a difference
        assert got.max_logit_diff[got.invariant_up_to + 1] > 0.0
    d = got.to_dict()
    assert d["invariant_up_to"] == got.invariant_up_to and "2" in d["tv"]


@pytest.mark.parametrize("which", ["one", "invariant"])
def test_chunked_verify_rows_equal_single_token_rows(models, which):
    """The logits strict verification reads are those of one-token decodes, bit for bit,
    with chunks of 1 and of the measured invariant size."""
    target, _ = models
    prompt = target.tokenize(PROMPTS[0], add_special=False)
    chunk = 1 if which == "one" else measure(target, 4, prompts=[prompt]).invariant_up_to
    from specli.core.engine import _ChunkedRows

    fed = [prompt[-1], 5, 9, 13, 2, 7]
    target.reset()
    target.decode(prompt[:-1], 0)
    singles = [np.array(target.decode([t], 1)[0]) for t in fed]
    target.truncate(len(prompt) - 1)
    rows = _ChunkedRows(target, fed, chunk, target.n_vocab)
    for i in range(len(fed)):
        assert np.array_equal(rows[i], singles[i][: target.n_vocab])
    assert [n for n, _ in rows.calls] == [min(chunk, len(fed) - j) for j in range(0, len(fed), chunk)]
    target.reset()


def test_chunks_after_a_rejection_are_never_decoded(models):
    target, _ = models
    prompt = target.tokenize(PROMPTS[0], add_special=False)
    from specli.core.engine import _ChunkedRows

    target.reset()
    target.decode(prompt[:-1], 0)
    rows = _ChunkedRows(target, [prompt[-1], 1, 2, 3, 4, 5, 6], 2, target.n_vocab)
    rows[2]  # verification reached draft 2 and rejected it
    assert [n for n, _ in rows.calls] == [2, 2] and target.n_past == len(prompt) - 1 + 4
    target.reset()


def test_strict_decodes_the_prompt_in_the_call_k0_makes(models, monkeypatch):
    """The KV numerics of the prompt depend on the call shape that wrote them (llama.cpp):
    strict decodes the prompt exactly as K = 0 does, with its last row, in one call."""
    target, draft = models
    tokens = target.tokenize(PROMPTS[0], add_special=False)
    calls, decode = [], target.decode

    def logged(toks, n_logits=1, *a, **kw):
        calls.append((target.n_past, tuple(toks), n_logits))
        return decode(toks, n_logits, *a, **kw)

    monkeypatch.setattr(target, "decode", logged)
    firsts = []
    for k, chunk in ((0, None), (4, 2)):
        target.reset()
        calls.clear()
        run(target, drafter_for("model", draft, GREEDY, target.n_vocab), tokens, k,
            chunk=chunk, max_tokens=8)
        firsts.append(calls[0])
    assert firsts[0] == firsts[1] == (0, tuple(tokens), 1)
    target.reset()


@pytest.mark.parametrize("kind", ["model", "ngram", "auto"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_strict_greedy_equals_target_alone_for_every_k(models, kind, prompt):
    target, draft = models
    tokens = target.tokenize(prompt, add_special=False)
    chunk = measure(target, 9, prompts=[tokens]).invariant_up_to
    _, base = run(target, None, tokens, 0, max_tokens=40)
    for k in list(range(1, 9)) + ["auto"]:
        rounds, done = run(target, drafter_for(kind, draft, GREEDY, target.n_vocab), tokens, k,
                           chunk=chunk)
        assert done.tokens == base.tokens, (kind, k)
        assert target.tokens == list(tokens) + list(done.tokens[:-1]) or done.stop_reason != "max_tokens"


@pytest.mark.parametrize("kind,k,chunk", [("model", 4, 2), ("model", 5, 1), ("ngram", 6, 2)])
def test_chunked_verification_is_exact(models, kind, k, chunk):
    """Sampled output of chunked verification follows the target's exact distribution
    (chi-square over fixed seeds). With K = 4 in chunks of 2 (3 calls of 2, 2, 1 rows),
    first rounds are rejected in the first chunk, in the second, and accepted whole."""
    from test_engine import chi_square, exact_two_token_distribution

    target, draft = models
    cfg = SamplingConfig(temperature=1.0, top_k=6, top_p=1.0, min_p=0.0)
    prompt = target.tokenize(REPEATING, add_special=False)
    joint = exact_two_token_distribution(target, prompt, cfg)
    n, counts, where = 1200, Counter(), Counter()
    for seed in range(n):
        rounds, done = run(target, drafter_for(kind, draft, cfg, target.n_vocab), prompt, k,
                           chunk=chunk, sampling=cfg, max_tokens=k + 2, seed=seed)
        counts[tuple(done.tokens[:2])] += 1
        r = rounds[0]
        if r.draft_tokens:
            where["all" if r.bonus else f"chunk{r.n_accepted // chunk}"] += 1
    chi2, crit, dof = chi_square(counts, joint, n)
    assert chi2 < crit, f"chi2={chi2:.1f} >= {crit:.1f} (dof={dof})"
    if kind == "model" and chunk == 2:
        assert where["chunk0"] and where["chunk1"] and where["all"], where


def test_strict_cost_prices_the_chunk_sequence():
    v = VerifyCost(16)
    for n, s in ((1, 0.030), (2, 0.040), (3, 0.050)):
        v.observe(n, s)
    plain = v(6)
    v.set_chunk(3)
    assert v(3) == pytest.approx(0.050) and v(6) == pytest.approx(0.100)
    assert v(7) == pytest.approx(0.130) and v(2) == pytest.approx(0.040)
    v.set_chunk(None)
    assert v(6) == pytest.approx(plain)


def test_chunk_rule_shrinks_where_longer_contexts_measured_smaller():
    from specli.core.numerics import ChunkRule

    rule = ChunkRule({0: 3, 256: 1, 512: 1})
    assert rule(0) == 3 and rule(200) == 3 and rule(252) == 3
    assert rule(253) == 1 and rule(300) == 1 and rule(5000) == 1  # a call reaching 256
    assert ChunkRule({0: 3})(10_000) == 3
    assert ChunkRule({0: 4, 256: 2})(600) == 2  # past the longest probe: the smallest seen


def test_callable_chunk_is_asked_per_call(models):
    target, draft = models
    tokens = target.tokenize(REPEATING, add_special=False)
    seen = []

    def rule(n_past):
        seen.append(n_past)
        return 1

    _, base = run(target, None, tokens, 0)
    spec = SpecConfig(k=4, max_tokens=40)
    events = list(speculative_generate(target, drafter_for("model", draft, GREEDY, target.n_vocab),
                                       tokens, GREEDY, spec, verify_chunk=rule))
    assert events[-1].tokens == base.tokens and len(seen) > 10
