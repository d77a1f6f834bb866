"""Downloads end to end through huggingface_hub, against tests/hubserver.py on 127.0.0.1.

HF_ENDPOINT points at the local server and HF_HUB_CACHE/HF_HOME at tmp, so nothing here
touches the network or the real cache. The served "model" is the tiny GGUF target.
"""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest

# Imported before any test sets HF_HUB_CACHE/HF_ENDPOINT: huggingface_hub reads them into
# module constants at import, and other tests (conftest's real_pair) rely on the real ones.
import huggingface_hub.constants  # noqa: E402,F401

from hubserver import HubServer
from specli.models import catalogue, resolve
from specli.models import hub as hf
from specli.errors import DownloadError
from test_compat import run_cli

REPO, FILE = "org/tiny-GGUF", "tiny.gguf"
CHUNK = 64 * 1024  # huggingface_hub writes in chunks of this size (10 MB by default)


@pytest.fixture
def hub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private Hugging Face cache; small download chunks; no retry sleeps."""
    import huggingface_hub.file_download

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "SPECLI_MODELS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    monkeypatch.setattr(huggingface_hub.file_download.time, "sleep", lambda s: None)
    return cache


@pytest.fixture
def tiny_bytes(tiny_target: Path) -> bytes:
    return tiny_target.read_bytes()


@pytest.fixture
def server(hub_env: Path, tiny_bytes: bytes, tiny_draft: Path, monkeypatch: pytest.MonkeyPatch):
    srv = HubServer(lifetime=60)
    srv.add(REPO, FILE, tiny_bytes)
    srv.add(REPO, "draft.gguf", tiny_draft.read_bytes())
    with srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        yield srv


def registry_file(tmp_path: Path, monkeypatch, server: HubServer, *, target_sha: str,
                  size: int) -> Path:
    """$SPECLI_MODELS with a pinned pair served by `server`."""
    path = tmp_path / "models.toml"
    path.write_text(f"""
[models.tiny]
repo = "{REPO}"
file = "{FILE}"
revision = "{server.commit}"
sha256 = "{target_sha}"
size = {size}
[models.tiny-draft]
repo = "{REPO}"
file = "draft.gguf"
[pairs.tiny-pair]
target = "tiny"
draft = "tiny-draft"
k = 2
""")
    monkeypatch.setenv("SPECLI_MODELS", str(path))
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(cache: Path) -> list[str]:
    """Files in the cache other than bookkeeping (locks, CACHEDIR.TAG, refs)."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if p.is_file() and ".locks" not in p.parts and p.name != "CACHEDIR.TAG" and "refs" not in p.parts)


# --------------------------------------------------------------------------- pull


def test_pull_shows_progress_verifies_and_prints_paths(capsys, tmp_path, monkeypatch, server, tiny_bytes,
                                                       tiny_draft: Path) -> None:
    registry_file(tmp_path, monkeypatch, server, target_sha=sha256(tiny_bytes), size=len(tiny_bytes))
    monkeypatch.setenv("TQDM_POSITION", "-1")  # huggingface_hub hides its bars when stderr is not a TTY
    code, out, err = run_cli(capsys, "models", "pull", "tiny-pair")
    assert code == 0, err
    paths = [Path(line) for line in out.strip().splitlines()]
    assert [p.read_bytes() for p in paths] == [tiny_bytes, tiny_draft.read_bytes()]
    assert f"verified sha256 {sha256(tiny_bytes)}" in err
    assert f"verified sha256 {sha256(tiny_draft.read_bytes())}" in err  # unpinned: the Hub's LFS sha256
    assert "100%" in err and FILE in err  # huggingface_hub's progress bar
    assert len(server.cdn_gets()) == 2


def test_pull_again_uses_the_cache(capsys, tmp_path, monkeypatch, server, tiny_bytes) -> None:
    registry_file(tmp_path, monkeypatch, server, target_sha=sha256(tiny_bytes), size=len(tiny_bytes))
    assert run_cli(capsys, "models", "pull", "tiny")[0] == 0
    server.requests.clear()
    code, out, err = run_cli(capsys, "models", "pull", "tiny")
    assert code == 0, err
    assert server.requests == []  # pinned and cached: verified locally, no network
    assert "verified sha256" in err


