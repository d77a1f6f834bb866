"""The engine on tiny real GGUF models in real llama.cpp: exactness and KV bookkeeping."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from specli.llama.backend import LlamaModel
from specli.config import SamplingConfig, SpecConfig
from specli.core.drafters import ModelDrafter
from specli.core.engine import Done, Round, speculative_generate
from specli.errors import ContextFullError
from specli.core.sampling import warp

GREEDY = SamplingConfig(temperature=0.0)
PROMPTS = ["The quick brown fox", "Once upon a time there was", "def main():\n    x = 1"]


@pytest.fixture(scope="module")
def models(tiny_target, tiny_draft):
    t = LlamaModel(tiny_target, n_ctx=512, n_threads=1)
    d = LlamaModel(tiny_draft, n_ctx=512, n_threads=1)
    yield t, d
    t.close()
    d.close()


def generate(target, draft, prompt, k, sampling=GREEDY, max_tokens=48, seed=0, n_vocab=None,
             check_kv=True):
    """Run the engine; check the KV invariant after every round; return (rounds, done)."""
    tokens = target.tokenize(prompt, add_special=False) if isinstance(prompt, str) else list(prompt)
    drafter = ModelDrafter(draft, sampling, n_vocab or target.n_vocab) if k and draft else None
    rounds, done = [], None
    committed = list(tokens)
    for ev in speculative_generate(target, drafter, tokens, sampling,
                                   SpecConfig(k=k, max_tokens=max_tokens, seed=seed), n_vocab=n_vocab):
        if isinstance(ev, Round):
            rounds.append(ev)
            committed += list(ev.draft_tokens[: ev.n_accepted]) + [ev.token]
            if check_kv:
                # Target holds everything but the pending last token, exactly.
                assert target.tokens == committed[:-1]
                if drafter is not None and ev.k:
                    # The draft holds a prefix of it: all, or all but the last accepted draft.
                    assert draft.tokens == committed[: draft.n_past]
                    assert draft.n_past >= len(committed) - 2
        else:
            done = ev
    assert isinstance(done, Done)
    return rounds, done


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_target_alone_for_every_k(models, prompt):
    target, draft = models
    _, base = generate(target, draft, prompt, 0)
    assert base.stats.new_tokens > 0
    for k in range(1, 9):
        rounds, done = generate(target, draft, prompt, k)
        assert done.tokens == base.tokens, f"K={k} diverged from K=0"
        assert done.text == base.text
        assert done.stats.drafted > 0


def test_all_accepted_when_draft_is_the_target(tiny_target):
    """Draft == target: every draft accepted, every round ends with a bonus token. This is
    the path where the draft never decoded its own last token and must catch up."""
    t = LlamaModel(tiny_target, n_ctx=512, n_threads=1)
    d = LlamaModel(tiny_target, n_ctx=512, n_threads=1)
    try:
        _, base = generate(t, None, PROMPTS[0], 0)
        rounds, done = generate(t, d, PROMPTS[0], 4)
        assert done.tokens == base.tokens
        full = [r for r in rounds if len(r.draft_tokens) == 4]
        assert full and all(r.n_accepted == 4 and r.bonus for r in full)
        assert done.stats.acceptance_rate == 1.0
    finally:
        t.close()
        d.close()


def test_none_accepted_with_an_unrelated_draft(tiny_target, tmp_path):
    """A draft with unrelated weights is rejected at the first token most rounds; the
    output must still equal the target's own."""
    from tinymodels import write_tiny_model

    other = write_tiny_model(tmp_path / "other.gguf", seed=99)
    t = LlamaModel(tiny_target, n_ctx=512, n_threads=1)
    d = LlamaModel(other, n_ctx=512, n_threads=1)
    try:
        _, base = generate(t, None, PROMPTS[0], 0)
        rounds, done = generate(t, d, PROMPTS[0], 3)
        assert done.tokens == base.tokens
        assert sum(r.n_accepted == 0 for r in rounds) >= len(rounds) // 2
        assert all(r.rejected for r in rounds if r.n_accepted < len(r.draft_tokens))
    finally:
        t.close()
        d.close()


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5, 7, 10])
def test_max_tokens_inside_a_round(models, max_tokens):
    target, draft = models
    _, base = generate(target, draft, PROMPTS[0], 0, max_tokens=max_tokens)
    _, done = generate(target, draft, PROMPTS[0], 4, max_tokens=max_tokens)
    assert len(done.tokens) == max_tokens == len(base.tokens)
    assert done.tokens == base.tokens
    assert done.stop_reason == "max_tokens"


