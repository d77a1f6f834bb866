"""The Typer application. The cli package is the only place that imports typer.

Heavy modules (llama_cpp, numpy, huggingface_hub) are imported inside commands so that
`specli --help` stays fast. Each submodule adds its commands to `app`.
"""

from __future__ import annotations

import sys

from specli.cli._app import app
from specli.cli import run as _run  # noqa: F401,E402  (registers `run`)
from specli.cli import models as _models  # noqa: F401,E402  (registers `models`)
from specli.cli import bench as _bench  # noqa: F401,E402  (registers bench)
from specli.cli import chat as _chat  # noqa: F401,E402  (registers chat)
from specli.cli import explain as _explain  # noqa: F401,E402  (registers explain)
from specli.cli import doctor as _doctor  # noqa: F401,E402  (registers doctor)
from specli.cli import serve as _serve  # noqa: F401,E402  (registers serve)
from specli.cli import complete as _complete  # noqa: F401,E402  (registers complete)
from specli.errors import SpecliError

__all__ = ["app", "main"]


def normalize_argv(args: list[str]) -> list[str]:
    """`specli bench ... --json` with no FILE means stdout: supply the '-' Typer needs.

    `--json` takes an optional value in bench (FILE, or nothing for stdout), which Typer
    cannot declare; a bare `--json` (last, or followed by another option) gets '-'.
    """
    if not args or args[0] != "bench":
        return args
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--json":
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is None or (nxt.startswith("-") and nxt != "-"):
                out.append("-")
    return out


def main() -> None:
    """Console-script entry point: known errors become one line on stderr and an exit code.

    Typer (standalone mode) handles usage errors, --help and Ctrl-C outside generation;
    commands handle Ctrl-C during generation themselves, to keep the partial output.
    """
    try:
        app(args=normalize_argv(sys.argv[1:]), prog_name="specli")
    except SpecliError as e:
        print(f"specli: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
