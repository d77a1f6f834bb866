"""OpenAI tool calls over the chat formats of Qwen2.5/Hermes and Llama 3.x (pure: text in and out).

The OpenAI side: a request's `tools` ([{type: "function", function: {name, description,
parameters: <JSON schema>}}]) and `tool_choice`; an assistant reply's `tool_calls`
([{id, type: "function", function: {name, arguments: <JSON text>}}]); `tool` messages
answering a call by its `tool_call_id`.

The model side: the GGUF's chat template renders `tools` into the system prompt and
earlier calls and results into the history; the model then writes its calls as text in
one of two forms, which `tools_format` tells apart from the template's source:

  hermes  (Qwen2.5, Hermes 2 Pro) one block per call, any number, after optional text:

              <tool_call>
              {"name": "get_weather", "arguments": {"city": "Paris"}}
              </tool_call>

          Qwen2.5's vocabulary has <tool_call> and </tool_call> as single tokens (user
          defined, so they also detokenize to that text). Results come back as
          <tool_response>...</tool_response> in a user turn (the template does this).

  llama3  (Llama 3.1/3.2 JSON tool calling) the whole reply is the call, optionally after
          <|python_tag|>: {"name": "get_weather", "parameters": {"city": "Paris"}};
          several are separated by ';' or newlines (read, never forced: Meta's templates
          render one call per turn). Results come back as `ipython` turns.

What is here:

  check_tools         validate `tools`, naming the bad field (ValueError).
  template_messages   OpenAI messages -> the dicts chat templates expect (arguments as a
                      dict, since templates write `arguments | tojson`).
  tools_format        "hermes" | "llama3" | None for a template's source.
  parse               a finished reply -> (content, [ToolCall]).
  CallStream          the same, incrementally, as events for streaming (hermes).
  grammar             an llguidance Lark grammar that forces calls (tool_choice "required"
                      or a named function): hermes blocks, or one llama3 call.

A call's `arguments` is always a slice of the model's text (the JSON object exactly as it
was written), never re-serialised: streamed fragments concatenate to the same string.

Seen on Qwen2.5-Coder-1.5B's template: its system prompt shows the call form as
`{{"name": <function-name>, "arguments": <args-json-object>}}` (the braces are doubled in
a Jinja string literal, so they print doubled), and after a tool result the model has
copied that; such a reply is not a call here. Jinja's own `tojson` sorts keys and writes
<, >, &, ' as \u003c...: history renders as the model's calls only with a plain `tojson`.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
from dataclasses import dataclass
from json.decoder import scanstring

from specli.core.grammar import JSON_LAYOUT  # forced arguments: the layout of every schema

__all__ = [
    "Arguments", "CallStart", "CallStream", "Content", "ToolCall", "check_tools", "grammar",
    "parse", "template_messages", "tools_format",
]

OPEN, CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# At most this many calls in one forced reply: under tool_choice required a small model, free
# to go on, wrote invented calls until max_tokens (Qwen2.5-Coder-1.5B did).
MAX_PARALLEL_CALLS = 8

# A tool without `parameters` takes none (OpenAI: "omitting parameters defines a function with
# an empty parameter list"); a bare {"type": "object"} let Qwen2.5-Coder invent arguments.
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}

_JSON_WS = " \t\n\r"  # what JSON itself allows between tokens (and all json.loads skips)
_DECODER = json.JSONDecoder()
# The start of a hermes block's object as far as the arguments' opening brace, with "name"
# first: what CallStream needs to announce a call before its arguments are complete.
_W = r"[ \t\n\r]*"
_HEADER = re.compile(
    r"\{" + _W + r'"name"' + _W + ":" + _W + r'("(?:[^"\\\x00-\x1f]|\\.)*")' + _W + "," + _W
    + r'"arguments"' + _W + ":" + _W + r"\{"
)


@dataclass(frozen=True)
class ToolCall:
    id: str  # "call_" + 24 hex digits
    name: str
    arguments: str  # the arguments object's JSON text exactly as the model wrote it


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class Arguments:
    index: int
    fragment: str


def _required(value) -> str:
    return "required" if value is None else "must be an object"


def _new_id() -> str:
    return "call_" + secrets.token_hex(12)


# --- requests -------------------------------------------------------------------------------


def check_tools(tools: list[dict]) -> list[dict]:
    """Validate a request's `tools`; return them as {type, function: {name, [description],
    [parameters], [strict]}} (other keys dropped, so templates render only these). ValueError
    names the first bad field, e.g. "tools[1].function.name: required"."""
    if not isinstance(tools, list) or not tools:
        raise ValueError("tools: must be a non-empty array")
    out, seen = [], set()
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise ValueError(f"{at}: must be an object")
        if tool.get("type") != "function":
            raise ValueError(f"{at}.type: must be 'function'")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise ValueError(f"{at}.function: {_required(fn)}")
        name = fn.get("name")
        if name is None:
            raise ValueError(f"{at}.function.name: required")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ValueError(f"{at}.function.name: must match {NAME_RE.pattern}, got {name!r}")
        if name in seen:
            raise ValueError(f"{at}.function.name: duplicate name {name!r}")
        seen.add(name)
        clean = {"name": name}
        if fn.get("description") is not None:
            if not isinstance(fn["description"], str):
                raise ValueError(f"{at}.function.description: must be a string")
            clean["description"] = fn["description"]
        if fn.get("parameters") is not None:
            params = fn["parameters"]
            if not isinstance(params, dict):
                raise ValueError(f"{at}.function.parameters: must be an object (a JSON schema)")
            if params.get("type", "object") != "object":
                raise ValueError(f"{at}.function.parameters.type: must be 'object'")
            clean["parameters"] = params
        if fn.get("strict") is not None:
            clean["strict"] = bool(fn["strict"])
        out.append({"type": "function", "function": clean})
    return out


def template_messages(messages: list[dict]) -> list[dict]:
    """OpenAI chat messages -> what HF/GGUF Jinja chat templates expect (new dicts; the input
    is not changed).

    Assistant messages with `tool_calls`: each call's `function.arguments` (JSON text) becomes
    a dict, because templates write `arguments | tojson`; content None becomes ''. `tool`
    messages keep content and tool_call_id, and get `name` from the matching earlier call
    when they lack one (Llama's and some other templates print it). Other messages are
    copied unchanged. ValueError names the field: a tool message whose tool_call_id no
    earlier assistant call has, arguments that are not a JSON object, a call without a name.
    """
    out, names = [], {}
    for i, msg in enumerate(messages):
        at = f"messages[{i}]"
        msg = dict(msg)
        role = msg.get("role")
        if role == "assistant" and msg.get("tool_calls"):
            calls = msg["tool_calls"]
            if not isinstance(calls, list):
                raise ValueError(f"{at}.tool_calls: must be an array")
            converted = []
            for j, call in enumerate(calls):
                cat = f"{at}.tool_calls[{j}]"
                if not isinstance(call, dict):
                    raise ValueError(f"{cat}: must be an object")
                if call.get("type", "function") != "function":
                    raise ValueError(f"{cat}.type: must be 'function'")
                fn = call.get("function")
                if not isinstance(fn, dict):
                    raise ValueError(f"{cat}.function: {_required(fn)}")
                name = fn.get("name")
                if not isinstance(name, str) or not name:
                    raise ValueError(f"{cat}.function.name: required")
                args = fn.get("arguments", "{}")
                if isinstance(args, str):
                    try:
                        args = json.loads(args)
                    except (ValueError, RecursionError) as e:
                        why = f"{cat}.function.arguments: not valid JSON ({e})"
                        raise ValueError(why) from None
                if not isinstance(args, dict):
                    raise ValueError(f"{cat}.function.arguments: must be a JSON object")
                call_id = call.get("id")
                if call_id is not None and not isinstance(call_id, str):
                    raise ValueError(f"{cat}.id: must be a string")
                if call_id is not None:
                    names[call_id] = name
                converted.append({**call, "type": "function",
                                  "function": {**fn, "arguments": args}})
            msg["tool_calls"] = converted
            if msg.get("content") is None:
                msg["content"] = ""
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str):
                raise ValueError(f"{at}.tool_call_id: required (a string)")
            if call_id not in names:
                raise ValueError(
                    f"{at}.tool_call_id: no earlier assistant tool call has id {call_id!r}")
            if not msg.get("name"):
                msg["name"] = names[call_id]
        out.append(msg)
    return out


def tools_format(template_source: str | None) -> str | None:
    """The tool-call format a chat template teaches: "hermes" (it writes <tool_call>: Qwen2.5,
    Hermes), "llama3" (Llama 3.x's header tokens and its JSON form: '"parameters"', the
    `ipython` role or <|python_tag|>), or None when it does not render `tools` at all or in
    a form not handled here (callers then refuse `tools`)."""
    src = template_source or ""
    if not re.search(r"\btools\b", src):
        return None
    if OPEN in src:
        return "hermes"
    llama3_marks = ('"parameters"', "ipython", PYTHON_TAG)
    if "<|start_header_id|>" in src and any(m in src for m in llama3_marks):
        return "llama3"
    return None


# --- replies --------------------------------------------------------------------------------


def _skip(s: str, i: int, chars: str | None = None) -> int:
    """The first index >= i whose char is not whitespace (str.isspace, or one of `chars`)."""
    n = len(s)
    if chars is None:
        while i < n and s[i].isspace():
            i += 1
    else:
        while i < n and s[i] in chars:
            i += 1
    return i


def _object(s: str, i: int) -> tuple[list[tuple[str, object, int, int]], int]:
    """The JSON object at s[i] ('{'): its members as (key, value, start, end) with s[start:end]
    the value's text, and the index just after the object. ValueError (or IndexError,
    RecursionError) when it is not one."""
    if s[i] != "{":
        raise ValueError("not an object")
    members = []
    i = _skip(s, i + 1, _JSON_WS)
    if s[i] == "}":
        return members, i + 1
    while True:
        if s[i] != '"':
            raise ValueError("expected a key")
        key, i = scanstring(s, i + 1)
        i = _skip(s, i, _JSON_WS)
        if s[i] != ":":
            raise ValueError("expected ':'")
        start = _skip(s, i + 1, _JSON_WS)
        value, end = _DECODER.raw_decode(s, start)
        members.append((key, value, start, end))
        i = _skip(s, end, _JSON_WS)
        if s[i] == "}":
            return members, i + 1
        if s[i] != ",":
            raise ValueError("expected ',' or '}'")
        i = _skip(s, i + 1, _JSON_WS)


def _read_call(s: str, i: int, arg_keys: tuple[str, ...]) -> tuple[str, int, int, int] | None:
    """The call object at s[i]: (name, arguments start, arguments end, end of the object), or
    None unless it is an object with a non-empty string "name", exactly one of `arg_keys`
    whose value is an object, and no key twice. Other keys are ignored."""
    try:
        members, end = _object(s, i)
    except (ValueError, IndexError, RecursionError):
        return None
    keys = [k for k, *_ in members]
    if len(set(keys)) != len(keys):
        return None
    by_key = {k: (v, a, b) for k, v, a, b in members}
    name = by_key.get("name", (None,))[0]
    found = [by_key[k] for k in arg_keys if k in by_key]
    if not (isinstance(name, str) and name and len(found) == 1 and isinstance(found[0][0], dict)):
        return None
    return name, found[0][1], found[0][2], end


def parse(text: str, fmt: str = "hermes") -> tuple[str | None, list[ToolCall]]:
    """A finished reply -> (content, calls). Never raises.

    hermes: every `<tool_call>` block, `{"name": N, "arguments": {...}}` with any whitespace
    around it and closed by `</tool_call>` (or by the end of the text), is a call; content is
    the text outside the blocks, stripped, or None when that is empty. The block's end is
    found by parsing its JSON, so '</tool_call>' inside a string argument is fine.
    llama3: the whole reply (after an optional <|python_tag|>) is one or more objects
    `{"name": N, "parameters"|"arguments": {...}}` separated by ';' and/or whitespace;
    content is then None. A reply not starting with '{' there is plain content.

    If any block is not a call (bad JSON, no name, arguments not an object, text between
    the object and </tool_call>, a reply cut inside a block by max_tokens), the whole reply
    is content: (text.strip() or None, []).
    """
    try:
        found = _parse_llama3(text) if fmt == "llama3" else _parse_hermes(text)
    except (ValueError, IndexError, RecursionError):  # _read_call catches these; belt and braces
        found = None
    return found if found is not None else (text.strip() or None, [])


def _parse_hermes(text: str):
    gaps, calls, pos = [], [], 0
    while (k := text.find(OPEN, pos)) != -1:
        gaps.append(text[pos:k])
        i = _skip(text, k + len(OPEN))
        found = _read_call(text, i, ("arguments",))
        if found is None:
            return None
        name, a, b, end = found
        calls.append(ToolCall(_new_id(), name, text[a:b]))
        i = _skip(text, end)
        if text.startswith(CLOSE, i):
            i += len(CLOSE)
        elif i != len(text):
            return None
        pos = i
    gaps.append(text[pos:])
    return "".join(gaps).strip() or None, calls


def _parse_llama3(text: str):
    s = text.strip()
    if s.startswith(PYTHON_TAG):
        s = s[len(PYTHON_TAG):].lstrip()
    if not s.startswith("{"):
        return text.strip() or None, []  # plain content
    calls, i = [], 0
    while i < len(s):
        found = _read_call(s, i, ("parameters", "arguments"))
        if found is None:
            return None
        name, a, b, end = found
        calls.append(ToolCall(_new_id(), name, s[a:b]))
        i = end
        while i < len(s) and (s[i] == ";" or s[i].isspace()):
            i += 1
    return None, calls


class _Scan:
    """Finds where the JSON value opening with '{' at `start` closes, by bracket depth outside
    strings, over a growing text (each char looked at once). For valid JSON that is where
    json ends it; for invalid JSON it is only a guess, checked afterwards."""

    __slots__ = ("start", "pos", "depth", "in_str", "esc", "end")

    def __init__(self, start: int) -> None:
        self.start = self.pos = start
        self.depth, self.in_str, self.esc, self.end = 0, False, False, None

    def advance(self, s: str) -> int | None:
        """Scan s[pos:]; return the index just after the closing bracket once seen, else None."""
        if self.end is not None:
            return self.end
        i, depth, in_str, esc, n = self.pos, self.depth, self.in_str, self.esc, len(s)
        while i < n:
            c = s[i]
            i += 1
            if in_str:
                if esc:
                    esc = False
                elif c == "\\":
                    esc = True
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth <= 0:
                    self.end = i
                    break
        self.pos, self.depth, self.in_str, self.esc = i, depth, in_str, esc
        return self.end


class _Block:
    """One <tool_call> block being read: `body` is all text after the tag received so far."""

    def __init__(self) -> None:
        self.body = ""
        self.lead = 0  # whitespace skipped up to here
        self.outer: _Scan | None = None  # the call object, once its '{' is seen
        self.args: _Scan | None = None  # its arguments, once the call is announced
        self.held = False  # not announceable early (other key order): wait for the end
        self.index = -1
        self.id = self.name = ""
        self.sent = 0  # body[args.start:sent] went out as Arguments


class CallStream:
    """parse() for hermes replies, incrementally: feed() the text as it arrives, in any
    fragments; each call returns the events that text settles; close() at the end returns
    the rest. Events: Content(text), CallStart(index, id, name), Arguments(index, fragment).

    For any reply parse() accepts, however it is split: the Content texts concatenate to
    parse's content ('' for None), the CallStarts come in parse's order with its names, and
    each call's Arguments fragments concatenate to exactly parse's `arguments`. Ids are
    fresh (parse's are random too); `calls` has the finished calls with the events' ids.

    Content streams as it comes, holding back only a possible partial '<tool_call>' at the
    end, and whitespace (emitted once text follows, dropped at the start and the end: the
    content is stripped, as in parse). Inside a block, CallStart goes out as soon as
    `{"name": "<complete string>", "arguments": {` has been seen; then the arguments stream
    as they arrive, up to the brace that closes them (found by bracket depth outside JSON
    strings, so nothing is held back). A block whose keys come in another order is held
    until it ends, then goes out as CallStart and one Arguments fragment.

    A block that turns out not to be a call, which a model can write under tool_choice
    "auto", is handled where it fails (unlike parse, which then returns the whole reply as
    text; the calls before it are already out):
      * before its CallStart (no '{' after the tag, keys in another order, bad JSON, ...):
        '<tool_call>' goes out as Content, and the text after it is read again as content
        (so a later '<tool_call>' in it starts a new block);
      * after its CallStart (bad JSON inside the arguments, a duplicate key, text after the
        object other than '</tool_call>', the reply ending inside the object): the call is
        finished with the arguments sent so far (possibly invalid JSON, as OpenAI warns for
        its own models; cut short if the reply ended inside them), and the text after its
        arguments' closing brace is read again as content.
    """

    def __init__(self) -> None:
        self._buf = ""  # text not yet settled, outside a block
        self._block: _Block | None = None
        self._ws = ""  # whitespace held back at the end of the content so far
        self._started = False  # some content went out
        self._calls: list[ToolCall] = []
        self._n = 0

    @property
    def calls(self) -> list[ToolCall]:
        return list(self._calls)

    def feed(self, text: str) -> list:
        out: list = []
        self._buf += text
        self._run(out, final=False)
        return out

    def close(self) -> list:
        out: list = []
        self._run(out, final=True)
        return out

    def _text(self, s: str, out: list) -> None:
        body = s.rstrip()
        if not body:
            self._ws += s
            return
        out.append(Content(self._ws + body if self._started else body.lstrip()))
        self._started, self._ws = True, s[len(body):]

    def _run(self, out: list, final: bool) -> None:
        while True:
            if self._block is None:
                buf = self._buf
                k = buf.find(OPEN)
                if k < 0:
                    keep = 0 if final else _partial_suffix(buf, OPEN)
                    self._text(buf[: len(buf) - keep], out)
                    self._buf = buf[len(buf) - keep:]
                    return
                self._text(buf[:k], out)
                self._buf = buf[k + len(OPEN):]
                self._block = _Block()
            block = self._block
            block.body += self._buf
            self._buf = ""
            rest = self._step(block, out, final)
            if rest is None:
                return  # the block needs more text
            self._block, self._buf = None, rest

    def _step(self, b: _Block, out: list, final: bool) -> str | None:
        """Advance block b over its body; None while it is open, else the text after it
        (to be read as content)."""
        body = b.body
        if b.outer is None:
            b.lead = _skip(body, b.lead)
            if b.lead == len(body):
                return self._fail(b, out) if final else None
            if body[b.lead] != "{":
                return self._fail(b, out)
            b.outer = _Scan(b.lead)
        end = b.outer.advance(body)
        if b.args is None and not b.held:
            m = _HEADER.match(body, b.lead)
            if m:
                try:
                    name = json.loads(m.group(1))
                except ValueError:
                    name = ""
                if name:
                    b.index, b.id, b.name = self._n, _new_id(), name
                    self._n += 1
                    b.args = _Scan(m.end() - 1)
                    b.sent = b.args.start
                    out.append(CallStart(b.index, b.id, b.name))
                else:
                    b.held = True
            elif end is not None:
                b.held = True
        if b.args is not None:
            args_end = b.args.advance(body)
            upto = len(body) if args_end is None else args_end
            if upto > b.sent:
                out.append(Arguments(b.index, body[b.sent:upto]))
                b.sent = upto
        if end is None:
            return self._fail(b, out) if final else None
        t = _skip(body, end)
        if body.startswith(CLOSE, t):
            stop = t + len(CLOSE)
        elif not final and CLOSE.startswith(body[t:]):
            return None  # '</tool_call>' may still come
        elif final and t == len(body):
            stop = t  # the reply ended after the object: a call, as in parse
        else:
            return self._fail(b, out)
        found = _read_call(body, b.lead, ("arguments",))
        if found is None or found[3] != end:
            return self._fail(b, out)
        name, a, z, _ = found
        if b.args is None:
            b.index, b.id, b.name = self._n, _new_id(), name
            self._n += 1
            out.append(CallStart(b.index, b.id, name))
            out.append(Arguments(b.index, body[a:z]))
        elif (name, a, z) != (b.name, b.args.start, b.sent):
            return self._fail(b, out)  # cannot happen for valid JSON; kept for safety
        self._calls.append(ToolCall(b.id, name, body[a:z]))
        return body[stop:]

    def _fail(self, b: _Block, out: list) -> str:
        if b.args is None:
            self._text(OPEN, out)
            return b.body
        self._calls.append(ToolCall(b.id, b.name, b.body[b.args.start:b.sent]))
        return b.body[b.sent:]


def _partial_suffix(s: str, tag: str) -> int:
    """Length of the longest end of s that is a proper beginning of tag."""
    for n in range(min(len(s), len(tag) - 1), 0, -1):
        if s.endswith(tag[:n]):
            return n
    return 0


# --- forcing calls --------------------------------------------------------------------------


def grammar(tools: list[dict], choice, parallel: bool = True, special: bool = True,
            fmt: str = "hermes") -> str:
    """An llguidance Lark grammar that forces the reply to be calls in the template's form.

    fmt "hermes": one call (parallel=False) or one or more, separated by '\\n', each exactly
    as Qwen2.5's template writes them:

        <tool_call>\\n{"name": "N", "arguments": <N's parameters schema>}\\n</tool_call>

    special=True: <tool_call> and </tool_call> are the model's single special tokens
    (Qwen2.5), written unquoted, which llguidance matches to the token (a quoted string
    cannot match it); special=False: they are plain text. At most MAX_PARALLEL_CALLS calls:
    under "required" a small model may otherwise go on writing calls until max_tokens
    (parse then sees a cut block: see parse).

    fmt "llama3": the whole reply is exactly one call, as Llama 3.1/3.2's templates write a
    call back into the history (and parse(text, "llama3") reads it):

        {"name": "N", "parameters": <N's parameters schema>}

    One call whatever `parallel` says: parse would read several (';' or whitespace between
    objects is unambiguous), but Meta's templates raise "This model only supports single
    tool-calls at once!" on an assistant turn with more than one, so a forced pair would
    make the next request fail; llama.cpp's llama3 grammar forces one call too. No
    <|python_tag|> before it: Llama 3.1 writes that tag only before its built-in tools'
    `name.call(...)` form, which is not a JSON call (llama.cpp's forced JSON calls go
    without it). `special` does not apply (no tags).

    choice: "required" (any of the tools) or {"type": "function", "function": {"name": N}}
    (only N; ValueError when no tool has that name). One rule per tool keeps each name with
    its own schema (embedded with `%json`); a tool without a parameters schema gets
    NO_PARAMETERS (only `{}`). The arguments' layout is bounded (JSON_LAYOUT) unless the
    schema has its own "x-guidance".
    """
    chosen = _chosen(check_tools(tools), choice)
    calls = f'({" | ".join(f"fn_{i}" for i in range(len(chosen)))})'
    if fmt == "llama3":
        head = ["start: call", f"call: {calls}"]
    elif fmt == "hermes":
        open_, close = (OPEN, CLOSE) if special else (json.dumps(OPEN), json.dumps(CLOSE))
        head = ["start: call" + (_more_calls(MAX_PARALLEL_CALLS - 1) if parallel else ""),
                f'call: {open_} "\\n" {calls} "\\n" {close}']
    else:
        raise ValueError(f"no grammar for tool-call format {fmt!r} (hermes, llama3)")
    return "\n".join(head + _call_rules(chosen, _ARGUMENTS_KEY[fmt])) + "\n"


# The key of a call's arguments in each form (Llama 3.x's templates write "parameters").
_ARGUMENTS_KEY = {"hermes": "arguments", "llama3": "parameters"}


def _chosen(tools: list[dict], choice) -> list[dict]:
    """The tools a forced reply may call: all under "required", else the named one."""
    if choice == "required":
        return tools
    if (isinstance(choice, dict) and choice.get("type") == "function"
            and isinstance(choice.get("function"), dict)):
        name = choice["function"].get("name")
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise ValueError(f"tool_choice.function.name: no tool named {name!r}")
        return chosen
    raise ValueError("tool_choice: must be 'required' or "
                     '{"type": "function", "function": {"name": ...}}')


def _call_rules(chosen: list[dict], key: str) -> list[str]:
    """fn_i: `{"name": "N", "<key>": ` args_i `}` and args_i: N's schema, per tool; one rule
    per tool so that each name goes only with its own schema."""
    lines = []
    for i, tool in enumerate(chosen):
        fn = tool["function"]
        schema = copy.deepcopy(fn.get("parameters") or NO_PARAMETERS)
        schema.setdefault("x-guidance", JSON_LAYOUT)
        prefix = json.dumps('{"name": ' + json.dumps(fn["name"]) + f', "{key}": ')
        lines.append(f'fn_{i}: {prefix} args_{i} "}}"')
        lines.append(f"args_{i}: %json {json.dumps(schema)}")
    return lines


def _more_calls(n: int) -> str:
    """Up to n more calls, each after a newline: ' ("\\n" call ("\\n" call)?)?' for n = 2."""
    return "" if n <= 0 else f' ("\\n" call{_more_calls(n - 1)})?'


class BufferedCalls:
    """CallStream's interface for formats parsed only once the reply is complete (Llama
    3.x's JSON form, which has no opening tag to stream from): nothing is released until
    close(), which gives parse()'s content and calls as events."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.text: list[str] = []
        self._calls: list[ToolCall] = []

    @property
    def calls(self) -> list[ToolCall]:
        return list(self._calls)

    def feed(self, text: str) -> list:
        self.text.append(text)
        return []

    def close(self) -> list:
        content, self._calls = parse("".join(self.text), self.fmt)
        out: list = [Content(content)] if content else []
        for i, c in enumerate(self._calls):
            out += [CallStart(i, c.id, c.name), Arguments(i, c.arguments)]
        return out


# A reply that is only calls written as JSON objects, bare or in ``` fences, as Qwen2.5-Coder
# 1.5B writes them under tool_choice auto (llama.cpp's Hermes parser accepts the same).
_FENCE_OPEN = re.compile(r"```[A-Za-z]*[ \t]*\n?")


def parse_loose(text: str, names) -> list[ToolCall] | None:
    """The calls when the whole reply is one or more `{"name": N, "arguments": {...}}`
    objects (each bare or in a ``` fence, "parameters" accepted too) naming declared tools
    (`names`); None when it is anything else (then it is content, or hermes blocks)."""
    s, i, calls = text, _skip(text, 0), []
    if i == len(s):
        return None
    while i < len(s):
        fence = _FENCE_OPEN.match(s, i)
        if fence:
            i = _skip(s, fence.end())
        found = _read_call(s, i, ("arguments", "parameters"))
        if found is None or found[0] not in names:
            return None
        name, a, b, end = found
        calls.append(ToolCall(_new_id(), name, s[a:b]))
        i = _skip(s, end)
        if fence:
            if not s.startswith("```", i):
                return None
            i = _skip(s, i + 3)
        while i < len(s) and s[i] in ";,":
            i = _skip(s, i + 1)
    return calls


class HermesCalls:
    """What the server streams for Hermes templates: CallStream, except that a reply whose
    first visible character is '{' or '`' (a JSON call, bare or fenced, or a code block)
    is held until it is complete, then given as calls (parse_loose, declared names only)
    or, failing that, as CallStream reads it. Replies starting with text or <tool_call>
    stream as they come."""

    def __init__(self, names) -> None:
        self.names = frozenset(names)
        self.stream = CallStream()
        self.held: list[str] | None = []  # None once streaming
        self._loose: list[ToolCall] | None = None

    @property
    def calls(self) -> list[ToolCall]:
        return list(self._loose) if self._loose is not None else self.stream.calls

    def feed(self, text: str) -> list:
        if self.held is None:
            return self.stream.feed(text)
        self.held.append(text)
        head = "".join(self.held).lstrip()
        if not head or head[0] in "{`":
            return []
        text, self.held = "".join(self.held), None
        return self.stream.feed(text)

    def close(self) -> list:
        if self.held is None:
            return self.stream.close()
        text, self.held = "".join(self.held), None
        loose = parse_loose(text, self.names)
        if loose is None:
            return self.stream.feed(text) + self.stream.close()
        self._loose = loose
        return [ev for i, c in enumerate(loose)
                for ev in (CallStart(i, c.id, c.name), Arguments(i, c.arguments))]