@pytest.mark.parametrize("position", [0, 1, 2, 5, 9])
def test_end_of_generation_inside_a_round(models, monkeypatch, position):
    """Treat the token the target emits at `position` as end-of-generation: speculation
    must stop at exactly the same place as the target alone, whatever the round layout."""
    target, draft = models
    _, base = generate(target, draft, PROMPTS[0], 0, max_tokens=40)
    eog = base.tokens[position]
    first = base.tokens.index(eog)
    monkeypatch.setattr(target, "is_eog", lambda tok: tok == eog)
    for k in (0, 3, 5):
        _, done = generate(target, draft, PROMPTS[0], k, max_tokens=40)
        assert done.stop_reason == "eog"
        assert done.tokens == base.tokens[:first]


def test_context_full_stops_with_a_message(tiny_target, tiny_draft):
    t = LlamaModel(tiny_target, n_ctx=48, n_threads=1)
    d = LlamaModel(tiny_draft, n_ctx=48, n_threads=1)
    n_ctx = t.n_ctx  # llama.cpp rounds the context up (to 256 here)
    try:
        prompt = t.tokenize("The quick brown fox jumps over the lazy dog", add_special=False)
        _, base = generate(t, None, prompt, 0, max_tokens=1000)
        assert base.stop_reason == "context_full" and base.message
        assert len(prompt) + len(base.tokens) == n_ctx + 1  # the last token is never decoded
        for k in (2, 4, 8):
            _, done = generate(t, d, prompt, k, max_tokens=1000)
            assert done.stop_reason == "context_full"
            assert done.tokens == base.tokens
            assert t.n_past <= n_ctx and d.n_past <= n_ctx
    finally:
        t.close()
        d.close()


def test_prompt_longer_than_context_is_an_error(tiny_target):
    t = LlamaModel(tiny_target, n_ctx=16, n_threads=1)
    try:
        prompt = t.tokenize("The quick brown fox jumps over the lazy dog " * 40, add_special=False)
        assert len(prompt) > t.n_ctx
        with pytest.raises(ContextFullError):
            list(speculative_generate(t, None, prompt, GREEDY, SpecConfig(k=0)))
    finally:
        t.close()


def test_padded_draft_vocab_is_masked(tiny_target, tiny_draft, tiny_draft_padded):
    """A draft with 128 extra ids behaves exactly like the unpadded one once ids beyond the
    target's vocabulary are masked: same drafts, same acceptance, same output."""
    t = LlamaModel(tiny_target, n_ctx=512, n_threads=1)
    d = LlamaModel(tiny_draft, n_ctx=512, n_threads=1)
    dp = LlamaModel(tiny_draft_padded, n_ctx=512, n_threads=1)
    try:
        n = min(t.n_vocab, dp.n_vocab)
        assert dp.n_vocab > t.n_vocab
        r1, a = generate(t, d, PROMPTS[0], 4, n_vocab=n)
        r2, b = generate(t, dp, PROMPTS[0], 4, n_vocab=n)
        assert a.tokens == b.tokens
        assert [r.draft_tokens for r in r1] == [r.draft_tokens for r in r2]
        assert all(x < t.n_vocab for r in r2 for x in r.draft_tokens)
        sampled = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
        r3, _ = generate(t, dp, PROMPTS[0], 4, sampling=sampled, n_vocab=n)
        assert all(x < t.n_vocab for r in r3 for x in r.draft_tokens)
    finally:
        for m in (t, d, dp):
            m.close()


