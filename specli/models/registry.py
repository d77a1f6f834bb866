"""The model registry (models.toml) and model references -> local GGUF files.

The built-in registry is the package's data/models.toml (a copy of the repository's
models.toml). Over it are merged, in order, $XDG_CONFIG_HOME/specli/models.toml
(~/.config by default), the file named by $SPECLI_MODELS and any extra paths; an entry
of the same name replaces the earlier one whole.

A model reference is one of:
  a registry model name        qwen2.5-coder-1.5b
  a Hub file                   org/repo:file.gguf  or  org/repo:file.gguf@revision
  a local path                 ./models/x.gguf, /abs/x.gguf, ~/x.gguf

Hub files go through huggingface_hub (the only module importing it), into its usual
cache, honouring HF_ENDPOINT, HF_HUB_CACHE/HF_HOME and HF_HUB_OFFLINE, read when each
call is made. A download is resumable across runs: the bytes go to
`blobs/<etag>.specli-partial` and are checked against the pinned SHA-256 (or, unpinned,
the Hub's own LFS SHA-256) before they enter the cache, so a file that fails the check
never becomes a cache entry. (huggingface_hub >= 1.0 discards its own partial files on
failure, hence the partial file here; hf_hub_download still lays out the cache.)
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import os
import re
import shutil
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from specli.errors import DownloadError, ModelError, RegistryError, UsageError

MODEL_KEYS = ("repo", "file", "revision", "sha256", "size", "params", "context", "family", "license", "path")
PAIR_KEYS = ("target", "draft", "k", "description", "tags")
TOP_KEYS = ("default_pair", "models", "pairs")

_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
# org/repo:path/in/repo.gguf[@revision]
_HUB_REF = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+):(?P<file>[^@:]+?\.gguf)(?:@(?P<rev>[\w./-]+))?")

PARTIAL_SUFFIX = ".specli-partial"
_NETWORK_ERRORS = frozenset({
    "ConnectError", "ConnectTimeout", "TimeoutException", "ReadTimeout", "ProxyError",
    "ConnectionError", "Timeout", "OfflineModeIsEnabled", "NetworkError", "RemoteProtocolError",
})


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


def _looks_like_path(ref: str) -> bool:
    return ref.endswith(".gguf") or "/" in ref or os.sep in ref or ref.startswith(("~", "."))


def resolve_model(ref: str, reg: Registry, *, progress: bool = True) -> Path:
    """A model reference -> a local GGUF file, downloading it if needed.

    Order: a registry name; an existing path; org/repo:file.gguf[@rev]; anything else
    that looks like a path (then it must exist). ModelError for a missing, unreadable
    or non-GGUF file; DownloadError when a Hub file can be neither found in the cache
    nor fetched; UsageError for a reference of none of these forms.
    """
    if ref in reg.models:
        spec = reg.models[ref]
        path = spec.path if spec.hub is None else fetch(spec.hub, progress=progress, name=spec.name)
        return check_gguf(path)
    if Path(ref).expanduser().exists():
        return check_gguf(Path(ref).expanduser())
    hub = parse_hub_ref(ref)
    if hub is not None:
        return check_gguf(fetch(hub, progress=progress))
    if _looks_like_path(ref):
        return check_gguf(Path(ref).expanduser())
    raise UsageError(
        f"'{ref}' is not a registry model{_suggest(ref, reg.models)}, an org/repo:file.gguf "
        "reference or a path to a .gguf file")


def check_gguf(path: Path) -> Path:
    """`path` if it is a readable file starting with the GGUF magic; ModelError naming it otherwise."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: is a directory, not a GGUF file") from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror or e})") from None
    if magic != b"GGUF":
        raise ModelError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF')")
    return path


