"""specli.toolcalls: parsing, streaming, templating and forcing OpenAI tool calls."""

from __future__ import annotations

import json
import random
import re

import pytest
from hypothesis import given, strategies as st

from specli.toolcalls import (
    Arguments, CallStart, CallStream, Content, ToolCall, check_tools, grammar, parse,
    template_messages, tools_format,
)
from test_engine import models  # noqa: F401  (the tiny byte-level target and draft)
from tinymodels import CHATML_TEMPLATE, LLAMA3_TOOLS_TEMPLATE

# llguidance.llamacpp builds its tokenizer with llama-cpp-python's deprecated per-token call.
pytestmark = pytest.mark.filterwarnings("ignore:llama_token_get_attr is deprecated:DeprecationWarning")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "now"}}  # no parameters schema
TOOLS = [WEATHER, TIME]


def block(name: str, args: str, *, lead: str = "\n", trail: str = "\n", close: bool = True) -> str:
    return f'<tool_call>{lead}{{"name": {json.dumps(name)}, "arguments": {args}}}{trail}' + (
        "</tool_call>" if close else ""
    )


# --- parse: hermes ----------------------------------------------------------------------------


def test_one_call_after_text_keeps_the_arguments_text_as_written():
    args = '{"city":"Paris",  "unit": "c"}'
    content, calls = parse("Let me look that up.\n" + block("get_weather", args))
    assert content == "Let me look that up."
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", args)]
    assert re.fullmatch(r"call_[0-9a-f]{24}", calls[0].id)


def test_parallel_calls_only_give_no_content_and_distinct_ids():
    text = block("get_weather", '{"city": "Paris"}') + "\n" + block("now", "{}") + "\n"
    content, calls = parse(text)
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("now", {})]
    assert calls[0].id != calls[1].id


def test_content_is_all_text_outside_the_blocks_stripped():
    text = "  A\n" + block("now", "{}") + "\nB  </tool_call> \n" + block("now", "{}") + "\n\n"
    content, calls = parse(text)
    assert content == "A\n\nB  </tool_call>"  # a stray closing tag outside a block is text
    assert len(calls) == 2


@pytest.mark.parametrize("lead,trail", [("", ""), (" ", "  "), ("\n\n ", "\n \t"), ("\r\n", "\r\n")])
def test_whitespace_around_the_object_is_tolerated(lead, trail):
    _, calls = parse(block("now", '{"a": 1}', lead=lead, trail=trail))
    assert [c.arguments for c in calls] == ['{"a": 1}']


def test_a_closing_tag_inside_a_string_argument_does_not_end_the_block():
    args = json.dumps({"code": "print('</tool_call>')  # }"})
    _, calls = parse(block("run", args))
    assert calls[0].arguments == args


def test_a_reply_ending_after_the_object_without_the_closing_tag_is_a_call():
    content, calls = parse("Sure. " + block("now", '{"x": [1, 2]}', close=False))
    assert content == "Sure."
    assert [c.arguments for c in calls] == ['{"x": [1, 2]}']


def test_extra_keys_in_the_call_object_are_ignored():
    _, calls = parse('<tool_call>\n{"name": "now", "arguments": {}, "id": 3}\n</tool_call>')
    assert [(c.name, c.arguments) for c in calls] == [("now", "{}")]


def test_arguments_first_is_still_a_call():
    _, calls = parse('<tool_call>\n{"arguments": {"a": 1}, "name": "now"}\n</tool_call>')
    assert [(c.name, c.arguments) for c in calls] == [("now", '{"a": 1}')]


MALFORMED = [
    "<tool_call>\nnot json\n</tool_call>",
    '<tool_call>\n{"name": "now", "arguments": {"a": tru}}\n</tool_call>',
    '<tool_call>\n{"arguments": {}}\n</tool_call>',
    '<tool_call>\n{"name": "", "arguments": {}}\n</tool_call>',
    '<tool_call>\n{"name": 7, "arguments": {}}\n</tool_call>',
    '<tool_call>\n{"name": "now", "arguments": [1]}\n</tool_call>',
    '<tool_call>\n{"name": "now", "arguments": "{\\"a\\": 1}"}\n</tool_call>',
    '<tool_call>\n{"name": "now"}\n</tool_call>',
    '<tool_call>\n{"name": "now", "arguments": {}, "name": "x"}\n</tool_call>',
    '<tool_call>\n{"name": "now", "arguments": {}} and more\n</tool_call>',
    '<tool_call>\n{"name": "now", "arguments": {"a": 1}',
    '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_',
    "<tool_call>",
    "Use <tool_call> tags\n",
    "<tool_call>\n" + "[" * 100_000,
]