def exact_two_token_distribution(target, prompt, cfg):
    """p(y1) p(y2 | y1) of the warped target, computed directly from its logits."""
    target.reset()
    p1 = warp(target.decode(prompt, 1)[0].copy(), cfg)
    joint = {}
    base = target.n_past
    for y1, pr1 in zip(p1.ids.tolist(), p1.probs):
        p2 = warp(target.decode([y1], 1)[0].copy(), cfg)
        target.truncate(base)
        for y2, pr2 in zip(p2.ids.tolist(), p2.probs):
            joint[(y1, y2)] = pr1 * pr2
    target.reset()
    return joint


def chi_square(counts, joint, n) -> tuple[float, float, int]:
    """(chi2, critical value, dof) of `counts` (n draws) against the exact `joint`."""
    # Pool cells with small expectation so the chi-square approximation holds.
    cells = sorted(joint, key=joint.get, reverse=True)
    big = [c for c in cells if joint[c] * n >= 5]
    obs = [counts[c] for c in big] + [n - sum(counts[c] for c in big)]
    exp = [joint[c] * n for c in big] + [n * (1 - sum(joint[c] for c in big))]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(obs, exp) if e > 0)
    dof = len(obs) - 1
    # Wilson-Hilferty approximation of the 0.9995 quantile of chi-square(dof).
    crit = dof * (1 - 2 / (9 * dof) + 3.29 * np.sqrt(2 / (9 * dof))) ** 3
    return chi2, crit, dof


@pytest.mark.parametrize("k", [0, 2, 4])
def test_sampled_output_follows_the_target_distribution(models, k):
    """Over 1,500 fixed seeds, the first two generated tokens follow the target's exact
    joint distribution (chi-square; fixed seeds, so it cannot flake)."""
    target, draft = models
    cfg = SamplingConfig(temperature=1.0, top_k=6, top_p=1.0, min_p=0.0)
    prompt = target.tokenize(PROMPTS[0], add_special=False)
    joint = exact_two_token_distribution(target, prompt, cfg)
    n = 1500
    counts = Counter()
    for seed in range(n):
        _, done = generate(target, draft, prompt, k, sampling=cfg, max_tokens=2, seed=seed,
                           check_kv=False)
        counts[tuple(done.tokens[:2])] += 1
    assert set(counts) <= set(joint)
    chi2, crit, dof = chi_square(counts, joint, n)
    assert chi2 < crit, f"chi2={chi2:.1f} >= {crit:.1f} (dof={dof})"


def test_events_carry_round_details(models):
    target, draft = models
    rounds, done = generate(target, draft, PROMPTS[0], 3, max_tokens=20)
    for r in rounds:
        assert r.k == len(r.draft_tokens) <= 3
        assert len(r.accept_probs) == min(r.n_accepted + 1, len(r.draft_tokens))
        assert r.t_draft >= 0 and r.t_verify > 0
    s = done.stats
    assert s.rounds == len(rounds)
    assert s.drafted == sum(len(r.draft_tokens) for r in rounds)
    assert s.accepted == sum(r.n_accepted for r in rounds)
    assert s.new_tokens == len(done.tokens) == sum(len(r.tokens) for r in rounds)
    assert "".join(r.text for r in rounds) == done.text
    assert sum(s.accepted_hist) == s.rounds
    assert 0 < s.tokens_per_s and 0 <= s.python_share <= 1


REPEATING = "the cat sat on the mat. the cat sat on the mat. the cat sat on the"


def make_drafter(kind, draft, sampling, n_vocab):
    from specli.core.drafters import HybridDrafter, NgramDrafter

    if kind == "ngram":
        return NgramDrafter(n_min=1)
    model = ModelDrafter(draft, sampling, n_vocab)
    return model if kind == "model" else HybridDrafter(model, NgramDrafter(n_min=1), min_match=2)


def run_with(target, drafter, prompt, k, sampling=GREEDY, max_tokens=48, seed=0):
    from dataclasses import replace

    from specli.core.policy import make_policy

    tokens = target.tokenize(prompt, add_special=False) if isinstance(prompt, str) else list(prompt)
    spec = SpecConfig(k=k, max_tokens=max_tokens, seed=seed)
    events = list(speculative_generate(target, drafter, tokens, sampling, spec,
                                       policy=make_policy(replace(spec))))
    return events[:-1], events[-1]


