"""Requests, validated at the edge: JSON body -> pydantic model -> a `Job` spec the worker runs.

Types are checked strictly (a string is not a number, 1 is not true); ranges are the
ones `run` enforces, checked by the same config objects (SamplingConfig, SpecConfig), so
a limit lives in one place. A field the request leaves out takes the server's default.
Unknown fields are ignored, as OpenAI-compatible servers do; known fields this server
does not support are refused with a 400 naming them, unless they hold their default
(clients often send `tools: []` or `n: 1`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from specli.config import SamplingConfig, SpecConfig, parse_k
from specli.core.grammar import Grammar, GrammarError
from specli.core.logits import REPEAT_LAST_N, LogitRules
from specli.errors import UsageError
from specli.server.errors import bad_request

MAX_STOPS = 4
_HAS_STRICT = "strict" in {f.name for f in dataclasses.fields(SpecConfig)}
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
              "tool": "tool"}
TOOL_CHOICES = ("none", "auto", "required")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: str
    text: Any = None


class Message(_Strict):
    role: str
    content: Union[str, list[TextPart], None] = None
    tool_calls: Any = None  # assistant: [{id, type: "function", function: {name, arguments}}]
    tool_call_id: str | None = None  # tool: the call it answers
    name: str | None = None
    function_call: Any = None


class JsonSchemaFormat(_Strict):
    name: str | None = None
    description: str | None = None
    schema_: Any = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    """OpenAI's response_format; llama-server's {"type": "json_object", "schema": ...} too."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
    schema_: Any = Field(default=None, alias="schema")


class StreamOptions(_Strict):
    include_usage: bool | None = None


class Speculative(_Strict):
    """specli's extension: override the server's speculation for one request."""

    k: Union[int, str, None] = None
    drafter: str | None = None  # a name in core.drafters.DRAFTERS
    strict: bool | None = None

    @field_validator("drafter")
    @classmethod
    def _registered(cls, name: str | None) -> str | None:
        from specli.core.drafters import DRAFTER_NAMES

        if name is not None and name not in DRAFTER_NAMES:
            raise ValueError(f"must be one of {', '.join(map(repr, DRAFTER_NAMES))}")
        return name


class Prediction(_Strict):
    """OpenAI's Predicted Outputs: text the reply is expected to repeat (a file being
    edited). specli drafts from it; the output stays exactly the target's."""

    type: Literal["content"]
    content: Union[str, list[TextPart]]


class _Common(_Strict):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # llama-server's extension
    min_p: float | None = None  # llama-server's extension
    seed: int | None = Field(default=None, ge=0)
    stop: Union[str, list[str], None] = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = None
    speculative: Speculative | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> added logit
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: ResponseFormat | None = None
    json_schema: Any = None  # llama-server's: a JSON schema the output validates against
    grammar: str | None = None  # llama-server's: a GBNF grammar the output keeps to
    repeat_penalty: float | None = None  # llama-server's (1: off)
    repeat_last_n: int | None = None  # llama-server's: its window (default 64)
    # Known but unsupported: accepted here only so that a non-default value is refused by name.
    best_of: Any = None


