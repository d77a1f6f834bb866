"""`specli run` as a user runs it: a real subprocess, exit codes, stdout vs stderr, --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def default_sigint() -> None:
    """In the child: SIGINT back to its default. A shell that starts the suite in the
    background sets it to 'ignore', which children inherit, and Python then never raises
    KeyboardInterrupt: the Ctrl-C tests would test the launcher, not specli."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def specli(*args, input=None, env_extra=None, timeout=120):
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "specli", *map(str, args)], input=input,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def tiny_args(tiny_target, tiny_draft):
    return ["--target", tiny_target, "--draft", tiny_draft, "--threads", "1", "--ctx", "512"]


def test_run_json_schema_and_stdout_only_json(tiny_args):
    r = specli("run", *tiny_args, "--json", "--temperature", "0", "--k", "3", "-n", "20",
               "The quick brown fox")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)  # stdout is exactly one JSON object
    assert set(data) >= {"text", "tokens", "rounds", "stats", "stop_reason"}
    for key in ("acceptance_rate", "tokens_per_s", "drafted", "accepted", "new_tokens", "seconds"):
        assert key in data["stats"]
    assert data["stats"]["new_tokens"] == len(data["tokens"]) == 20
    assert sum(len(r["tokens"]) for r in data["rounds"]) == 20
    assert all({"draft", "accept_probs", "accepted", "token", "t_draft", "t_verify"} <= set(r)
               for r in data["rounds"])
    assert data["threads"]["chosen"] == data["threads"]["end"] == 1  # tiny_args: --threads 1
    assert data["threads"]["follows_load"] is False and data["threads"]["changes"] == []


def test_run_greedy_text_equals_k0_through_the_cli(tiny_args):
    outs = []
    for k in ("0", "4", "auto"):
        r = specli("run", *tiny_args, "--json", "--temperature", "0", "--k", k, "-n", "30",
                   "--raw", "Once upon a time")
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout))
    assert outs[0]["tokens"] == outs[1]["tokens"] == outs[2]["tokens"]
    assert outs[0]["stats"]["drafted"] == 0 and outs[1]["stats"]["drafted"] > 0


def test_run_plain_text_to_stdout_stats_to_stderr(tiny_args):
    r = specli("run", *tiny_args, "--temperature", "0", "-n", "12", "The quick brown fox")
    assert r.returncode == 0, r.stderr
    j = specli("run", *tiny_args, "--json", "--temperature", "0", "-n", "12", "The quick brown fox")
    text = json.loads(j.stdout)["text"]
    assert r.stdout.rstrip("\n") == text.rstrip("\n")  # only the generated text, no styling
    assert "tok/s" in r.stderr and "accepted" in r.stderr


