"""The real Qwen2.5-Coder 0.5B -> 1.5B pair (skipped with a reason when it is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from specli.config import SamplingConfig, SpecConfig
from specli.core.drafters import ModelDrafter
from specli.core.engine import speculative_generate
from specli.prompt import build_prompt

GREEDY = SamplingConfig(temperature=0.0)
PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain in two sentences what a hash table is.",
    "Write a quicksort in Python.",
]
NEAR_TIE = 0.1  # logit gap under which batch-size numerics may legitimately flip argmax


@pytest.fixture(scope="module")
def pair(real_pair):
    from specli.llama.backend import LlamaModel

    draft_path, target_path = real_pair
    t = LlamaModel(target_path, n_ctx=2048)
    d = LlamaModel(draft_path, n_ctx=2048)
    yield t, d
    d.close()
    t.close()


def run(target, draft, tokens, k, n=64):
    drafter = ModelDrafter(draft, GREEDY, min(target.n_vocab, draft.n_vocab)) if k else None
    *_, done = speculative_generate(target, drafter, tokens, GREEDY, SpecConfig(k=k, max_tokens=n))
    return done


def top2_gap(target, prefix) -> float:
    target.reset()
    row = target.decode(prefix, 1)[0]
    a, b = np.sort(row)[-2:]
    target.reset()
    return float(b - a)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_speculation_equals_target_alone(pair, prompt, record_property):
    """Same tokens as K = 0, or a split only at a near-tie in the target's own logits."""
    target, draft = pair
    tokens, _ = build_prompt(target, prompt)
    base = run(target, draft, tokens, 0)
    spec = run(target, draft, tokens, 4)
    assert spec.stats.drafted > 0
    if spec.tokens == base.tokens:
        return
    i = next(j for j, (a, b) in enumerate(zip(spec.tokens, base.tokens)) if a != b)
    gap = top2_gap(target, tokens + list(base.tokens[:i]))
    record_property("split", f"position {i}, top-2 logit gap {gap:.4f}")
    print(f"[near-tie] {prompt!r}: outputs split at token {i}, target top-2 gap {gap:.4f}")
    assert gap < NEAR_TIE, f"split at {i} is not a near-tie (gap {gap:.3f})"


COPY_PROMPT = (
    "Rename the parameter `valeus` to `values` and return the whole code.\n\n```python\n"
    "def total(valeus):\n    s = 0\n    for v in valeus:\n        s += v\n    return s\n\n\n"
    "def mean(valeus):\n    if not valeus:\n        return 0.0\n    return total(valeus) / len(valeus)\n```"
)


@pytest.mark.parametrize("drafter_name", ["ngram", "auto"])
def test_greedy_ngram_and_hybrid_auto_equal_target_alone(pair, drafter_name, record_property):
    """Prompt lookup and the hybrid, with --k auto, on a copy-heavy edit: K = 0's tokens."""
    from specli.session import Loaded, make_drafter
    from specli.core.policy import make_policy

    target, draft = pair
    tokens, _ = build_prompt(target, COPY_PROMPT)
    base = run(target, draft, tokens, 0, n=72)
    loaded = Loaded(target, draft, min(target.n_vocab, draft.n_vocab))
    drafter = make_drafter(loaded, drafter_name, GREEDY)
    spec = SpecConfig(k="auto", max_tokens=72, drafter=drafter_name)
    *_, done = speculative_generate(target, drafter, tokens, GREEDY, spec,
                                    policy=make_policy(spec), n_vocab=loaded.n_vocab)
    assert done.stats.drafted > 0  # the copy was drafted, not just decoded by the target
    if done.tokens == base.tokens:
        return
    i = next(j for j, (a, b) in enumerate(zip(done.tokens, base.tokens)) if a != b)
    gap = top2_gap(target, tokens + list(base.tokens[:i]))
    record_property("split", f"position {i}, top-2 logit gap {gap:.4f}")
    assert gap < NEAR_TIE, f"split at {i} is not a near-tie (gap {gap:.3f})"


def test_acceptance_on_code_prompt_is_high(pair):
    target, draft = pair
    tokens, _ = build_prompt(target, "Write a Python function that returns the n-th Fibonacci number.")
    done = run(target, draft, tokens, 4, n=96)
    assert done.stats.acceptance_rate > 0.8, done.stats.acceptance_rate


def test_vocabularies_are_compatible(real_pair):
    from specli.models.compat import check_pair

    draft, target = real_pair
    report = check_pair(draft, target)
    assert report.verdict in ("compatible", "masked"), report.reasons


@pytest.mark.parametrize("drafter_name,prompt", [("model", PROMPTS[2]), ("auto", COPY_PROMPT)])
def test_strict_greedy_equals_target_alone_exactly(pair, drafter_name, prompt):
    """--strict: the same tokens as K = 0, no near-tie allowance, past 256 tokens of context
    too (where the invariant verify size shrinks to 1 on CPUs with the split-KV path).
    Every run starts from empty caches: the target alone does not repeat itself over a
    reused cache either (the prompt's last position, re-decoded alone, gets other KV
    numerics than in the prompt's one call: K = 0 twice on this prompt split at token 9
    on a Zen 4 CPU)."""
    from specli.core.numerics import ChunkRule, measure, measure_lengths
    from specli.session import Loaded, make_drafter
    from specli.core.policy import make_policy

    target, draft = pair
    tokens, _ = build_prompt(target, prompt)
    rule = ChunkRule({0: measure(target, 4).invariant_up_to, **measure_lengths(target, 4)})
    target.reset()
    base = run(target, draft, tokens, 0, n=200)
    loaded = Loaded(target, draft, min(target.n_vocab, draft.n_vocab))
    for k in (3, "auto"):
        target.reset()
        draft.reset()
        drafter = make_drafter(loaded, drafter_name, GREEDY)
        spec = SpecConfig(k=k, max_tokens=200, drafter=drafter_name)
        *_, done = speculative_generate(target, drafter, tokens, GREEDY, spec,
                                        policy=make_policy(spec), n_vocab=loaded.n_vocab,
                                        verify_chunk=rule)
        assert done.tokens == base.tokens, (drafter_name, k)
