"""registry: models.toml parsing and merging, model references, pair resolution, `models list`.

The user config dir is redirected to tmp by conftest's autouse fixture; these tests also
set it explicitly where they write a user file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Imported before any test sets HF_HUB_CACHE/HF_ENDPOINT: huggingface_hub reads them into
# module constants at import, and other tests (conftest's real_pair) rely on the real ones.
import huggingface_hub.constants  # noqa: E402,F401

from specli.models import catalogue, resolve
from specli.errors import ModelError, RegistryError, UsageError
from test_compat import run_cli

ROOT = Path(__file__).resolve().parents[1]

# The default pair as issue 2 pins it (revisions) and fetch-test-pair verifies it (sha256, size).
DEFAULT_FILES = {
    "qwen2.5-coder-0.5b": ("Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                           "ebb2015119c907b064c512bf053e945850b5875f",
                           "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491400064),
    "qwen2.5-coder-1.5b": ("Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                           "f86cb2c1fa58255f8052cc32aeede1b7482d4361",
                           "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1117320768),
}


def user_file(config_home: Path, text: str) -> Path:
    path = config_home / "specli" / "models.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("SPECLI_MODELS", raising=False)
    return home


@pytest.fixture
def local_pair(config_home: Path, tiny_target: Path, tiny_draft: Path) -> catalogue.Registry:
    """A user registry whose default pair is the tiny local models."""
    user_file(config_home, f"""
default_pair = "tiny"
[models.tiny-target]
path = "{tiny_target}"
[models.tiny-draft]
path = "{tiny_draft}"
[pairs.tiny]
target = "tiny-target"
draft = "tiny-draft"
k = 3
""")
    return catalogue.load_registry()


# --------------------------------------------------------------------------- built-in file


def test_shipped_copy_is_identical_to_the_root_file() -> None:
    root = (ROOT / "models.toml").read_text(encoding="utf-8")
    assert catalogue.builtin_registry_text() == root, "copy models.toml to specli/data/models.toml"


def test_builtin_registry_has_enough_pairs_and_families(config_home: Path) -> None:
    reg = catalogue.load_registry()
    assert len(reg.pairs) >= 8
    families = {reg.models[p.target].family for p in reg.pairs.values()}
    assert len(families) >= 4, families
    for pair in reg.pairs.values():
        target, draft = reg.models[pair.target], reg.models[pair.draft]
        assert target.family == draft.family, pair.name
        assert pair.description and pair.recommended_k
        assert target.hub is not None and draft.hub is not None
    assert reg.sources == ["built-in"]


def test_default_pair_is_pinned(config_home: Path) -> None:
    reg = catalogue.load_registry()
    target, draft = catalogue.pair_models(reg, reg.default_pair)
    assert reg.default_pair == "qwen2.5-coder-0.5b-1.5b"
    for spec in (target, draft):
        assert (spec.repo, spec.file, spec.revision, spec.sha256, spec.size) == DEFAULT_FILES[spec.name]
        assert spec.hub.pinned


def test_pins_are_well_formed(config_home: Path) -> None:
    reg = catalogue.load_registry()
    for spec in reg.models.values():
        if spec.sha256 is not None:  # a pinned checksum always comes with its revision and size
            assert spec.revision is not None and spec.size is not None, spec.name


def test_pins_match_fetch_test_pair_when_present(config_home: Path) -> None:
    script = ROOT.parent / "shared" / "models" / "fetch-test-pair"
    if not script.is_file():
        pytest.skip("../shared/models/fetch-test-pair not present")
    text = script.read_text()
    for repo, _, revision, sha256, size in DEFAULT_FILES.values():
        assert repo in text and revision in text and sha256 in text and str(size) in text


# --------------------------------------------------------------------------- merging


def test_user_file_overrides_and_extends(config_home: Path) -> None:
    path = user_file(config_home, """
