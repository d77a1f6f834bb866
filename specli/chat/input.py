"""Reading what the user types: a terminal with history, or lines from a pipe; multi-line
messages (a trailing \\ or a \"\"\" fence); no echo while a reply streams."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, TextIO

PROMPT, CONTINUE = ">>> ", "... "
FENCE = '"""'


class LineCancelled(Exception):
    """Ctrl-C on a prompt that already held text: drop that text, do not exit."""



def terminal_reader(prompt_file: TextIO | None = None) -> Callable[[str], str]:
    """input() with readline line editing and arrow-key history, where available.

    With stdout redirected, the prompt goes to `prompt_file` (stderr) so stdout keeps only
    replies. Ctrl-C on a line that holds text raises LineCancelled instead of exiting.
    """
    try:
        import readline
    except ImportError:  # e.g. Windows without pyreadline: plain input, no history
        readline = None

    def read(prompt: str) -> str:
        if prompt_file is not None:
            prompt_file.write(prompt)
            prompt_file.flush()
            prompt = ""
        try:
            return input(prompt)
        except KeyboardInterrupt:
            if readline is not None and readline.get_line_buffer():
                raise LineCancelled from None
            raise

    return read


@contextmanager
def no_echo(stream: TextIO):
    """Turn off terminal echo while a reply streams, so that keys typed ahead do not scramble
    the live view; they stay queued and readline shows them at the next prompt."""
    try:
        import termios
    except ImportError:  # not POSIX
        termios = None
    errors = (OSError, ValueError, AttributeError) + ((termios.error,) if termios else ())
    try:
        fd = stream.fileno()
        saved = termios.tcgetattr(fd) if termios is not None else None
    except errors:  # not a terminal
        saved = None
    if saved is None:
        yield
        return
    quiet = termios.tcgetattr(fd)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def stream_reader(stream: TextIO) -> Callable[[str], str]:
    """Lines from a pipe or file; EOFError at its end. Prompts are not shown."""

    def read(prompt: str) -> str:
        line = stream.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")

    return read


def read_message(read: Callable[[str], str]) -> str:
    """One complete input: a line, lines joined by trailing backslashes, or a \"\"\" block.

    EOF inside a block or after a backslash ends the input with what was typed.
    """
    line = read(PROMPT)
    if line.lstrip().startswith(FENCE):
        rest = line.lstrip()[len(FENCE):]
        if rest.rstrip().endswith(FENCE):  # """one line"""
            return rest.rstrip()[: -len(FENCE)]
        lines = [rest] if rest.strip() else []
        while True:
            try:
                nxt = _read_more(read)
            except EOFError:
                break
            if nxt.rstrip().endswith(FENCE):
                lines.append(nxt.rstrip()[: -len(FENCE)])
                break
            lines.append(nxt)
        while lines and not lines[-1].strip():
            lines.pop()
        return "\n".join(lines)
    parts = []
    while line.endswith("\\"):
        parts.append(line[:-1])
        try:
            line = _read_more(read)
        except EOFError:
            line = ""
            break
    parts.append(line)
    return "\n".join(parts)


def _read_more(read: Callable[[str], str]) -> str:
    """A continuation line; Ctrl-C there drops the whole input rather than exiting."""
    try:
        return read(CONTINUE)
    except KeyboardInterrupt:
        raise LineCancelled from None


