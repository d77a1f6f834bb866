"""Fill-in-the-middle on the real pair (Qwen2.5-Coder 1.5B, 0.5B draft): requests shaped
as llama.vscode and llama.vim send them to `specli serve`'s /infill, a typing sequence,
greedy equality with the target alone, and `specli complete` from the terminal.
Skipped without the pair (../shared/models/fetch-test-pair puts it in the HF cache).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from serveutil import request
from test_serve import start
from test_serve_infill import VIM_FIELDS

pytestmark = pytest.mark.real

UTILS = "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))\n"
PREFIX = ("import math\n\n\ndef mean(xs):\n    return sum(xs) / len(xs)\n\n\n"
          "def variance(xs):\n    m = mean(xs)\n")
LINE = "    return sum((x - m) ** 2 for x in xs) / len(xs)"
SUFFIX = "\n\n\ndef stdev(xs):\n    return math.sqrt(variance(xs))\n"


def body(prompt: str, greedy: bool = True, **kw) -> dict:
    """llama.vscode's body (src/llama-server.ts); greedy (its samplers with "temperature"
    and temperature 0: as llama-server reads them) so that texts compare."""
    b = {"id_slot": 0, "input_prefix": PREFIX, "input_suffix": SUFFIX,
         "input_extra": [{"text": UTILS, "time": 1723456789012, "filename": "utils.py"}],
         "prompt": prompt, "n_predict": 48, "n_cmpl": 1, "top_k": 40, "top_p": 0.99,
         "stream": False, "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True,
         "n_indent": 4, "t_max_prompt_ms": 500, "t_max_predict_ms": 500}
    if greedy:
        b.update({"samplers": ["top_k", "top_p", "infill", "temperature"], "temperature": 0,
                  "t_max_predict_ms": 0})
    return {**b, **kw}


@pytest.fixture(scope="module")
def server(real_pair, tmp_path_factory):
    draft, target = real_pair
    s = start(["--target", target, "--draft", draft], tmp_path_factory.mktemp("real-infill"),
              "real", "--ctx", "4096")
    yield s
    assert s.stop() == 0, s.log
    assert "Traceback" not in s.log, s.log


def infill(server, b) -> dict:
    status, _, raw = request(server, "POST", "/infill", b)
    assert status == 200, raw
    return json.loads(raw)


def test_typing_in_a_function_body_completes_it(server):
    """Five requests as the line is typed: each completes the line sensibly, stops at the
    block's end (n_indent), and evaluates only what changed after the first."""
    out = []
    for n in (8, 11, 14, 17, 20):
        out.append(infill(server, body(LINE[:n])))
    for got, n in zip(out, (8, 11, 14, 17, 20)):
        text = LINE[:n] + got["content"]
        assert "x - m" in text and "len(xs)" in text, got["content"]
        assert "def stdev" not in got["content"]  # it stopped where the suffix goes on
    for got in out[1:]:
        assert got["timings"]["prompt_n"] < got["tokens_evaluated"] / 2, got["timings"]


def test_llama_vscode_default_sampling_completes_sensibly(server):
    """Exactly what the plugin sends (T = 1 through top_k 40, top_p 0.99 and llama.cpp's
    infill sampler, as llama-server reads it): a sensible line, several seeds."""
    for seed in range(3):
        got = infill(server, body(LINE[:14], greedy=False, seed=seed))
        assert "m" in got["content"] and "len(xs)" in LINE[:14] + got["content"], got["content"]
        assert got["generation_settings"]["infill_sampler"] is True


def test_typing_what_was_suggested_is_drafted_from_the_suggestion(server):
    first = infill(server, body("    result = [x for x in", input_suffix="\n", n_indent=0,
                                n_predict=24))
    typed = first["content"][:6]
    second = infill(server, body("    result = [x for x in" + typed, input_suffix="\n",
                                 n_indent=0, n_predict=18, speculative={"k": 4, "drafter": "ngram"}))
    t = second["timings"]
    assert second["content"] == first["content"][6:][: len(second["content"])], (first, second)
    assert t["prediction_draft_n_accepted"] >= 8, t


def test_llama_vim_shape_and_greedy_equality_with_the_target_alone(server):
    vim = {k: v for k, v in body(LINE[:12]).items() if k != "n_cmpl"}
    vim.update({"input_extra": [{"text": UTILS, "time": [1723, 456789], "filename": "utils.py"}],
                "stop": [], "top_p": 0.90, "t_max_predict_ms": 250, "model": "",
                "response_fields": VIM_FIELDS})
    got = infill(server, vim)
    assert list(got) == VIM_FIELDS and got["content"]
    base = infill(server, body(LINE[:12], speculative={"k": 0, "strict": True},
                               return_tokens=True))
    for spec in ({"k": "auto"}, {"k": 3, "drafter": "model"}):
        fast = infill(server, body(LINE[:12], speculative={**spec, "strict": True},
                                   return_tokens=True))
        assert fast["tokens"] == base["tokens"] and fast["content"] == base["content"]


def test_specli_complete_from_the_terminal(real_pair, tmp_path):
    draft, target = real_pair
    src = tmp_path / "stats.py"
    src.write_text(PREFIX + LINE[:12] + SUFFIX)
    (tmp_path / "utils.py").write_text(UTILS)
    proc = subprocess.run(
        [sys.executable, "-m", "specli", "complete", str(src), "--at", f"{PREFIX.count(chr(10)) + 1}:13",
         "--extra", str(tmp_path / "utils.py"), "--target", str(target), "--draft", str(draft),
         "--temperature", "0", "--json"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert "x - m" in LINE[:12] + got["text"] and got["stats"]["new_tokens"] > 0
