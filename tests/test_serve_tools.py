"""Tool calls and structured output through `specli serve` and the official openai SDK.

The tiny models (random weights, a template that renders tools in Qwen2.5's Hermes form,
or in Llama 3.x's JSON form) cannot choose to call a tool, so here calls are forced
(tool_choice required or named: a grammar) and every answer is checked for shape and
validity. The real pair, which does choose, is driven in test_real_pair.py.
"""

from __future__ import annotations

import json

import pytest

from serveutil import request, sse_events
from test_serve import error_of, start

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["C", "F"]}}, "required": ["city", "unit"],
        "additionalProperties": False}}}
READ = {"type": "function", "function": {
    "name": "read_file", "parameters": {"type": "object", "properties": {
        "path": {"type": "string", "maxLength": 20}, "lines": {"type": "boolean"}},
        "required": ["path", "lines"], "additionalProperties": False}}}
TOOLS = [WEATHER, READ]
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                           "grade": {"enum": ["a", "b", "c"]},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["ok", "grade", "n"], "additionalProperties": False}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("serve-tools")


def serving(target, draft, workdir, name):
    """A server on the tiny pair under `target`'s template, stopped cleanly afterwards."""
    s = start(["--target", target, "--draft", draft, "--threads", "1"], workdir, name,
              "--ctx", "2048")
    yield s
    assert s.stop() == 0, s.log
    assert "Traceback" not in s.log, s.log


@pytest.fixture(scope="module")
def server(tiny_target_tools, tiny_draft, workdir):
    yield from serving(tiny_target_tools, tiny_draft, workdir, "tools")


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def schema_of(tool) -> dict:
    return tool["function"]["parameters"]


def valid_call(call, tools=TOOLS) -> dict:
    """The call's arguments, checked against its tool's schema."""
    tool = next(t for t in tools if t["function"]["name"] == call.function.name)
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, schema_of(tool))
    assert call.type == "function" and call.id.startswith("call_")
    return args


# --- structured output ------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 4])
def test_json_schema_replies_validate_and_streamed_equals_whole(client, k):
    """response_format json_schema at T = 1 on random weights: every reply parses and
    validates; streamed with the same seed, the deltas join to the same text."""
    fmt = {"type": "json_schema", "json_schema": {"name": "grade", "schema": SCHEMA, "strict": True}}
    for seed in range(4):
        kw = dict(model="m", messages=ASK, temperature=1.0, seed=seed, max_tokens=200,
                  response_format=fmt, extra_body={"speculative": {"k": k}})
        r = client.chat.completions.create(**kw)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
        text = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(**kw, stream=True) if c.choices)
        assert text == r.choices[0].message.content


def test_json_object_llama_server_fields_and_completions(client, server):
    """json_object gives an object (random weights write one endless key: cut by max_tokens,
    it is an object's start); llama-server's schema in response_format, and its json_schema
    and grammar body fields, work on chat and on /v1/completions."""
    r = client.chat.completions.create(model="m", messages=ASK, max_tokens=40, temperature=0,
                                       response_format={"type": "json_object"})
    text = r.choices[0].message.content
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    r = client.chat.completions.create(model="m", messages=ASK, max_tokens=200, temperature=0,
                                       response_format={"type": "json_object", "schema": SCHEMA})
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    for path, body in (("/v1/chat/completions", {"messages": ASK}),
                       ("/v1/completions", {"prompt": "The answer:"})):
        status, _, raw = request(server, "POST", path, {**body, "max_tokens": 200,
                                                        "json_schema": SCHEMA, "seed": 1})
        assert status == 200, raw
        out = json.loads(raw)["choices"][0]
        jsonschema.validate(json.loads(out.get("text") or out.get("message", {}).get("content")),
                            SCHEMA)
        status, _, raw = request(server, "POST", path, {**body, "max_tokens": 20,
                                                        "grammar": 'root ::= ("yes" | "no") "!"'})
        out = json.loads(raw)["choices"][0]
        assert (out.get("text") or out["message"]["content"]) in ("yes!", "no!")


def test_sdk_parse_with_a_pydantic_model(client):
    """chat.completions.parse sends the model's schema (strict) and parses the reply."""
    from typing import Literal

    from pydantic import BaseModel

    class Grade(BaseModel):
        ok: bool
        grade: Literal["a", "b", "c"]

    for seed in range(3):
        r = client.chat.completions.parse(model="m", messages=ASK, response_format=Grade,
                                          max_tokens=120, seed=seed)
        assert isinstance(r.choices[0].message.parsed, Grade)