@pytest.mark.parametrize("kind", ["ngram", "auto"])
@pytest.mark.parametrize("k", [1, 3, 8, "auto"])
@pytest.mark.parametrize("prompt", [PROMPTS[0], REPEATING])
def test_greedy_equivalence_ngram_hybrid_and_auto(models, kind, k, prompt):
    target, draft = models
    _, base = generate(target, draft, prompt, 0, max_tokens=60)
    rounds, done = run_with(target, make_drafter(kind, draft, GREEDY, target.n_vocab), prompt, k,
                            max_tokens=60)
    assert done.tokens == base.tokens
    if prompt == REPEATING and k != "auto":
        assert any(r.drafter == "ngram" for r in rounds)


def test_hybrid_decodes_the_prompt_in_the_draft_only_when_it_drafts(models):
    """The hybrid drafter's draft model decodes the prompt on first use: a generation that
    never drafts with the model (here K = 0 is forced) leaves the draft's cache as it was
    (only the matching prefix kept); one that does catches up and matches the target alone."""
    from specli.core.drafters import HybridDrafter, NgramDrafter

    target, draft = models
    prompt = target.tokenize(PROMPTS[0], add_special=False)
    draft.truncate(0)
    drafter = HybridDrafter(ModelDrafter(draft, GREEDY, target.n_vocab), NgramDrafter(n_min=1),
                            min_match=99)  # never an n-gram round: every round is the model's
    _, done = run_with(target, drafter, prompt, 0, max_tokens=12)
    assert draft.n_past == 0, "the draft decoded a prompt it never drafted from"
    _, base = generate(target, draft, prompt, 0, max_tokens=40)
    draft.truncate(0)
    rounds, done = run_with(target, drafter, prompt, 3, max_tokens=40)
    assert done.tokens == base.tokens
    assert any(r.drafter == "model" and r.draft_tokens for r in rounds)
    assert draft.n_past >= len(prompt)  # caught up on the prompt in the first model round


def test_auto_k_records_its_choice_per_round(models):
    target, draft = models
    rounds, done = run_with(target, ModelDrafter(draft, GREEDY, target.n_vocab), PROMPTS[0], "auto",
                            max_tokens=60)
    assert all(0 <= r.k <= 8 and len(r.draft_tokens) <= r.k for r in rounds)
    assert done.stats.new_tokens == 60


@pytest.mark.parametrize("kind,k", [("ngram", 4), ("auto", 4), ("auto", "auto"),
                                    ("prediction", 4)])
def test_sampled_distribution_with_point_mass_and_hybrid_drafts(models, kind, k):
    """n-gram drafts are point masses: the same exactness test as model drafts. So are
    drafts from a predicted output (a server request's `prediction`): here the target's
    two most likely tokens in turn, drafted from the first round on."""
    target, draft = models
    cfg = SamplingConfig(temperature=1.0, top_k=6, top_p=1.0, min_p=0.0)
    # A prediction is drafted from where the context has no longer match: a prompt that
    # does not repeat itself.
    text = "Hello, world! How are you today?" if kind == "prediction" else REPEATING
    prompt = target.tokenize(text, add_special=False)
    joint = exact_two_token_distribution(target, prompt, cfg)
    likely = list(max(joint, key=joint.get))
    n = 1500
    counts = Counter()
    drafted_from_prediction = 0
    for seed in range(n):
        drafter = make_drafter("ngram" if kind == "prediction" else kind, draft, cfg,
                               target.n_vocab)
        if kind == "prediction":
            drafter.set_reference(likely + likely, anchor=prompt[-8:])
        _, done = run_with(target, drafter, prompt, k, sampling=cfg, max_tokens=2, seed=seed)
        counts[tuple(done.tokens[:2])] += 1
        drafted_from_prediction += getattr(drafter, "reference_drafted", 0)
    chi2, crit, dof = chi_square(counts, joint, n)
    assert chi2 < crit, f"chi2={chi2:.1f} >= {crit:.1f} (dof={dof})"
    if kind == "prediction":
        assert drafted_from_prediction >= n  # every run's first round drafted from it