@pytest.mark.parametrize("bad", MALFORMED)
def test_a_block_that_is_not_a_call_makes_the_whole_reply_text(bad):
    text = "Intro. " + block("now", "{}") + "\n" + bad
    assert parse(text) == (text.strip(), [])
    assert parse(bad) == (bad.strip(), [])


@pytest.mark.parametrize("text,content", [("", None), ("  \n", None), (" plain reply \n", "plain reply")])
def test_no_blocks_is_plain_content(text, content):
    assert parse(text) == (content, [])


@given(st.text(alphabet=st.sampled_from('<tool_cal>/{}[]":, \n\\abc'), max_size=80))
def test_parse_never_raises(text):
    for fmt in ("hermes", "llama3"):
        content, calls = parse(text, fmt)
        assert content is None or isinstance(content, str)
        assert all(isinstance(c, ToolCall) for c in calls)


# --- parse: llama3 ----------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', [("get_weather", '{"city": "Paris"}')]),
    ('<|python_tag|>{"name": "now", "parameters": {}}', [("now", "{}")]),
    ('{"name": "now", "arguments": {"a": 1}}', [("now", '{"a": 1}')]),
    ('{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": 2}}\n'
     '{"name": "c", "parameters": {}};',
     [("a", "{}"), ("b", '{"x": 2}'), ("c", "{}")]),
    ('\n {"name": "now", "parameters": {}} \n', [("now", "{}")]),
])
def test_llama3_calls(text, expected):
    content, calls = parse(text, "llama3")
    assert content is None
    assert [(c.name, c.arguments) for c in calls] == expected


@pytest.mark.parametrize("text", [
    "The weather in Paris is sunny.",
    '{"name": "now"}',
    '{"name": "now", "parameters": [1]}',
    '{"name": "now", "parameters": {}, "arguments": {}}',
    '{"name": "now", "parameters": {}} and then some text',
    '{"name": "now", "parameters": {',
    '<|python_tag|>brave_search.call(query="x")',
])
def test_llama3_non_calls_are_text(text):
    assert parse(text, "llama3") == (text.strip(), [])


# --- CallStream -------------------------------------------------------------------------------


def run_stream(pieces):
    """Feed pieces; return (content, [(index, name)], {index: arguments}, stream, events)."""
    s, events = CallStream(), []
    for p in pieces:
        events += s.feed(p)
    events += s.close()
    content = "".join(e.text for e in events if isinstance(e, Content))
    starts = [e for e in events if isinstance(e, CallStart)]
    args: dict[int, str] = {}
    for e in events:
        if isinstance(e, Arguments):
            assert e.index in {c.index for c in starts}, "arguments before their CallStart"
            args[e.index] = args.get(e.index, "") + e.fragment
    assert [c.index for c in starts] == list(range(len(starts)))
    assert [(c.id, c.name, args.get(c.index, "")) for c in starts] == [
        (c.id, c.name, c.arguments) for c in s.calls]
    return content, [c.name for c in starts], [args.get(c.index, "") for c in starts], s, events


def assert_stream_equals_parse(text, pieces):
    content, calls = parse(text)
    assert calls, "the reply is meant to parse with calls"
    got_content, names, args, *_ = run_stream(pieces)
    assert got_content == (content or "")
    assert names == [c.name for c in calls]
    assert args == [c.arguments for c in calls]


SAMPLES = [
    "Let me check.\n" + block("get_weather", '{"city": "Paris </tool_call> }", "unit": "c"}'),
    block("get_weather", '{"city":"Rome"}') + "\n" + block("now", "{}") + "\n",
    " A <tool\n" + block("now", '{ "x" : [ {"y": "}}"} , "\\"\\\\" ] }', lead="", trail="") + " B \n",
    "<tool_call" + block("now", '{"é": "ünïcødé 🌍"}', close=False),
    '<tool_call>\n{"arguments": {"a": {"b": 1}}, "name": "now"}\n</tool_call>tail',
    '<tool_call>{"name":"now","arguments":{},"extra":{"k":"}"}}</tool_call>',
]


