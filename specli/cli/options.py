"""The options run, chat, serve, bench and explain share: defined once, help text here.

`@generation_options(...)` adds them to a command and hands the command one
`session.Options` built from them (as `opts`), so no command repeats the list:

    @app.command("run")
    @generation_options(max_tokens=256)
    def run_cmd(prompt: str, opts: Options) -> None: ...

Keyword arguments set a command's own defaults; `omit` leaves out options the command
declares itself (bench's --k takes a list), which then keep Options' defaults. Help lists
the command's arguments (and the options named in `lead`) first, then the shared ones.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Annotated, Optional

import typer

from specli.session import Options


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
PlainOpt = Annotated[bool, typer.Option("--plain", help="Plain text: no colours, no live footer.",
                                        rich_help_panel="Output")]
ShowOpt = Annotated[str, typer.Option("--show", help="rejected (show rejected drafts), accepted, or plain.",
                                      rich_help_panel="Output")]
SHOW_MODES = ("rejected", "accepted", "plain")
SystemOpt = Annotated[Optional[str], typer.Option("--system", help="System prompt.", rich_help_panel="Prompt")]


OPTIONS = {  # Options field -> its Typer annotation, in the order help lists them
    "pair": PairOpt, "target": TargetOpt, "draft": DraftOpt, "drafter": DrafterOpt,
    "force": ForceOpt, "k": KOpt, "temperature": TempOpt, "top_k": TopKOpt, "top_p": TopPOpt,
    "min_p": MinPOpt, "seed": SeedOpt, "max_tokens": MaxTokOpt, "ctx": CtxOpt,
    "threads": ThreadsOpt, "draft_threads": DraftThreadsOpt, "n_gpu_layers": NglOpt,
    "draft_n_gpu_layers": DraftNglOpt, "strict": StrictOpt,
}


def generation_options(*, omit: tuple[str, ...] = (), lead: tuple[str, ...] = (), **defaults):
    """Give a command the shared options; it receives them as one Options, `opts`."""
    unknown = set(defaults) - set(OPTIONS)
    if unknown:
        raise TypeError(f"no shared option {sorted(unknown)}")
    base = Options()
    shared = {name: defaults.get(name, getattr(base, name)) for name in OPTIONS if name not in omit}

    def decorate(command):
        own = inspect.signature(command).parameters
        hints = typing.get_type_hints(command, include_extras=True)
        params = [p.replace(annotation=hints.get(p.name, p.annotation))
                  for p in own.values() if p.name != "opts"]
        taken = {p.name for p in params}
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                   annotation=OPTIONS[name])
                 for name, default in shared.items() if name not in taken]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
        first = [p for p in params if _is_argument(p.annotation) or p.name in lead]
        params = first + added + [p for p in params if p not in first]

        @functools.wraps(command)
        def wrapper(**kwargs):
            chosen = {name: kwargs.pop(name) for name in shared if name in kwargs}
            return command(opts=Options(**chosen), **kwargs)

        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def _is_argument(annotation) -> bool:
    return any(isinstance(m, typer.models.ArgumentInfo)
               for m in getattr(annotation, "__metadata__", ()))


def check_show(show: str) -> None:
    """--show's value, checked before any model loads."""
    if show not in SHOW_MODES:
        from specli.errors import UsageError

        raise UsageError(f"--show must be rejected, accepted or plain, got {show!r}")