class ChatBody(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: Union[str, dict, None] = None
    parallel_tool_calls: bool | None = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Prediction | None = None


class CompletionBody(_Common):
    prompt: str
    logprobs: int | None = Field(default=None, ge=0, le=5)  # the legacy form: alternatives
    echo: Any = None
    suffix: Any = None


class ExtraChunk(BaseModel):
    """An `input_extra` entry: {"filename": ..., "text": ...}; other keys (a client's
    `time`) are ignored. Checked by hand to give llama-server's messages."""

    model_config = ConfigDict(extra="ignore")
    text: Any = None
    filename: Any = None


class InfillBody(_Common):
    """llama-server's /infill, as llama.vscode and llama.vim send it (see fim.py)."""

    input_prefix: Union[str, list[Union[str, int]]] = ""
    input_suffix: Union[str, list[Union[str, int]]] = ""
    input_extra: Any = None
    prompt: str = ""
    n_predict: int | None = None
    samplers: Union[list[str], str, None] = None
    n_indent: int = Field(default=0, ge=0)
    t_max_predict_ms: int = Field(default=0, ge=0)
    response_fields: list[str] | None = None
    return_tokens: bool = False
    n_cmpl: int | None = None
    # Read and ignored, documented (README): the slot, llama-server's prompt-cache switch
    # (specli's reuse is exact, so it always reuses) and its unimplemented prompt timeout.
    id_slot: Any = None
    cache_prompt: Any = None
    t_max_prompt_ms: Any = None
    timings_per_token: Any = None
    # Known but unsupported.
    n_probs: Any = None
    lora: Any = None


# field -> values that mean "not asked for" (anything else is refused by name)
UNSUPPORTED_DEFAULTS: dict[str, tuple] = {
    "functions": (None, []), "function_call": (None, "none", "auto"),
    "best_of": (None, 1), "audio": (None,),
    "modalities": (None, ["text"]), "echo": (None, False),
    "n": (None, 1), "n_probs": (None, 0), "lora": (None, []),
}


UNSUPPORTED_WHY = {
    "n": "one choice per request: the server runs one generation at a time, so n choices "
         "would take n times as long as n requests, which a client can send itself",
    "best_of": "one generation per request, as for n",
    "n_probs": "token probabilities are given by /v1/completions' logprobs",
    "lora": "adapters are not loaded",
}
MAX_COMPLETIONS = 4  # /infill's n_cmpl: alternatives, generated one after another
# llama-server's samplers that specli has, and the value that turns each off when a
# `samplers` list leaves it out (the others are named in generation_settings as not applied).
SAMPLER_FILTERS = {"top_k": ("top_k", 0), "top_p": ("top_p", 1.0), "min_p": ("min_p", 0.0),
                   "temperature": ("temperature", 1.0)}
MAX_INFILL_CANDIDATES = 512  # the infill sampler compares candidates pairwise: needs top_k
LLAMA_SAMPLERS = {"penalties", "dry", "top_n_sigma", "top_k", "typ_p", "typical_p", "top_p",
                  "min_p", "xtc", "temperature", "infill"}


@dataclass(frozen=True)
class Defaults:
    """The server's defaults (serve's options) for what a request leaves out."""

    sampling: SamplingConfig
    spec: SpecConfig
    drafter: str


@dataclass(frozen=True)
class InfillSpec:
    """A fill-in-the-middle request (/infill, or /v1/completions with a suffix)."""

    prefix: Union[str, tuple]
    suffix: Union[str, tuple]
    extra: tuple = ()  # fim.Chunk
    prompt: str = ""  # text typed after the prefix (the cursor line's start)
    n_indent: int = 0
    t_max_predict_ms: int = 0
    warm_only: bool = False  # n_predict 0: evaluate the prompt into the cache, generate nothing
    native: bool = True  # llama-server's response shape (False: OpenAI's completions)
    response_fields: tuple[str, ...] | None = None
    return_tokens: bool = False
    n_choices: int = 1
    ignored_samplers: tuple[str, ...] = ()
    infill_sampler: bool = False  # llama.cpp's infill sampler, after the other filters


@dataclass(frozen=True)
class Job:
    """One validated request: what to generate and how to answer."""

    kind: Literal["chat", "completion", "infill"]
    messages: tuple[dict, ...]  # chat: {"role", "content"}, system/user/assistant
    prompt: str  # completion: fed without the chat template
    sampling: SamplingConfig
    spec: SpecConfig
    drafter: str
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    model: str | None
    prediction: str | None = None  # chat: the predicted output's text (drafted from)
    rules: LogitRules | None = None  # logit_bias, presence and frequency penalties
    logprobs: int | None = None  # chat: alternatives per token's logprob (None: no logprobs)
    grammar: Grammar | None = None  # response_format, json_schema or grammar: the output's
    grammar_param: str | None = None  # the field it came from (a 400 names it)
    tools: tuple[dict, ...] | None = None  # chat: the functions the model may call
    tool_choice: Union[str, dict] = "auto"  # "none" | "auto" | "required" | a named function
    parallel_tool_calls: bool = True
    infill: InfillSpec | None = None  # fill in the middle (then `prompt` is unused)
    client: str | None = None  # who sent it (address and key): a newer infill cancels theirs


def parse_json(raw: bytes) -> dict:
    """The body as a JSON object; 400 for anything else (NaN and Infinity included)."""
    def no_constants(name: str):
        raise ValueError(f"{name} is not valid JSON")

    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError) as e:
        raise bad_request(f"the body is not valid JSON: {e}") from None
    except RecursionError:  # nested deeper than the parser goes
        raise bad_request("the body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    return data


def parse_chat(data: dict, defaults: Defaults) -> Job:
    from specli.toolcalls import template_messages

    body = _validate(ChatBody, data)
    messages = [_message(i, m) for i, m in enumerate(body.messages)]
    try:
        messages = tuple(template_messages(messages))
    except ValueError as e:  # "messages[3].tool_call_id: no earlier assistant tool call ..."
        raise bad_request(str(e), str(e).split(":", 1)[0]) from None
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    job = _job(body, defaults, "chat", messages=messages, prompt="",
               max_tokens=(param, max_tokens))
    if body.prediction is not None:
        job = dataclasses.replace(job, prediction=_prediction(body.prediction))
    return _tools(body, job)


def _tools(body: ChatBody, job: Job) -> Job:
    """tools, tool_choice and parallel_tool_calls, checked; `required` or a named function
    becomes the grammar of a call whose arguments validate against its schema."""
    from specli.toolcalls import check_tools

    choice = body.tool_choice if body.tool_choice is not None else "auto"
    if isinstance(choice, str) and choice not in TOOL_CHOICES:
        raise bad_request(f"tool_choice: must be 'none', 'auto', 'required' or "
                          f"{{'type': 'function', 'function': {{'name': ...}}}}, got {choice!r}",
                          "tool_choice")
    if not body.tools:
        if choice not in ("none", "auto"):
            raise bad_request("tool_choice: needs tools", "tool_choice")
        return job
    try:
        tools = tuple(check_tools(body.tools))
    except ValueError as e:  # "tools[1].function.name: required"
        raise bad_request(str(e), str(e).split(":", 1)[0]) from None
    if isinstance(choice, dict):
        fn = choice.get("function") if choice.get("type") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str):
            raise bad_request("tool_choice: a named choice is {'type': 'function', "
                              "'function': {'name': ...}}", "tool_choice")
        if name not in {t["function"]["name"] for t in tools}:
            raise bad_request(f"tool_choice.function.name: no tool is named {name!r}",
                              "tool_choice.function.name")
    if choice != "none" and choice != "auto" and job.grammar is not None:
        raise bad_request(f"{job.grammar_param}: cannot be combined with tool_choice "
                          f"{'required' if choice == 'required' else 'naming a function'}",
                          job.grammar_param)
    return dataclasses.replace(job, tools=tools, tool_choice=choice,
                               parallel_tool_calls=body.parallel_tool_calls is not False)