@pytest.mark.parametrize("text", SAMPLES)
def test_stream_char_by_char_and_at_every_cut_equals_parse(text):
    assert_stream_equals_parse(text, list(text))
    assert_stream_equals_parse(text, [text])
    for cut in range(1, len(text)):
        assert_stream_equals_parse(text, [text[:cut], text[cut:]])


@pytest.mark.parametrize("text", [t for t in MALFORMED if '"name": "now", "arguments": {' not in t])
def test_a_bad_block_before_its_call_start_streams_as_the_text_parse_gives(text):
    """(Blocks that fail after `"arguments": {`: see test_a_block_failing_after_its_call_start.)"""
    for pieces in (list(text), [text]):
        content, names, *_ = run_stream(pieces)
        assert (content, names) == (text.strip(), [])


@pytest.mark.parametrize("text,args,content", [
    # bad JSON inside the arguments: the call keeps them as written; the rest is content
    ('<tool_call>\n{"name": "now", "arguments": {"a": tru}}\n</tool_call>', '{"a": tru}', "}\n</tool_call>"),
    ('<tool_call>\n{"name": "now", "arguments": {}} and more\n</tool_call>', "{}",
     "} and more\n</tool_call>"),
    ('<tool_call>\n{"name": "now", "arguments": {}, "name": "x"}\n</tool_call>', "{}",
     ', "name": "x"}\n</tool_call>'),
    # the reply ends inside the arguments: cut short
    ('<tool_call>\n{"name": "now", "arguments": {"a": [1, ', '{"a": [1, ', ""),
    ('<tool_call>\n{"name": "now", "arguments": {"a": 1}', '{"a": 1}', ""),
])
def test_a_block_failing_after_its_call_start(text, args, content):
    for pieces in (list(text), [text]):
        got_content, names, got_args, stream, _ = run_stream(pieces)
        assert (got_content, names, got_args) == (content, ["now"], [args])
        assert [c.arguments for c in stream.calls] == [args]


def test_bad_block_before_call_start_goes_out_without_waiting_for_its_end():
    s = CallStream()
    assert s.feed("Hi <tool_call>\n") == [Content("Hi")]
    assert s.feed("no") == [Content(" <tool_call>"), Content("\nno")]
    assert s.feed(" json </tool_call> <tool_call>") == [Content(" json </tool_call>")]
    start, args = s.feed('{"name": "now", "arguments": {}}')
    assert (start.index, start.name, args) == (0, "now", Arguments(0, "{}"))
    assert s.calls == []  # finished at '</tool_call>' or at the end
    assert s.close() == []
    assert s.calls == [ToolCall(start.id, "now", "{}")]


def test_call_start_and_arguments_stream_before_the_block_closes():
    s = CallStream()
    assert s.feed("Checking") == [Content("Checking")]
    assert s.feed("...\n<tool_") == [Content("...")]  # '\n' and a partial tag held back
    assert s.feed('call>\n{"name": "get_wea') == []
    assert s.feed('ther", "arguments"') == []
    assert s.feed(": ") == []  # announced only once the arguments open as an object
    start, brace = s.feed("{")
    assert isinstance(start, CallStart) and (start.index, start.name) == (0, "get_weather")
    assert brace == Arguments(0, "{")
    assert s.feed('"city": "Pa') == [Arguments(0, '"city": "Pa')]
    assert s.feed('ris"}') == [Arguments(0, 'ris"}')]  # the closing brace is known to close them
    assert s.feed("}\n</tool") == []
    assert s.feed("_call>") == []
    assert s.calls == [ToolCall(start.id, "get_weather", '{"city": "Paris"}')]
    assert s.feed(" done") == [Content("\n done")]  # the held '\n' goes out with the text after
    assert s.close() == []


def test_a_held_partial_tag_that_is_not_a_tag_goes_out_as_text():
    s = CallStream()
    assert s.feed("a <tool_ca") == [Content("a")]
    assert s.feed("t>") == [Content(" <tool_cat>")]
    assert s.feed(" <tool") == []
    assert s.close() == [Content(" <tool")]