def resolve_pair(reg: Registry, *, pair: str | None, target: str | None, draft: str | None,
                 progress: bool = True) -> tuple[Path, Path | None, PairSpec | None]:
    """--pair / --target / --draft -> (target path, draft path or None, the pair or None).

    --pair NAME        that pair (cannot be combined with --target/--draft);
    nothing            the default pair; --draft alone replaces the default pair's draft;
    --target           that target; with --draft, that draft; without, no draft model
                       (target alone or n-gram drafting).
    When --target and --draft name the two models of a registry pair, that pair is
    returned too (for its recommended K).
    """
    if pair is not None and (target is not None or draft is not None):
        raise UsageError("--pair picks both models; give either --pair or --target/--draft")
    if pair is not None or target is None:
        spec = reg.pair(pair if pair is not None else reg.default_pair)
        target, draft = spec.target, draft if draft is not None else spec.draft
    t_path = resolve_model(target, reg, progress=progress)
    d_path = resolve_model(draft, reg, progress=progress) if draft is not None else None
    return t_path, d_path, _find_pair(reg, target, draft)


def _find_pair(reg: Registry, target: str, draft: str | None) -> PairSpec | None:
    for spec in reg.pairs.values():
        if spec.target == target and spec.draft == draft:
            return spec
    return None


def pair_models(reg: Registry, name: str) -> tuple[ModelSpec, ModelSpec]:
    """(target, draft) model specs of a pair."""
    spec = reg.pair(name)
    return reg.models[spec.target], reg.models[spec.draft]


# --------------------------------------------------------------------------- the cache


def hub_cache_dir() -> Path:
    """huggingface_hub's cache dir, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def cached_path(hub: HubFile) -> Path | None:
    """The cached file for `hub` (its revision, or what "main" last pointed to), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub.repo, hub.file, cache_dir=hub_cache_dir(),
                                   revision=hub.revision or "main")
    return Path(found) if isinstance(found, str) else None


def is_cached(hub: HubFile) -> bool:
    path = cached_path(hub)
    return path is not None and (hub.size is None or path.stat().st_size == hub.size)


# --------------------------------------------------------------------------- download


def fetch(hub: HubFile, *, progress: bool = True, name: str | None = None) -> Path:
    """The local path of a Hub file: from the cache, else downloaded (resumable, verified).

    A pinned file in the cache is used without touching the network. An unpinned one
    is checked against the Hub, falling back to the cache when the Hub is unreachable.
    """
    path, _ = _fetch(hub, progress=progress, name=name)
    return path


def pull(hub: HubFile, *, progress: bool = True, name: str | None = None) -> tuple[Path, str]:
    """Fetch a file and verify its full SHA-256 (or git hash) -> (path, the digest checked).

    A file that fails is deleted from the cache and DownloadError is raised.
    """
    path, digest = _fetch(hub, progress=progress, name=name, repair=True)
    if digest is None:
        digest = verify_cached(path, hub)
    return path, digest


def _fetch(hub: HubFile, *, progress: bool, name: str | None,
           repair: bool = False) -> tuple[Path, str | None]:
    """(path, digest if this call downloaded and verified the file, else None).

    repair: a cached file that fails the quick check is deleted and fetched again.
    """
    cached = cached_path(hub)
    if cached is not None and (hub.pinned or _offline()):
        try:
            _quick_check(cached, hub)
            return cached, None
        except DownloadError:
            if not repair or _offline():
                raise
            delete_cached(cached)
            cached = None
    if _offline():
        raise _not_available(hub, name, "HF_HUB_OFFLINE is set")
    return _download(hub, cached, progress=progress, name=name)


def _download(hub: HubFile, cached: Path | None, *, progress: bool,
              name: str | None) -> tuple[Path, str | None]:
    try:
        meta = _metadata(hub)
    except _Unreachable as e:
        if cached is not None:  # the Hub is down: the last cached version will do
            _quick_check(cached, hub)
            return cached, None
        raise _not_available(hub, name, f"the Hub at {_endpoint()} cannot be reached ({e})") from None
    blob = hub_cache_dir() / _repo_folder(hub.repo) / "blobs" / meta.etag
    digest = None
    if not blob.exists() and getattr(meta, "xet_file_data", None) is None:
        digest = _fetch_blob(hub, meta, blob, progress=progress)
    path = _hub_download(hub, progress=progress, name=name)
    if digest is None and not cached_equals(path, cached):
        digest = verify_cached(path, hub)  # fetched by hf_hub_download itself (Xet): check now
    return path, digest