# --- tool calls -------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 4])
def test_required_tool_calls_validate_and_stream_the_same(client, k):
    """tool_choice required: a call (or several) whose arguments validate against the tool's
    schema, finish_reason tool_calls; streamed through the SDK's accumulator with the same
    seed, the same calls (names and argument text)."""
    for seed in range(3):
        kw = dict(model="m", messages=ASK, tools=TOOLS, tool_choice="required", temperature=1.0,
                  seed=seed, max_tokens=300, extra_body={"speculative": {"k": k}},
                  parallel_tool_calls=seed != 0)  # random weights: parallel calls may run long
        r = client.chat.completions.create(**kw)
        choice = r.choices[0]
        assert choice.message.tool_calls and choice.message.content is None
        if seed == 0:
            assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        complete = (choice.message.tool_calls if choice.finish_reason == "tool_calls"
                    else choice.message.tool_calls[:-1])  # cut by max_tokens: the last one
        assert choice.finish_reason in ("tool_calls", "length") and len(complete) <= 8
        for call in complete:
            valid_call(call)
        if choice.finish_reason == "length":
            continue  # the SDK's stream helper refuses a reply cut by max_tokens
        with client.chat.completions.stream(**kw) as stream:
            for _ in stream:
                pass
            final = stream.get_final_completion()
        got = [(c.function.name, c.function.arguments) for c in final.choices[0].message.tool_calls]
        assert got == [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
        assert final.choices[0].finish_reason == choice.finish_reason


def test_streamed_tool_call_deltas_have_openais_shape(server):
    """On the wire: the first delta of a call has index, id, type and name (arguments ""),
    then only index and argument fragments, which join to valid JSON."""
    status, _, raw = request(server, "POST", "/v1/chat/completions", {
        "messages": ASK, "tools": TOOLS, "tool_choice": "required", "stream": True,
        "max_tokens": 300, "seed": 2, "parallel_tool_calls": False})
    assert status == 200
    deltas = [json.loads(e)["choices"][0] for e in sse_events(raw)[:-1]]
    calls = [d["delta"]["tool_calls"][0] for d in deltas if d["delta"].get("tool_calls")]
    head, rest = calls[0], calls[1:]
    assert head["index"] == 0 and head["id"].startswith("call_") and head["type"] == "function"
    assert head["function"]["name"] in ("get_weather", "read_file")
    assert head["function"]["arguments"] == ""
    assert all(set(c) == {"index", "function"} and set(c["function"]) == {"arguments"}
               for c in rest)
    args = json.loads("".join(c["function"]["arguments"] for c in rest))
    jsonschema.validate(args, schema_of(WEATHER if head["function"]["name"] == "get_weather"
                                        else READ))
    assert deltas[-1]["finish_reason"] == "tool_calls"


def test_a_named_function_and_no_parallel_calls(client):
    for seed in range(3):
        r = client.chat.completions.create(
            model="m", messages=ASK, tools=TOOLS, seed=seed, max_tokens=300,
            tool_choice={"type": "function", "function": {"name": "read_file"}},
            parallel_tool_calls=False)
        calls = r.choices[0].message.tool_calls
        assert len(calls) == 1 and calls[0].function.name == "read_file"
        valid_call(calls[0])


def test_a_tool_round_trip(client):
    """call -> the tool's result -> the next turn: the history with the assistant's
    tool_calls and the tool message renders and is answered (auto: text or calls, 200)."""
    r = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS, max_tokens=300,
                                       tool_choice="required", temperature=0,
                                       parallel_tool_calls=False)
    assert r.choices[0].finish_reason == "tool_calls"
    msg = r.choices[0].message
    history = ASK + [msg.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": json.dumps({"temp": 21})}
        for c in msg.tool_calls]
    r2 = client.chat.completions.create(model="m", messages=history, tools=TOOLS,
                                        max_tokens=24, temperature=0)
    c2 = r2.choices[0]
    assert c2.finish_reason in ("stop", "length", "tool_calls")
    assert c2.message.content is not None or c2.message.tool_calls
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens


def test_auto_returns_text_when_the_model_writes_no_call(client):
    """tool_choice auto, unconstrained: the random model writes text; it comes back as
    content (never a 500), finish_reason stop or length."""
    r = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS, max_tokens=16,
                                       temperature=0)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason in ("stop", "length")


def test_tool_choice_none_renders_no_tools(client, server):
    """tool_choice none: the tools are left out of the prompt (fewer prompt tokens) and the
    reply is never parsed for calls."""
    kw = dict(model="m", messages=ASK, tools=TOOLS, max_tokens=4, temperature=0)
    with_tools = client.chat.completions.create(**kw)
    without = client.chat.completions.create(**{**kw, "tool_choice": "none"})
    assert without.usage.prompt_tokens < with_tools.usage.prompt_tokens
    assert without.choices[0].message.tool_calls is None


def test_a_grammar_this_vocabulary_cannot_build_is_a_400(server):
    status, err = error_of(*request(server, "POST", "/v1/chat/completions", {
        "messages": ASK, "json_schema": {"type": "object", "properties": {"a": {"type": "strin"}}}}
    )[::2])
    assert status == 400 and err["param"] == "json_schema" and "strin" in err["message"]


def test_json_echoes_spell_tool_results_as_json_strings_do():
    from specli.conversation import json_echoes

    msgs = [{"role": "user", "content": "old ask"}, {"role": "user", "content": 'say "hi"'},
            {"role": "tool", "tool_call_id": "c", "content": 'def f():\n    return "x"\n'}]
    assert json_echoes(msgs).split("\n") == ['def f():\\n    return \\"x\\"\\n', 'say \\"hi\\"']
    assert json_echoes([], prompt="a\tb") == "a\\tb"