def test_other_key_order_is_held_until_the_block_ends():
    s = CallStream()
    assert s.feed('<tool_call>\n{"arguments": {"a": 1}, "name": "now"}') == []
    events = s.feed("\n</tool_call>")
    assert [type(e) for e in events] == [CallStart, Arguments]
    assert events[1] == Arguments(0, '{"a": 1}')


# A reply built from parts that parse accepts: content (never containing '<tool_call>') and
# calls with arbitrary JSON arguments laid out in several ways.
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(alphabet=st.sampled_from('ab "\\}{][</tool_call>\n\té🌍'), max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_layout = st.sampled_from([
    {}, {"separators": (",", ":")}, {"indent": 2}, {"ensure_ascii": False},
    {"indent": "\t", "ensure_ascii": False},
])
_ws = st.sampled_from(["", "\n", " ", "\n\n", " \n "])
_content = st.text(alphabet=st.sampled_from("ab <tool_call>/\n{}"), max_size=20).filter(
    lambda t: "<tool_call>" not in t)


@st.composite
def replies(draw):
    parts = [draw(_content)]
    for i in range(draw(st.integers(1, 3))):
        obj = draw(st.dictionaries(st.text(max_size=6), _json, max_size=4))
        args = json.dumps(obj, **draw(_layout))
        name = json.dumps(draw(st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True)))
        obj = draw(st.sampled_from([
            f'{{"name": {name}, "arguments": {args}}}',
            f'{{"name":{name},"arguments":{args}}}',
            f'{{ "name" :\n{name} ,\t"arguments" : {args} , "x": [1]}}',
            f'{{"arguments": {args}, "name": {name}}}',
        ]))
        parts.append(f"<tool_call>{draw(_ws)}{obj}{draw(_ws)}</tool_call>")
        parts.append(draw(_content))
    text = "".join(parts)
    if draw(st.booleans()) and text.endswith("</tool_call>"):
        text = text[: -len("</tool_call>")]  # the reply may end without the last closing tag
    return text


@given(replies(), st.randoms(use_true_random=False))
def test_stream_in_random_pieces_equals_parse(text, rnd):
    _, calls = parse(text)
    assert calls, text
    cuts = sorted(rnd.sample(range(1, len(text)), min(len(text) - 1, rnd.randint(0, 12))))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert_stream_equals_parse(text, pieces)


def test_a_long_argument_streams_exactly_in_small_pieces():
    args = json.dumps({"code": "x = {'a': [1, 2]}\n" * 200 + '"}</tool_call>'})
    text = "Here:\n" + block("run", args)
    assert_stream_equals_parse(text, list(text))
    rnd, pieces, i = random.Random(0), [], 0
    while i < len(text):
        n = rnd.randint(1, 7)
        pieces.append(text[i:i + n])
        i += n
    assert_stream_equals_parse(text, pieces)


# --- template_messages ------------------------------------------------------------------------


HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
]


def test_template_messages_converts_calls_and_fills_tool_names():
    before = json.dumps(HISTORY)
    out = template_messages(HISTORY)
    assert json.dumps(HISTORY) == before  # the input is not changed
    assert out[:2] == HISTORY[:2]
    assert out[2]["content"] == ""
    assert out[2]["tool_calls"] == [{"id": "call_1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert out[3] == {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}',
                      "name": "get_weather"}


def test_template_messages_keeps_a_given_name_and_dict_arguments():
    msgs = [HISTORY[1],
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "a", "function": {"name": "now", "arguments": {"tz": "UTC"}}}]},
            {"role": "tool", "tool_call_id": "a", "name": "custom", "content": "12:00"}]
    out = template_messages(msgs)
    assert out[1]["content"] == "Checking."
    assert out[1]["tool_calls"][0]["function"]["arguments"] == {"tz": "UTC"}
    assert out[2]["name"] == "custom"


def _with(i, **changes):
    msgs = json.loads(json.dumps(HISTORY))
    msgs[i].update(changes)
    return msgs