def test_checksum_failure_deletes_the_file(capsys, tmp_path, monkeypatch, server, hub_env, tiny_bytes) -> None:
    wrong = sha256(b"some other file")
    registry_file(tmp_path, monkeypatch, server, target_sha=wrong, size=len(tiny_bytes))
    code, out, err = run_cli(capsys, "models", "pull", "tiny")
    assert code == 1 and out == ""
    assert "sha256 mismatch" in err and "the file was deleted" in err
    assert err.strip().splitlines()[-1] == "specli: error: 1 of 1 files not verified: tiny"
    assert leftovers(hub_env) == []  # nothing half-written or wrong is left in the cache


def test_corrupted_cached_file_is_deleted_then_fetched_again(capsys, tmp_path, monkeypatch, server, hub_env,
                                                             tiny_bytes) -> None:
    registry_file(tmp_path, monkeypatch, server, target_sha=sha256(tiny_bytes), size=len(tiny_bytes))
    code, out, _ = run_cli(capsys, "models", "pull", "tiny")
    blob = Path(out.strip()).resolve()
    blob.chmod(0o644)
    blob.write_bytes(b"GGUF" + bytes(len(tiny_bytes) - 4))  # same size, wrong bytes
    code, out, err = run_cli(capsys, "models", "pull", "tiny")
    assert code == 1 and "sha256 mismatch" in err
    assert leftovers(hub_env) == []
    code, out, err = run_cli(capsys, "models", "pull", "tiny")
    assert code == 0, err
    assert Path(out.strip()).read_bytes() == tiny_bytes


# --------------------------------------------------------------------------- resume


def test_dropped_connection_resumes_within_the_download(server, tiny_bytes) -> None:
    server.cut_after = 3 * CHUNK + 100  # three chunks reach the disk, then the connection drops
    path = hf.fetch(catalogue.HubFile(REPO, FILE), progress=False)
    assert path.read_bytes() == tiny_bytes
    gets = server.cdn_gets()
    assert [g.range for g in gets] == [None, f"bytes={3 * CHUNK}-"]


def test_interrupted_download_resumes_next_time(server, hub_env, tiny_bytes) -> None:
    hub = catalogue.HubFile(REPO, FILE, sha256=sha256(tiny_bytes))
    server.cut_after, server.fail_gets = 2 * CHUNK + 10, 1  # drop, then the retry fails too
    with pytest.raises(DownloadError, match=r"download stopped at 131,072 of .* run the same command again"):
        hf.fetch(hub, progress=False)
    partial = [p for p in hub_env.rglob("*") if p.name.endswith(hf.PARTIAL_SUFFIX)]
    assert [p.stat().st_size for p in partial] == [2 * CHUNK]
    assert hf.cached_path(hub) is None  # no cache entry until the file is whole and verified
    server.requests.clear()
    path = hf.fetch(hub, progress=False)
    assert path.read_bytes() == tiny_bytes
    assert [g.range for g in server.cdn_gets()] == [f"bytes={2 * CHUNK}-"]
    assert not any(p.name.endswith(hf.PARTIAL_SUFFIX) for p in hub_env.rglob("*"))


def test_oversized_partial_is_discarded(server, hub_env, tiny_bytes) -> None:
    blobs = hub_env / "models--org--tiny-GGUF" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / (sha256(tiny_bytes) + hf.PARTIAL_SUFFIX)).write_bytes(bytes(len(tiny_bytes) + 5))
    path = hf.fetch(catalogue.HubFile(REPO, FILE), progress=False)
    assert path.read_bytes() == tiny_bytes
    assert [g.range for g in server.cdn_gets()] == [None]


# --------------------------------------------------------------------------- offline


