"""`specli explain`: the exact one-step table, seeded sampling, and input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction

import pytest
from hypothesis import given, strategies as st

from specli.errors import UsageError
from specli.core.explain import (check_dist, chi2_sf, chi_square, parse_probs, sample_step,
                            step_table)

P = "0.4,0.5,0.05,0.05"
Q = "0.35,0.3,0.15,0.2"


def specli(*args, timeout=120):
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "specli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_example_table_is_exact():
    p, q = parse_probs(P, "p"), parse_probs(Q, "q")
    t = step_table(p, q)
    assert t.beta == Fraction(3, 4)
    assert t.rejection == Fraction(1, 4)
    assert t.exact_match == Fraction(123, 400)
    assert [r.emitted for r in t.rows] == p
    assert [r.accept for r in t.rows] == [1, 1, Fraction(1, 3), Fraction(1, 4)]
    assert [r.residual_norm for r in t.rows] == [Fraction(1, 5), Fraction(4, 5), 0, 0]


def _dist(n):
    return st.lists(st.integers(0, 20), min_size=n, max_size=n).filter(any).map(
        lambda w: [Fraction(x, sum(w)) for x in w])


@given(st.integers(1, 8).flatmap(lambda n: st.tuples(_dist(n), _dist(n))))
def test_emitted_column_is_p_for_any_p_q(pq):
    p, q = pq
    t = step_table(p, q)
    assert [r.emitted for r in t.rows] == p
    assert t.beta == sum(min(a, b) for a, b in zip(p, q))
    assert sum(r.via_rejection for r in t.rows) == 1 - t.beta


def test_q_zero_where_p_positive_is_fine():
    t = step_table([Fraction(1, 2), Fraction(1, 2)], [Fraction(1), Fraction(0)])
    assert t.rows[1].accept is None and t.rows[1].emitted == Fraction(1, 2)


def test_chi2_sf_known_values():
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, abs=1e-9)
    assert chi2_sf(5.0, 2) == pytest.approx(2.718281828459045 ** -2.5, rel=1e-12)  # exp(-x/2)
    assert chi2_sf(18.307038053275146, 10) == pytest.approx(0.05, abs=1e-9)
    assert chi2_sf(0.0, 3) == 1.0


def test_samples_are_seeded_and_agree_with_p():
    p = [0.4, 0.5, 0.05, 0.05]
    q = [0.35, 0.3, 0.15, 0.2]
    a = sample_step(p, q, 4000, seed=3)
    assert (a == sample_step(p, q, 4000, seed=3)).all()
    assert not (a == sample_step(p, q, 4000, seed=4)).all()
    assert chi_square(a, p).p_value > 0.001
    # the draft's own distribution is clearly rejected: the test has power
    assert chi_square(sample_step(q, q, 4000, seed=3), p).p_value < 1e-6


@pytest.mark.parametrize("text,msg", [("", "empty"), ("0.5,-0.5,1", "negative"),
                                      ("0.5,0.4", "not 1"), ("a,b", "numbers")])
def test_bad_distributions(text, msg):
    with pytest.raises(UsageError, match=msg):
        check_dist(parse_probs(text, "--p"), "--p")


def test_cli_example_prints_beta_and_final_column():
    r = specli("explain", "--p", P, "--q", Q)
    assert r.returncode == 0, r.stderr
    assert "3/4" in r.stdout and "123/400" in r.stdout
    rows = [line.split("│")[1:-1] for line in r.stdout.splitlines() if line.startswith("│")]
    assert [c[-1].strip() for c in rows] == ["2/5", "1/2", "1/20", "1/20"]


def test_cli_json_and_samples():
    r = specli("explain", "--p", P, "--q", Q, "--json", "--samples", "2000", "--seed", "5")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["beta"]["fraction"] == "3/4" and data["exact_match"]["fraction"] == "123/400"
    assert [row["emitted"]["fraction"] for row in data["rows"]] == ["2/5", "1/2", "1/20", "1/20"]
    assert sum(data["samples"]["counts"]) == 2000 and data["samples"]["p_value"] > 0.001
    again = json.loads(specli("explain", "--p", P, "--q", Q, "--json", "--samples", "2000",
                              "--seed", "5").stdout)
    assert again["samples"]["counts"] == data["samples"]["counts"]


def test_cli_logits_are_warped_like_the_engine():
    from specli.config import SamplingConfig
    from specli.core.sampling import warp
    import numpy as np

    r = specli("explain", "--logits-p", "2,1.5,0,-1", "--logits-q", "1.8,1.9,0.2,-2",
               "--temperature", "0.7", "--top-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    want = warp(np.array([2, 1.5, 0, -1.0]), SamplingConfig(0.7, 3, 1.0, 0.0))
    got = [row["p"]["value"] for row in data["rows"]]
    assert got[3] == 0.0 and np.allclose(np.array(got)[want.ids], want.probs, atol=1e-15)
    assert data["emitted_equals_p"]


@pytest.mark.parametrize("args,msg", [
    (["--p", "0.5,0.5", "--q", "0.2,0.3,0.5"], "lengths must match"),
    (["--p", "0.5,0.6", "--q", "0.5,0.5"], "not 1"),
    (["--p", "1.5,-0.5", "--q", "0.5,0.5"], "negative"),
    (["--p", ",", "--q", "0.5,0.5"], "empty"),
    (["--p", "0.5,0.5"], "exactly one of --q"),
    (["--samples", "100", "a prompt"], "--samples applies to one step"),  # not silently ignored
    (["--normalize", "a prompt"], "--normalize applies to one step"),
])
def test_cli_bad_input_one_line_exit_2(args, msg):
    r = specli("explain", *args)
    assert r.returncode == 2
    assert msg in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_cli_normalize():
    r = specli("explain", "--p", "2,2", "--q", "1,3", "--normalize", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["beta"]["fraction"] == "3/4"


# --------------------------------------------------------------- explain PROMPT, tiny models


def _engine_rounds(target_path, draft_path, tokens, k, seed, temperature, n):
    from specli.llama.backend import LlamaModel
    from specli.config import SamplingConfig, SpecConfig
    from specli.core.drafters import ModelDrafter
    from specli.core.engine import Round, speculative_generate

    sampling = SamplingConfig(temperature=temperature)
    t = LlamaModel(target_path, n_ctx=512, n_threads=1)
    d = LlamaModel(draft_path, n_ctx=512, n_threads=1)
    try:
        drafter = ModelDrafter(d, sampling, t.n_vocab)
        events = speculative_generate(t, drafter, tokens, sampling,
                                      SpecConfig(k=k, max_tokens=256, seed=seed))
        return [e for e in events if isinstance(e, Round)][:n]
    finally:
        t.close()
        d.close()


def test_explain_prompt_agrees_with_engine_rounds(tiny_target, tiny_draft):
    n = 6
    r = specli("explain", "--target", tiny_target, "--draft", tiny_draft, "--threads", "1",
               "--ctx", "512", "--raw", "--k", "3", "--seed", "0", "--temperature", "0.8",
               "--rounds", n, "--json", "The quick brown fox")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    shown = data["rounds"]
    assert len(shown) == n
    engine = _engine_rounds(tiny_target, tiny_draft, data["prompt_tokens"], 3, 0, 0.8, n)
    for s, e in zip(shown, engine):  # the engine's own rounds, untraced, same seed
        assert s["draft"] == list(e.draft_tokens) and s["token"] == e.token
        assert s["accepted"] == e.n_accepted and s["bonus"] == e.bonus
        positions = s["trace"]["positions"]
        assert [p["accept"] for p in positions] == pytest.approx(list(e.accept_probs), abs=1e-6)
        for p in positions:
            assert p["accepted"] == (p["u"] < p["accept"])
            assert p["accept"] == pytest.approx(min(1.0, p["p_x"] / p["q_x"]))
    sources = {s["trace"]["source"] for s in shown}
    assert sources == {"residual", "p"}, "want one rejection and one all-accepted round"
    rejected = next(s for s in shown if s["trace"]["source"] == "residual")
    assert rejected["trace"]["drawn_top"] and data["one_target_step_seconds"] > 0


def test_explain_prompt_text_and_greedy(tiny_target, tiny_draft):
    args = ["explain", "--target", tiny_target, "--draft", tiny_draft, "--threads", "1",
            "--ctx", "512", "--raw", "--k", "3", "--rounds", "2"]
    r = specli(*args, "--temperature", "0.8", "The quick brown fox")
    assert r.returncode == 0, r.stderr
    assert "round 1" in r.stdout and "min(1, p/q)" in r.stdout and "u = " in r.stdout
    assert "one batched target decode" in r.stdout and "one target step" in r.stdout
    g = specli(*args, "--temperature", "0", "The quick brown fox")
    assert g.returncode == 0, g.stderr
    assert "argmax" in g.stdout and "u = " not in g.stdout


def test_explain_needs_one_mode():
    r = specli("explain")
    assert r.returncode == 2 and "either" in r.stderr
