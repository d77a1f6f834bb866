"""The model catalogue: models.toml (and the user's) -> ModelSpec / PairSpec, and the
spelling of Hub references.

The built-in catalogue is the package's data/models.toml (a copy of the repository's
models.toml). Over it are merged, in order, $XDG_CONFIG_HOME/specli/models.toml
(~/.config by default), the file named by $SPECLI_MODELS and any extra paths; an entry
of the same name replaces the earlier one whole.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from specli.errors import RegistryError, UsageError

MODEL_KEYS = ("repo", "file", "revision", "sha256", "size", "params", "context", "family", "license", "path")
PAIR_KEYS = ("target", "draft", "k", "description", "tags")
TOP_KEYS = ("default_pair", "models", "pairs")

_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
# org/repo:path/in/repo.gguf[@revision]
_HUB_REF = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+):(?P<file>[^@:]+?\.gguf)(?:@(?P<rev>[\w./-]+))?")


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class HubFile:
    """One file of one Hub repository, optionally pinned (revision, sha256, size)."""

    repo: str
    file: str
    revision: str | None = None
    sha256: str | None = None
    size: int | None = None

    @property
    def pinned(self) -> bool:
        """True when the revision is a commit id: the cache answers without the network."""
        return self.revision is not None and bool(_COMMIT.fullmatch(self.revision))

    @property
    def label(self) -> str:
        return f"{self.repo}:{self.file}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class ModelSpec:
    """A registry model: a Hub file (repo/file/...) or a local `path`."""

    name: str
    repo: str | None = None
    file: str | None = None
    revision: str | None = None
    sha256: str | None = None
    size: int | None = None
    params: str | None = None
    context: int | None = None
    family: str | None = None
    license: str | None = None
    path: Path | None = None
    source: str = "built-in"

    @property
    def hub(self) -> HubFile | None:
        if self.repo is None or self.file is None:
            return None
        return HubFile(self.repo, self.file, self.revision, self.sha256, self.size)

    @property
    def ref(self) -> str:
        """The reference this name stands for (org/repo:file@rev, or the local path)."""
        return self.hub.label if self.hub else str(self.path)


@dataclass(frozen=True)
class PairSpec:
    """A curated draft/target pair; `target` and `draft` are registry model names."""

    name: str
    target: str
    draft: str
    recommended_k: int | None = None
    description: str = ""
    tags: tuple[str, ...] = ()
    source: str = "built-in"


@dataclass
class Registry:
    models: dict[str, ModelSpec] = field(default_factory=dict)
    pairs: dict[str, PairSpec] = field(default_factory=dict)
    default_pair: str = ""
    sources: list[str] = field(default_factory=list)

    def pair(self, name: str) -> PairSpec:
        """The pair called `name`; UsageError suggesting the closest names otherwise."""
        if name not in self.pairs:
            raise UsageError(f"unknown pair '{name}'{_suggest(name, self.pairs)}; see `specli models list`")
        return self.pairs[name]

    def model(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise UsageError(f"unknown model '{name}'{_suggest(name, self.models)}; see `specli models list`")
        return self.models[name]


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


# --------------------------------------------------------------------------- loading


def builtin_registry_text() -> str:
    """The models.toml shipped in the package."""
    return resources.files("specli").joinpath("data/models.toml").read_text(encoding="utf-8")


def user_registry_path() -> Path:
    """$XDG_CONFIG_HOME/specli/models.toml (XDG_CONFIG_HOME defaults to ~/.config)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "specli" / "models.toml"


def load_registry(extra_paths: list[Path] | None = None) -> Registry:
    """The built-in registry merged with the user file, $SPECLI_MODELS and `extra_paths`.

    A later entry replaces an earlier one of the same name (whole, not key by key).
    Raises RegistryError for malformed TOML (file and line), unknown keys, bad values,
    a pair naming an unknown model, or a missing $SPECLI_MODELS / extra file.
    """
    reg = Registry()
    _merge(reg, _parse(builtin_registry_text(), "built-in models.toml"), "built-in")
    user = user_registry_path()
    if user.is_file():
        _merge(reg, _parse_file(user), str(user))
    explicit = [Path(os.environ["SPECLI_MODELS"])] if os.environ.get("SPECLI_MODELS") else []
    for path in explicit + [Path(p) for p in extra_paths or []]:
        if not path.is_file():
            raise RegistryError(f"{path}: registry file not found (from $SPECLI_MODELS or --models)")
        _merge(reg, _parse_file(path), str(path))
    _check_references(reg)
    return reg


def _parse_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RegistryError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    return _parse(text, str(path))


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(f"{where}: malformed TOML: {e}") from None
    _check_keys(data, TOP_KEYS, where, "the top level")
    data["__where__"] = where
    return data


def _check_keys(table: dict[str, Any], allowed: tuple[str, ...], where: str, what: str) -> None:
    for key in table:
        if key not in allowed:
            raise RegistryError(f"{where}: unknown key '{key}' in {what}{_suggest(key, allowed)}")


