"""`specli serve` as a real subprocess on 127.0.0.1 (a free port), and raw HTTP helpers."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT = 120  # seconds; loading the tiny models takes well under one


class Server:
    """A running `specli serve`; its stderr goes to a file (a pipe could fill and block it)."""

    def __init__(self, args, workdir: Path, env: dict | None = None) -> None:
        self.log_path = workdir / "serve.err"
        self.out_path = workdir / "serve.out"
        env = {**os.environ, "NO_COLOR": "1", **(env or {})}
        with open(self.log_path, "w") as err, open(self.out_path, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "specli", "serve", "--port", "0", *map(str, args)],
                stdout=out, stderr=err, env=env)
        self.url = self._wait_for_url()
        self.host, self.port = re.match(r"http://([^:/]+):(\d+)", self.url).groups()
        self.port = int(self.port)

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            m = re.search(r"listening on (http://\S+?)/v1", self.log)
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"specli serve exited {self.proc.returncode}:\n{self.log}")
            time.sleep(0.05)
        raise RuntimeError(f"specli serve did not start:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"specli serve exited {self.proc.returncode}:\n{self.log}")
            try:
                if request(self, "GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"specli serve never became healthy:\n{self.log}")

    def client(self, api_key: str = "none", **kw):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120, **kw)

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def request(server: Server, method: str, path: str, body=None, headers=None,
            timeout: float = 120) -> tuple[int, dict, bytes]:
    """One raw HTTP request: (status, headers, body bytes). `body` may be bytes or JSON-able."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def sse_events(raw: bytes) -> list[str]:
    """The data fields of a Server-Sent Events body, in order (each decoded as UTF-8)."""
    events = []
    for block in raw.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                events.append(line[len(b"data: "):].decode("utf-8"))  # strict: no half characters
    return events
