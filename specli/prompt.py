"""Prompts -> token ids: the target's own chat template (Jinja, from its GGUF), or raw text.

Tokens are computed once, with the target's tokenizer, and fed to both models: the
draft must share the target's vocabulary (checked at load), so the ids mean the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

from specli.errors import SpecliError

# Used when the target GGUF carries no chat template (documented in the README).
FALLBACK_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    bos_token: str
    eos_token: str
    is_fallback: bool

    @staticmethod
    def of(model) -> "ChatTemplate":
        """The model's template, or the plain fallback (is_fallback=True: callers warn)."""
        src = model.chat_template()
        return ChatTemplate(src or FALLBACK_TEMPLATE, model.token_text(model.bos),
                            model.token_text(model.eos), src is None)

    @cached_property
    def _compiled(self):
        """The Jinja template, compiled once (compiling costs milliseconds; rendering does not)."""
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg: str):
            raise SpecliError(f"chat template error: {msg}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.filters["tojson"] = _tojson
        return env.from_string(self.source)

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True,
               tools: Sequence[dict] | None = None) -> str:
        """The prompt text; `tools`: OpenAI tool definitions, for templates that list them
        (Qwen2.5's puts them in the system turn)."""
        import jinja2

        try:
            tpl = self._compiled
            return tpl.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                              bos_token=self.bos_token, eos_token=self.eos_token,
                              tools=list(tools) if tools else None)
        except jinja2.TemplateError as e:
            raise SpecliError(f"chat template error: {e}") from None


def _tojson(value, indent=None, ensure_ascii=False, separators=None, sort_keys=False):
    """Templates' `tojson` as Hugging Face's and llama.cpp's define it: plain JSON. Jinja's
    own escapes <, > and & for HTML, so a tool's arguments holding code would reach the
    model as \u003c... instead of what the model wrote."""
    import json

    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=separators,
                      sort_keys=sort_keys)


def tokenize_chat(model, template: ChatTemplate, messages: Sequence[dict],
                  add_generation_prompt: bool = True, tools: Sequence[dict] | None = None
                  ) -> list[int]:
    """Render `messages` with `template` and tokenize, adding BOS only if the text lacks it."""
    text = template.render(messages, add_generation_prompt, tools)
    add_bos = model.adds_bos and not (template.bos_token and text.startswith(template.bos_token))
    return model.tokenize(text, add_special=add_bos, parse_special=True)


def build_prompt(model, prompt: str, *, system: str | None = None, raw: bool = False
                 ) -> tuple[list[int], ChatTemplate | None]:
    """One-shot prompt -> tokens. Returns the template used (None with raw=True)."""
    if raw:
        return model.tokenize(prompt, add_special=True, parse_special=False), None
    template = ChatTemplate.of(model)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}]
    return tokenize_chat(model, template, messages), template
