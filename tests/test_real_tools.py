"""Tool calls and structured output on the real pair (Qwen2.5-Coder 1.5B, 0.5B draft),
through `specli serve`: the official openai SDK, and `llm` (Simon Willison's CLI, from
PyPI), an assistant no one here wrote, run through a step that calls a tool.

Skipped without the pair (../shared/models/fetch-test-pair puts it in the HF cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_serve import start

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

pytestmark = pytest.mark.real

READ_FILE = {"type": "function", "function": {
    "name": "read_file", "description": "Read a text file of the project and return its content.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                   "required": ["path"], "additionalProperties": False}}}
AGENT = "You are a coding assistant. Use the tools to look at files before answering."
NOTES = "TODO: rename fetch_rows to load_rows in db.py, then run the tests."
ASK = [{"role": "system", "content": AGENT},
       {"role": "user", "content": "What does notes.txt say? Read it."}]
PERSON = {"type": "object", "properties": {
    "name": {"type": "string"}, "born": {"type": "integer"},
    "fields": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "born", "fields"], "additionalProperties": False}
EXTRACT = ("Extract the person as JSON (name, born, fields): Ada Lovelace was born in 1815 "
           "and worked on mathematics and the Analytical Engine.")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("real-tools")


@pytest.fixture(scope="module")
def server(real_pair, workdir):
    draft, target = real_pair
    s = start(["--target", target, "--draft", draft], workdir, "real", "--ctx", "4096")
    yield s
    assert s.stop() == 0, s.log
    assert "Traceback" not in s.log, s.log


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def test_sdk_tool_round_trip_and_stream_accumulator(client):
    """auto: the model calls read_file on notes.txt (Qwen2.5-Coder 1.5B writes it as a
    fenced JSON object, not a <tool_call> block: parsed as a call, as llama.cpp does);
    streamed through the SDK's accumulator, the same call; with the tool's result the
    next turn uses it: an answer about it, or a call reading the file it names."""
    kw = dict(model="m", messages=ASK, tools=[READ_FILE], temperature=0, max_tokens=64)
    r = client.chat.completions.create(**kw)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    (call,) = choice.message.tool_calls
    assert call.function.name == "read_file"
    assert json.loads(call.function.arguments)["path"].endswith("notes.txt")
    with client.chat.completions.stream(**kw) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    (streamed,) = final.choices[0].message.tool_calls
    assert (streamed.function.name, streamed.function.arguments) == (
        call.function.name, call.function.arguments)
    history = ASK + [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": NOTES}]
    r2 = client.chat.completions.create(**{**kw, "messages": history, "max_tokens": 80})
    c2 = r2.choices[0]
    if c2.finish_reason == "tool_calls":  # an agent's next step: the file the notes name
        (nxt,) = c2.message.tool_calls
        assert json.loads(nxt.function.arguments)["path"].endswith("db.py")
    else:
        answer = c2.message.content
        assert "fetch_rows" in answer or "load_rows" in answer or "rename" in answer.lower()


def test_required_and_named_calls_validate(client):
    """tool_choice required / named: a call whose arguments validate, even where the
    model would have answered in text."""
    other = {"type": "function", "function": {"name": "list_dir", "parameters": {
        "type": "object", "properties": {"dir": {"type": "string"}}, "required": ["dir"]}}}
    for choice in ("required", {"type": "function", "function": {"name": "list_dir"}}):
        r = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Hello!"}], temperature=0,
            tools=[READ_FILE, other], tool_choice=choice, parallel_tool_calls=False,
            max_tokens=64)
        (call,) = r.choices[0].message.tool_calls
        tool = READ_FILE if call.function.name == "read_file" else other
        jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])
        if isinstance(choice, dict):
            assert call.function.name == "list_dir"


def test_sdk_parse_with_a_pydantic_model(client):
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        born: int
        fields: list[str]

    r = client.chat.completions.parse(model="m", messages=[{"role": "user", "content": EXTRACT}],
                                      response_format=Person, temperature=0, max_tokens=80)
    person = r.choices[0].message.parsed
    assert person.name == "Ada Lovelace" and person.born == 1815


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_schema_output_validates_and_strict_speculation_equals_k0(client, temperature):
    """Under a JSON schema: K = 0, and K = 4 or auto with --strict (the hybrid drafter),
    give the same greedy text; sampled, every reply validates."""
    def ask(spec, seed=0):
        r = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": EXTRACT}], temperature=temperature,
            seed=seed, max_tokens=96, extra_body={"speculative": spec},
            response_format={"type": "json_schema",
                             "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
        assert r.choices[0].finish_reason == "stop"
        return r.choices[0].message.content, r.model_extra["timings"]

    base, _ = ask({"k": 0})
    jsonschema.validate(json.loads(base), PERSON)
    if temperature == 0:
        for k in (4, "auto"):  # --k auto may find no draft worth its cost here: 4 drafts
            spec, t = ask({"k": k, "strict": True, "drafter": "auto"})
            assert spec == base and (t["draft_n"] > 0 or k == "auto")
    else:
        for seed in range(3):
            jsonschema.validate(json.loads(ask({"k": "auto"}, seed)[0]), PERSON)


def test_llm_cli_calls_a_tool_through_specli(server, tmp_path):
    """`llm` (pip install llm), pointed at specli serve as an OpenAI-compatible model with
    tools, runs a chain: the model calls our function, llm runs it and sends its result
    back, and the model answers (what it answers is the 1.5B model's business: it has
    echoed the call's JSON; the step through the tool is what is checked)."""
    exe = shutil.which("llm") or str(Path(sys.executable).with_name("llm"))
    if not Path(exe).exists():
        pytest.skip("llm is not installed (pip install -e '.[test]' installs it)")
    home = tmp_path / "llm"
    home.mkdir()
    (home / "extra-openai-models.yaml").write_text(
        f"- model_id: specli\n  model_name: qwen\n  api_base: \"{server.url}/v1\"\n"
        "  supports_tools: true\n")
    functions = tmp_path / "tools.py"
    marker = tmp_path / "called.txt"
    functions.write_text(
        "def get_weather(city: str) -> str:\n"
        "    \"\"\"The current weather in a city.\"\"\"\n"
        f"    open({str(marker)!r}, 'a').write(city + '\\n')\n"
        "    return city + ': 21 C, sunny'\n")
    env = {**os.environ, "LLM_USER_PATH": str(home), "OPENAI_API_KEY": "none"}
    before = server.log.count("finish ")
    r = subprocess.run([exe, "-m", "specli", "--td", "--functions", str(functions), "-o",
                        "temperature", "0", "What is the weather in Paris right now?"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert marker.exists() and "Paris" in marker.read_text()  # llm ran the call we parsed
    assert "Tool call: get_weather" in r.stdout + r.stderr
    log = server.log
    assert log.count("finish ") - before >= 2 and "finish tool_calls" in log  # result sent back
