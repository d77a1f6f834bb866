"""`specli run PROMPT`: one prompt, streamed live with accepted/rejected drafts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from specli.cli._app import app
from specli.cli.common import (consoles, open_session, read_grammar, read_prompt, round_record,
                               write_trace_html)
from specli.cli.options import PlainOpt, check_show, ShowOpt, SystemOpt, generation_options
from specli.errors import UsageError
from specli.session import Options

RUN_HELP = """Generate an answer to one PROMPT with speculative decoding, streamed live.

Accepted draft tokens are green, tokens the target produced itself are plain, rejected drafts are struck through in red. The output is distributed exactly as the target's alone.

Examples:

  specli run "Write a quicksort in Python"

  specli run --k 0 --temperature 0 "Explain KV caches"      # the target alone (baseline)

  specli run --json --temperature 0 --k 4 "def fib(n):" | jq .stats

  cat prompt.txt | specli run -                              # prompt from stdin

  specli run --target ./big.gguf --draft ./small.gguf --file prompt.txt

  specli run --html trace.html "Write a haiku"                # a page to explore the rounds

  specli run --json-schema person.json "Extract: Ada Lovelace, born 1815"   # valid JSON out

  specli run --grammar yesno.gbnf "Is 7 prime?"                # GBNF, as llama.cpp's
"""


@app.command("run", help=RUN_HELP, no_args_is_help=True)
@generation_options(max_tokens=256, lead=("file",))
def run_cmd(
    opts: Options,
    prompt: Annotated[Optional[str], typer.Argument(help="The prompt; '-' reads stdin.")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Read the prompt from a file.",
                                                 rich_help_panel="Prompt")] = None,
    system: SystemOpt = None,
    raw: Annotated[bool, typer.Option("--raw", help="Skip the chat template: feed the prompt as is.",
                                      rich_help_panel="Prompt")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object (text, tokens, rounds, stats) to stdout.",
                                           rich_help_panel="Output")] = False,
    plain: PlainOpt = False,
    show: ShowOpt = "rejected",
    html_file: Annotated[Optional[Path], typer.Option(
        "--html", help="Also write a self-contained HTML trace to FILE: tokens with p, q and the draws behind each verdict, charts, stats.",
        rich_help_panel="Output")] = None,
    json_schema: Annotated[Optional[str], typer.Option(
        "--json-schema", metavar="FILE|JSON",
        help="The output is JSON valid against this schema (a file, or the schema inline), "
             "exactly as the target alone would sample it under the schema.",
        rich_help_panel="Structured output")] = None,
    grammar_file: Annotated[Optional[str], typer.Option(
        "--grammar", metavar="FILE",
        help="The output keeps to this GBNF grammar (llama.cpp's format).",
        rich_help_panel="Structured output")] = None,
) -> None:
    check_show(show)
    grammar = read_grammar(json_schema, grammar_file)
    if html_file is not None and not html_file.resolve().parent.is_dir():
        raise UsageError(f"cannot write {html_file}: no such directory {html_file.parent}")
    text = read_prompt(prompt, file)
    out, err = consoles(plain=plain or json_out)
    with open_session(err, opts) as gen:
        tokens = gen.prompt_tokens(text, system=system, raw=raw)
        events = gen.generate(tokens, trace=html_file is not None, grammar=grammar)
        rounds: list = []
        if json_out:
            done, rounds = gen.collect(events)
            print(json.dumps(_json_result(gen, done, rounds), ensure_ascii=False))
        else:
            mode = show if out.is_terminal and not plain else "plain"  # no struck text in pipes
            done = _stream(events, out, err, gen, show=mode, rounds=rounds)
        if html_file is not None:
            write_trace_html(html_file, gen, done, rounds)
            err.print(f"HTML trace in {html_file}")
    if done.stop_reason == "interrupted":
        raise typer.Exit(130)


def _stream(events, out, err, gen, show, rounds=None):
    from specli.views.render import LiveView, stats_table

    view = LiveView(out, mode=show, k_label=str(gen.spec.k))
    with view:
        done, shown = gen.collect(events, on_round=view.round)
        view.finish(done)
    if rounds is not None:
        rounds.extend(shown)
    if done.message and done.stop_reason != "eog":
        err.print(f"[yellow]{done.message}[/]")
    err.print(stats_table(done.stats, done.stop_reason, title=gen.title()))
    from specli.llama.threads import thread_note

    note = thread_note(gen.loaded.target)
    if note:
        err.print(f"[yellow]{note}[/]")
    return done


def _json_result(gen, done, rounds) -> dict:
    from specli.llama.threads import threads_record

    return {
        "text": done.text,
        "tokens": list(done.tokens),
        "stop_reason": done.stop_reason,
        "rounds": [round_record(r) for r in rounds],
        "stats": done.stats.to_dict(),
        "config": gen.config(),
        "threads": threads_record(gen.loaded.target),
    }
