"""`specli chat`: an interactive conversation that keeps both KV caches warm between turns."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from specli.cli._app import app
from specli.cli.common import consoles, open_session
from specli.cli.options import PlainOpt, ShowOpt, SystemOpt, check_show, generation_options
from specli.errors import UsageError
from specli.session import Options

CHAT_HELP = """Chat with a model, speculative decoding every reply; only new tokens are evaluated each turn.

Type a message and press Enter. End a line with \\ to continue it, or paste between two \"\"\" lines. /help lists the commands (/k, /temp, /stats, /retry, /save, ...). Ctrl-C stops a reply (the partial reply is kept); Ctrl-D, or Ctrl-C at an empty prompt, exits with a summary. With stdin not a terminal, each line is one message and replies print plainly.

Examples:

  specli chat

  specli chat --system "You are a terse assistant." --save talk.json

  specli chat --load talk.json --save talk.json              # resume and keep saving

  printf 'Hi\\nWrite a haiku\\n' | specli chat --temperature 0  # scripted

  specli chat --html reply.html                              # a trace page of each reply

  specli chat --draft-history chat-history.json              # draft from earlier sessions' replies
"""


@app.command("chat", help=CHAT_HELP)
@generation_options(max_tokens=512)
def chat_cmd(
    opts: Options,
    system: SystemOpt = None,
    load: Annotated[Optional[Path], typer.Option(
        "--load", help="Resume the conversation saved in this JSON transcript.",
        rich_help_panel="Conversation")] = None,
    save: Annotated[Optional[Path], typer.Option(
        "--save", help="Write the JSON transcript to this file after every turn.",
        rich_help_panel="Conversation")] = None,
    plain: PlainOpt = False,
    show: ShowOpt = "rejected",
    html_file: Annotated[Optional[Path], typer.Option(
        "--html", help="After every reply, write a self-contained HTML trace of that reply to FILE (tokens with p, q and the draws behind each verdict, charts, stats).",
        rich_help_panel="Output")] = None,
    draft_history: Annotated[Optional[Path], typer.Option(
        "--draft-history", metavar="FILE",
        help="Keep what --k auto drafts from earlier replies in FILE between sessions: read "
        "at start if it exists, written at exit. Without it, that history lives in memory only.",
        rich_help_panel="Conversation")] = None,
) -> None:
    from specli.chat import (ChatSession, load_transcript, no_echo, save_transcript,
                             stream_reader, terminal_reader)

    from specli.core.history import check_history_path, open_history, save_history

    check_show(show)
    check_history_path(draft_history)
    transcript = load_transcript(load) if load is not None else None  # fail before loading models
    for opt, path in (("--save", save), ("--html", html_file)):
        if path is not None and not path.parent.resolve().is_dir():
            raise UsageError(f"{opt}: directory not found: {path.parent}")
    interactive = sys.stdin.isatty()
    out, err = consoles(plain=plain)
    with open_session(err, opts) as gen:
        history = open_history(draft_history, gen.loaded.target)
        session = ChatSession(gen, out=out, err=err, system=system, transcript=transcript,
                              save_path=save, show="plain" if plain else show,
                              interactive=interactive, live_footer=not plain,
                              while_replying=lambda: no_echo(sys.stdin), history=history)
        if html_file is not None:
            _trace_replies(session, gen, html_file)
        if interactive:
            _banner(session, err, load)
            read = terminal_reader(None if sys.stdout.isatty() else sys.stderr)
        else:
            read = stream_reader(sys.stdin)
        if save is not None and transcript is not None:
            save_transcript(save, session.chat)
        try:
            session.run(read)
        finally:
            problem = save_history(history)
            if problem:
                err.print(f"warning: {problem}", style="yellow", markup=False)


def _trace_replies(session, gen, path: Path) -> None:
    """--html: collect each reply's rounds (traced) and write its page when it is done."""
    from specli.cli.common import write_trace_html

    rounds: list = []
    session.trace = True
    session.on_round = rounds.append

    def on_reply(done) -> None:
        write_trace_html(path, gen, done, list(rounds))
        rounds.clear()

    session.on_reply = on_reply


def _banner(session, err, load: Optional[Path]) -> None:
    gen = session.gen
    from rich.markup import escape

    err.print(f"[bold]specli chat[/] · {escape(gen.paths.target.name)} ← {escape(gen.draft_label())} · "
              f"K {gen.spec.k} · temperature {gen.sampling.temperature}", highlight=False)
    if load is not None:
        n = len(session.chat.messages) - session.chat.start
        err.print(f"resumed {n} messages from {load}", highlight=False, markup=False)
        last = next((m for m in reversed(session.chat.messages)
                     if m["role"] == "assistant" and m["content"].strip()), None)
        if last is not None:
            cut = " (interrupted)" if last.get("interrupted") else ""
            err.print(f"[dim]last reply{cut}:[/] {_clip(last['content'])}", highlight=False)
    err.print("[dim]/help for commands · Ctrl-D to exit[/]")


def _clip(text: str, n: int = 200) -> str:
    from rich.markup import escape

    text = " ".join(text.split())
    return escape(text if len(text) <= n else text[: n - 1] + "…")