@pytest.mark.parametrize("msgs,error", [
    (_with(3, tool_call_id="x"), r"messages\[3\]\.tool_call_id: no earlier assistant tool call has id 'x'"),
    (_with(3, tool_call_id=None), r"messages\[3\]\.tool_call_id: required"),
    ([HISTORY[3]], r"messages\[0\]\.tool_call_id: no earlier"),
    (_with(2, tool_calls=[{"id": "call_1", "function": {"name": "f", "arguments": "[1, 2]"}}]),
     r"messages\[2\]\.tool_calls\[0\]\.function\.arguments: must be a JSON object"),
    (_with(2, tool_calls=[{"id": "call_1", "function": {"name": "f", "arguments": "{oops"}}]),
     r"messages\[2\]\.tool_calls\[0\]\.function\.arguments: not valid JSON"),
    (_with(2, tool_calls=[{"id": "call_1", "function": {"arguments": "{}"}}]),
     r"messages\[2\]\.tool_calls\[0\]\.function\.name: required"),
    (_with(2, tool_calls=[{"id": "call_1"}]), r"messages\[2\]\.tool_calls\[0\]\.function: required"),
    (_with(2, tool_calls={"id": "call_1"}), r"messages\[2\]\.tool_calls: must be an array"),
])
def test_template_messages_errors_name_the_field(msgs, error):
    with pytest.raises(ValueError, match=error):
        template_messages(msgs)


# --- check_tools and tools_format -------------------------------------------------------------


def test_check_tools_normalises():
    messy = {"type": "function", "extra": 1, "function": {**TIME["function"], "junk": True}}
    assert check_tools([WEATHER, messy]) == [WEATHER, TIME]


@pytest.mark.parametrize("tools,error", [
    ([], r"tools: must be a non-empty array"),
    ({"a": 1}, r"tools: must be a non-empty array"),
    ([WEATHER, "x"], r"tools\[1\]: must be an object"),
    ([{"function": {"name": "a"}}], r"tools\[0\]\.type: must be 'function'"),
    ([{"type": "code", "function": {"name": "a"}}], r"tools\[0\]\.type: must be 'function'"),
    ([{"type": "function"}], r"tools\[0\]\.function: required"),
    ([WEATHER, {"type": "function", "function": {}}], r"tools\[1\]\.function\.name: required"),
    ([{"type": "function", "function": {"name": "bad name"}}], r"tools\[0\]\.function\.name: must match"),
    ([{"type": "function", "function": {"name": "x" * 65}}], r"tools\[0\]\.function\.name: must match"),
    ([TIME, WEATHER, TIME], r"tools\[2\]\.function\.name: duplicate name 'now'"),
    ([{"type": "function", "function": {"name": "a", "parameters": "{}"}}],
     r"tools\[0\]\.function\.parameters: must be an object"),
    ([{"type": "function", "function": {"name": "a", "parameters": {"type": "string"}}}],
     r"tools\[0\]\.function\.parameters\.type: must be 'object'"),
    ([{"type": "function", "function": {"name": "a", "description": 3}}],
     r"tools\[0\]\.function\.description: must be a string"),
])
def test_check_tools_errors_name_the_field(tools, error):
    with pytest.raises(ValueError, match=error):
        check_tools(tools)


LLAMA3_SNIPPET = """{%- if tools is not none %}{{- "Environment: ipython\\n" }}{%- endif %}
{{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
{{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
{%- for t in tools %}{{- t | tojson(indent=4) }}{%- endfor %}"""


@pytest.mark.parametrize("source,fmt", [
    (None, None),
    ("", None),
    (CHATML_TEMPLATE, None),
    ("{% if tools %}<tool_call>{% endif %}", "hermes"),
    (LLAMA3_SNIPPET, "llama3"),
    ("{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}{% endif %}[TOOL_CALLS]", None),
])
def test_tools_format(source, fmt):
    assert tools_format(source) == fmt


# --- grammar ----------------------------------------------------------------------------------


def _matcher_check(tok, eos, lark, text_ids):
    """(all of text_ids then eos accepted, the matcher) for a fresh matcher of `lark`."""
    import llguidance as llg

    assert llg.LLMatcher.validate_grammar(lark, tok) == ""
    g = llg.LLMatcher.grammar_from_lark(lark)
    mt = llg.LLMatcher(tok, g)
    ids = list(text_ids) + [eos]
    return mt.validate_tokens(ids) == len(ids)