def _prediction(p: Prediction) -> str | None:
    content = p.content
    if not isinstance(content, str):
        content = _texts(content, "prediction.content", "")
    return content or None


def parse_completion(data: dict, defaults: Defaults) -> Job:
    body = _validate(CompletionBody, data)
    suffix = body.suffix if body.suffix is not None else ""
    if not isinstance(suffix, str):
        raise bad_request("suffix: must be a string", "suffix")
    if not body.prompt and not suffix:
        raise bad_request("prompt: must not be empty", "prompt")
    job = _job(body, defaults, "completion", messages=(), prompt=body.prompt,
               max_tokens=("max_tokens", body.max_tokens))
    if suffix:  # fill in the middle, between the prompt and the suffix
        job = dataclasses.replace(job, infill=InfillSpec(body.prompt, suffix, native=False))
    return job


def parse_infill(data: dict, defaults: Defaults) -> Job:
    """llama-server's /infill: the FIM fields, its sampler list and editor stops."""
    from specli.fim import Chunk

    body = _validate(InfillBody, data)
    n_choices = body.n_cmpl if body.n_cmpl is not None else (body.n or 1)
    if not 1 <= n_choices <= MAX_COMPLETIONS:
        raise bad_request(f"Field 'n_cmpl': Value must be between 1 and {MAX_COMPLETIONS}",
                          "n_cmpl")
    if n_choices > 1 and body.stream:
        raise bad_request("n_cmpl: several completions are answered together, not streamed",
                          "n_cmpl")
    extra = []
    chunks = body.input_extra if body.input_extra is not None else []
    if not isinstance(chunks, list):
        raise bad_request('"input_extra" must be an array of {"filename": string, '
                          '"text": string}', "input_extra")
    for i, raw in enumerate(chunks):
        c = ExtraChunk.model_validate(raw) if isinstance(raw, dict) else None
        if c is None or not isinstance(c.text, str):
            raise bad_request(f'input_extra[{i}]: extra_context chunk must contain a "text" '
                              'field with a string value', f"input_extra[{i}].text")
        if c.filename is not None and not isinstance(c.filename, str):
            raise bad_request(f'input_extra[{i}]: extra_context chunk\'s "filename" field '
                              'must be a string', f"input_extra[{i}].filename")
        extra.append(Chunk(c.text, c.filename) if c.filename is not None else Chunk(c.text))
    n_predict = body.n_predict if body.n_predict is not None else body.max_tokens
    if n_predict is not None and n_predict < -1:
        raise bad_request(f"n_predict: must be -1 (no limit but the server's), 0 (only "
                          f"evaluate the prompt) or more, got {n_predict}", "n_predict")
    warm = n_predict == 0
    max_tokens = None if n_predict in (None, -1, 0) else n_predict
    body, ignored = _samplers(body)
    job = _job(body, defaults, "infill", messages=(), prompt="",
               max_tokens=("n_predict", max_tokens))
    infill_sampler = "infill" in (body.samplers or ()) and not job.sampling.greedy
    if infill_sampler and not 0 < job.sampling.top_k <= MAX_INFILL_CANDIDATES:
        raise bad_request(f"samplers: 'infill' needs 'top_k' before it, with top_k from 1 to "
                          f"{MAX_INFILL_CANDIDATES}", "samplers")
    as_tuple = (lambda v: v if isinstance(v, str) else tuple(v))
    spec = InfillSpec(as_tuple(body.input_prefix), as_tuple(body.input_suffix), tuple(extra),
                      body.prompt, body.n_indent, body.t_max_predict_ms, warm,
                      response_fields=(tuple(body.response_fields)
                                       if body.response_fields is not None else None),
                      return_tokens=body.return_tokens, n_choices=n_choices,
                      ignored_samplers=ignored, infill_sampler=infill_sampler)
    return dataclasses.replace(job, infill=spec)