def test_prompt_from_stdin_and_file(tiny_args, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("The quick brown fox")
    a = specli("run", *tiny_args, "--json", "--temperature", "0", "-n", "8", "-", input="The quick brown fox")
    b = specli("run", *tiny_args, "--json", "--temperature", "0", "-n", "8", "--file", f)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert json.loads(a.stdout)["tokens"] == json.loads(b.stdout)["tokens"]


def one_line_error(r, code):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("specli: error:"), r.stderr
    return lines[0]


@pytest.mark.parametrize("args,needle", [
    (["--k", "65"], "--k"), (["--k", "-1"], "--k"), (["--k", "many"], "--k"),
    (["--temperature", "-0.5"], "--temperature"), (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"), (["--show", "weird"], "--show"),
    (["--seed", "-1"], "--seed must be >= 0"), (["--max-tokens", "0"], "--max-tokens"),
    (["--ctx", "8"], "--ctx"), (["--threads", "0"], "--threads"),
    (["--n-gpu-layers", "-5"], "--n-gpu-layers must be -1 (all) or >= 0"),
])
def test_bad_option_values_exit_2(tiny_args, args, needle):
    line = one_line_error(specli("run", *tiny_args, *args, "hello"), 2)
    assert needle in line


def test_missing_model_file_exit_1(tmp_path, tiny_draft):
    line = one_line_error(specli("run", "--target", tmp_path / "nope.gguf", "--draft", tiny_draft, "hi"), 1)
    assert "nope.gguf" in line


def test_not_a_gguf_exit_1(tmp_path, tiny_draft):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"this is not a model at all")
    line = one_line_error(specli("run", "--target", bad, "--draft", tiny_draft, "hi"), 1)
    assert "not a GGUF" in line and "model.gguf" in line


def test_missing_prompt_file_exit_2(tiny_args, tmp_path):
    line = one_line_error(specli("run", *tiny_args, "--file", tmp_path / "nope.txt"), 2)
    assert "nope.txt" in line


def test_draft_with_other_vocabulary_is_refused(tiny_target, tiny_draft_mismatch):
    line = one_line_error(specli("run", "--target", tiny_target, "--draft", tiny_draft_mismatch,
                                 "--threads", "1", "hi"), 1)
    assert "draft-mismatch.gguf" in line and "target.gguf" in line
    forced = specli("run", "--target", tiny_target, "--draft", tiny_draft_mismatch, "--threads", "1",
                    "--force", "-n", "4", "--temperature", "0", "hi")
    assert forced.returncode == 0 and "warning" in forced.stderr


def test_prompt_longer_than_context_exit_2(tiny_args):
    long = "The quick brown fox jumps over the lazy dog. " * 200
    line = one_line_error(specli("run", *tiny_args, long), 2)
    assert "context" in line


def test_hub_unreachable_nothing_cached(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    line = one_line_error(specli("run", "--target", "someorg/somerepo:model.gguf", "hi",
                                 env_extra=env), 1)
    assert "someorg/somerepo" in line and "model.gguf" in line


def test_help_has_examples_and_does_not_import_llama():
    r = specli("run", "--help")
    assert r.returncode == 0 and "Examples" in r.stdout
    code = ("import sys; from specli.cli import app; "
            "assert 'llama_cpp' not in sys.modules, 'help imported llama_cpp'")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    code = ("import sys, specli.core.engine; "
            "assert not {'rich', 'typer'} & set(sys.modules), 'engine imported UI modules'")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_ctrl_c_keeps_output_and_prints_stats(real_pair):
    """SIGINT mid-generation: exit 130, the text so far on stdout, stats on stderr.
    (The real pair: the tiny models finish within milliseconds.)"""
    import signal
    import time

    draft, target = real_pair
    env = {**os.environ, "NO_COLOR": "1"}
    p = subprocess.Popen([sys.executable, "-m", "specli", "run", "--target", str(target), "--draft",
                          str(draft), "--temperature", "0", "-n", "2000", "--ctx", "4096",
                          "Write a very long, detailed tutorial on sorting algorithms in Python."],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=default_sigint)
    # Wait until generation has visibly started, then interrupt.
    first = p.stdout.read(1)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert len(first + out) > 1
    assert "Traceback" not in err and "interrupted" in err and "tok/s" in err


def test_draft_option_accepts_a_drafter_name(tiny_target, tmp_path):
    """`--draft ngram` / `--draft auto` name a drafter (the issue's spelling), not a model."""
    from specli.session import split_draft_option

    assert split_draft_option("auto", "model") == (None, "auto")
    assert split_draft_option("NGRAM", "auto") == (None, "ngram")
    assert split_draft_option("ngram,auto", "model") == (None, "ngram,auto")
    assert split_draft_option("small.gguf", "auto") == ("small.gguf", "auto")
    assert split_draft_option(None, "model") == (None, "model")
    (tmp_path / "auto").write_bytes(b"")  # an existing file of that name stays a model path
    assert split_draft_option(str(tmp_path / "auto"), "ngram") == (str(tmp_path / "auto"), "ngram")

    args = ["--target", tiny_target, "--threads", "1", "--ctx", "512", "--json", "--temperature",
            "0", "-n", "24", "--raw"]
    r = specli("run", *args, "--draft", "ngram", "--k", "4", "a b c d a b c d a b c d a b")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["config"]["drafter"] == "ngram" and data["config"]["draft"] is None
    assert {x["drafter"] for x in data["rounds"]} <= {"ngram", "none"}
    base = specli("run", *args, "--k", "0", "a b c d a b c d a b c d a b")
    assert json.loads(base.stdout)["tokens"] == data["tokens"]