def test_grammar_text_shape():
    lark = grammar(TOOLS, "required")
    assert lark.splitlines()[:2] == [
        "start: call" + r' ("\n" call' * 7 + ")?" * 7,
        r'call: <tool_call> "\n" (fn_0 | fn_1) "\n" </tool_call>']
    no_params = '{"type": "object", "properties": {}, "additionalProperties": false, "x-guidance"'
    assert f"args_1: %json {no_params}" in lark
    now = {"type": "function", "function": {"name": "now"}}
    one = grammar(TOOLS, now, parallel=False, special=False)
    assert one.splitlines()[:2] == ["start: call", r'call: "<tool_call>" "\n" (fn_0) "\n" "</tool_call>"']
    assert "get_weather" not in one
    assert WEATHER["function"]["parameters"].get("x-guidance") is None  # caller's schema untouched


@pytest.mark.parametrize("choice,error", [
    ({"type": "function", "function": {"name": "nope"}},
     r"tool_choice\.function\.name: no tool named 'nope'"),
    ("auto", r"tool_choice: must be 'required'"),
    ({"type": "function"}, r"tool_choice: must be"),
])
def test_grammar_choice_errors(choice, error):
    with pytest.raises(ValueError, match=error):
        grammar(TOOLS, choice)


def test_grammar_checks_the_tools():
    with pytest.raises(ValueError, match=r"tools\[0\]\.function\.name"):
        grammar([{"type": "function", "function": {"name": "a b"}}], "required")


W = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
N = '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'
GRAMMAR_CASES = [
    # (choice, parallel, text, accepted)
    ("required", True, W, True),
    ("required", True, N, True),
    ("required", True, W + "\n" + N + "\n" + W, True),
    ("required", True, W.replace('"c"}', '"c" }').replace('{"city"', '{ "city"'), True),
    ("required", False, W + "\n" + N, False),
    ("required", True, '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>', False),
    ("required", True, W.replace('"c"', '"k"'), False),  # not in the enum
    ("required", True, W.replace('"city": "Paris", ', ""), False),  # required city missing
    ("required", True, W.replace('"c"}', '"c", "x": 1}'), False),  # additionalProperties false
    ("required", True, W.replace('"Paris"', "3"), False),
    ("required", True, "Sure! " + W, False),
    ("required", True, W.replace("}\n</tool_call>", "}</tool_call>"), False),
    ("required", True, W + "\n", False),
    ("required", True, N.replace("{}", '{"x": 1}'), False),  # no parameters: only {}
    ({"type": "function", "function": {"name": "now"}}, True, N, True),
    ({"type": "function", "function": {"name": "now"}}, True, W, False),
]


@pytest.fixture(scope="module")
def tiny(models):  # noqa: F811
    from llguidance.llamacpp import lltokenizer_from_vocab

    target, _ = models
    return target, lltokenizer_from_vocab(target._vocab, eos_token=[target.eos])


@pytest.mark.parametrize("choice,parallel,text,ok", GRAMMAR_CASES)
def test_grammar_on_a_byte_level_vocabulary(tiny, choice, parallel, text, ok):
    target, tok = tiny
    lark = grammar(TOOLS, choice, parallel=parallel, special=False)
    assert _matcher_check(tok, target.eos, lark, target.tokenize(text, add_special=False)) is ok
    if ok:  # and what it forced parses back into the calls
        _, calls = parse(text)
        assert calls and all(json.loads(c.arguments) is not None for c in calls)


# --- grammar: Llama 3.x ----------------------------------------------------------------------

LW = '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}'
LN = '{"name": "now", "parameters": {}}'
NOW = {"type": "function", "function": {"name": "now"}}
LLAMA3_GRAMMAR_CASES = [
    # (choice, parallel, text, accepted)
    ("required", True, LW, True),
    ("required", False, LN, True),
    ("required", True, LW.replace('{"city"', '{ "city"').replace(', "unit"', ',\n  "unit"'), True),
    (NOW, True, LN, True),
    (NOW, True, LW, False),
    ("required", True, LW + "; " + LN, False),  # one call, even with parallel calls allowed
    ("required", True, LW + "\n" + LN, False),
    ("required", True, LW + LN, False),
    ("required", True, "<|python_tag|>" + LW, False),
    ("required", True, LW.replace('"parameters"', '"arguments"'), False),
    ("required", True, '{"type": "function", ' + LW[1:], False),
    ("required", True, W, False),  # the hermes form
    ("required", True, " " + LW, False),
    ("required", True, LW + "\n", False),
    ("required", True, "Sure! " + LW, False),
    ("required", True, LW.replace('"get_weather"', '"nope"'), False),
    ("required", True, LW.replace('"c"', '"k"'), False),  # not in the enum
    ("required", True, LW.replace('"city": "Paris", ', ""), False),  # required city missing
    ("required", True, LW.replace('"c"}', '"c", "x": 1}'), False),  # additionalProperties false
    ("required", True, LN.replace("{}", '{"x": 1}'), False),  # no parameters: only {}
]