def _samplers(body: InfillBody) -> tuple[InfillBody, tuple[str, ...]]:
    """llama-server's `samplers` list, read as llama-server reads it: top_k, top_p, min_p
    and temperature apply only when listed (no temperature: 1, as there), `infill` is
    llama.cpp's infill sampler (applied after the filters; see core.sampling); the rest
    (dry, xtc, penalties...) are not applied, and named so in the answer."""
    names = body.samplers
    if names is None:
        return body, ()
    if isinstance(names, str):  # llama-server's letters form ("kpm...")
        raise bad_request("samplers: give a list of names (the letters form is not read)",
                          "samplers")
    unknown = [n for n in names if n not in LLAMA_SAMPLERS]
    if unknown:
        raise bad_request(f"samplers: unknown sampler {unknown[0]!r} (known: "
                          f"{', '.join(sorted(LLAMA_SAMPLERS))})", "samplers")
    off = {field: value for name, (field, value) in SAMPLER_FILTERS.items() if name not in names}
    ignored = tuple(n for n in names if n not in SAMPLER_FILTERS and n != "infill")
    return body.model_copy(update=off), ignored


def _validate(model: type[BaseModel], data: dict):
    try:
        body = model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = _param_name(err["loc"])
        raise bad_request(f"{param}: {err['msg']}" if param else err["msg"], param) from None
    for name, defaults in UNSUPPORTED_DEFAULTS.items():
        if model is InfillBody and name == "n":
            continue  # llama-server's /infill reads n as n_cmpl (checked there)
        if name in model.model_fields and not _is_default(getattr(body, name), defaults):
            why = UNSUPPORTED_WHY.get(name, "leave it out")
            raise bad_request(f"{name}: not supported by specli serve ({why})", name,
                              code="unsupported_parameter")
    return body


