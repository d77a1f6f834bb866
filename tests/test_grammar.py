"""Grammars (JSON schema, GBNF, Lark) under speculation, on the tiny models.

A grammar masks p at every position as a function of the output so far, drafts included.
These tests fail if a row is masked with the committed output's state instead of the
drafted prefix's, if q is left unmasked (a model draft the grammar forbids), if a
forbidden n-gram draft reaches the target, or if the matcher is not rolled back.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from specli.config import SamplingConfig, SpecConfig
from specli.core.drafters import HybridDrafter, ModelDrafter, NgramDrafter
from specli.core.engine import collect, speculative_generate
from specli.core.grammar import Grammar, GrammarError, masked
from specli.core.sampling import warp
from test_engine import REPEATING, chi_square, models  # noqa: F401  (the tiny pair)

CFG = SamplingConfig(temperature=1.0, top_k=6, top_p=1.0, min_p=0.0)
GREEDY = SamplingConfig(temperature=0.0)
NO_DOT = 'start: /[^.]*/'  # REPEATING's lookup drafts "mat. the": cut at the "."
SCHEMA = {"type": "object", "properties": {"a": {"enum": ["x", "y"]}, "b": {"type": "boolean"}},
          "required": ["a", "b"], "additionalProperties": False}


def drafter_of(kind, draft, sampling, n_vocab):
    if kind == "ngram":
        return NgramDrafter(n_min=1)
    model = ModelDrafter(draft, sampling, n_vocab)
    return model if kind == "model" else HybridDrafter(model, NgramDrafter(n_min=1), min_match=2)


def run(target, drafter, prompt, k, cfg, seed, grammar, max_tokens=2, chunk=None, rules=None):
    target.reset()
    if drafter is not None and getattr(drafter, "draft_model", None) is not None:
        drafter.draft_model.reset()
    constraint = grammar.constraint(target.grammar_tokenizer(), target.eog_tokens()) if grammar else None
    done, _ = collect(speculative_generate(
        target, drafter, prompt, cfg, SpecConfig(k=k, max_tokens=max_tokens, seed=seed),
        n_vocab=target.n_vocab, constraint=constraint, verify_chunk=chunk, rules=rules))
    return done


def exact_joint(target, prompt, cfg, grammar):
    """p(y1) p(y2 | y1) of the target alone under `grammar`, from its logits and masks."""
    target.reset()
    c = grammar.constraint(target.grammar_tokenizer(), target.eog_tokens()) if grammar else None

    def dist(row):
        row = np.array(row, dtype=np.float32)
        return warp(c.mask(row) if c else row, cfg)

    p1 = dist(target.decode(prompt, 1)[0])
    joint, base = {}, target.n_past
    for y1, pr1 in zip(p1.ids.tolist(), p1.probs):
        if c:
            c.push(y1)
        p2 = dist(target.decode([y1], 1)[0])
        if c:
            c.pop()
        target.truncate(base)
        for y2, pr2 in zip(p2.ids.tolist(), p2.probs):
            joint[(y1, y2)] = pr1 * pr2
    target.reset()
    return joint


# --- the grammar object ---------------------------------------------------------------------
def test_bad_grammars_and_schemas_are_one_line_errors(models):
    target, _ = models
    tok = target.grammar_tokenizer()
    with pytest.raises(GrammarError, match="not JSON"):
        Grammar.json_schema('{"type": ')
    with pytest.raises(GrammarError, match="strin"):
        Grammar.json_schema({"type": "object", "properties": {"a": {"type": "strin"}}}).check(tok)
    with pytest.raises(GrammarError):
        Grammar.gbnf('root ::= "a" undefined-rule').check(tok)
    with pytest.raises(GrammarError):
        Grammar.lark("start: (").check(tok)
    Grammar.gbnf('root ::= "yes" | "no"').check(tok)  # a good one compiles


def test_masked_sets_forbidden_and_out_of_vocabulary_ids_to_minus_inf():
    row = np.arange(6, dtype=np.float32)
    got = masked(row.copy(), np.array([True, False, True, False]))
    assert got[0] == 0 and got[2] == 2 and np.isneginf(got[[1, 3, 4, 5]]).all()


def test_push_pop_and_commit_keep_the_matcher_on_the_output(models):
    """Drafts pushed while a round examines them are rolled back; what is committed
    advances the state; a finished grammar allows only end-of-generation tokens."""
    target, _ = models
    c = Grammar.gbnf('root ::= "yes" | "no"').constraint(target.grammar_tokenizer(),
                                                      target.eog_tokens())
    yes = target.tokenize("yes", add_special=False)
    start = c.allowed().copy()
    assert c.allowed_prefix(yes) == len(yes)
    assert c.allowed_prefix(target.tokenize("maybe", add_special=False)) == 0
    for t in yes:
        c.push(t)
    c.pop()
    assert np.array_equal(c.allowed(), start)
    c.commit(yes)
    assert c.finished
    assert set(np.flatnonzero(c.allowed())) == set(target.eog_tokens())


# --- exactness under speculation ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["model", "ngram"])
def test_sampled_output_is_the_targets_under_the_grammar(models, kind):
    """1,000 fixed seeds at T = 1, K = 4: the first two tokens follow the exact joint of
    the target alone under the grammar (chi-square, p > 0.001), which is far from the
    joint without it. The grammar's second-row mask depends on the first token, so a row
    masked with the committed output's state would be off; model drafts keep to the
    grammar, and drafts are verified in most runs."""
    target, draft = models
    text = REPEATING if kind == "ngram" else "The quick brown fox"
    prompt = target.tokenize(text, add_special=False)
    # model: a letter, then a non-letter. ngram: a word after a space, then "." (the
    # lookup's " mat." passes; after " mat" the committed state's mask would allow " the").
    grammar = Grammar.lark('start: /[a-z]/ /[^a-z]/ /(?s:.*)/' if kind == "model"
                           else 'start: / [a-z]+/ "." /(?s:.*)/')
    joint = exact_joint(target, prompt, CFG, grammar)
    plain = exact_joint(target, prompt, CFG, None)
    tv = 0.5 * sum(abs(joint.get(c, 0) - plain.get(c, 0)) for c in set(joint) | set(plain))
    assert tv > 0.3
    n = 1000
    counts, drafted = Counter(), 0
    for seed in range(n):
        done = run(target, drafter_of(kind, draft, CFG, target.n_vocab), prompt, 4, CFG, seed,
                   grammar)
        counts[tuple(done.tokens[:2])] += 1
        drafted += done.stats.drafted
    assert drafted >= n // 2
    assert set(counts) <= set(joint)
    chi2, crit, dof = chi_square(counts, joint, n)
    assert chi2 < crit, f"chi2={chi2:.1f} >= {crit:.1f} (dof={dof})"


@pytest.mark.parametrize("kind", ["model", "ngram", "auto"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_greedy_under_a_grammar_equals_the_target_alone(models, kind, chunk):
    """Greedy, 40 tokens, K = 4 (chunk 2: the strict path's on-demand verify calls) gives
    the target alone's output under the same grammar, which the grammar changes."""
    target, draft = models
    prompt = target.tokenize(REPEATING, add_special=False)
    grammar = Grammar.lark(NO_DOT)
    alone = run(target, None, prompt, 0, GREEDY, 0, grammar, max_tokens=40)
    spec = run(target, drafter_of(kind, draft, GREEDY, target.n_vocab), prompt, 4, GREEDY, 0,
               grammar, max_tokens=40, chunk=chunk)
    assert spec.tokens == alone.tokens and spec.stats.drafted > 0
    assert alone.tokens != run(target, None, prompt, 0, GREEDY, 0, None, max_tokens=40).tokens


def test_a_forbidden_draft_never_reaches_the_target(models):
    """The lookup drafts "mat. the cat" where the grammar forbids "."; every token the
    target decodes in a round is allowed, the cut is counted, and drafts still run."""
    target, _ = models
    prompt = target.tokenize(REPEATING, add_special=False)
    decoded: list[int] = []
    real = target.decode

    def spy(tokens, n_logits=1):
        decoded.extend(tokens)
        return real(tokens, n_logits)

    target.decode = spy
    try:
        plain = run(target, NgramDrafter(n_min=1), prompt, 6, GREEDY, 0, None, max_tokens=24)
        assert any(b"." in target.token_bytes(t) for t in decoded[len(prompt) - 1:])
        for seed in range(20):
            decoded.clear()
            done = run(target, NgramDrafter(n_min=1), prompt, 6, CFG, seed, Grammar.lark(NO_DOT),
                       max_tokens=24)
            in_rounds = decoded[len(prompt) - 1:]
            assert not any(b"." in target.token_bytes(t) for t in in_rounds)
            assert b"." not in done.text.encode()
        assert done.stats.grammar_cut > 0 and done.stats.drafted > 0
    finally:
        del target.decode
    assert plain.stats.grammar_cut == 0


@pytest.mark.parametrize("kind", ["model", "ngram", "auto"])
def test_json_schema_output_always_validates(models, kind):
    """Sampled at T = 1 on a model of random weights, every output under a JSON schema
    that ends parses and validates (a layout of bounded whitespace: it ends)."""
    import jsonschema

    target, draft = models
    prompt = target.tokenize(REPEATING, add_special=False)
    grammar = Grammar.json_schema(SCHEMA)
    for seed in range(12):
        done = run(target, drafter_of(kind, draft, CFG, target.n_vocab), prompt, 4, CFG, seed,
                   grammar, max_tokens=120)
        assert done.stop_reason == "eog", done.text
        jsonschema.validate(json.loads(done.text), SCHEMA)


def test_rules_and_grammar_together(models):
    """A logit bias banning the grammar's likeliest choice leaves the other one, with
    speculation as without: rules apply before the mask, both per drafted prefix."""
    from specli.core.logits import LogitRules

    target, draft = models
    prompt = target.tokenize(REPEATING, add_special=False)
    grammar = Grammar.gbnf('root ::= ("yes" | "no") " " ("yes" | "no")')
    free = run(target, None, prompt, 0, GREEDY, 0, grammar, max_tokens=10)
    first = free.tokens[0]
    rules = LogitRules(((first, -100.0),))
    alone = run(target, None, prompt, 0, GREEDY, 0, grammar, max_tokens=10, rules=rules)
    spec = run(target, drafter_of("model", draft, GREEDY, target.n_vocab), prompt, 4, GREEDY, 0,
               grammar, max_tokens=10, rules=rules)
    assert alone.tokens[0] != first and spec.tokens == alone.tokens
    assert alone.text.split(" ")[0] in ("yes", "no") and free.text != alone.text
