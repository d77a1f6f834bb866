"""`specli chat`: the REPL (repl), what the user types (input), transcripts (transcript)."""

from specli.chat.input import (LineCancelled, no_echo, read_message, stream_reader,
                               terminal_reader)
from specli.chat.repl import ChatSession, Totals, totals_line, turn_line
from specli.chat.transcript import Transcript, load_transcript, save_transcript

__all__ = ["ChatSession", "LineCancelled", "Totals", "Transcript", "load_transcript",
           "no_echo", "read_message", "save_transcript", "stream_reader", "terminal_reader",
           "totals_line", "turn_line"]
