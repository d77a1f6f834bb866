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
from specli.errors import SpecliError

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point: known errors become one line on stderr and an exit code.

    Typer (standalone mode) handles usage errors, --help and Ctrl-C outside generation;
    commands handle Ctrl-C during generation themselves, to keep the partial output.
    """
    try:
        app()
    except SpecliError as e:
        print(f"specli: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
