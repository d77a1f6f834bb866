"""Built-in prompt suites and the user prompts-file loader."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from specli.errors import UsageError
from specli.bench.suites import SUITE_NAMES, Prompt, load_prompts_file, load_suite


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_builtin_suite_has_eight_unique_prompts(name):
    prompts = load_suite(name)
    assert len(prompts) >= 8
    assert len({p.id for p in prompts}) == len(prompts)
    assert all(p.suite == name and p.id.startswith(f"{name}-") for p in prompts)
    assert all(p.prompt.strip() for p in prompts)


def test_all_concatenates_in_order():
    everything = load_suite("all")
    expected = [p for name in SUITE_NAMES for p in load_suite(name)]
    assert everything == expected
    assert len({p.id for p in everything}) == len(everything)


def test_edit_prompts_carry_a_code_block_of_15_to_40_lines():
    for p in load_suite("edit"):
        blocks = re.findall(r"```[a-z]*\n(.*?)\n```", p.prompt, flags=re.S)
        assert len(blocks) == 1, p.id
        assert 15 <= blocks[0].count("\n") + 1 <= 40, p.id


def test_summarize_prompts_have_a_passage_then_the_request():
    for p in load_suite("summarize"):
        passage, _, request = p.prompt.rpartition("\n\n")
        assert request.startswith("Summarize"), p.id
        assert 150 <= len(passage.split()) <= 300, p.id


def test_prompt_is_frozen():
    p = Prompt(id="x", prompt="y", suite="z")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.id = "other"  # type: ignore[misc]


def test_unknown_suite_lists_valid_names():
    with pytest.raises(UsageError, match="code, edit, chat, summarize, all"):
        load_suite("poetry")


def write(tmp_path, *lines, name="mine.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_user_file_with_and_without_ids(tmp_path):
    path = write(
        tmp_path,
        json.dumps({"id": "a", "prompt": "first"}),
        "",
        json.dumps({"prompt": "second", "extra": 1}),
        json.dumps({"id": 7, "prompt": "third"}),
    )
    prompts = load_prompts_file(path)
    assert prompts == [
        Prompt("a", "first", "mine"),
        Prompt("mine-03", "second", "mine"),
        Prompt("7", "third", "mine"),
    ]
    assert load_prompts_file(str(path)) == prompts


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "ok"', "not valid JSON"),
        ('["prompt"]', "expected a JSON object"),
        ('{"id": "x"}', 'missing "prompt"'),
        ('{"prompt": "   "}', 'missing "prompt"'),
        ('{"prompt": 3}', 'missing "prompt"'),
        ('{"prompt": "ok", "id": null}', '"id" must be'),
    ],
)
def test_user_file_errors_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, json.dumps({"prompt": "fine"}), line)
    with pytest.raises(UsageError) as info:
        load_prompts_file(path)
    text = str(info.value)
    assert f"{path}:2:" in text and message in text
    assert "\n" not in text


def test_user_file_duplicate_ids(tmp_path):
    path = write(tmp_path, '{"id": "a", "prompt": "x"}', '{"id": "a", "prompt": "y"}')
    with pytest.raises(UsageError, match=r":2: duplicate id 'a'"):
        load_prompts_file(path)


def test_user_file_missing_empty_or_not_utf8(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_prompts_file(tmp_path / "nope.jsonl")
    with pytest.raises(UsageError, match="no prompts"):
        load_prompts_file(write(tmp_path, "", "  "))
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b'{"prompt": "\xff\xfe"}\n')
    with pytest.raises(UsageError, match="not UTF-8"):
        load_prompts_file(binary)
