"""Which browsers may use the server: the `Origin` and `Host` checks, and CORS.

Listening on loopback keeps other machines out, not web pages. Any page the user opens
can POST to http://127.0.0.1:8080 (a "simple" request needs no CORS preflight: the page
cannot read the answer, but the generation runs), and a page whose domain is made to
resolve to 127.0.0.1 (DNS rebinding) is then same-origin and reads every answer.
So, before any route runs:
- A request with an `Origin` header must come from an allowed origin, or it gets 403.
  Browsers send `Origin` with every cross-origin request and with every POST. Allowed by
  default: pages served from this machine (localhost, loopback addresses) and VS Code
  webviews. `--allow-origin` adds more, and allowed origins get CORS headers (Starlette's
  CORSMiddleware), so that a web app can read the answers.
- On a loopback address, the `Host` header must name this machine: localhost, a loopback
  address, the --host given, or an --allow-host name. Otherwise 403. A rebinding page
  sends its own domain there.
Clients that are not browsers (curl, the openai SDK, editors' and agents' HTTP clients)
send no `Origin` and a loopback `Host`, so they pass.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import cached_property

from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse

from specli.errors import UsageError
from specli.server.errors import ApiError

# Origins allowed without --allow-origin: pages from this machine, and VS Code webviews.
_LOCAL_ORIGINS = (
    r"https?://(localhost|[^/]+\.localhost|127(\.\d{1,3}){3}|\[::1\])(:\d+)?",
    r"vscode-webview://[^/]+",
)
_LOGGED_MAX = 64  # distinct refused values logged (one line each), so a page cannot flood it


def origin_pattern(text: str) -> str:
    """An --allow-origin value -> a regex: an origin (scheme://host[:port]), '*' inside it
    standing for any run of characters but '/', or 'null'. Raises UsageError otherwise."""
    value = text.strip().rstrip("/").lower()
    if value == "null":  # what sandboxed frames and file:// pages send
        return "null"
    scheme, sep, rest = value.partition("://")
    if not sep or not re.fullmatch(r"[a-z][a-z0-9+.\-]*", scheme) or not rest or "/" in rest:
        raise UsageError(f"--allow-origin expects an origin such as https://app.example or "
                         f"chrome-extension://*, got {text!r}")
    return re.escape(f"{scheme}://") + "[^/]*".join(map(re.escape, rest.split("*")))


def split_host(header: str) -> str:
    """The host name of a Host header value, without its port or IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    name, colon, port = header.rpartition(":")
    return name if colon and port.isdigit() else header


def _is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """What the guard lets through. `origins`: --allow-origin values ('*': any origin);
    `hosts`: the Host names answered besides this machine's, or None for any (a server
    listening beyond loopback: its --api-key is what keeps strangers out)."""

    origins: tuple[str, ...] = ()
    hosts: tuple[str, ...] | None = ()

    def __post_init__(self) -> None:
        for h in self.hosts or ():
            if not h.strip() or "/" in h:
                raise UsageError("--allow-host expects a host name such as proxy.example, "
                                 f"got {h!r}")
        self.origin_regex  # validates every --allow-origin value now, as a one-line error

    @property
    def any_origin(self) -> bool:
        return any(o.strip() == "*" for o in self.origins)

    @cached_property
    def origin_regex(self) -> str:
        extra = [origin_pattern(o) for o in self.origins if o.strip() != "*"]
        return "(?i)(" + "|".join([*_LOCAL_ORIGINS, *extra]) + ")"

    @cached_property
    def _host_names(self) -> frozenset[str]:
        return frozenset(split_host(h) for h in self.hosts or ())

    def host_allowed(self, header: str) -> bool:
        if self.hosts is None or "*" in self._host_names:
            return True
        name = split_host(header)
        return name in self._host_names or _is_loopback_name(name)


class Guard:
    """Pure ASGI middleware: refuses (403, OpenAI's error shape) a request whose Origin or
    Host is not allowed, before anything else reads it."""

    def __init__(self, app, access: Access, log) -> None:
        self.app, self.access, self.log = app, access, log
        self.origin = None if access.any_origin else re.compile(access.origin_regex)
        self.logged: set[str] = set()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            host = origin = None
            for name, value in scope["headers"]:
                if name == b"host":
                    host = value.decode("latin-1")
                elif name == b"origin":
                    origin = value.decode("latin-1")
            error = None
            if host is not None and not self.access.host_allowed(host):
                error = self._refuse(
                    "host", host, f"Host {host!r} does not name this machine: a server on "
                    "loopback answers only requests addressed to it (a guard against DNS "
                    f"rebinding); start it with --allow-host {split_host(host)} to answer "
                    "that name", "host_not_allowed")
            elif (origin is not None and self.origin is not None
                  and not self.origin.fullmatch(origin)):
                error = self._refuse(
                    "origin", origin, f"requests from the web page at {origin!r} are not "
                    f"allowed; start the server with --allow-origin {origin} to let that "
                    "page use it", "origin_not_allowed")
            if error is not None:
                await JSONResponse(error.body(), status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refuse(self, what: str, value: str, message: str, code: str) -> ApiError:
        key = f"{what}:{value}"
        if key not in self.logged and len(self.logged) < _LOGGED_MAX:
            self.logged.add(key)
            self.log(f"refused a request with {what} {value!r} ({code}; see --allow-{what})")
        return ApiError(403, message, type="permission_error", code=code)


def install(app, access: Access, log) -> None:
    """CORS headers for allowed origins, and the Guard outside it (Starlette runs the
    middleware added last first)."""
    if access.any_origin:
        app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST"],
                           allow_headers=["*"], allow_private_network=True)
    else:
        app.add_middleware(CORSMiddleware, allow_origin_regex=access.origin_regex,
                           allow_methods=["GET", "POST"], allow_headers=["*"],
                           allow_private_network=True)
    app.add_middleware(Guard, access=access, log=log)
