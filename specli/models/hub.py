"""Hugging Face Hub files -> the local cache: find, download (resumable), verify.

Hub files go through huggingface_hub (the only module importing it), into its usual
cache, honouring HF_ENDPOINT, HF_HUB_CACHE/HF_HOME and HF_HUB_OFFLINE, read when each
call is made. A download is resumable across runs: the bytes go to
`blobs/<etag>.specli-partial` and are checked against the pinned SHA-256 (or, unpinned,
the Hub's own LFS SHA-256) before they enter the cache, so a file that fails the check
never becomes a cache entry. (huggingface_hub >= 1.0 discards its own partial files on
failure, hence the partial file here; hf_hub_download still lays out the cache.)
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

from specli.errors import DownloadError
from specli.models.catalogue import _COMMIT, _SHA256, HubFile

PARTIAL_SUFFIX = ".specli-partial"
_NETWORK_ERRORS = frozenset({
    "ConnectError", "ConnectTimeout", "TimeoutException", "ReadTimeout", "ProxyError",
    "ConnectionError", "Timeout", "OfflineModeIsEnabled", "NetworkError", "RemoteProtocolError",
})


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
