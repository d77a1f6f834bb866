"""What the commands share: consoles, prompt input, the session on a Rich console."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console

from specli.errors import UsageError
from specli.session import Generation, Options, open_generation


def consoles(plain: bool = False) -> tuple[Console, Console]:
    """(stdout, stderr) consoles. Not a terminal: no colour, fixed width, stable under test."""
    def make(file, stderr: bool) -> Console:
        tty = file.isatty()
        return Console(file=file, stderr=stderr, highlight=False, soft_wrap=True,
                       no_color=plain or not tty or "NO_COLOR" in os.environ,
                       width=None if tty else 100, force_terminal=None if tty else False)

    return make(sys.stdout, False), make(sys.stderr, True)


def read_text(path: str | Path, what: str) -> str:
    """A UTF-8 text file, or a one-line UsageError naming `what` (--file, --grammar...)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what}: no such file: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{what}: {path} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what}: {path} is not UTF-8 text") from None
    except OSError as e:
        raise UsageError(f"{what}: cannot read {path}: {e.strerror or e}") from None


def read_prompt(prompt: str | None, file: Path | None) -> str:
    """The prompt from the argument, stdin ('-') or --file; a clear error when there is none."""
    if file is not None:
        if prompt is not None:
            raise UsageError("give the prompt either as an argument or with --file, not both")
        text = read_text(file, "--file")
    elif prompt == "-":
        text = sys.stdin.read()
    elif prompt is None:
        raise UsageError("no prompt: give PROMPT, '-' for stdin, or --file FILE")
    else:
        text = prompt
    if not text.strip():
        raise UsageError("the prompt is empty")
    return text


def read_grammar(json_schema: str | None, grammar: str | None):
    """--json-schema (a file, or the schema inline) or --grammar (a GBNF file) as a
    core.grammar.Grammar; None when neither is given. Read before the models load."""
    from specli.core.grammar import Grammar, GrammarError

    if json_schema is not None and grammar is not None:
        raise UsageError("give --json-schema or --grammar, not both")
    given = json_schema if json_schema is not None else grammar
    if given is None:
        return None
    flag = "--json-schema" if json_schema is not None else "--grammar"
    inline = json_schema is not None and given.lstrip().startswith("{")
    if inline:
        text = given
    else:
        text = read_text(given, flag)
    try:
        return Grammar.json_schema(text) if json_schema is not None else Grammar.gbnf(text)
    except GrammarError as e:
        raise UsageError(f"{flag} {'(inline)' if inline else given}: {e}") from None


def round_record(r) -> dict:
    """One round as plain JSON (for --json and bench files)."""
    return {
        "k": r.k, "drafter": r.drafter, "draft": list(r.draft_tokens),
        "accept_probs": [round(p, 6) for p in r.accept_probs], "accepted": r.n_accepted,
        "token": r.token, "bonus": r.bonus, "tokens": list(r.tokens), "text": r.text,
        "t_draft": r.t_draft, "t_verify": r.t_verify, "t_sample": r.t_sample,
    }


class RichReporter:
    """The session's Reporter on a Rich console: yellow warnings, a spinner while busy."""

    def __init__(self, err: Console) -> None:
        self.err = err

    def warn(self, message: str) -> None:
        from rich.markup import escape

        self.err.print(f"[yellow]warning:[/] {escape(message)}")

    def busy(self, message: str):
        return self.err.status(message, spinner="dots")


def open_session(err: Console, opts: Options):
    """session.open_generation, telling of warnings and slow steps on `err`."""
    return open_generation(opts, RichReporter(err))


def write_trace_html(path: Path, gen: Generation, done, rounds) -> None:
    """The self-contained trace page of one generation (run --html, chat --html).

    specli.views.report is imported only here: matplotlib is heavy."""
    from specli.views.render import stats_rows
    from specli.views.report.html import trace_page

    page = trace_page(rounds, done, gen.title(), stats_rows(done.stats, done.stop_reason),
                      gen.config())
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write --html file {path}: {e.strerror}") from None