def _is_default(value, defaults: tuple) -> bool:
    return any(value == d for d in defaults)


def _param_name(loc) -> str:
    """('messages', 0, 'content') -> 'messages[0].content'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[TextPart]", "int", "function-after[...]") or "[" in str(part):
            continue  # pydantic names the union member it tried; clients know the field
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(i: int, m: Message) -> dict:
    role = CHAT_ROLES.get(m.role)
    if role is None:
        raise bad_request(f"messages[{i}].role: {m.role!r} is not supported (system, developer, "
                          "user or assistant)", f"messages[{i}].role")
    if m.function_call:
        raise bad_request(f"messages[{i}].function_call: the legacy function call is not "
                          "supported (use tool_calls)", f"messages[{i}].function_call",
                          code="unsupported_parameter")
    if m.tool_calls and role != "assistant":
        raise bad_request(f"messages[{i}].tool_calls: only assistant messages have tool calls",
                          f"messages[{i}].tool_calls")
    out = {"role": role, "content": _content(i, m.content, role)}
    if m.tool_calls:
        out["tool_calls"] = m.tool_calls
    if role == "tool":
        if not m.tool_call_id:
            raise bad_request(f"messages[{i}].tool_call_id: required in a tool message",
                              f"messages[{i}].tool_call_id")
        out["tool_call_id"] = m.tool_call_id
        if m.name:
            out["name"] = m.name
    return out


def _content(i: int, content, role: str) -> str:
    if content is None:
        if role == "assistant":  # a reply that only called tools has no content
            return ""
        raise bad_request(f"messages[{i}].content: required", f"messages[{i}].content")
    if isinstance(content, str):
        return content
    return _texts(content, f"messages[{i}].content", "\n")


def _texts(parts: list[TextPart], param: str, sep: str) -> str:
    """Content given as parts: their texts joined by `sep`; 400 for any other kind."""
    texts = []
    for j, part in enumerate(parts):
        if part.type != "text" or not isinstance(part.text, str):
            raise bad_request(f"{param}[{j}]: only text parts are supported "
                              f"(got type {part.type!r})", f"{param}[{j}]",
                              code="unsupported_parameter")
        texts.append(part.text)
    return sep.join(texts)


def _job(body: _Common, defaults: Defaults, kind, *, messages, prompt, max_tokens) -> Job:
    sampling = _configured(defaults.sampling, [
        ("temperature", "temperature", body.temperature), ("top_p", "top_p", body.top_p),
        ("top_k", "top_k", body.top_k), ("min_p", "min_p", body.min_p)])
    spec_opts = body.speculative or Speculative()
    k = _k(spec_opts.k) if spec_opts.k is not None else None
    strict = spec_opts.strict if _HAS_STRICT else None  # only where the engine has a strict mode
    spec = _configured(defaults.spec, [
        (max_tokens[0], "max_tokens", max_tokens[1]), ("seed", "seed", body.seed),
        ("speculative.k", "k", k), ("speculative.drafter", "drafter", spec_opts.drafter),
        ("speculative.strict", "strict", strict)])
    grammar, grammar_param = _grammar(body)
    return Job(kind, messages, prompt, sampling, spec, spec_opts.drafter or defaults.drafter,
               _stops(body.stop), bool(body.stream),
               bool(body.stream_options and body.stream_options.include_usage), body.model,
               rules=_rules(body), logprobs=_logprobs(body), grammar=grammar,
               grammar_param=grammar_param)


def _grammar(body: _Common) -> tuple[Grammar | None, str | None]:
    """The output's grammar from response_format, json_schema or grammar (one of them)."""
    given = []
    fmt = body.response_format
    if fmt is not None and fmt.type != "text":
        if fmt.type == "json_schema":
            inner = fmt.json_schema
            if inner is None or inner.schema_ is None:
                raise bad_request("response_format.json_schema.schema: required",
                                  "response_format.json_schema.schema")
            given.append(("response_format.json_schema.schema", "json", inner.schema_))
        elif fmt.schema_ is not None:  # llama-server: json_object with a schema
            given.append(("response_format.schema", "json", fmt.schema_))
        else:
            given.append(("response_format", "object", None))
    if body.json_schema is not None:
        given.append(("json_schema", "json", body.json_schema))
    if body.grammar:
        given.append(("grammar", "gbnf", body.grammar))
    if not given:
        return None, None
    if len(given) > 1:
        raise bad_request(f"{given[1][0]}: give one of response_format, json_schema and "
                          f"grammar, not several", given[1][0])
    param, kind, value = given[0]
    try:
        if kind == "object":
            return Grammar.json_object(), param
        if kind == "json":
            if not isinstance(value, (dict, str)):
                raise GrammarError("a JSON schema is an object")
            return Grammar.json_schema(value), param
        return Grammar.gbnf(value), param
    except GrammarError as e:
        raise bad_request(f"{param}: {e}", param) from None


