"""The benchmark scripts' parsing and summary functions, on captured samples; --help works.

No models, no timing asserts: these scripts print numbers, the tests check they read
llama.cpp's output and summarise rows correctly.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def vs():
    return _load("vs_llama_cpp")


@pytest.fixture(scope="module")
def prof():
    return _load("profile_loop")


# Captured from llama-speculative-simple (stderr), trimmed.
SPEC_STDERR = """\
common_init_from_params: warming up the model with an empty run - please wait ...
encoded   31 tokens in    0.412 seconds, speed:   75.243 t/s
decoded  130 tokens in    3.046 seconds, speed:   42.679 t/s

n_draft   = 3
n_predict = 130
n_drafted = 117
n_accept  = 90
accept    = 76.923%
"""

PROMPT = "<|im_start|>user\nWrite hi<|im_end|>\n<|im_start|>assistant\n"


def test_parse_decoded_and_encoded(vs):
    assert vs.parse_decoded(SPEC_STDERR) == (130, 3.046)
    assert vs.parse_encoded(SPEC_STDERR) == 31
    assert vs.parse_acceptance(SPEC_STDERR) == (117, 90)
    assert vs.parse_decoded("nothing here") is None
    assert vs.parse_acceptance("n_drafted = 3") is None


def test_parse_llama_bench_json(vs):
    out = json.dumps([{"n_prompt": 0, "n_gen": 128, "avg_ts": 35.25, "stddev_ts": 0.1}])
    assert vs.parse_llama_bench(out) == pytest.approx(35.25)
    assert vs.parse_llama_bench("not json") is None
    assert vs.parse_llama_bench(json.dumps([{"n_prompt": 512, "n_gen": 0, "avg_ts": 300}])) is None


def test_extract_generated(vs):
    stdout = "\n\n" + PROMPT + "Hello, world!\n" + "\n\n" + "\n\n"
    assert vs.extract_generated(stdout, PROMPT) == "Hello, world!\n"
    assert vs.extract_generated("\n\n" + PROMPT + "abc", PROMPT) == "abc"
    assert vs.extract_generated("something else", PROMPT) is None


def test_compare_texts(vs):
    assert vs.compare_texts("abc", "abcdef").same
    m = vs.compare_texts("abXdef", "abcdef")
    assert not m.same and m.first_diff == 2 and m.compared == 6
    assert vs.compare_texts("", "x").same


def _row(engine, mode, k, prompt, repeat, tps, **kw):
    return {"engine": engine, "mode": mode, "k": k, "prompt": prompt, "repeat": repeat,
            "tok_s": tps, **kw}


def test_summarize_pairs_runs_and_formats(vs):
    rows = []
    for r in range(2):
        for p, scale in (("a", 1.0), ("b", 2.0)):
            rows += [
                _row("native", "target", 0, p, r, 30 * scale),
                _row("specli", "target", 0, p, r, 30 * scale, text_match={"same": True}),
                _row("native", "draft-simple", 3, p, r, 40 * scale, accept_rate=0.7),
                _row("specli", "model", 3, p, r, 50 * scale, accept_rate=0.7,
                     text_match={"same": p == "a", "compared": 10, "first_diff": None if p == "a" else 4,
                                 "context": "x"}, text_vs="native:draft-simple:3"),
            ]
    s = vs.summarize(rows, [3])
    assert s["per_k"]["3"]["specli_vs_native"]["median"] == pytest.approx(1.25)
    assert s["per_k"]["3"]["specli_vs_specli_target"]["median"] == pytest.approx(50 / 30)
    assert s["target_alone_specli_vs_native"]["median"] == pytest.approx(1.0)
    assert s["variants"]["specli:model:3"]["runs"] == 4
    assert s["text"]["compared"] == 8 and s["text"]["differ"] == 2
    table = vs.format_table(s, [3])
    assert "1.25×" in table and "6/8 runs agree" in table


def test_decode_cost_model_counts_the_native_draft_batch_and_specli_catch_ups(vs):
    t_v = {1: 30.0, 2: 50.0, 3: 70.0, 4: 90.0}.__getitem__  # ms, as any unit
    t_db = {1: 20.0, 2: 30.0, 3: 35.0, 4: 40.0}.__getitem__
    # K = 3; 4 rounds: one accepted nothing, one accepted 2, two accepted all 3
    m = vs.decode_cost_model([1, 0, 1, 2], 3, t_v, t_db)
    assert m["rounds"] == 4 and m["full_rounds"] == 2 and m["tokens"] == 0 + 2 + 6 + 4
    specli = 4 * (90 + 2 * 20) + 2 * 30 + 2 * 20  # catch-up of 2 tokens after the full rounds
    native = 4 * (90 + 40 + 3 * 20)  # the verified batch of 4 on the draft, then 3 drafts
    assert m["ratio"] == pytest.approx(native / specli)
    assert m["specli_ms_per_token"] == pytest.approx(1e3 * specli / 12)
    assert vs.decode_cost_model([], 3, t_v, t_db) is None


def test_summarize_adds_the_decode_cost_model_with_a_calibration(vs):
    from specli.bench.calibration import Calibration

    calib = Calibration((0.03, 0.05, 0.07, 0.09), 0.02, 3, 40, {1: 0.02, 2: 0.03, 4: 0.04})
    rows = [_row("native", "draft-simple", 3, "a", 0, 20.0),
            _row("specli", "model", 3, "a", 0, 24.0, accepted_hist=[1, 0, 1]),
            _row("specli", "model", 3, "a", 1, 24.0, accepted_hist=[0, 0, 0, 2])]
    s = vs.summarize(rows, [3], calib=calib)
    m = s["per_k"]["3"]["decode_cost_model"]
    assert m == vs.decode_cost_model([1, 0, 1, 2], 3, calib.t_v, calib.t_db)
    assert s["calibration"]["t_verify"] == [0.03, 0.05, 0.07, 0.09]
    table = vs.format_table(s, [3])
    assert f"{m['ratio']:.2f}×" in table and "t_v(1..) 30 50 70 90" in table
    assert "decode_cost_model" not in vs.summarize(rows, [3])["per_k"]["3"]  # no calibration


def test_specli_side_runs_and_calibrates_on_tiny_models(vs, tiny_target, tiny_draft, tmp_path):
    """The in-process side of vs_llama_cpp on real llama.cpp: a K run records what the
    model column needs, and the calibration covers t_v(1..K+1) and draft batches 1..K+1."""
    s = vs.Setup(tmp_path, tiny_target, tiny_draft, n=12, threads=1, draft_threads=1, ctx=256)
    sp = vs.Specli(s)
    try:
        tokens, text = sp.tokens("Hello there")
        assert tokens and text
        row = sp.run(tokens, "model", 2)
        assert sum(row["accepted_hist"]) == row["rounds"] and len(row["accepted_hist"]) <= 3
        sp.sample_costs(tokens, 3, reps=2)
        sp.sample_costs(tokens, 3, reps=1)
        calib = sp.calibration()
    finally:
        sp.close()
    assert len(calib.t_verify) == 3 and calib.reps == 3
    assert {1, 2, 3} <= set(calib.t_draft_batch)
    model = vs.decode_cost_model(row["accepted_hist"], 2, calib.t_v, calib.t_db)
    assert model["rounds"] == row["rounds"]
    assert model["tokens"] == sum(a * n for a, n in enumerate(row["accepted_hist"])) + row["rounds"]


def test_summarize_ngram(vs):
    rows = [_row("specli", "ngram-target", 0, "e", 0, 30.0),
            _row("native", "ngram-simple", 12, "e", 0, 60.0),
            _row("specli", "auto", "auto", "e", 0, 66.0),
            _row("specli", "ngram", "auto", "e", 0, 63.0)]
    s = vs.summarize(rows, [], ["auto"])
    assert s["ngram"]["native_ngram_vs_specli_target"]["median"] == pytest.approx(2.0)
    assert s["ngram"]["specli_auto_auto_vs_native_ngram"]["median"] == pytest.approx(1.1)
    assert "prompt lookup" in vs.format_table(s, [])


def test_native_command_is_fair(vs, tmp_path):
    s = vs.Setup(tmp_path, Path("t.gguf"), Path("d.gguf"), 128, 2, 2, 4096)
    cmd = vs.native_spec_cmd(s, PROMPT, "draft-simple", 3)
    joined = " ".join(cmd)
    for part in ("--spec-type draft-simple", "--spec-draft-n-max 3", "--temp 0", "-t 2", "-td 2",
                 "-n 128", "--no-escape", "-c 4096", "--spec-draft-p-min 0"):
        assert part in joined
    assert cmd[cmd.index("-p") + 1] == PROMPT  # the rendered text, verbatim
    ng = vs.native_spec_cmd(s, PROMPT, "ngram-simple", 12)
    assert "-md" not in ng and "--spec-draft-n-max" in ng


def test_profile_breakdown_adds_up(prof):
    excl = {"llama_decode target": 0.8, "llama_decode draft": 0.1, "verification": 0.02,
            "render": 0.01, "custom": 0.005}
    rows = prof.breakdown(excl, {"verification": 40}, wall=1.0, tokens=100)
    assert [r["part"] for r in rows][:2] == ["llama_decode target", "llama_decode draft"]
    assert rows[-1]["part"].startswith("unaccounted")
    assert sum(r["seconds"] for r in rows) == pytest.approx(1.0)
    assert prof.outside_share(rows) == pytest.approx(0.1)
    assert "outside llama_decode" in prof.format_breakdown(rows, "t")


def test_profile_timers_charge_exclusive_time(prof):
    t = prof.Timers()
    inner = t.wrap("inner", lambda: sum(range(20000)))
    outer = t.wrap("outer", lambda: inner() + inner())
    t.active = True
    outer()
    assert t.calls == {"inner": 2, "outer": 1}
    assert t.excl["outer"] >= 0 and t.excl["inner"] > 0
    t.active = False
    outer()  # inactive: not counted
    assert t.calls["outer"] == 1


@pytest.mark.parametrize("script", ["vs_llama_cpp.py", "profile_loop.py", "ngram_headroom.py",
                                    "serve_turns.py", "agent_tools.py", "constraint_overhead.py",
                                    "infill.py", "history_lookup.py"])
def test_help(script):
    out = subprocess.run([sys.executable, str(BENCH_DIR / script), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_noisy_groups_are_left_out(vs):
    rows = [_row("native", "draft-simple", 3, "a", 0, 10.0, foreign_cpu=0.5),
            _row("specli", "model", 3, "a", 0, 30.0, foreign_cpu=0.0),
            _row("native", "draft-simple", 3, "a", 1, 10.0, foreign_cpu=0.01),
            _row("specli", "model", 3, "a", 1, 12.0, foreign_cpu=0.02)]
    s = vs.summarize(rows, [3], max_foreign=0.1)
    assert s["per_k"]["3"]["specli_vs_native"]["median"] == pytest.approx(1.2)
    assert s["noise"]["excluded_groups"] == [["a", 0]]
    assert vs.summarize(rows, [3])["per_k"]["3"]["specli_vs_native"]["n"] == 2
    assert "left out" in vs.format_table(s, [3])


def test_foreign_share(vs):
    assert vs.foreign_share(100.0, 104.0, own_cpu=2.0, wall=1.0) == pytest.approx(2.0 / (1.0 * __import__("os").cpu_count()))
    assert vs.foreign_share(100.0, 101.0, own_cpu=2.0, wall=1.0) == 0.0
    assert vs.foreign_share(None, 1.0, own_cpu=0.0, wall=1.0) is None


def test_text_varying_across_repeats_is_reported(vs):
    rows = [_row("specli", "model", 3, "a", r, 10.0, text=t) for r, t in enumerate(["x", "x", "y"])]
    rows += [_row("native", "draft-simple", 3, "a", r, 10.0, text="x") for r in range(3)]
    t = vs.text_agreement(rows)
    assert t["varies_across_repeats"] == ["a specli:model:3"]


# --- ngram_headroom: the offline replay ---------------------------------------------------


@pytest.fixture(scope="module")
def headroom():
    return _load("ngram_headroom")


# A CPU-like curve: verifying n tokens costs 0.3 + 0.7 n steps, so copying pays from K = 1.
T_V = [0.040 * (0.3 + 0.7 * n) for n in range(1, 33)]


def test_replay_oracle_copies_a_quoted_passage(headroom):
    passage = list(range(100, 140))
    prompt = [1, 2, 3] + passage + [4]
    out = [7] + passage  # the answer quotes the passage after one token of its own
    base = len(out) * T_V[0]
    seconds, rounds = headroom.replay(prompt, out, T_V, headroom.oracle(T_V), min_match=1)
    assert rounds < len(out) // 4 and base / seconds > 1.25  # the curve allows 1.41 at most
    fresh = list(range(500, 541))  # nothing to copy: every round is the target alone
    seconds, rounds = headroom.replay(prompt, fresh, T_V, headroom.oracle(T_V), min_match=1)
    assert rounds == len(fresh) and seconds == pytest.approx(len(fresh) * T_V[0])


def test_replay_charges_rejected_drafts(headroom):
    passage = list(range(100, 140))
    prompt = passage + [4] + passage[:3]
    out = passage[3:10] + [999] * 5  # the copy breaks after 7 tokens
    always = lambda match, avail: 31 if match else 0  # noqa: E731
    seconds, rounds = headroom.replay(prompt, out, T_V, always, min_match=1)
    # Round 1 drafts 11 tokens (all the answer has left after its first), 7 are accepted
    # (+1 of the target's own), and it costs the whole batch of 12: t_v(12).
    assert rounds >= 2 and seconds >= T_V[11]
    oracle_s, _ = headroom.replay(prompt, out, T_V, headroom.oracle(T_V), min_match=1)
    assert oracle_s < seconds


def test_auto_policy_replay_never_drafts_without_a_match(headroom):
    choose, observe = headroom.auto_policy(T_V)
    out = list(range(500, 530))
    seconds, rounds = headroom.replay([1, 2, 3], out, T_V, choose, observe)
    assert rounds == len(out)


def test_llama_ngram_simple_replay_waits_for_twelve_tokens_then_drafts_up_to_48(headroom):
    passage = list(range(100, 170))
    prompt = [3] + passage + [5, 6]  # llama's search never looks at position 0
    out = passage[:40]
    t_v = headroom.extended(T_V, 49)
    seconds, rounds = headroom.llama_ngram_simple(prompt, out, t_v)
    # The pattern is the last 12 tokens: it first recurs once the answer has produced 12
    # passage tokens one by one. Then one round drafts what followed (up to 48 tokens,
    # capped to the 27 the answer still needs after the target's own next token).
    assert rounds == 13
    assert seconds == pytest.approx(12 * t_v[0] + t_v[27])


def test_llama_ngram_simple_replay_needs_a_long_sequence_and_pays_for_rejections(headroom):
    t_v = headroom.extended(T_V, 49)
    short = list(range(100, 130))  # 30 + 30 tokens: shorter than 12 + 48 + 1, never drafts
    seconds, rounds = headroom.llama_ngram_simple(short, short, t_v)
    assert rounds == len(short) and seconds == pytest.approx(len(short) * t_v[0])
    passage = list(range(100, 170))
    prompt = [3] + passage + [5] + passage[:12]
    out = passage[12:20] + list(range(900, 930))  # the copy breaks after 8 tokens
    seconds, rounds = headroom.llama_ngram_simple(prompt, out, t_v)
    # Round 1 drafts 37 (all the answer has left after one of its own), keeps 8 and pays
    # for the whole batch; the new text after it matches nothing.
    assert seconds == pytest.approx(t_v[37] + (len(out) - 9) * t_v[0])
    assert rounds == 1 + len(out) - 9


def test_extended_keeps_measured_sizes_and_extrapolates_the_rest(headroom):
    t = headroom.extended(T_V, 49)
    assert t[:32] == T_V and len(t) == 49
    steps = [b - a for a, b in zip(t[31:], t[32:])]
    assert all(s == pytest.approx(0.040 * 0.7) for s in steps)  # T_V's own slope
    assert headroom.extended(t, 49) == t


def test_serve_turns_runs_a_growing_conversation_on_tiny_models(tiny_target, tiny_draft, tmp_path):
    """The turn-latency benchmark end to end: a real server, the openai SDK, its JSON. Each
    turn extends the last, so every turn after the first evaluates only its new tokens."""
    out = tmp_path / "turns.json"
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(BENCH_DIR / "serve_turns.py"), "--build", f"here={root}",
                        "--doc-chars", "600", "--turns", "3", "--conversations", "1",
                        "--max-tokens", "4", "--ctx", "1024", "--threads", "1", "--json", str(out),
                        f"--serve-arg=--target={tiny_target}", f"--serve-arg=--draft={tiny_draft}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    turns = data["turns"]["here"]
    assert [t["turn"] for t in turns] == [2, 3]
    for t in turns:
        assert t["seconds"] > 0 and 0 < t["prompt_n"] < t["prompt_tokens"] // 2
    assert data["summary"]["here"]["turns"] == 2
    assert "turn latency" in r.stdout


def test_agent_tools_validity_reads_schemas_and_calls():
    """A reply counts as valid only when it parses and validates (extract), or is tool
    calls whose arguments validate against the tool's parameters (agent)."""
    at = _load("agent_tools")
    schema = at.EXTRACT[0][2]
    good = {"version": "2.4.0", "date": "2026-11-02", "added": [], "fixed": [], "deprecated": []}
    assert at.validity("extract", schema, {"message": {"content": json.dumps(good)}})[0]
    assert not at.validity("extract", schema, {"message": {"content": '{"version": 2}'}})[0]
    call = {"function": {"name": "write_file", "arguments": json.dumps({"path": "a", "content": "x"})}}
    assert at.validity("agent", None, {"message": {"tool_calls": [call]}}) == (True, "write_file")
    bad = {"function": {"name": "write_file", "arguments": json.dumps({"path": "a"})}}
    assert not at.validity("agent", None, {"message": {"tool_calls": [bad]}})[0]
    assert at.validity("agent", None, {"message": {"content": "sure"}}) == (False, "text")
    turns = at.agent_turns()
    assert [t for t, _ in turns] == ["rename/read", "rename/write", "docstring/read",
                                     "docstring/write"]
    assert turns[1][1][-1] == {"role": "tool", "tool_call_id": "call_read0", "content": at.DB_PY}


