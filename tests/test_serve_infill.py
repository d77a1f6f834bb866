"""`POST /infill` (llama-server's, for editor plugins) and `/v1/completions` with a suffix,
through a real `specli serve` on the tiny FIM pair: the request shapes llama.vscode and
llama.vim send (bodies copied from their sources), cache reuse across typing, a newer
request cancelling the older, and exactness (greedy vs K = 0, chi-square at T = 1)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest

from serveutil import request, sse_events
from test_engine import chi_square, exact_two_token_distribution
from test_serve import error_of, start

PREFIX = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(6))
SUFFIX = "\n\nprint(f1(2))\nprint(f2(3))\n"
EXTRA = [{"text": "def g(y):\n    return y * 2\n", "time": 1723456789012, "filename": "/src/g.py"},
         {"text": "import os\nimport sys\n", "time": 1723456789013, "filename": "/src/h.py"}]

# llama.vscode's body (src/llama-server.ts, createRequestPayload), n_cmpl as a user sets it
# for a one-slot server (its default 3 is answered below too).
VSCODE = {"id_slot": 0, "input_prefix": PREFIX, "input_suffix": SUFFIX, "input_extra": EXTRA,
          "prompt": "def f6(x):", "n_predict": 24, "n_cmpl": 1, "top_k": 40, "top_p": 0.99,
          "stream": False, "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True,
          "n_indent": 0, "t_max_prompt_ms": 500, "t_max_predict_ms": 500}
# llama.vim's (autoload/llama.vim, llama#fim), with its response_fields.
VIM_FIELDS = ["content", "timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_token_ms",
              "timings/prompt_per_second", "timings/predicted_n", "timings/predicted_ms",
              "timings/predicted_per_token_ms", "timings/predicted_per_second", "truncated",
              "tokens_cached"]
VIM = {"id_slot": 0, "input_prefix": PREFIX, "input_suffix": SUFFIX,
       "input_extra": [{"text": c["text"], "time": [1723, 456789], "filename": "g.py"}
                       for c in EXTRA],
       "prompt": "def f6(x):", "n_predict": 24, "stop": [], "n_indent": 0, "top_k": 40,
       "top_p": 0.90, "samplers": ["top_k", "top_p", "infill"], "stream": False,
       "cache_prompt": True, "t_max_prompt_ms": 500, "t_max_predict_ms": 250,
       "response_fields": VIM_FIELDS, "model": ""}
VIM_WARMUP = {"id_slot": 0, "input_prefix": "", "input_suffix": "", "input_extra": VIM["input_extra"],
              "prompt": "", "n_predict": 0, "temperature": 0.0, "samplers": [], "stream": False,
              "cache_prompt": True, "t_max_prompt_ms": 1, "t_max_predict_ms": 1,
              "response_fields": [""], "model": ""}
GREEDY = {"temperature": 0, "n_predict": 24, "samplers": ["temperature"]}  # as llama-server reads it


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("serve-infill")


@pytest.fixture(scope="module")
def server(tiny_target_fim, tiny_draft_fim, workdir):
    s = start(["--target", tiny_target_fim, "--draft", tiny_draft_fim, "--threads", "1"],
              workdir, "fim", "--ctx", "2048")
    yield s
    assert s.stop() == 0, s.log
    assert "Traceback" not in s.log, s.log


def infill(server, body, headers=None):
    status, _, raw = request(server, "POST", "/infill", body, headers=headers)
    assert status == 200, raw
    return raw


def test_llama_vscode_request_gets_llama_servers_answer(server):
    raw = infill(server, VSCODE)
    body = json.loads(raw)
    assert b"\n" not in raw  # one line, compact
    assert isinstance(body["content"], str) and body["stop"] is True
    assert body["stop_type"] in ("eos", "limit", "word")
    assert body["tokens_predicted"] <= 24 and body["tokens_evaluated"] > 50
    assert body["generation_settings"]["n_ctx"] == 2048
    bare = json.loads(infill(server, {**VSCODE, "samplers": []}))["generation_settings"]
    assert (bare["top_k"], bare["top_p"], bare["min_p"], bare["temperature"]) == (0, 1.0, 0.0, 1.0)
    settings = body["generation_settings"]
    assert settings["infill_sampler"] is True and settings["samplers_not_applied"] == []
    assert settings["min_p"] == 0.0 and settings["temperature"] == 1.0  # not listed: off
    for key in ("prompt_n", "prompt_ms", "prompt_per_second", "predicted_n", "predicted_ms",
                "predicted_per_second"):
        assert key in body["timings"]
    assert body["tokens_cached"] >= body["tokens_evaluated"]
    assert body["prompt"].startswith("<|repo_name|>myproject\n<|file_sep|>/src/g.py\n")
    assert body["prompt"].endswith("<|fim_suffix|>" + SUFFIX + "<|fim_middle|>")


def test_llama_vim_request_and_warm_up(server):
    """llama.vim: the flattened response_fields only, `"content":"` written compactly (it
    greps for it), `Authorization: Bearer ` with an empty key; its warm-up answers {}."""
    auth = {"Authorization": "Bearer "}
    assert json.loads(infill(server, VIM_WARMUP, auth)) == {}
    raw = infill(server, VIM, auth)
    assert b'"content":"' in raw and b"\n" not in raw
    body = json.loads(raw)
    assert list(body) == VIM_FIELDS
    # The warm-up put the chunks in the cache: this prompt evaluated only what follows them.
    assert 0 < body["timings/prompt_n"] < body["tokens_cached"] - 40


def test_typing_reuses_the_cache(server):
    """Five requests as a debounce sends them (the line typed grows): after the first,
    only the typed part and the suffix after it are evaluated, not the file above."""
    line = "def f6(x):\n    return x"
    evaluated = []
    for n in (8, 10, 13, 17, 21):
        body = json.loads(infill(server, {**VSCODE, **GREEDY, "prompt": line[:n]}))
        evaluated.append((body["timings"]["prompt_n"], body["tokens_evaluated"]))
    first = evaluated[0][1]
    for n_eval, n_prompt in evaluated[1:]:
        assert n_eval < n_prompt - 80 and n_prompt >= first - 2, evaluated


@pytest.mark.parametrize("spec", [{"k": 4, "drafter": "model"}, {"k": 4, "drafter": "ngram"},
                                  {"k": "auto", "drafter": "auto"}])
def test_greedy_infill_equals_the_target_alone(server, spec):
    base = json.loads(infill(server, {**VSCODE, **GREEDY, "n_predict": 40,
                                      "speculative": {"k": 0, "strict": True},
                                      "return_tokens": True}))
    got = json.loads(infill(server, {**VSCODE, **GREEDY, "n_predict": 40,
                                     "speculative": {**spec, "strict": True},
                                     "return_tokens": True}))
    assert got["tokens"] == base["tokens"] and got["content"] == base["content"]
    assert len(base["tokens"]) > 5


@pytest.mark.parametrize("drafter, samplers", [("model", ["top_k"]), ("ngram", ["top_k"]),
                                               ("model", ["top_k", "infill"])])
def test_sampled_infill_follows_the_target_distribution(server, tiny_target_fim, drafter,
                                                        samplers):
    """At T = 1, K = 3, the first two tokens of 600 seeded /infill answers follow the
    target's exact joint on the FIM prompt (chi-square; fixed seeds: it cannot flake),
    with llama.cpp's infill sampler too (as the plugins ask for it)."""
    from specli.config import SamplingConfig
    from specli.core.sampling import InfillVocab
    from specli.fim import infill_tokens
    from specli.llama.backend import LlamaModel

    body = {**VSCODE, "input_extra": [], "prompt": "", "input_prefix": "a = 1\nb = a\nc = a",
            "input_suffix": "\nd = a\nb = a\n", "samplers": samplers, "top_k": 6,
            "n_predict": 2, "return_tokens": True,
            "speculative": {"k": 3, "drafter": drafter}}
    target = LlamaModel(tiny_target_fim, n_ctx=512, n_threads=1)
    try:
        prompt = infill_tokens(target, body["input_prefix"], body["input_suffix"],
                               n_ctx=2048).tokens  # the server's --ctx
        cfg = SamplingConfig(temperature=1.0, top_k=6, top_p=1.0, min_p=0.0,
                             infill=InfillVocab(target) if "infill" in samplers else None)
        joint = exact_two_token_distribution(target, prompt, cfg)
        if "infill" in samplers:
            plain = exact_two_token_distribution(target, prompt, SamplingConfig(
                temperature=1.0, top_k=6, top_p=1.0, min_p=0.0))
            assert len(joint) < len(plain)  # the sampler changes the distribution
    finally:
        target.close()
    n = 600
    counts = Counter(tuple(json.loads(infill(server, {**body, "seed": s}))["tokens"][:2])
                     for s in range(n))
    assert set(counts) <= set(joint)
    chi2, crit, dof = chi_square(counts, joint, n)
    assert chi2 < crit, f"chi2={chi2:.1f} >= {crit:.1f} (dof={dof})"