default_pair = "mine"
[models."qwen2.5-coder-0.5b"]
repo = "me/fork-GGUF"
file = "fork.gguf"
[models.other]
repo = "me/other-GGUF"
file = "other.gguf"
[pairs.mine]
target = "qwen2.5-coder-1.5b"
draft = "other"
tags = ["mine"]
""")
    reg = catalogue.load_registry()
    replaced = reg.models["qwen2.5-coder-0.5b"]
    assert (replaced.repo, replaced.revision, replaced.sha256) == ("me/fork-GGUF", None, None)  # whole entry
    assert replaced.source == str(path)
    assert reg.default_pair == "mine" and reg.pairs["mine"].recommended_k is None
    assert "qwen2.5-coder-0.5b-1.5b" in reg.pairs  # built-ins stay
    assert reg.sources == ["built-in", str(path)]


def test_specli_models_merges_last(config_home: Path, tmp_path: Path, monkeypatch) -> None:
    user_file(config_home, '[models.x]\nrepo = "a/b"\nfile = "user.gguf"\n')
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('[models.x]\nrepo = "a/b"\nfile = "explicit.gguf"\n')
    monkeypatch.setenv("SPECLI_MODELS", str(explicit))
    extra = tmp_path / "extra.toml"
    extra.write_text('[models.y]\npath = "~/y.gguf"\n')
    reg = catalogue.load_registry([extra])
    assert reg.models["x"].file == "explicit.gguf"
    assert reg.models["y"].path == Path("~/y.gguf").expanduser()
    assert reg.sources[-2:] == [str(explicit), str(extra)]


def test_missing_specli_models_file(config_home: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SPECLI_MODELS", str(tmp_path / "nope.toml"))
    with pytest.raises(RegistryError, match="nope.toml: registry file not found"):
        catalogue.load_registry()


def test_user_file_follows_xdg_config_home(config_home: Path, monkeypatch) -> None:
    assert catalogue.user_registry_path() == config_home / "specli" / "models.toml"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert catalogue.user_registry_path() == Path.home() / ".config" / "specli" / "models.toml"


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("text, message", [
    ('[models.x]\nrepo = "a/b"\nfile = \n', r"malformed TOML: .*line 3"),
    ('[models.x]\nrepo = "a/b"\nfile = "x.gguf"\nsha = "00"\n', r"unknown key 'sha' in \[models.\"x\"\] \(did you mean 'sha256'\?\)"),
    ('colour = "red"\n', r"unknown key 'colour' in the top level"),
    ('[pairs.p]\ntarget = "qwen2.5-coder-1.5b"\ndraft = "qwen2.5-coder-0.5b"\nkk = 3\n', r"unknown key 'kk'.*'k'"),
    ('[models.x]\nrepo = "a/b"\nfile = "x.gguf"\nrevision = "main"\n', "revision must be a 40-hex commit id"),
    ('[models.x]\nrepo = "a/b"\nfile = "x.gguf"\nsha256 = "abc"\n', "sha256 must be 64 hex digits"),
    ('[models.x]\nrepo = "a/b"\nfile = "x.gguf"\nsize = -1\n', "size must be positive"),
    ('[models.x]\nrepo = "a/b"\nfile = "x.gguf"\nsize = "big"\n', "size must be int, not str"),
    ('[models.x]\nrepo = "ab"\nfile = "x.gguf"\n', "repo must be 'org/name'"),
    ('[models.x]\nrepo = "a/b"\nfile = "x.bin"\n', "file must be a .gguf file"),
    ('[models.x]\nrepo = "a/b"\n', "needs repo and file"),
    ('[models.x]\npath = "x.gguf"\nrepo = "a/b"\nfile = "x.gguf"\n', "both path and repo/file"),
    ('[pairs.p]\ntarget = "qwen2.5-coder-1.5b"\ndraft = "qwen2.5-coder-0.5"\n',
     r"pair 'p' names unknown draft model 'qwen2.5-coder-0.5' \(did you mean 'qwen2.5-coder-0.5b'"),
    ('[pairs.p]\ntarget = "qwen2.5-coder-1.5b"\ndraft = "qwen2.5-coder-0.5b"\nk = 99\n', "k must be in 0..64"),
    ('[pairs.p]\ntarget = "qwen2.5-coder-1.5b"\ndraft = "qwen2.5-coder-0.5b"\ntags = "code"\n', "tags must be a list"),
    ('default_pair = "qwen2.5-coder-0.5b-1.5"\n', "default_pair 'qwen2.5-coder-0.5b-1.5' is not a pair"),
    ('models = 3\n', r"\[models\] must hold tables"),
])
def test_bad_user_file(config_home: Path, text: str, message: str) -> None:
    path = user_file(config_home, text)
    with pytest.raises(RegistryError, match=message) as e:
        catalogue.load_registry()
    assert "\n" not in str(e.value)
    if "unknown draft" not in message and "default_pair" not in message:
        assert str(path) in str(e.value)  # names the file


def test_bad_user_file_through_the_cli(capsys, config_home: Path) -> None:
    user_file(config_home, "[models.x\n")
    code, out, err = run_cli(capsys, "models", "list")
    assert code == 1 and out == ""
    assert err.startswith("specli: error: ") and "malformed TOML" in err and "line 1" in err
    assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize("ref, expected", [
    ("Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF:qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
     ("Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", None)),
    ("org/repo:sub/dir/x.gguf@" + "a" * 40, ("org/repo", "sub/dir/x.gguf", "a" * 40)),
    ("org/repo:x.gguf@v1.0", ("org/repo", "x.gguf", "v1.0")),
    ("org/repo:x.bin", None),
    ("./x.gguf", None),
    ("name", None),
])
def test_parse_hub_ref(ref: str, expected) -> None:
    hub = catalogue.parse_hub_ref(ref)
    assert (None if hub is None else (hub.repo, hub.file, hub.revision)) == expected


def test_resolve_local_paths(local_pair: catalogue.Registry, tiny_target: Path, tmp_path: Path) -> None:
    reg = local_pair
    assert resolve.resolve_model("tiny-target", reg) == tiny_target
    assert resolve.resolve_model(str(tiny_target), reg) == tiny_target
    with pytest.raises(ModelError, match=f"{tmp_path / 'absent.gguf'}: no such file"):
        resolve.resolve_model(str(tmp_path / "absent.gguf"), reg)
    text = tmp_path / "text.gguf"
    text.write_text("not a model")
    with pytest.raises(ModelError, match="not a GGUF file"):
        resolve.resolve_model(str(text), reg)
    with pytest.raises(ModelError, match="is a directory"):
        resolve.resolve_model(str(tmp_path), reg)


def test_unknown_reference_suggests_names(local_pair: catalogue.Registry) -> None:
    with pytest.raises(UsageError, match=r"'tiny-targt' is not a registry model \(did you mean 'tiny-target'"):
        resolve.resolve_model("tiny-targt", local_pair)


def test_resolve_pair_rules(local_pair: catalogue.Registry, tiny_target: Path, tiny_draft: Path,
                            tiny_draft_padded: Path) -> None:
    reg = local_pair
    target, draft, spec = resolve.resolve_pair(reg, pair=None, target=None, draft=None)
    assert (target, draft, spec.name, spec.recommended_k) == (tiny_target, tiny_draft, "tiny", 3)
    assert resolve.resolve_pair(reg, pair="tiny", target=None, draft=None)[:2] == (tiny_target, tiny_draft)
    # --target alone: no draft model (target alone or n-gram drafting)
    assert resolve.resolve_pair(reg, pair=None, target="tiny-target", draft=None) == (tiny_target, None, None)
    # --target and --draft naming a registry pair's two models: that pair comes back too
    assert resolve.resolve_pair(reg, pair=None, target="tiny-target", draft="tiny-draft")[2].name == "tiny"
    # --draft alone replaces the default pair's draft
    target, draft, spec = resolve.resolve_pair(reg, pair=None, target=None, draft=str(tiny_draft_padded))
    assert (target, draft, spec) == (tiny_target, tiny_draft_padded, None)


def test_resolve_pair_errors(local_pair: catalogue.Registry) -> None:
    with pytest.raises(UsageError, match="either --pair or --target/--draft"):
        resolve.resolve_pair(local_pair, pair="tiny", target="tiny-target", draft=None)
    with pytest.raises(UsageError, match=r"unknown pair 'tinny' \(did you mean 'tiny'"):
        resolve.resolve_pair(local_pair, pair="tinny", target=None, draft=None)


# --------------------------------------------------------------------------- models list


def fake_cached(cache: Path, repo: str, filename: str, revision: str, sha256: str, size: int) -> Path:
    """Lay out a (sparse) file in the cache the way huggingface_hub does."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    blob = folder / "blobs" / sha256
    blob.parent.mkdir(parents=True, exist_ok=True)
    with open(blob, "wb") as f:
        f.truncate(size)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    link = folder / "snapshots" / revision / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    return link