def test_infill_cuts_a_case_as_llama_vscode_does():
    """A cursor stands on a statement >= 3 lines into a function, not its last line, long
    enough; the case is llama.vscode's prefix / prompt / suffix with the line's rest held out."""
    inf = _load("infill")
    src = ("import os\n\n\ndef f(x):\n    \"\"\"A docstring long enough to be a line.\"\"\"\n"
           "    a = 1\n    b = 2\n    total_value = compute(x, a, b)\n"
           "    # a comment long enough to be a line\n    other_value = compute(a, b, x) + 1\n"
           "    return total_value + other_value\n")
    lines = src.split("\n")
    assert inf.body_lines(src) == [7, 9]
    case = inf.cut(lines, 7, 8)
    assert case["input_prefix"] == "\n".join(lines[:7]) + "\n"
    assert case["input_suffix"] == "\n" + "\n".join(lines[8:]) + "\n"
    assert case["n_indent"] == 4 and case["line_no"] == 8
    assert inf.typed(case, 0, 3) == ("    tota", "l_value = compute(x, a, b)")
    assert inf.typed(case, 2, 3) == ("    total_valu", "e = compute(x, a, b)")
    chunks = inf.extra_chunks("p/m.py", "\n".join(str(i) for i in range(300)))
    assert [c["text"].count("\n") for c in chunks] == [64] * 4 and chunks[0]["filename"] == "p/m.py"
    assert chunks[1]["text"].startswith("64\n")
