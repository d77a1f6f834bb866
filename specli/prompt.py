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
        return env.from_string(self.source)

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        import jinja2

        try:
            tpl = self._compiled
            return tpl.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                              bos_token=self.bos_token, eos_token=self.eos_token, tools=None)
        except jinja2.TemplateError as e:
            raise SpecliError(f"chat template error: {e}") from None


def tokenize_chat(model, template: ChatTemplate, messages: Sequence[dict],
                  add_generation_prompt: bool = True) -> list[int]:
    """Render `messages` with `template` and tokenize, adding BOS only if the text lacks it."""
    text = template.render(messages, add_generation_prompt)
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