def test_llama3_grammar_text_shape():
    lark = grammar(TOOLS, "required", fmt="llama3")
    lines = lark.splitlines()
    assert lines[:2] == ["start: call", "call: (fn_0 | fn_1)"]
    assert lines[2] == r'fn_0: "{\"name\": \"get_weather\", \"parameters\": " args_0 "}"'
    assert "tool_call" not in lark and "python_tag" not in lark and '"arguments"' not in lark
    assert grammar(TOOLS, "required", parallel=False, special=False, fmt="llama3") == lark
    # the schemas are embedded as the hermes grammar embeds them
    assert [ln for ln in lines if ln.startswith("args_")] == [
        ln for ln in grammar(TOOLS, "required").splitlines() if ln.startswith("args_")]
    with pytest.raises(ValueError, match="tool-call format 'mistral'"):
        grammar(TOOLS, "required", fmt="mistral")


@pytest.mark.parametrize("choice,parallel,text,ok", LLAMA3_GRAMMAR_CASES)
def test_llama3_grammar_on_a_byte_level_vocabulary(tiny, choice, parallel, text, ok):
    target, tok = tiny
    lark = grammar(TOOLS, choice, parallel=parallel, fmt="llama3")
    assert _matcher_check(tok, target.eos, lark, target.tokenize(text, add_special=False)) is ok
    if ok:  # and what it forced parses back into the call, whole and as the server streams it
        from specli.toolcalls import BufferedCalls

        content, calls = parse(text, "llama3")
        assert content is None and len(calls) == 1
        assert json.loads(calls[0].arguments) == json.loads(text)["parameters"]
        buffered = BufferedCalls("llama3")
        assert buffered.feed(text[:9]) == [] and buffered.feed(text[9:]) == []
        start, args = buffered.close()
        assert (start.index, start.name, args.fragment) == (0, calls[0].name, calls[0].arguments)
        assert buffered.calls == [ToolCall(start.id, calls[0].name, calls[0].arguments)]


def test_the_llama3_test_template_renders_tools_calls_and_results(tiny):
    """The tests' Llama 3.x template (tinymodels) is classified llama3, lists the tools,
    writes a call back in the form the grammar forces and parse reads, results as ipython
    turns, and refuses two calls in one turn as Meta's does."""
    from specli.errors import SpecliError
    from specli.prompt import ChatTemplate

    assert tools_format(LLAMA3_TOOLS_TEMPLATE) == "llama3"
    tpl = ChatTemplate(LLAMA3_TOOLS_TEMPLATE, "", "", False)
    text = tpl.render(template_messages(HISTORY), tools=check_tools(TOOLS))
    listed = text.split("its value}.\n")[1].split("<|eot_id|>")[0].splitlines()
    assert [json.loads(line) for line in listed] == check_tools(TOOLS)
    call = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert f"<|start_header_id|>assistant<|end_header_id|>\n\n{call}<|eot_id|>" in text
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n{"temp": 21}<|eot_id|>' in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    _, calls = parse(call, "llama3")
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Paris"}')]
    target, tok = tiny
    lark = grammar(TOOLS, "required", fmt="llama3")
    assert _matcher_check(tok, target.eos, lark, target.tokenize(call, add_special=False))
    two = [dict(HISTORY[2], tool_calls=HISTORY[2]["tool_calls"] * 2)]
    with pytest.raises(SpecliError, match="single tool-calls"):
        tpl.render(template_messages(HISTORY[:2] + two), tools=check_tools(TOOLS))


# --- the real Qwen2.5 model -------------------------------------------------------------------

QWEN_EOS = [151643, 151645]


@pytest.fixture(scope="module")
def qwen(real_pair):
    from llguidance.llamacpp import lltokenizer_from_vocab

    from specli.llama.backend import LlamaModel

    m = LlamaModel(real_pair[1], n_ctx=256)
    yield m, lltokenizer_from_vocab(m._vocab, eos_token=QWEN_EOS)
    m.close()


