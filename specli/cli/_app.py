"""The Typer application object and the options shared by several commands."""

from __future__ import annotations

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

# --- options shared by run, chat and bench (defined once; help text lives here) ---------
from pathlib import Path  # noqa: E402
from typing import Annotated, Optional  # noqa: E402

PairOpt = Annotated[Optional[str], typer.Option(
    "--pair", "-p", help="A curated pair from `specli models list` (default: the default pair).",
    rich_help_panel="Models")]
TargetOpt = Annotated[Optional[str], typer.Option(
    "--target", "-m", help="Target model: a local GGUF path, org/repo:file.gguf[@rev], or a registry name.",
    rich_help_panel="Models")]
DraftOpt = Annotated[Optional[str], typer.Option(
    "--draft", "-d", help="Draft model (same forms as --target), or a drafter name (auto, ngram, model: the same as --drafter). Without a draft model, --target runs with n-gram drafting only.",
    rich_help_panel="Models")]
DrafterOpt = Annotated[str, typer.Option(
    "--drafter", help="How to draft: model, ngram (prompt lookup, free), or auto (n-gram when the text repeats, else the model).",
    rich_help_panel="Speculation")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Run even if the draft's vocabulary does not match the target's (warns).",
    rich_help_panel="Models")]
KOpt = Annotated[str, typer.Option(
    "--k", "-k", help="Draft tokens per round: 0..64 (0 = target alone), or 'auto' (chosen each round from measured costs).",
    rich_help_panel="Speculation")]
TempOpt = Annotated[float, typer.Option(
    "--temperature", "-t", help="Sampling temperature; 0 = greedy (exact argmax).", rich_help_panel="Sampling")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Keep the k most likely tokens (0 = off).",
                                      rich_help_panel="Sampling")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass in (0, 1] (1 = off).",
                                        rich_help_panel="Sampling")]
MinPOpt = Annotated[float, typer.Option("--min-p", help="Drop tokens below min-p x the top probability (0 = off).",
                                        rich_help_panel="Sampling")]
SeedOpt = Annotated[int, typer.Option("--seed", "-s", help="Random seed for sampling.",
                                      rich_help_panel="Sampling")]
MaxTokOpt = Annotated[int, typer.Option("--max-tokens", "-n", help="Stop after this many new tokens.",
                                        rich_help_panel="Sampling")]
CtxOpt = Annotated[int, typer.Option("--ctx", help="Context size in tokens, for both models.",
                                     rich_help_panel="Runtime")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", help="CPU threads per model (default: physical cores).", rich_help_panel="Runtime")]
DraftThreadsOpt = Annotated[Optional[int], typer.Option(
    "--draft-threads", help="CPU threads for the draft (default: --threads).", rich_help_panel="Runtime")]
NglOpt = Annotated[Optional[int], typer.Option(
    "--n-gpu-layers", "-ngl", help="Target layers to offload to the GPU (-1 = all, 0 = CPU only; default: all when llama.cpp was built with GPU support, else 0).",
    rich_help_panel="Runtime")]
DraftNglOpt = Annotated[Optional[int], typer.Option(
    "--draft-n-gpu-layers", help="Draft layers on the GPU (default: --n-gpu-layers).", rich_help_panel="Runtime")]
StrictOpt = Annotated[bool, typer.Option(
    "--strict", help="Verify in batches small enough that the target computes bit for bit the logits it computes alone (K = 0): exact with respect to --k 0 on this machine's kernels, at some cost (see README, How exactness works).",
    rich_help_panel="Speculation")]
SystemOpt = Annotated[Optional[str], typer.Option("--system", help="System prompt.", rich_help_panel="Prompt")]


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