def _merge(reg: Registry, data: dict[str, Any], source: str) -> None:
    where = data["__where__"]
    for name, table in _tables(data, "models", where).items():
        reg.models[name] = _model_spec(name, table, where, source)
    for name, table in _tables(data, "pairs", where).items():
        reg.pairs[name] = _pair_spec(name, table, where, source)
    if "default_pair" in data:
        reg.default_pair = _typed(data["default_pair"], str, where, "default_pair")
    reg.sources.append(source)


def _tables(data: dict[str, Any], key: str, where: str) -> dict[str, dict[str, Any]]:
    section = data.get(key, {})
    if not isinstance(section, dict) or not all(isinstance(v, dict) for v in section.values()):
        raise RegistryError(f"{where}: [{key}] must hold tables, as [{key}.\"name\"]")
    return section


def _typed(value: Any, kind: type, where: str, what: str) -> Any:
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise RegistryError(f"{where}: {what} must be {kind.__name__}, not {type(value).__name__}")
    return value


def _model_spec(name: str, t: dict[str, Any], where: str, source: str) -> ModelSpec:
    what = f'[models."{name}"]'
    _check_keys(t, MODEL_KEYS, where, what)
    for key in ("repo", "file", "revision", "sha256", "params", "family", "license", "path"):
        if key in t:
            _typed(t[key], str, where, f"{what} {key}")
    for key in ("size", "context"):
        if key in t and _typed(t[key], int, where, f"{what} {key}") <= 0:
            raise RegistryError(f"{where}: {what} {key} must be positive")
    if "path" in t:
        if "repo" in t or "file" in t:
            raise RegistryError(f"{where}: {what} has both path and repo/file; give one")
        return ModelSpec(name, path=Path(t["path"]).expanduser(), params=t.get("params"),
                         context=t.get("context"), family=t.get("family"), license=t.get("license"),
                         source=source)
    _check_hub_fields(t, where, what)
    return ModelSpec(name, source=source, **{k: t[k] for k in MODEL_KEYS if k in t and k != "path"})


def _check_hub_fields(t: dict[str, Any], where: str, what: str) -> None:
    if "repo" not in t or "file" not in t:
        raise RegistryError(f"{where}: {what} needs repo and file (or a local path)")
    if not _REPO.fullmatch(t["repo"]):
        raise RegistryError(f"{where}: {what} repo must be 'org/name', not {t['repo']!r}")
    if not t["file"].endswith(".gguf"):
        raise RegistryError(f"{where}: {what} file must be a .gguf file, not {t['file']!r}")
    if "revision" in t and not _COMMIT.fullmatch(t["revision"]):
        raise RegistryError(f"{where}: {what} revision must be a 40-hex commit id, not {t['revision']!r}")
    if "sha256" in t:
        t["sha256"] = t["sha256"].lower()
        if not _SHA256.fullmatch(t["sha256"]):
            raise RegistryError(f"{where}: {what} sha256 must be 64 hex digits")


def _pair_spec(name: str, t: dict[str, Any], where: str, source: str) -> PairSpec:
    what = f'[pairs."{name}"]'
    _check_keys(t, PAIR_KEYS, where, what)
    for key in ("target", "draft"):
        if key not in t:
            raise RegistryError(f"{where}: {what} needs {key}")
        _typed(t[key], str, where, f"{what} {key}")
    k = t.get("k")
    if k is not None and not 0 <= _typed(k, int, where, f"{what} k") <= 64:
        raise RegistryError(f"{where}: {what} k must be in 0..64")
    tags = t.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
        raise RegistryError(f"{where}: {what} tags must be a list of strings")
    description = _typed(t.get("description", ""), str, where, f"{what} description")
    return PairSpec(name, t["target"], t["draft"], k, description, tuple(tags), source)


def _check_references(reg: Registry) -> None:
    for pair in reg.pairs.values():
        for role in ("target", "draft"):
            model = getattr(pair, role)
            if model not in reg.models:
                raise RegistryError(
                    f"{pair.source}: pair '{pair.name}' names unknown {role} model "
                    f"'{model}'{_suggest(model, reg.models)}")
    if reg.default_pair not in reg.pairs:
        raise RegistryError(f"default_pair '{reg.default_pair}' is not a pair{_suggest(reg.default_pair, reg.pairs)}")


# --------------------------------------------------------------------------- references


def parse_hub_ref(ref: str) -> HubFile | None:
    """`org/repo:file.gguf[@revision]` -> HubFile, or None when `ref` is not of that form."""
    m = _HUB_REF.fullmatch(ref)
    return HubFile(m["repo"], m["file"], m["rev"]) if m else None


def pair_models(reg: Registry, name: str) -> tuple[ModelSpec, ModelSpec]:
    """(target, draft) model specs of a pair."""
    spec = reg.pair(name)
    return reg.models[spec.target], reg.models[spec.draft]


