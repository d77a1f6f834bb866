"""`specli complete FILE --at LINE:COL`: fill in the middle at a cursor, as an editor would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from specli.cli._app import app
from specli.cli.common import consoles, open_session, read_text
from specli.cli.options import PlainOpt, generation_options
from specli.errors import UsageError
from specli.session import Options

COMPLETE_HELP = """Complete the code at a cursor in FILE: what the target fills in between the text before and after it, as editor plugins ask llama-server's /infill (and `specli serve` answers them).

The prompt is the model's fill-in-the-middle format (Qwen2.5-Coder's, with other files as repository context), cut to fit exactly as llama-server cuts it. The completion stops at the end of the block the cursor is in (a line indented less than the cursor's line), at an end-of-generation token or after --max-tokens.

Examples:

  specli complete app.py --at 42:9                        # line 42, column 9 (both from 1)

  specli complete app.py --at 42:9 --extra utils.py --extra models.py

  specli complete app.py --at 42:9 --temperature 0 --json | jq -r .text

  specli complete app.py --at 42:9 --k 0                   # the target alone (baseline)
"""


def parse_at(at: str, text: str) -> int:
    """LINE:COL (from 1; COL may be one past the line's end) -> the offset in `text`."""
    try:
        line_s, col_s = at.split(":")
        line, col = int(line_s), int(col_s)
    except ValueError:
        raise UsageError(f"--at takes LINE:COL (numbers from 1, such as 12:5), got {at!r}") from None
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        raise UsageError(f"--at {at}: the file has {len(lines)} lines")
    if not 1 <= col <= len(lines[line - 1]) + 1:
        raise UsageError(f"--at {at}: line {line} has {len(lines[line - 1])} characters "
                         f"(COL goes up to {len(lines[line - 1]) + 1}, its end)")
    return sum(len(s) + 1 for s in lines[: line - 1]) + col - 1


def split_at(text: str, offset: int) -> tuple[str, str, str, int]:
    """(input_prefix, prompt, input_suffix, n_indent) as llama.vscode and llama.vim send
    them: the lines before the cursor's, the cursor line up to it, the rest; the cursor
    line's indentation (0 when the line is blank so far)."""
    start = text.rfind("\n", 0, offset) + 1
    prefix, line_head, suffix = text[:start], text[start:offset], text[offset:]
    stripped = line_head.lstrip(" \t")
    n_indent = len(line_head) - len(stripped) if stripped else 0
    return prefix, line_head, suffix, n_indent


@app.command("complete", help=COMPLETE_HELP, no_args_is_help=True)
@generation_options(max_tokens=128)
def complete_cmd(
    opts: Options,
    file: Annotated[Path, typer.Argument(help="The file being edited.")],
    at: Annotated[str, typer.Option("--at", metavar="LINE:COL",
                                    help="The cursor: line and column, both from 1.")] = "",
    extra: Annotated[Optional[list[Path]], typer.Option(
        "--extra", metavar="FILE",
        help="Another file of the project, given as context (repeat for several).")] = None,
    no_indent_stop: Annotated[bool, typer.Option(
        "--no-indent-stop", help="Do not stop at a line indented less than the cursor's.")] = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object (text, tokens, stop reason, stats) to stdout.")] = False,
    plain: PlainOpt = False,
) -> None:
    from specli.fim import Chunk, EditorStops, infill_tokens

    if not at:
        raise UsageError("--at LINE:COL is required: where the cursor is")
    text = read_text(file, "FILE")
    offset = parse_at(at, text)
    chunks = [Chunk(read_text(p, "--extra"), p.name) for p in extra or ()]
    prefix, line_head, suffix, n_indent = split_at(text, offset)
    out, err = consoles(plain=plain or json_out)
    with open_session(err, opts) as gen:
        target = gen.loaded.target
        infill = infill_tokens(target, prefix, suffix, chunks, line_head,
                               room=min(gen.spec.max_tokens, target.n_ctx // 4))
        gen.check_fits(infill.tokens)
        stops = EditorStops(0 if no_indent_stop else n_indent)
        events = gen.generate(infill.tokens)
        done = _collect(gen, events, stops)
        completion = stops.text if stops.hit else done.text
        if json_out:
            print(json.dumps({"text": completion, "tokens": list(done.tokens),
                              "stop_reason": "indent" if stops.hit else done.stop_reason,
                              "truncated": infill.truncated, "prompt_tokens": len(infill.tokens),
                              "stats": done.stats.to_dict()}, ensure_ascii=False))
        else:
            from specli.views.render import stats_table

            out.print(completion, markup=False, highlight=False, end="" if completion.endswith("\n") else "\n")
            if infill.truncated:
                err.print("[yellow]the file and --extra were cut to fit the context[/]")
            reason = "indent" if stops.hit else done.stop_reason
            err.print(stats_table(done.stats, reason, title=gen.title()))
    if done.stop_reason == "interrupted" and not stops.hit:
        raise typer.Exit(130)


def _collect(gen, events, stops):
    """The Done of the stream, ended early (as by Ctrl-C) when the indentation rule hits."""
    def on_round(rnd) -> None:
        for piece in rnd.pieces:
            stops.feed(piece, 0.0)
            if stops.hit:
                raise KeyboardInterrupt

    return gen.collect(events, on_round=on_round)[0]