def test_cached_file_used_when_the_server_is_down(server, tiny_bytes) -> None:
    reg = catalogue.load_registry()
    ref = f"{REPO}:{FILE}"
    first = resolve.resolve_model(ref, reg, progress=False)
    server.stop()
    assert resolve.resolve_model(ref, reg, progress=False) == first  # unpinned: falls back to the cache
    pinned = f"{REPO}:{FILE}@{server.commit}"
    assert resolve.resolve_model(pinned, reg, progress=False) == first


def test_nothing_cached_and_server_down(capsys, server) -> None:
    server.stop()
    with pytest.raises(DownloadError) as e:
        hf.fetch(catalogue.HubFile(REPO, FILE), progress=False)
    message = str(e.value)
    assert f"{REPO}/{FILE} is not in the Hugging Face cache" in message
    assert "cannot be reached" in message
    assert f"specli models pull {REPO}:{FILE}" in message and "HF_ENDPOINT" in message
    code, out, err = run_cli(capsys, "models", "info", f"{REPO}:{FILE}")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1


def test_offline_mode(server, monkeypatch, tiny_bytes) -> None:
    hub = catalogue.HubFile(REPO, FILE)
    path = hf.fetch(hub, progress=False)
    server.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf.fetch(hub, progress=False) == path
    with pytest.raises(DownloadError, match=r"draft.gguf is not in the Hugging Face cache .* HF_HUB_OFFLINE is set"):
        hf.fetch(catalogue.HubFile(REPO, "draft.gguf"), progress=False)
    assert server.requests == []


def test_pair_resolves_through_the_hub(server, tmp_path, monkeypatch, tiny_bytes, tiny_draft: Path) -> None:
    registry_file(tmp_path, monkeypatch, server, target_sha=sha256(tiny_bytes), size=len(tiny_bytes))
    target, draft, spec = resolve.resolve_pair(catalogue.load_registry(), pair="tiny-pair", target=None,
                                                draft=None, progress=False)
    assert target.read_bytes() == tiny_bytes and draft.read_bytes() == tiny_draft.read_bytes()
    assert spec.recommended_k == 2


# --------------------------------------------------------------------------- Hub errors


@pytest.mark.parametrize("hub, message", [
    (catalogue.HubFile("org/absent-GGUF", FILE), "repository not found"),
    (catalogue.HubFile(REPO, "absent.gguf"), "file not found in the repository"),
    (catalogue.HubFile(REPO, FILE, revision="f" * 40), "revision not found"),
])
def test_hub_errors(server, hub, message) -> None:
    with pytest.raises(DownloadError, match=message):
        hf.fetch(hub, progress=False)


def test_not_enough_disk_space(server, hub_env, monkeypatch) -> None:
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(hf.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DownloadError, match=r"needs .* but only .* is free"):
        hf.fetch(catalogue.HubFile(REPO, FILE), progress=False)
    assert leftovers(hub_env) == []


def test_disk_full_while_writing(server, hub_env, monkeypatch) -> None:
    import huggingface_hub.file_download

    def full(url, temp_file, **kwargs):
        temp_file.write(b"GGUF" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(huggingface_hub.file_download, "http_get", full)
    with pytest.raises(DownloadError, match="disk full .* the partial file was removed"):
        hf.fetch(catalogue.HubFile(REPO, FILE), progress=False)
    assert leftovers(hub_env) == []


def test_pull_a_hub_reference(capsys, server, tiny_draft: Path) -> None:
    code, out, err = run_cli(capsys, "models", "pull", f"{REPO}:draft.gguf")
    assert code == 0, err
    assert Path(out.strip()).read_bytes() == tiny_draft.read_bytes()
    code, out, err = run_cli(capsys, "models", "pull", "no-such-pair")
    assert code == 2 and "'no-such-pair' is not a pair, a model or an org/repo:file.gguf reference" in err


@pytest.mark.real
def test_pull_verifies_the_real_pair_without_network(capsys, real_pair, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    code, out, err = run_cli(capsys, "models", "pull")
    assert code == 0, err
    assert sorted(out.split()) == sorted(str(p) for p in real_pair)
    assert err.count("verified sha256") == 2
