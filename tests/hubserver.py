"""A tiny stand-in for the Hugging Face Hub's file endpoints, on 127.0.0.1, for tests.

It answers the two requests huggingface_hub makes for a file, the way the Hub does for
an LFS file:

  HEAD/GET /{org}/{repo}/resolve/{revision}/{filename}
      302 to a "CDN" URL, carrying X-Repo-Commit, X-Linked-Etag (the SHA-256),
      X-Linked-Size and ETag; 404 with X-Error-Code for an unknown repo, revision or file.
  HEAD/GET /cdn/{sha256}
      the bytes, with Range support (206 + Content-Range) for resumed downloads.

The CDN URL names the host "localhost" (the server still listens on 127.0.0.1 only) so
that huggingface_hub treats it as a different host, as it does the real CDN, and takes
the file metadata from the redirect itself.

Faults for tests: `cut_after` closes the connection after that many body bytes of the
next CDN GET (an interrupted transfer); `fail_gets` answers that many following CDN
GETs with 503. Every request is recorded in `requests`.

The server runs in a daemon thread and shuts itself down after `lifetime` seconds even
if a test forgets to stop it; use it as a context manager.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_CDN = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(?P<start>\d+)-(?P<end>\d*)$")


@dataclass
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class HubServer:
    """Serve registered files like the Hub. `add()` files, then `with server: ...`."""

    commit: str = DEFAULT_COMMIT
    lifetime: float = 120.0
    cdn_host: str = "localhost"
    cut_after: int | None = None
    fail_gets: int = 0
    requests: list[Request] = field(default_factory=list)
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)

    def add(self, repo: str, filename: str, data: bytes) -> str:
        """Publish `data` as repo/filename at `commit` (and "main"); returns its SHA-256."""
        sha = hashlib.sha256(data).hexdigest()
        self.files[(repo, filename)] = data
        self.blobs[sha] = data
        return sha

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "HubServer":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        httpd = getattr(self, "_httpd", None)
        if httpd is None:
            return
        self._httpd = None
        self._timer.cancel()
        httpd.shutdown()
        httpd.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cdn_gets(self) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.startswith("/cdn/")]


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    timeout = 10  # a stuck client cannot hold a handler thread for long

    def log_message(self, format, *args) -> None:  # noqa: A002 - keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        self.hub.requests.append(Request(self.command, path, self.headers.get("Range")))
        if m := _RESOLVE.match(path):
            self._resolve(m["repo"], m["rev"], m["file"])
        elif m := _CDN.match(path):
            self._cdn(m["sha"], body)
        else:
            self._empty(404)

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _resolve(self, repo: str, rev: str, filename: str) -> None:
        hub = self.hub
        if not any(r == repo for r, _ in hub.files):
            return self._empty(404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
        if rev not in ("main", hub.commit):
            return self._empty(404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"})
        data = hub.files.get((repo, filename))
        if data is None:
            return self._empty(404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                                     "X-Repo-Commit": hub.commit})
        sha = hashlib.sha256(data).hexdigest()
        self._empty(302, {
            "Location": f"http://{hub.cdn_host}:{hub.port}/cdn/{sha}?X-Amz-Signature=test",
            "X-Repo-Commit": hub.commit,
            "X-Linked-Etag": f'"{sha}"',
            "X-Linked-Size": str(len(data)),
            "ETag": f'"{sha}"',
        })

    def _cdn(self, sha: str, body: bool) -> None:
        hub = self.hub
        data = hub.blobs.get(sha)
        if data is None:
            return self._empty(404)
        if body and hub.cut_after is None and hub.fail_gets > 0:
            hub.fail_gets -= 1
            return self._empty(503)
        start, end = 0, len(data)
        m = _RANGE.match(self.headers.get("Range") or "")
        if m:
            start = int(m["start"])
            end = int(m["end"]) + 1 if m["end"] else len(data)
        chunk = data[start:end]
        self.send_response(206 if m else 200)
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{sha}"')
        if m:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        if hub.cut_after is not None:
            cut, hub.cut_after = hub.cut_after, None
            self.wfile.write(chunk[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # an interrupted transfer: fewer bytes than promised
            return
        self.wfile.write(chunk)