def _logprobs(body: _Common) -> int | None:
    """Chat's logprobs/top_logprobs: the alternatives wanted, or None for no logprobs."""
    if isinstance(body, InfillBody):  # llama-server's n_probs: refused above
        return None
    if isinstance(body, CompletionBody):  # legacy: logprobs = how many alternatives (0..5)
        return body.logprobs
    if not body.logprobs:
        if body.top_logprobs:
            raise bad_request("top_logprobs: needs logprobs: true", "top_logprobs")
        return None
    return body.top_logprobs or 0


def _rules(body: _Common) -> LogitRules | None:
    """logit_bias and the penalties as LogitRules (None when they change nothing)."""
    bias = {}
    for key, value in (body.logit_bias or {}).items():
        if not key.strip().isdigit():
            raise bad_request(f"logit_bias: keys are token ids, got {key!r}", "logit_bias")
        bias[int(key)] = value
    try:
        return LogitRules.of(bias, body.presence_penalty or 0.0, body.frequency_penalty or 0.0,
                             body.repeat_penalty if body.repeat_penalty is not None else 1.0,
                             body.repeat_last_n if body.repeat_last_n is not None
                             else REPEAT_LAST_N)
    except ValueError as e:  # out of OpenAI's ranges: "presence_penalty must be in [-2, 2]..."
        param = str(e).split(" ", 1)[0].rstrip(":")
        raise bad_request(str(e), param) from None


def _configured(config, fields: list[tuple[str, str, Any]]):
    """`config` with each given field replaced; the config's own check names the field."""
    for param, name, value in fields:
        if value is None:
            continue
        try:
            config = dataclasses.replace(config, **{name: value})
        except UsageError as e:  # "--top-p must be in (0, 1], got 2.0": name the JSON field
            message = str(e).split(" ", 1)[-1] if str(e).startswith("--") else str(e)
            raise bad_request(f"{param}: {message}", param) from None
    return config


def _k(value) -> int | str:
    if isinstance(value, bool):
        raise bad_request("speculative.k: an integer or 'auto'", "speculative.k")
    try:
        return parse_k(str(value))
    except UsageError as e:
        raise bad_request(f"speculative.k: {str(e).split(' ', 1)[-1]}", "speculative.k") from None


def _stops(stop) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise bad_request(f"stop: at most {MAX_STOPS} sequences, got {len(stops)}", "stop")
    return tuple(s for s in stops if s)
