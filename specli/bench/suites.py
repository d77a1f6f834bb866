"""Prompt suites for benchmarks: built-in ones shipped as package data, or a user's JSONL file.

A suite file has one JSON object per line: {"id": "code-01", "prompt": "..."}. Blank lines
are skipped. In a user file "id" is optional (generated from the file name and line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from specli.errors import UsageError

SUITE_NAMES: tuple[str, ...] = ("code", "edit", "chat", "summarize")
"""Built-in suites; `all` means all of them, in this order."""


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt: a stable id, the text, and the suite it came from."""

    id: str
    prompt: str
    suite: str


def load_suite(name: str) -> list[Prompt]:
    """The built-in suite `name` (code, edit, chat, summarize), or `all` of them in order."""
    if name == "all":
        return [p for suite in SUITE_NAMES for p in load_suite(suite)]
    if name not in SUITE_NAMES:
        valid = ", ".join((*SUITE_NAMES, "all"))
        raise UsageError(f"unknown prompt suite {name!r}; choose one of: {valid}")
    resource = resources.files("specli") / "data" / "suites" / f"{name}.jsonl"
    return _parse(resource.read_text(encoding="utf-8"), source=f"suite {name}", suite=name)


def load_prompts_file(path: str | Path) -> list[Prompt]:
    """Prompts from a user JSONL file; each Prompt's suite is the file's stem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: prompts file not found") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: prompts file is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read prompts file ({exc.strerror})") from None
    return _parse(text, source=str(path), suite=path.stem)


def _parse(text: str, *, source: str, suite: str) -> list[Prompt]:
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        prompt = _parse_line(line, source=source, lineno=lineno, suite=suite)
        if prompt.id in seen:
            raise UsageError(f"{source}:{lineno}: duplicate id {prompt.id!r}")
        seen.add(prompt.id)
        prompts.append(prompt)
    if not prompts:
        raise UsageError(f"{source}: no prompts (expected one JSON object per line)")
    return prompts


def _parse_line(line: str, *, source: str, lineno: int, suite: str) -> Prompt:
    where = f"{source}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise UsageError(f'{where}: expected a JSON object like {{"prompt": "..."}}')
    text = obj.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f'{where}: missing "prompt" (a non-empty string)')
    raw_id = obj.get("id", f"{suite}-{lineno:02d}")
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool) or str(raw_id) == "":
        raise UsageError(f'{where}: "id" must be a non-empty string')
    return Prompt(id=str(raw_id), prompt=text, suite=suite)


def select_prompts(suite: str, prompts: Path | None, limit: int | None) -> list[Prompt]:
    """bench's prompts: a --prompts file or a --suite, the first `limit` of each suite."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1, got {limit}")
    items = load_prompts_file(prompts) if prompts is not None else load_suite(suite)
    if limit is not None:
        seen: dict[str, int] = {}
        kept = []
        for p in items:
            seen[p.suite] = seen.get(p.suite, 0) + 1
            if seen[p.suite] <= limit:
                kept.append(p)
        items = kept
    return items
