"""`specli serve`: an OpenAI-compatible HTTP server over the loaded pair."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from specli.cli._app import app
from specli.cli.common import consoles, open_session
from specli.cli.options import generation_options
from specli.session import Options
from specli.config import PROMPT_CACHE_MB

SERVE_HELP = """Serve the pair over an OpenAI-compatible HTTP API, speculative decoding every reply.

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health (503 while the models load), and llama-server's POST /infill for editor plugins (llama.vscode, llama.vim: fill in the middle, with other files as context). Replies are streamed as Server-Sent Events when asked. Sampling options below are the defaults for what a request leaves out; a request may override K, the drafter and strict mode with "speculative": {"k": 4, "drafter": "ngram", "strict": true}. With --parallel N, up to N generations are decoded together, one batch per step (each with its own drafts and exact verification); others wait in a queue. Consecutive requests that share a prefix (a client re-sending a growing conversation) decode only the new tokens. Each response carries a "timings" object (llama-server's names, plus rounds, acceptance and K per round). Web pages may call it only from this machine (or an --allow-origin); see README, Browsers.

Examples:

  specli serve                    # http://127.0.0.1:8080/v1

  specli serve --port 9000 --max-tokens 2048

  specli serve --parallel 4       # 4 clients at once, batched in one context

  specli serve --draft-history ~/.cache/specli/history.json   # draft from earlier runs' requests too

  SPECLI_API_KEY=secret specli serve --host 0.0.0.0

  specli serve --allow-origin https://app.example   # a web app may call it (CORS)

  specli serve --port 8012        # llama.vscode's and llama.vim's default endpoint (/infill)

  curl http://127.0.0.1:8080/v1/chat/completions \\
    -d '{"messages": [{"role": "user", "content": "Hi"}]}'
"""


@app.command("serve", help=SERVE_HELP)
@generation_options(max_tokens=256)
def serve_cmd(
    opts: Options,
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on (default: this machine only).",
        rich_help_panel="Server")] = "127.0.0.1",
    port: Annotated[int, typer.Option(
        "--port", help="Port to listen on (0: any free port).", rich_help_panel="Server")] = 8080,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="SPECLI_API_KEY", show_envvar=True,
        help="Require 'Authorization: Bearer KEY' on every /v1 and /infill request.",
        rich_help_panel="Server")] = None,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", help="Requests that may wait behind the running one; more get 503 with Retry-After.",
        rich_help_panel="Server")] = 16,
    cache_mb: Annotated[int, typer.Option(
        "--cache-mb", help="Memory for saved prompt states, per model, in MiB (0: keep none). "
        "A client coming back to an earlier conversation restores its prompt instead of "
        "decoding it again (as llama-server's --cache-ram).",
        rich_help_panel="Server")] = PROMPT_CACHE_MB,
    allow_open: Annotated[bool, typer.Option(
        "--dangerously-serve-without-key",
        help="Listen on a non-loopback --host without --api-key: anyone who can connect may use the server.",
        rich_help_panel="Server")] = False,
    allow_origin: Annotated[Optional[List[str]], typer.Option(
        "--allow-origin", envvar="SPECLI_ALLOW_ORIGINS", show_envvar=True,
        help="A web page origin that may call the server from a browser (repeatable, or a "
        "comma-separated list; '*' in it matches any part, as in chrome-extension://*; '*' alone: any page). "
        "Pages from this machine and VS Code webviews always may; other pages get 403.",
        rich_help_panel="Server")] = None,
    parallel: Annotated[str, typer.Option(
        "--parallel", "-np", help="Generations decoded together in one batch per step, each "
        "with its own KV cache of --ctx tokens and its own drafts (K per sequence, priced by "
        "the whole step). 'auto': as many as this machine's measured verify costs say pay "
        "(1 until `specli doctor` or a run has measured them).",
        rich_help_panel="Server")] = "auto",
    draft_history: Annotated[Optional[Path], typer.Option(
        "--draft-history", metavar="FILE",
        help="Keep what is drafted from earlier requests (their prompts and replies) in FILE "
        "between runs: read at start if it exists, written when the server stops. Without "
        "it, that history lives in memory only.",
        rich_help_panel="Server")] = None,
    allow_host: Annotated[Optional[List[str]], typer.Option(
        "--allow-host", help="A host name to answer besides localhost and loopback addresses "
        "(repeatable), such as a reverse proxy's that passes its Host header on. On loopback, "
        "requests addressed to other names get 403 (a guard against DNS rebinding).",
        rich_help_panel="Server")] = None,
) -> None:
    from specli.server.main import serve

    from specli.core.history import check_history_path

    _, err = consoles()
    n = _parallel(parallel)
    check_history_path(draft_history)
    opts = dataclasses.replace(opts, parallel=n)

    serve(lambda: open_session(err, opts), host=host, port=port, api_key=api_key or None, max_queue=max_queue,
          allow_open=allow_open, cache_mb=cache_mb, allow_origins=tuple(allow_origin or ()),
          allow_hosts=tuple(allow_host or ()), on_listening=lambda url: _banner(url, api_key),
          parallel=n, history_path=draft_history,
          on_ready=_ready)


def _parallel(value: str) -> int:
    """--parallel N (1..PARALLEL_MAX) or auto (0)."""
    from specli.config import PARALLEL_MAX
    from specli.errors import UsageError

    if value.strip().lower() == "auto":
        return 0
    if not value.strip().isdigit() or not 1 <= int(value) <= PARALLEL_MAX:
        raise UsageError(f"--parallel must be 'auto' or an integer in 1..{PARALLEL_MAX}, "
                         f"got {value!r}")
    return int(value)


def _banner(url: str, api_key: Optional[str]) -> None:
    auth = " -H 'Authorization: Bearer $SPECLI_API_KEY'" if api_key else ""
    lines = [
        f"specli serve: listening on {url}/v1 (loading the models; /health says 503 until ready)",
        "try:",
        f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\",
        "    -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Write hello world in C\"}]}'",
        f"  OpenAI SDK: OpenAI(base_url=\"{url}/v1\", api_key=\"{'...' if api_key else 'none'}\")",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _ready(gen) -> None:
    n = getattr(gen.loaded.target, "n_seq", 1)
    slots = f" · {n} parallel" if n > 1 else ""
    print(f"specli serve: ready · {gen.paths.target.name} ← {gen.draft_label()} · K {gen.spec.k}{slots} · "
          f"pid {os.getpid()} · Ctrl-C stops", file=sys.stderr, flush=True)
