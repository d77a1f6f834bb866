"""`specli bench`: --k parsing, the documented run order, the summary, and the CLI on tiny models."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from specli.bench.calibration import Calibration
from specli.bench.plan import Variant, make_variants, parse_drafters, parse_k_list, plan
from specli.bench.summary import PAYS, summarize
from specli.core.costs import break_even_alpha
from specli.errors import UsageError
from specli.bench.suites import Prompt

# --------------------------------------------------------------------------- --k parsing


@pytest.mark.parametrize("text,expected", [
    ("0,1,2,4,auto", [0, 1, 2, 4, "auto"]),
    ("1..8", [0, 1, 2, 3, 4, 5, 6, 7, 8]),
    ("1..3,6,auto", [0, 1, 2, 3, 6, "auto"]),
    ("auto", [0, "auto"]),
    ("4, 2 ,AUTO,2,0", [0, 4, 2, "auto"]),  # K = 0 first, duplicates dropped, order kept
    ("0", [0]),
])
def test_parse_k_list(text, expected):
    assert parse_k_list(text) == expected


@pytest.mark.parametrize("text", ["x", "1..", "..3", "5..2", "65", "-1", "", "1,,2", "1.5", "0..99"])
def test_parse_k_list_rejects(text):
    with pytest.raises(UsageError, match="--k"):
        parse_k_list(text)


def test_parse_drafters():
    assert parse_drafters("model, ngram,auto,model") == ["model", "ngram", "auto"]
    with pytest.raises(UsageError, match="--drafter"):
        parse_drafters("model,eagle")


# --------------------------------------------------------------------------- the run order


def test_plan_interleaves_baseline_first_per_prompt_and_repeat():
    prompts = [Prompt("a", "A", "s"), Prompt("b", "B", "s")]
    variants = make_variants([0, 1, 2], ["model", "ngram"])
    trials = plan(prompts, variants, repeats=2)
    got = [(t.repeat, t.prompt.id, t.variant.drafter, t.variant.k) for t in trials]
    block = [("none", 0), ("model", 1), ("model", 2), ("ngram", 1), ("ngram", 2)]
    expected = [(r, p, d, k) for r in range(2) for p in "ab" for d, k in block]
    assert got == expected
    assert [t.seq for t in trials] == list(range(len(trials)))


def test_plan_needs_the_baseline_first():
    with pytest.raises(ValueError):
        plan([Prompt("a", "A", "s")], [Variant(1, "model")], 1)


# --------------------------------------------------------------------------- cost model


def test_break_even_alpha():
    flat = [1.0] * 9
    assert break_even_alpha(4, 0.0, flat) == pytest.approx(0.0, abs=1e-9)  # free drafts always pay
    a = break_even_alpha(1, 0.5, [1.0, 1.2])  # 1 + a = 1.7
    assert a == pytest.approx(0.7, abs=1e-6)
    assert break_even_alpha(4, 0.6, [1.0, 1.5, 2.0, 2.5, 3.0]) is None  # 5 / 5.4 < 1 at alpha 1


def test_calibration_interpolates_draft_batches_and_replays_catchups():
    calib = Calibration((1.0, 1.5, 2.0), 0.5, 5, 10, {1: 0.4, 2: 0.6, 16: 2.0})
    assert calib.t_db(9) == pytest.approx(1.3)  # between 2 and 16
    assert calib.t_db(32) == pytest.approx(3.6)  # beyond: the last slope, 0.1 per token
    assert calib.catchup(1) == 0.0 and calib.catchup(2) == pytest.approx(0.2)
    assert calib.t_v(4) == pytest.approx(2.5)  # beyond the measured sizes: the last step
    row = {"new_tokens": 6, "per_round": {"drafted": [2, 0, 2], "drafter": ["model", "none", "model"],
                                          "accepted": [2, 0, 1]}}
    # round 1: t_v(3) + 2 t_d (lag 1: no catch-up); all accepted, so the lag becomes 2
    # round 2: the target alone, t_v(1); the draft falls one more token behind (lag 3)
    # round 3: t_v(3) + 2 t_d + catch-up of 3 tokens, t_db(3) - t_db(1) = 0.3
    from specli.bench.summary import _replay

    assert _replay([row], calib) == pytest.approx(6 * 1.0 / (3.0 + 1.0 + 3.3))


def _row(seq, prompt, k, drafter, tps, base, drafted=0, accepted=0, rounds=10):
    return {"seq": seq, "repeat": 0, "prompt_id": prompt, "suite": "s", "k": k, "drafter": drafter,
            "tokens_per_s": tps, "speedup": tps / base, "drafted": drafted, "accepted": accepted,
            "rejections": drafted - accepted,  # K = 1: every draft is judged
            "decode_seconds": 1.0, "draft_seconds": 0.2, "verify_seconds": 0.7, "other_seconds": 0.1,
            "llama_seconds": 0.9, "rounds": rounds, "new_tokens": 20, "accepted_hist": [1, 2],
            "k_chosen": {str(k if k != "auto" else 1): rounds}, "drafter_rounds": {drafter: rounds},
            "matches_baseline": True,
            "per_round": {"k": [1] * rounds, "drafter": ["model"] * rounds, "drafted": [1] * rounds,
                          "accepted": [1] * rounds, "t_draft": [0.02] * rounds,
                          "t_verify": [0.07] * rounds}}


def test_summary_speedup_is_the_median_of_paired_ratios_and_says_when_it_does_not_pay():
    rows = [_row(0, "a", 0, "none", 10.0, 10.0), _row(1, "a", 1, "model", 9.0, 10.0, 10, 6),
            _row(2, "b", 0, "none", 20.0, 20.0), _row(3, "b", 1, "model", 19.0, 20.0, 10, 6),
            _row(4, "c", 0, "none", 30.0, 30.0), _row(5, "c", 1, "model", 24.0, 30.0, 10, 6)]
    calib = Calibration((0.05, 0.06), 0.03, 5, 10)
    s = summarize(rows, make_variants([0, 1], ["model"]), calib, {})
    k1 = s["variants"][1]
    assert k1["speedup"]["median"] == pytest.approx(0.9)  # ratios 0.9, 0.95, 0.8
    assert k1["tokens_per_s"]["median"] == 19.0
    assert k1["acceptance_rate"] == pytest.approx(0.6) and k1["alpha"] == pytest.approx(0.6)
    # E(1) = 1.6; 1.6 * 0.05 / (0.03 + 0.06)
    assert k1["predicted_speedup"] == pytest.approx(1.6 * 0.05 / 0.09)
    suite = s["suites"]["s"]
    assert suite["best"]["speedup"] < PAYS and suite["pays"] is False
    assert suite["advice"] == {"k": 0, "drafter": None}  # no auto row: the target alone
    assert suite["why"]["draft_ratio"] == pytest.approx(0.6)


@pytest.mark.parametrize("auto_tps,advice", [
    ((9.9, 19.9, 29.5), {"k": "auto", "drafter": "auto"}),  # within noise of the baseline
    ((9.0, 18.0, 27.0), {"k": 0, "drafter": None}),  # 0.90x: auto costs, so the target alone
])
def test_when_nothing_pays_auto_is_advised_only_if_it_kept_up(auto_tps, advice):
    from specli.views.render_bench import recommendation

    rows = []
    for i, (p, base, tps) in enumerate(zip("abc", (10.0, 20.0, 30.0), auto_tps)):
        rows += [_row(3 * i, p, 0, "none", base, base),
                 _row(3 * i + 1, p, 1, "model", base * 0.8, base, 10, 6),
                 _row(3 * i + 2, p, "auto", "auto", tps, base, 10, 6)]
    suite = summarize(rows, make_variants([0, 1, "auto"], ["model", "auto"]), None, {})["suites"]["s"]
    assert suite["pays"] is False and suite["advice"] == advice
    text = recommendation({"suites": {"s": suite}}).plain
    assert ("use --k 0" in text) == (advice["k"] == 0)
    assert ("keep --k auto --drafter auto" in text) == (advice["k"] == "auto")


def test_advice_is_the_best_row_when_it_pays():
    rows = [_row(0, "a", 0, "none", 10.0, 10.0), _row(1, "a", 2, "model", 15.0, 10.0, 10, 9)]
    suite = summarize(rows, make_variants([0, 2], ["model"]), None, {})["suites"]["s"]
    assert suite["pays"] is True and suite["advice"] == {"k": 2, "drafter": "model"}


# --------------------------------------------------------------------------- the CLI, tiny models


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "mine.jsonl"
    path.write_text('{"id": "fox", "prompt": "The quick brown fox"}\n'
                    '{"id": "code", "prompt": "def main():\\n    x = 1"}\n', encoding="utf-8")
    return path


def invoke(args):
    from specli.cli import app

    return CliRunner().invoke(app, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def sweep(tiny_target, tiny_draft, prompts_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    args = ["bench", "--target", str(tiny_target), "--draft", str(tiny_draft), "--threads", "1",
            "--prompts", str(prompts_file), "--k", "1,2,auto", "--drafter", "model,ngram",
            "--repeats", "2", "--warmup", "1", "--max-tokens", "12", "--temperature", "0",
            "--json", str(out / "b.json"), "--csv", str(out / "b.csv")]
    result = invoke(args)
    assert result.exit_code == 0, result.stderr
    return result, json.loads((out / "b.json").read_text()), out / "b.csv"


def test_bench_json_has_every_k_with_the_baseline(sweep):
    _, data, _ = sweep
    rows = data["results"]
    keys = {(r["prompt_id"], r["repeat"], r["drafter"], r["k"]) for r in rows}
    expected = {(p, rep, d, k) for p in ("fox", "code") for rep in (0, 1)
                for d, k in [("none", 0)] + [(d, k) for d in ("model", "ngram") for k in (1, 2, "auto")]}
    assert keys == expected and len(rows) == len(expected)
    for r in rows:
        assert r["tokens_per_s"] > 0 and 0.0 <= r["acceptance_rate"] <= 1.0
        if r["drafted"]:  # drafts after a rejection are never judged: alpha >= accepted/drafted
            assert r["acceptance_rate"] <= r["alpha"] <= 1.0
        assert {"draft_seconds", "verify_seconds", "other_seconds", "python_share"} <= r.keys()
        base = next(b for b in rows if b["k"] == 0 and b["prompt_id"] == r["prompt_id"]
                    and b["repeat"] == r["repeat"])
        assert r["speedup"] == pytest.approx(r["tokens_per_s"] / base["tokens_per_s"])
        assert r["matches_baseline"] is True  # greedy: every K gives the target's own tokens
        assert sum(r["k_chosen"].values()) == r["rounds"] == len(r["per_round"]["drafter"])
    auto = [r for r in rows if r["k"] == "auto"]
    assert all(set(r["drafter_rounds"]) <= {"model", "ngram", "none"} for r in auto)
    s = data["summary"]
    assert [(v["drafter"], v["k"]) for v in s["variants"]] == [
        ("none", 0), ("model", 1), ("model", 2), ("model", "auto"), ("ngram", 1), ("ngram", 2),
        ("ngram", "auto")]
    # auto's model drafts go up to K 8, its n-gram drafts up to K 31: t_v(1..32)
    assert len(s["calibration"]["t_verify"]) == 32
    assert s["calibration"]["t_draft"] > 0
    assert s["peak_rss_mib"] > 0 and s["greedy_mismatches"] == []
    assert s["variants"][1]["predicted_speedup"] is not None
    assert set(s["suites"]) == {"mine"} and "auto" in s["suites"]["mine"]


def test_bench_runs_in_the_documented_order(sweep):
    _, data, _ = sweep
    rows = data["results"]
    assert [r["seq"] for r in rows] == list(range(len(rows)))
    block = [("none", 0)] + [(d, k) for d in ("model", "ngram") for k in (1, 2, "auto")]
    expected = [(rep, p, d, k) for rep in (0, 1) for p in ("fox", "code") for d, k in block]
    assert [(r["repeat"], r["prompt_id"], r["drafter"], r["k"]) for r in rows] == expected


def test_bench_report_on_stdout_progress_on_stderr(sweep):
    result, _, _ = sweep
    assert "Results" in result.stdout and "Recommendation" in result.stdout
    assert "t_v(n)" in result.stdout and "│" in result.stdout  # cost model, bar chart
    assert "[1/" not in result.stdout
    assert "calibrating" in result.stderr and "bench: 28 runs" in result.stderr
    assert "Results" not in result.stderr


def test_bench_csv(sweep):
    _, data, path = sweep
    with open(path, newline="", encoding="utf-8") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == len(data["results"])
    assert lines[0]["k"] == "0" and lines[0]["drafter"] == "none"
    assert {line["k"] for line in lines} == {"0", "1", "2", "auto"}
    assert float(lines[1]["tokens_per_s"]) > 0


def test_bare_json_means_stdout():
    from specli.cli import normalize_argv

    assert normalize_argv(["bench", "--json"]) == ["bench", "--json", "-"]
    assert normalize_argv(["bench", "--json", "--k", "1"]) == ["bench", "--json", "-", "--k", "1"]
    assert normalize_argv(["bench", "--json", "out.json"]) == ["bench", "--json", "out.json"]
    assert normalize_argv(["bench", "--json", "-"]) == ["bench", "--json", "-"]
    assert normalize_argv(["run", "--json", "hi"]) == ["run", "--json", "hi"]  # a flag in run


@pytest.mark.parametrize("json_args", [["--json", "-"], ["--json"]])
def test_bench_json_to_stdout(tiny_target, tiny_draft, prompts_file, json_args):
    from specli.cli import normalize_argv

    result = invoke(normalize_argv(
        ["bench", "--target", str(tiny_target), "--draft", str(tiny_draft),
         "--threads", "1", "--prompts", str(prompts_file), "--limit", "1", "--k", "1",
         "--warmup", "0", "--max-tokens", "8", *json_args]))
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(r["prompt_id"], r["k"]) for r in data["results"]] == [("fox", 0), ("fox", 1)]
    assert "Results" in result.stderr


@pytest.mark.parametrize("k", ["1..x", "9..2", "0,65"])
def test_bad_k_exits_2_with_one_line(k):
    proc = subprocess.run([sys.executable, "-m", "specli", "bench", "--k", k], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("specli: error: --k")