def cached_equals(path: Path, cached: Path | None) -> bool:
    return cached is not None and path.resolve() == cached.resolve()


class _Unreachable(Exception):
    """The Hub (or HF_ENDPOINT) could not be reached; the cache may still help."""


def _is_network_error(e: BaseException) -> bool:
    # By class name: huggingface_hub has used requests, httpx and httpx2 in turn.
    return any(c.__name__ in _NETWORK_ERRORS for c in type(e).__mro__)


def _metadata(hub: HubFile):
    """HEAD the file on the Hub: etag, size, commit, download location."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    url = hf_hub_url(hub.repo, hub.file, revision=hub.revision or "main", endpoint=_endpoint())
    try:
        meta = get_hf_file_metadata(url, endpoint=_endpoint())
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status is not None and status >= 500:
            raise _Unreachable(f"HTTP {status}") from None
        raise DownloadError(f"{hub.label}: {_http_reason(e, status)} on {_endpoint()}") from None
    except Exception as e:  # noqa: BLE001 - network errors come from several libraries
        if _is_network_error(e):
            raise _Unreachable(type(e).__name__) from None
        raise
    if not meta.etag or not meta.commit_hash:
        raise DownloadError(f"{hub.label}: {_endpoint()} did not answer like the Hugging Face Hub "
                            "(no ETag or X-Repo-Commit); check HF_ENDPOINT")
    return meta


def _http_reason(e: Exception, status: int | None) -> str:
    kind = type(e).__name__
    if "RepositoryNotFound" in kind or "GatedRepo" in kind:
        return "repository not found, private or gated (log in with `hf auth login`)"
    if "RevisionNotFound" in kind:
        return "revision not found"
    if "EntryNotFound" in kind:
        return "file not found in the repository"
    return f"HTTP {status}"


def _repo_folder(repo: str) -> str:
    return "models--" + repo.replace("/", "--")


def _not_available(hub: HubFile, name: str | None, why: str) -> DownloadError:
    return DownloadError(
        f"{hub.repo}/{hub.file} is not in the Hugging Face cache ({hub_cache_dir()}) and {why}: "
        f"run `specli models pull {name or hub.label}` on a connected machine and copy the cache "
        "over, or point HF_ENDPOINT at a reachable mirror")


def _tqdm_class(progress: bool):
    """None (huggingface_hub's own bars) when progress is wanted, else a silent bar."""
    if progress:
        return None
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Silent(hf_tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


def _hub_download(hub: HubFile, *, progress: bool, name: str | None) -> Path:
    """hf_hub_download: lays out the cache (pointer, refs) around the blob already fetched."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(hub.repo, hub.file, revision=hub.revision, cache_dir=hub_cache_dir(),
                                    endpoint=_endpoint(), tqdm_class=_tqdm_class(progress)))
    except Exception as e:  # noqa: BLE001
        if _is_network_error(e) or "LocalEntryNotFound" in type(e).__name__:
            raise _not_available(hub, name, f"the Hub at {_endpoint()} cannot be reached") from None
        raise DownloadError(f"{hub.label}: download failed ({type(e).__name__}: {e})".splitlines()[0]) from None


def _fetch_blob(hub: HubFile, meta, blob: Path, *, progress: bool) -> str:
    """Download into blobs/<etag>.specli-partial (resuming), verify, move into place."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    partial = blob.with_name(blob.name + PARTIAL_SUFFIX)
    expected = meta.size if meta.size is not None else hub.size
    have = partial.stat().st_size if partial.exists() else 0
    if expected is not None and have > expected:
        partial.unlink()
        have = 0
    blob.parent.mkdir(parents=True, exist_ok=True)
    _check_space(blob.parent, hub, (expected or 0) - have)
    headers = build_hf_headers()
    if _host(meta.location) != _host(_endpoint()):
        headers.pop("authorization", None)  # a signed CDN URL: the token stays on the Hub
    try:
        with open(partial, "ab") as f:
            http_get(meta.location, f, resume_size=have, headers=headers, expected_size=expected,
                     displayed_filename=hub.file, tqdm_class=_tqdm_class(progress))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            partial.unlink(missing_ok=True)
            raise DownloadError(f"{hub.label}: disk full while writing to {blob.parent}; "
                                "the partial file was removed, free some space and retry") from None
        raise _interrupted(hub, partial, expected, e) from None
    except Exception as e:  # noqa: BLE001 - network / HTTP errors from huggingface_hub
        raise _interrupted(hub, partial, expected, e) from None
    digest = _verify_file(partial, hub, meta.etag)
    os.replace(partial, blob)
    return digest


def _host(url: str) -> str | None:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname


def _check_space(folder: Path, hub: HubFile, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(f"{hub.label}: needs {_gb(needed)} but only {_gb(free)} is free in {folder}")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _interrupted(hub: HubFile, partial: Path, expected: int | None, e: BaseException) -> DownloadError:
    have = partial.stat().st_size if partial.exists() else 0
    of = f" of {expected:,}" if expected else ""
    status = getattr(getattr(e, "response", None), "status_code", None)
    reason = f"HTTP {status}" if status else type(e).__name__
    return DownloadError(f"{hub.label}: download stopped at {have:,}{of} bytes ({reason}); "
                         "run the same command again to resume")


# --------------------------------------------------------------------------- verification


def _expected_digest(hub: HubFile, etag: str | None) -> tuple[str, str] | None:
    """(kind, hex) the file must hash to: the pinned sha256, else the Hub's etag."""
    if hub.sha256:
        return "sha256", hub.sha256
    if etag and _SHA256.fullmatch(etag):
        return "sha256", etag  # an LFS file's etag is its SHA-256
    if etag and _COMMIT.fullmatch(etag):
        return "git-sha1", etag  # a small file's etag is its git blob id
    return None


def file_digest(path: Path, kind: str = "sha256") -> str:
    """sha256 of the file, or its git blob sha1 ("git-sha1")."""
    h = hashlib.sha256() if kind == "sha256" else hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _verify_file(path: Path, hub: HubFile, etag: str | None) -> str:
    """Hash `path`; on a mismatch delete it and raise DownloadError. -> the digest."""
    expected = _expected_digest(hub, etag)
    if expected is None:
        raise DownloadError(f"{hub.label}: no checksum to verify against (no sha256 pinned, no Hub ETag)")
    kind, want = expected
    got = file_digest(path, kind)
    if got != want:
        path.unlink(missing_ok=True)
        raise DownloadError(f"{hub.label}: {kind} mismatch (expected {want[:16]}..., got {got[:16]}...); "
                            "the file was deleted")
    return got


def delete_cached(path: Path) -> None:
    """Remove a cached file: its snapshot link and the blob it points to."""
    blob = path.resolve()
    if path.is_symlink():
        path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def verify_cached(path: Path, hub: HubFile) -> str:
    """Full check of a cached file against its pin (or its blob name, the Hub's etag).

    On a mismatch both the snapshot link and the blob are deleted, then DownloadError.
    """
    blob = path.resolve()
    try:
        return _verify_file(blob, hub, blob.name)
    except DownloadError:
        if path.is_symlink():
            path.unlink(missing_ok=True)
        raise


def _quick_check(path: Path, hub: HubFile) -> None:
    """Cheap check of a cached file: its size, and its blob name when that is a SHA-256."""
    blob_name = path.resolve().name
    if hub.size is not None and path.stat().st_size != hub.size:
        raise DownloadError(f"{hub.label}: the cached file has {path.stat().st_size:,} bytes, expected "
                            f"{hub.size:,}; run `specli models pull` to fetch it again")
    if hub.sha256 and _SHA256.fullmatch(blob_name) and blob_name != hub.sha256:
        raise DownloadError(f"{hub.label}: the cached file is not the pinned one (sha256 {blob_name[:16]}...); "
                            "run `specli models pull` to fetch it again")
