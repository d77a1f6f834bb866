"""The Typer application object (the options commands share are in cli.options)."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    name="specli",
    help="Exact speculative decoding for local GGUF models, over llama.cpp.\n\n"
    "A small draft model proposes K tokens; the target checks them in one pass; rejection "
    "sampling keeps the output distributed exactly as the target's alone.\n\n"
    "Start with: specli run \"Write a quicksort in Python\"",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from specli import __version__

        typer.echo(f"specli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Exact speculative decoding for local GGUF models, over llama.cpp."""