def test_several_completions_and_their_limit(server):
    body = json.loads(infill(server, {**VSCODE, "n_cmpl": 3, "n_predict": 6}))
    assert isinstance(body, list) and [b["index"] for b in body] == [0, 1, 2]
    greedy = json.loads(infill(server, {**VSCODE, **GREEDY, "n_cmpl": 2}))
    assert greedy[0]["content"] == greedy[1]["content"]
    also = json.loads(infill(server, {**VSCODE, **GREEDY, "n_cmpl": None, "n": 2}))
    assert isinstance(also, list) and len(also) == 2  # llama-server reads n as n_cmpl
    status, err = error_of(*request(server, "POST", "/infill", {**VSCODE, "n_cmpl": 9})[::2])
    assert status == 400  # llama.vscode recognises this message and tells the user
    assert err["message"].startswith("Field 'n_cmpl': Value must be between")


def test_streamed_infill_is_llama_servers_native_stream(server):
    status, headers, raw = request(server, "POST", "/infill", {**VSCODE, **GREEDY, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [json.loads(e) for e in sse_events(raw)]
    assert events[-1]["stop"] is True and events[-1]["content"] == ""
    assert all(e["stop"] is False for e in events[:-1]) and "[DONE]" not in raw.decode()
    assert events[0]["tokens_evaluated"] == events[-1]["tokens_evaluated"] > 50
    whole = json.loads(infill(server, {**VSCODE, **GREEDY}))
    assert "".join(e["content"] for e in events[:-1]) == whole["content"]


@pytest.mark.parametrize("extra", [{}, [{}], [{"filename": "ok"}], [{"filename": 123, "text": "x"}],
                                   [{"text": 5}], "text"])
def test_malformed_input_extra_is_400(server, extra):
    status, err = error_of(*request(server, "POST", "/infill",
                                    {**VSCODE, "input_extra": extra})[::2])
    assert status == 400 and err["param"].startswith("input_extra")


@pytest.mark.parametrize("field, value", [("samplers", ["top_k", "mirostat9"]), ("n_probs", 3),
                                          ("samplers", ["top_p", "infill"]),
                                          ("lora", [{"id": 0, "scale": 1}]), ("n_predict", -5),
                                          ("n_indent", -1), ("input_prefix", [1.5])])
def test_fields_specli_cannot_honour_are_refused_by_name(server, field, value):
    status, err = error_of(*request(server, "POST", "/infill", {**VSCODE, field: value})[::2])
    assert status == 400 and err["param"].startswith(field), err


def test_completions_with_a_suffix_fill_in_the_middle(server):
    """OpenAI's `suffix` on /v1/completions: the same FIM prompt and text as /infill."""
    body = {"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 16, "temperature": 0}
    status, _, raw = request(server, "POST", "/v1/completions", body)
    assert status == 200, raw
    text = json.loads(raw)["choices"][0]["text"]
    same = json.loads(infill(server, {"input_prefix": PREFIX, "input_suffix": SUFFIX,
                                      "n_predict": 16, "temperature": 0}))
    assert text == same["content"]


def no_end() -> dict:
    """logit_bias keeping every end-of-generation token out: a generation as long as asked."""
    from tinymodels import EOT_TEXT, FIM_TOKENS, IM_END, fim_id, special_id

    ends = [special_id(EOT_TEXT), special_id(IM_END), *(fim_id(t) for t in FIM_TOKENS[3:])]
    return {str(t): -100 for t in ends}


def test_a_newer_request_from_the_same_client_cancels_the_older(server):
    """The first (streamed, long) answer ends with a `cancelled` error event as soon as
    the same client sends another; the second is answered, and reuses the cache."""
    import http.client

    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    conn.request("POST", "/infill", json.dumps({**VSCODE, **GREEDY, "n_predict": 1800, "stream": True,
                                                "logit_bias": no_end(), "speculative": {"k": 0}}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")  # it is generating
    second = json.loads(infill(server, {**VSCODE, **GREEDY, "prompt": "def f6(x):\n"}))
    events = [json.loads(e) for e in sse_events(resp.read())]
    conn.close()
    assert events[-1]["error"]["code"] == "cancelled", events[-1]
    assert "newer" in events[-1]["error"]["message"]
    assert sum(len(e.get("content", "")) for e in events) < 1800  # stopped early
    assert second["timings"]["prompt_n"] < second["tokens_evaluated"] - 80


def test_typing_the_last_suggestion_drafts_the_rest_of_it(server):
    """The user types the first characters the last answer suggested: the next answer
    is drafted from the rest of that suggestion, and is still the target's own text.
    (Random weights do not go on with the rest of their own suggestion the way a code
    model does, so how much is accepted is checked on the real pair.)"""
    first = json.loads(infill(server, {**VSCODE, **GREEDY, "n_predict": 30,
                                       "logit_bias": no_end(), "prompt": "def f7(x):"}))
    typed = first["content"][:4]
    body = {**VSCODE, **GREEDY, "n_predict": 26, "logit_bias": no_end(),
            "prompt": "def f7(x):" + typed, "speculative": {"k": 4, "drafter": "ngram"}}
    second = json.loads(infill(server, body))
    t = second["timings"]
    assert t["prediction_draft_n"] >= 4, t
    alone = json.loads(infill(server, {**body, "speculative": {"k": 0}}))
    assert second["content"] == alone["content"]


def test_a_warm_up_does_not_cancel_a_completion(server):
    done: dict = {}

    def completion():
        # no time limit: VSCODE's 500 ms t_max_predict_ms cut it at 992 tokens on a busy CI
        done["body"] = json.loads(infill(server, {**VSCODE, **GREEDY, "n_predict": 1500,
                                                  "t_max_predict_ms": 0,
                                                  "logit_bias": no_end(),
                                                  "speculative": {"k": 0}}))

    t = threading.Thread(target=completion)
    t.start()
    time.sleep(0.1)
    assert json.loads(infill(server, VIM_WARMUP)) == {}
    t.join(30)
    assert done["body"]["stop"] is True and done["body"]["tokens_predicted"] == 1500


def test_a_model_without_fim_tokens_gets_a_clear_400(tiny_target, tiny_draft, workdir):
    s = start(["--target", tiny_target, "--draft", tiny_draft, "--threads", "1"], workdir,
              "nofim", "--ctx", "512")
    try:
        status, err = error_of(*request(s, "POST", "/infill", VSCODE)[::2])
        assert status == 400 and err["code"] == "fim_not_supported"
        assert "fill-in-the-middle is not supported by this model" in err["message"]
        status, err = error_of(*request(s, "POST", "/v1/completions",
                                        {"prompt": "a", "suffix": "b"})[::2])
        assert status == 400 and err["param"] == "suffix"
    finally:
        assert s.stop() == 0