def test_list_json_marks_cached_default(capsys, config_home: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    code, out, err = run_cli(capsys, "models", "list", "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert len(data["pairs"]) >= 8 and not any(p["cached"] for p in data["pairs"])
    for repo, filename, revision, sha256, size in DEFAULT_FILES.values():
        fake_cached(cache, repo, filename, revision, sha256, size)
    data = json.loads(run_cli(capsys, "models", "list", "--json")[1])
    default = next(p for p in data["pairs"] if p["default"])
    assert default["name"] == data["default_pair"] == "qwen2.5-coder-0.5b-1.5b"
    assert default["cached"] and default["size_bytes"] == 491400064 + 1117320768
    assert [p["name"] for p in data["pairs"] if p["cached"]] == [default["name"]]


def test_list_table(capsys, config_home: Path) -> None:
    code, out, err = run_cli(capsys, "models", "list")
    assert code == 0 and err == ""
    assert "* qwen2.5-coder-0.5b-1.5b" in out
    for name in ("smollm2-135m-1.7b", "gemma3-270m-4b", "llama3.2-1b-3.1-8b"):
        assert name in out


@pytest.mark.real
def test_list_shows_the_real_default_pair_cached(capsys, config_home: Path, real_pair) -> None:
    data = json.loads(run_cli(capsys, "models", "list", "--json")[1])
    assert next(p for p in data["pairs"] if p["default"])["cached"]


def test_help_has_examples(capsys) -> None:
    for command in ("list", "pull", "check", "info"):
        code, out, _ = run_cli(capsys, "models", command, "--help")
        assert code == 0 and "Examples:" in out and f"specli models {command}" in out
