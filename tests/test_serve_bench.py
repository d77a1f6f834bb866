"""benchmarks/serve_vs_llama_server.py: its figures from synthetic rows (no servers run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_vs_llama_server.py"


@pytest.fixture(scope="module")
def sv():
    spec = importlib.util.spec_from_file_location("serve_vs_llama_server", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def row(server, prompt, tok_s, temp=0.0, drafted=0, accepted=0, text="t", overhead=1.0):
    return {"ok": True, "server": server, "suite": "code", "prompt": prompt, "temperature": temp,
            "repeat": 0, "tok_s": tok_s, "wall_tok_s": tok_s / 2, "draft_n": drafted,
            "draft_n_accepted": accepted, "text": text, "overhead_ms": overhead,
            "completion_tokens": 10}


def test_summary_pairs_requests_and_picks_the_best_llama(sv):
    rows = [row("specli", "a", 30, drafted=10, accepted=8), row("specli", "b", 20, text="u"),
            row("specli K=0", "a", 15), row("specli K=0", "b", 20, text="u"),
            row("llama target", "a", 10), row("llama target", "b", 10),
            row("llama ngram", "a", 15, drafted=4, accepted=1), row("llama ngram", "b", 40),
            {"server": "specli", "models_rtt_ms": 0.5}]
    s = sv.summarize(rows, ["llama target", "llama ngram"], ["code"], [0.0])
    e = s["table"][0]
    assert e["vs_k0"] == pytest.approx(1.5)  # median of 2.0 and 1.0
    assert e["llama"]["llama target"]["ratio"] == pytest.approx(2.5)
    assert e["llama"]["llama ngram"]["acceptance"] == pytest.approx(0.25)
    assert e["best_llama"] == "llama ngram" and e["vs_best_llama"] == pytest.approx((2 + 0.5) / 2)
    sp = e["vs_best_llama_spread"]  # per-request ratios 2.0 and 0.5
    assert sp["n"] == 2 and sp["q1"] == pytest.approx(0.875) and sp["q3"] == pytest.approx(1.625)
    assert e["specli_acceptance"] == pytest.approx(0.8)
    assert s["specli_http_overhead_ms"]["median"] == 1.0 and s["models_rtt_ms"] == {"specli": 0.5}
    assert s["greedy_text_matches"]["specli K=0"] == {"equal": 2, "of": 2}
    sv.print_report(s, [], ["llama target", "llama ngram"])  # formats without failing


def test_percentile(sv):
    assert sv.percentile([], 50) is None
    assert sv.percentile([1, 2, 3, 4], 50) == 2.5 and sv.percentile([5], 95) == 5


def test_llama_configs_are_the_issue_s_three(sv):
    a = sv.parse_args(["--llama-bin", "/x", "--target", "t.gguf", "--draft", "d.gguf"])
    configs = sv.llama_configs(a)
    assert list(configs) == ["llama target", "llama -md", "llama ngram"]
    assert "-md" in configs["llama -md"] and "ngram-simple" in configs["llama ngram"]
    argv = sv.llama_argv(a, configs["llama -md"], 1234)
    assert argv[argv.index("-t") + 1] == argv[argv.index("-td") + 1]  # same threads per model
    spec = sv.specli_argv(a, 1234)
    assert spec[spec.index("--threads") + 1] == spec[spec.index("--draft-threads") + 1]
