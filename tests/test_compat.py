"""compat: the GGUF metadata reader, the pair verdicts, `specli models check` and `info`."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

# Imported before any test sets HF_HUB_CACHE/HF_ENDPOINT: huggingface_hub reads them into
# module constants at import, and other tests (conftest's real_pair) rely on the real ones.
import huggingface_hub.constants  # noqa: E402,F401

from specli.llama import gguf as specli_gguf
from specli.models import compat
from specli.errors import CompatibilityError, ModelError
from tinymodels import IM_END, n_vocab_base, special_id, vocab_tokens


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `specli ARGS` in-process through main(): (exit code, stdout, stderr)."""
    from specli.cli import main

    argv, sys.argv = sys.argv, ["specli", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


def write_vocab_only(path: Path, *, tokens: list[str], model: str = "gpt2", pre: str | None = "qwen2",
                     types: list[int] | None = None, bos: int | None = None, eos: int | None = None,
                     chat_template: str | None = "{{ messages }}") -> Path:
    """A metadata-only GGUF (no tensors): all the compatibility check reads."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    if types is not None:
        writer.add_token_types(types)
    if bos is not None:
        writer.add_bos_token_id(bos)
    if eos is not None:
        writer.add_eos_token_id(eos)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --------------------------------------------------------------------------- reader


def test_reader_matches_gguf_package(tiny_target: Path) -> None:
    import gguf

    header = specli_gguf.read_gguf(tiny_target, tensors=True)
    reader = gguf.GGUFReader(tiny_target)
    assert header.version == 3
    assert header.n_tensors == len(reader.tensors)
    assert header.n_params == sum(int(t.n_elements) for t in reader.tensors)
    for name, fld in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        ours = header.kv[name]
        if name == "tokenizer.ggml.merges":
            assert ours is None  # skipped on purpose: nothing needs the merges
        else:
            assert ours == fld.contents(), name
    assert header.kv["tokenizer.ggml.tokens"] == vocab_tokens()


def test_model_info(tiny_target: Path, tiny_target_notemplate: Path) -> None:
    info = compat.model_info(tiny_target)
    assert info["architecture"] == "llama"
    assert info["quantization"] == "F32"
    assert info["context_length"] == 4096
    assert info["vocab_size"] == n_vocab_base()
    assert info["chat_template"] is True
    assert info["file_size"] == tiny_target.stat().st_size
    assert info["parameters"] > 0
    assert compat.model_info(tiny_target_notemplate)["chat_template"] is False


@pytest.mark.parametrize("content, message", [
    (b"", "not a GGUF file"),
    (b"PK\x03\x04" + b"\0" * 64, "not a GGUF file"),
    (struct.pack("<4sIQQ", b"GGUF", 3, 0, 5), "truncated or corrupt"),  # 5 keys promised, none there
    (b"GGUF\x01\x00\x00\x00" + b"\0" * 32, "unsupported GGUF version 1"),
])
def test_reader_rejects_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message) as e:
        specli_gguf.read_gguf(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_reader_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        specli_gguf.read_gguf(tmp_path / "absent.gguf")
    with pytest.raises(ModelError, match="is a directory"):
        specli_gguf.read_gguf(tmp_path)


def test_truncated_real_header(tiny_target: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_target.read_bytes()[:2000])  # ends inside the token list
    with pytest.raises(ModelError, match="truncated"):
        specli_gguf.read_gguf(cut)


# --------------------------------------------------------------------------- verdicts


def test_identical_vocabularies_are_compatible(tiny_draft: Path, tiny_target: Path) -> None:
    report = compat.check_pair(tiny_draft, tiny_target)
    assert report.verdict == "compatible"
    assert report.reasons == [] and report.notes == []
    assert report.n_vocab_common == report.n_vocab_draft == report.n_vocab_target == n_vocab_base()
    assert report.specials["eos"] == (special_id(IM_END), special_id(IM_END))
    assert report.target_chat_template


def test_padded_vocabulary_is_masked(tiny_draft_padded: Path, tiny_target: Path) -> None:
    for draft, target in ((tiny_draft_padded, tiny_target), (tiny_target, tiny_draft_padded)):
        report = compat.check_pair(draft, target)
        assert report.verdict == "masked"
        assert report.n_vocab_common == n_vocab_base()
        assert {report.n_vocab_draft, report.n_vocab_target} == {n_vocab_base(), n_vocab_base() + 128}
        assert "masked in both distributions" in report.reasons[0]
        assert report.ok


def test_differing_token_texts_are_incompatible(tiny_draft_mismatch: Path, tiny_target: Path) -> None:
    report = compat.check_pair(tiny_draft_mismatch, tiny_target)
    assert report.verdict == "incompatible" and not report.ok
    assert report.n_text_diffs == 16  # 8 swapped pairs
    assert len(report.text_diffs) == compat.N_SHOWN_DIFFS
    first_id, draft_text, target_text = report.text_diffs[0]
    assert first_id == 256 and draft_text != target_text
    assert "16 of" in report.reasons[0] and "different texts" in report.reasons[0]


def test_tokenizer_model_mismatch(tmp_path: Path) -> None:
    tokens = [f"t{i}" for i in range(50)]
    a = write_vocab_only(tmp_path / "a.gguf", tokens=tokens, model="gpt2")
    b = write_vocab_only(tmp_path / "b.gguf", tokens=tokens, model="llama", pre=None)
    report = compat.check_pair(a, b)
    assert report.verdict == "incompatible"
    assert "tokenizer models differ (draft gpt2, target llama)" in report.reasons[0]
    assert any("pre-tokenizers differ" in n for n in report.notes)


def test_notes_do_not_change_the_verdict(tmp_path: Path) -> None:
    tokens = [f"t{i}" for i in range(50)]
    draft = write_vocab_only(tmp_path / "d.gguf", tokens=tokens, types=[1] * 50, bos=0, eos=1)
    target = write_vocab_only(tmp_path / "t.gguf", tokens=tokens, types=[1] * 49 + [3], bos=0, eos=2,
                              pre="llama-bpe", chat_template=None)
    report = compat.check_pair(draft, target)
    assert report.verdict == "compatible"
    notes = " | ".join(report.notes)
    assert "eos token ids differ (draft 1, target 2)" in notes
    assert "pre-tokenizers differ" in notes
    assert "1 shared ids differ in token type (first: id 49, normal vs control)" in notes
    assert "no chat template" in notes


def test_target_eos_outside_common_range_is_noted(tmp_path: Path) -> None:
    draft = write_vocab_only(tmp_path / "d.gguf", tokens=[f"t{i}" for i in range(40)], eos=30)
    target = write_vocab_only(tmp_path / "t.gguf", tokens=[f"t{i}" for i in range(50)], eos=45)
    report = compat.check_pair(draft, target)
    assert report.verdict == "masked"
    assert any("eos token 45 is outside the common range" in n for n in report.notes)


def test_ensure_compatible(tiny_draft: Path, tiny_draft_mismatch: Path, tiny_target: Path) -> None:
    assert compat.ensure_compatible(tiny_draft, tiny_target).verdict == "compatible"
    with pytest.raises(CompatibilityError) as e:
        compat.ensure_compatible(tiny_draft_mismatch, tiny_target)
    message = str(e.value)
    assert "draft-mismatch.gguf" in message and "target.gguf" in message
    assert "different texts" in message and "\n" not in message
    forced = compat.ensure_compatible(tiny_draft_mismatch, tiny_target, force=True)
    assert forced.verdict == "incompatible"


def test_report_json_roundtrip(tiny_draft_mismatch: Path, tiny_target: Path) -> None:
    data = json.loads(json.dumps(compat.check_pair(tiny_draft_mismatch, tiny_target).to_dict()))
    assert data["verdict"] == "incompatible"
    assert data["text_diffs"][0]["id"] == 256
    assert data["tokenizer_model"] == {"draft": "gpt2", "target": "gpt2"}


# --------------------------------------------------------------------------- CLI


def test_cli_check_compatible(capsys, tiny_draft: Path, tiny_target: Path) -> None:
    code, out, err = run_cli(capsys, "models", "check", str(tiny_draft), str(tiny_target))
    assert code == 0, err
    assert "token texts" in out and "compatible" in out
    assert err == ""


def test_cli_check_masked_json(capsys, tiny_draft_padded: Path, tiny_target: Path) -> None:
    code, out, err = run_cli(capsys, "models", "check", str(tiny_draft_padded), str(tiny_target), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["verdict"] == "masked"
    assert data["n_vocab_common"] == n_vocab_base()


def test_cli_check_incompatible(capsys, tiny_draft_mismatch: Path, tiny_target: Path) -> None:
    code, out, err = run_cli(capsys, "models", "check", str(tiny_draft_mismatch), str(tiny_target))
    assert code == 1
    assert "incompatible" in out and "id 256" in out  # the report, on stdout
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("specli: error: draft draft-mismatch.gguf and target target.gguf")


def test_cli_check_not_a_gguf(capsys, tmp_path: Path, tiny_target: Path) -> None:
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("hello")
    code, out, err = run_cli(capsys, "models", "check", str(bogus), str(tiny_target))
    assert code == 1 and out == ""
    assert err.strip() == f"specli: error: {bogus}: not a GGUF file (it does not start with the bytes 'GGUF')"


def test_cli_check_unknown_reference(capsys, tiny_target: Path) -> None:
    code, _, err = run_cli(capsys, "models", "check", "qwen2.5-coder-0.5", str(tiny_target))
    assert code == 2
    assert "did you mean 'qwen2.5-coder-0.5b'" in err and len(err.strip().splitlines()) == 1


def test_cli_info(capsys, tiny_target: Path) -> None:
    code, out, err = run_cli(capsys, "models", "info", str(tiny_target), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["architecture"] == "llama" and info["chat_template"] is True
    code, out, _ = run_cli(capsys, "models", "info", str(tiny_target))
    assert code == 0 and "architecture" in out and "llama" in out and "F32" in out


# --------------------------------------------------------------------------- the real pair


@pytest.mark.real
def test_real_pair_is_compatible(real_pair: tuple[Path, Path]) -> None:
    draft, target = real_pair
    report = compat.check_pair(draft, target)
    assert report.verdict == "compatible", report.reasons
    assert report.n_vocab_common == 151936
    assert report.tokenizer_model == ("gpt2", "gpt2") and report.pre_tokenizer == ("qwen2", "qwen2")
    assert report.target_chat_template


@pytest.mark.real
def test_real_pair_cli_by_registry_name(capsys, real_pair) -> None:
    code, out, err = run_cli(capsys, "models", "check", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "--json")
    assert code == 0, err
    assert json.loads(out)["verdict"] == "compatible"
    code, out, err = run_cli(capsys, "models", "info", "qwen2.5-coder-1.5b", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["architecture"], info["quantization"], info["vocab_size"]) == ("qwen2", "Q4_K_M", 151936)
    assert info["context_length"] == 32768 and info["chat_template"]


@pytest.mark.real
def test_real_draft_refused_for_a_different_tokenizer(capsys, real_pair, tiny_target: Path) -> None:
    draft, _ = real_pair
    code, out, err = run_cli(capsys, "models", "check", str(draft), str(tiny_target))
    assert code == 1
    assert "incompatible" in err and "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" in err