@pytest.mark.real
@pytest.mark.parametrize("choice,parallel,text,ok", GRAMMAR_CASES)
def test_grammar_on_qwen_with_special_tool_call_tokens(qwen, choice, parallel, text, ok):
    m, tok = qwen
    ids = m.tokenize(text, add_special=False)
    assert 151657 in ids and 151658 in ids  # <tool_call>, </tool_call> are single tokens
    assert _matcher_check(tok, 151645, grammar(TOOLS, choice, parallel=parallel), ids) is ok


@pytest.mark.real
def test_quoted_tags_do_not_match_qwens_special_tokens(qwen):
    m, tok = qwen
    ids = m.tokenize(W, add_special=False)
    assert not _matcher_check(tok, 151645, grammar(TOOLS, "required", special=False), ids)


@pytest.mark.real
def test_stream_over_qwen_token_pieces_equals_parse(qwen):
    m, _ = qwen
    text = "I'll check both.\n" + W + "\n" + N
    pieces = [m.token_bytes(t).decode() for t in m.tokenize(text, add_special=False)]
    assert "".join(pieces) == text
    assert_stream_equals_parse(text, pieces)


@pytest.mark.real
def test_qwen_template_renders_tools_calls_and_results(qwen):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    m, _ = qwen
    source = m.chat_template()
    assert tools_format(source) == "hermes"
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(source).render(
        messages=template_messages(HISTORY), tools=check_tools(TOOLS), add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    listed = text.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
    assert [json.loads(line) for line in listed] == check_tools(TOOLS)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert f"<|im_start|>assistant\n{call}<|im_end|>\n" in text
    assert '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n' in text
    assert text.endswith("<|im_start|>assistant\n")
    # what the template shows the model as a call is what parse reads back
    _, calls = parse(text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0])
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert 151657 in m.tokenize(text, add_special=False)


# --- loose calls: JSON objects, bare or fenced (Qwen2.5-Coder 1.5B under auto) --------------
FENCED = '```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n  }\n}\n```'


@pytest.mark.parametrize("text,names", [
    (FENCED, ["get_weather"]),
    ('{"name": "get_weather", "arguments": {"city": "Paris"}}', ["get_weather"]),
    ('  {"name": "get_weather", "parameters": {"city": "Paris"}}\n', ["get_weather"]),
    (FENCED + "\n" + FENCED.replace("Paris", "Oslo"), ["get_weather"]),
])
def test_parse_loose_reads_whole_replies_of_json_calls(text, names):
    from specli.toolcalls import parse_loose

    calls = parse_loose(text, names)
    assert calls and all(c.name == "get_weather" for c in calls)
    assert json.loads(calls[0].arguments)["city"] == "Paris"


@pytest.mark.parametrize("text", [
    FENCED.replace("get_weather", "send_mail"),  # not a declared tool: an answer, not a call
    'Here it is: ' + FENCED,  # text first: content
    '{"name": "get_weather"}',  # no arguments
    '```python\nprint(1)\n```',
    FENCED + " and more",
    '{"name": "get_weather", "arguments": {"city": "Paris"}',  # cut
])
def test_parse_loose_refuses_anything_else(text):
    from specli.toolcalls import parse_loose

    assert parse_loose(text, ["get_weather"]) is None


@given(st.lists(st.integers(1, 7), max_size=40))
def test_hermes_calls_holds_a_json_reply_and_streams_text(cuts):
    """Fed in any pieces: a fenced JSON call comes out as one call at close (nothing before);
    a reply starting with text streams as CallStream does."""
    from specli.toolcalls import HermesCalls

    def feed_all(text):
        h, events, i = HermesCalls(["get_weather"]), [], 0
        for n in cuts + [len(text)]:
            events += h.feed(text[i:i + n])
            i += n
        return h, events, h.close()

    h, before, after = feed_all(FENCED)
    assert before == [] and [type(e).__name__ for e in after] == ["CallStart", "Arguments"]
    assert h.calls[0].name == "get_weather" and after[1].fragment == h.calls[0].arguments
    text = "Sure. " + FENCED
    h, before, after = feed_all(text)
    assert "".join(e.text for e in before + after if isinstance(e, Content)) == text
    assert h.calls == []
