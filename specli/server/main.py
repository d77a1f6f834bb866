"""Run the server: check exposure, bind, load the models while /health says 503, serve, stop.

SIGINT/SIGTERM stop accepting, cancel what is in flight (each generation at its next
round), close the models and return normally, so the command exits 0.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import threading
from contextlib import ExitStack, contextmanager
from typing import Callable, ContextManager

import uvicorn

from specli.config import PROMPT_CACHE_MB
from specli.errors import SpecliError, UsageError
from specli.server.app import ServerState, build_app
from specli.server.guard import Access
from specli.server.worker import stderr_log

GRACE_S = 5  # seconds connections get to close after a stop signal


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback address."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback
                               for i in infos)


def check_exposure(host: str, api_key: str | None, allow_open: bool) -> None:
    """Refuse to listen beyond this machine without a key, unless told so explicitly."""
    if api_key is None and not allow_open and not is_loopback(host):
        raise UsageError(f"--host {host} is reachable from other machines and there is no "
                         "--api-key (or SPECLI_API_KEY); set one, or pass "
                         "--dangerously-serve-without-key to serve anyone who can connect")


def _items(values) -> tuple[str, ...]:
    """Repeated option values, each of which may also be a comma-separated list (as
    SPECLI_ALLOW_ORIGINS may be written, like OLLAMA_ORIGINS)."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error (address in use, unknown host...)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        raise SpecliError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def url_of(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
    return f"http://{shown}:{port}"


class _Server(uvicorn.Server):
    """uvicorn, but a stop signal also cancels the generations, and is not re-raised after
    shutdown (uvicorn re-raises it, which would end the process with the signal's code)."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_stop = on_stop

    @contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        sigs = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self._on_signal) for sig in sigs}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig, frame) -> None:
        self.on_stop()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: do not wait for connections
        self.should_exit = True


class _Loader(threading.Thread):
    """Loads the models while the server already answers /health with 503."""

    def __init__(self, open_gen: Callable[[], ContextManager], state: ServerState,
                 server: _Server, on_ready: Callable[[object], None]) -> None:
        super().__init__(name="specli-load", daemon=True)
        self.open_gen, self.state, self.server, self.on_ready = open_gen, state, server, on_ready
        self.stack = ExitStack()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            gen = self.stack.enter_context(self.open_gen())
            self.state.set_ready(gen)
            self.on_ready(gen)
        except BaseException as e:  # reported by serve() once the server has stopped
            self.error = e
            self.server.should_exit = True


def serve(open_gen: Callable[[], ContextManager], *, host: str, port: int,
          api_key: str | None, max_queue: int, allow_open: bool = False,
          cache_mb: int = PROMPT_CACHE_MB, allow_origins: tuple[str, ...] = (),
          allow_hosts: tuple[str, ...] = (),
          on_listening: Callable[[str], None] = lambda url: None,
          on_ready: Callable[[object], None] = lambda gen: None,
          log: Callable[[str], None] = stderr_log, parallel: int = 1,
          history_path=None) -> None:
    """Serve until SIGINT/SIGTERM. `open_gen()` loads the pair (a context manager)."""
    if max_queue < 0:
        raise UsageError(f"--max-queue must be >= 0, got {max_queue}")
    if cache_mb < 0:
        raise UsageError(f"--cache-mb must be >= 0, got {cache_mb}")
    if not 0 <= port <= 65535:  # the OS would take it modulo 65536: 99999 listens on 34463
        raise UsageError(f"--port must be in 0..65535, got {port}")
    check_exposure(host, api_key, allow_open)
    # On loopback, only requests addressed to this machine (or an --allow-host name);
    # beyond it, any name: the address is public and the API key keeps strangers out.
    access = Access(origins=_items(allow_origins),
                    hosts=(host, *_items(allow_hosts)) if is_loopback(host) else None)
    sock = bind(host, port)
    state = ServerState(api_key=api_key, max_queue=max_queue, log=log,
                        state_bytes=cache_mb * 2**20, access=access,
                        parallel=max(1, parallel), history_path=history_path)
    config = uvicorn.Config(build_app(state), log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=GRACE_S)
    server = _Server(config, on_stop=state.scheduler.close)
    loader = _Loader(open_gen, state, server, on_ready)
    on_listening(url_of(host, sock))
    loader.start()
    try:
        server.run(sockets=[sock])
    finally:
        state.scheduler.close()
        state.scheduler.join()  # the running generation stops at its next round
        if state.history is not None:  # --draft-history: kept for the next run
            from specli.core.history import save_history

            problem = save_history(state.history)
            if problem:
                log(f"warning: {problem}")
        loader.join()  # a load in progress finishes, so that its models can be closed
        loader.stack.close()
        sock.close()
    if loader.error is not None:
        raise loader.error