def test_a_json_reply_drafts_from_the_escaped_context_without_claiming_a_prediction(client):
    """A tool result holding a file, and a forced call that copies it into a JSON string:
    the escaped copy is drafted from (timings prediction_draft_n), but usage reports no
    Predicted Outputs, which the request did not send."""
    body = "line one\n" * 6
    msgs = ASK + [{"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_1", "type": "function",
        "function": {"name": "read_file", "arguments": '{"path": "a", "lines": true}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": body}]
    r = client.chat.completions.create(model="m", messages=msgs, tools=TOOLS, tool_choice="required",
                                       max_tokens=60, extra_body={"speculative": {"k": 4,
                                                                                  "drafter": "ngram"}})
    assert r.model_extra["timings"].get("prediction_draft_n") is not None
    assert r.usage.completion_tokens_details is None


# --- tool calls on a Llama 3.x template ---------------------------------------------------------
@pytest.fixture(scope="module")
def llama3_server(tiny_target_llama3, tiny_draft, workdir):
    yield from serving(tiny_target_llama3, tiny_draft, workdir, "llama3")


@pytest.fixture(scope="module")
def llama3(llama3_server):
    return llama3_server.client()


READ_ONLY = {"type": "function", "function": {"name": "read_file"}}


@pytest.mark.parametrize("k", [0, 4])
def test_llama3_forced_calls_validate_and_stream_the_same(llama3, k):
    """Llama 3.x's form, tool_choice required or named at T = 1 on random weights: exactly
    one call (parallel calls allowed or not) whose arguments validate against its tool's
    schema, finish_reason tool_calls; streamed through the SDK's accumulator with the same
    seed, the same call (name and argument text)."""
    for seed in range(4):
        choice = "required" if seed % 2 == 0 else READ_ONLY
        kw = dict(model="m", messages=ASK, tools=TOOLS, tool_choice=choice, temperature=1.0,
                  seed=seed, max_tokens=400, extra_body={"speculative": {"k": k}},
                  parallel_tool_calls=seed < 2)
        out = llama3.chat.completions.create(**kw).choices[0]
        assert out.finish_reason == "tool_calls", out
        assert out.message.content is None and len(out.message.tool_calls) == 1
        call = out.message.tool_calls[0]
        valid_call(call)
        if choice != "required":
            assert call.function.name == "read_file"
        with llama3.chat.completions.stream(**kw) as stream:
            for _ in stream:
                pass
            final = stream.get_final_completion()
        got = [(c.function.name, c.function.arguments) for c in final.choices[0].message.tool_calls]
        assert got == [(call.function.name, call.function.arguments)]
        assert final.choices[0].finish_reason == "tool_calls"


def test_llama3_streamed_call_has_openais_shape(llama3_server):
    """On the wire: the call's head (index, id, type, name, arguments "") then its arguments,
    which are valid JSON for the tool; no content; finish_reason tool_calls."""
    status, _, raw = request(llama3_server, "POST", "/v1/chat/completions", {
        "messages": ASK, "tools": TOOLS, "tool_choice": "required", "stream": True,
        "max_tokens": 400, "seed": 3})
    assert status == 200
    deltas = [json.loads(e)["choices"][0] for e in sse_events(raw)[:-1]]
    assert not any(d["delta"].get("content") for d in deltas)
    calls = [d["delta"]["tool_calls"][0] for d in deltas if d["delta"].get("tool_calls")]
    head, rest = calls[0], calls[1:]
    assert head["index"] == 0 and head["id"].startswith("call_") and head["type"] == "function"
    assert head["function"]["arguments"] == "" and rest and all(c["index"] == 0 for c in rest)
    args = json.loads("".join(c["function"]["arguments"] for c in rest))
    jsonschema.validate(args, schema_of(WEATHER if head["function"]["name"] == "get_weather"
                                        else READ))
    assert deltas[-1]["finish_reason"] == "tool_calls"


def test_llama3_forced_call_round_trip(llama3):
    """A forced call, its result as a tool message, and the next turns: the template (one call
    per assistant turn, as Meta's) renders the history back, and a further forced call on it
    is again one valid call."""
    r = llama3.chat.completions.create(model="m", messages=ASK, tools=TOOLS, max_tokens=400,
                                       tool_choice="required", temperature=0)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and len(msg.tool_calls) == 1
    history = ASK + [msg.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": json.dumps({"temp": 21})}]
    r2 = llama3.chat.completions.create(model="m", messages=history, tools=TOOLS, max_tokens=16,
                                        temperature=0)
    assert r2.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens
    r3 = llama3.chat.completions.create(model="m", messages=history, tools=TOOLS, max_tokens=400,
                                        tool_choice=READ_ONLY, temperature=0)
    assert r3.choices[0].finish_reason == "tool_calls"
    (call,) = r3.choices[0].message.tool_calls
    assert call.function.name == "read_file"
    valid_call(call)
