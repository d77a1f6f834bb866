"""Rich views of engine events. Takes a Console; never creates a global one.

The live view prints finished lines permanently and keeps only the line in progress and
a footer (tok/s, acceptance, K) in a Rich Live region, so long answers scroll normally.
Styles: accepted draft tokens green (n-gram drafts cyan, underlined), tokens the target
produced itself (corrections and bonus tokens) in the default style, rejected drafts
struck through in red.
"""

from __future__ import annotations

import time
from typing import Literal

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

ShowMode = Literal["rejected", "accepted", "plain"]

STYLE_ACCEPTED = {"model": "green", "ngram": "cyan underline"}
STYLE_TARGET = ""
STYLE_REJECTED = "red strike"


def round_segments(rnd, mode: ShowMode) -> list[tuple[str, str]]:
    """(text, style) pieces for one round: accepted drafts, [rejected draft], target token."""
    n_acc = min(rnd.n_accepted, len(rnd.pieces))
    acc_style = STYLE_ACCEPTED.get(rnd.drafter, "green") if mode != "plain" else ""
    segs = [(p, acc_style) for p in rnd.pieces[:n_acc]]
    if mode == "rejected" and rnd.rejected:
        # A rejected newline must not break the layout: show it as a visible mark.
        segs.append((rnd.rejected.replace("\n", "↵"), STYLE_REJECTED))
    segs.extend((p, STYLE_TARGET) for p in rnd.pieces[n_acc:])
    return [(t, s) for t, s in segs if t]


class LiveView:
    """Streams rounds into a console with a live footer; a no-op footer when not a terminal."""

    def __init__(self, console: Console, *, mode: ShowMode = "rejected", k_label: str = "",
                 footer: bool = True) -> None:
        self.console = console
        self.mode = mode
        self.k_label = k_label
        self.line = Text()
        self.tokens = self.drafted = self.accepted = 0
        self.shown = 0  # characters of output text shown so far
        self.last_k = 0
        self.t0 = time.perf_counter()
        self.live = (Live(console=console, refresh_per_second=20, transient=True,
                          auto_refresh=True, redirect_stdout=False, redirect_stderr=False)
                     if footer and console.is_terminal else None)

    def __enter__(self) -> "LiveView":
        if self.live:
            self.live.start()
            self.live.update(self._renderable(), refresh=False)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.live:
            self.live.stop()
            self.live = None
        if self.line.plain:
            self.console.print(self.line, end="", soft_wrap=True, highlight=False)
            self.line = Text()
        self.console.print(highlight=False)

    def round(self, rnd) -> None:
        self.tokens += len(rnd.tokens)
        self.drafted += len(rnd.draft_tokens)
        self.accepted += rnd.n_accepted
        self.last_k = rnd.k
        self.shown += len(rnd.text)
        for text, style in round_segments(rnd, self.mode):
            self._append(text, style)
        if self.live:
            self.live.update(self._renderable(), refresh=False)

    def finish(self, done) -> None:
        """Show what the final event adds: a UTF-8 tail the last round could not decode yet."""
        if len(done.text) > self.shown:
            self._append(done.text[self.shown :], STYLE_TARGET)
            self.shown = len(done.text)

    def _append(self, text: str, style: str) -> None:
        *done, rest = text.split("\n")
        for chunk in done:  # a finished line leaves the live region for good
            self.line.append(chunk, style)
            if self.live:
                self.live.console.print(self.line, soft_wrap=True, highlight=False)
            else:
                self.console.print(self.line, soft_wrap=True, highlight=False)
            self.line = Text()
        self.line.append(rest, style)
        if not self.live and self.line.plain and not self.console.is_terminal:
            # Not a terminal: stream plain text as it comes, no line buffering.
            self.console.print(self.line, end="", soft_wrap=True, highlight=False)
            self.console.file.flush()
            self.line = Text()

    def _renderable(self):
        return Group(self.line, self.footer())

    def footer(self) -> Text:
        dt = time.perf_counter() - self.t0
        rate = self.tokens / dt if dt > 0 else 0.0
        acc = f"{100 * self.accepted / self.drafted:.0f}%" if self.drafted else "-"
        k = f"{self.k_label} ({self.last_k})" if self.k_label == "auto" else str(self.last_k)
        return Text(f"{self.tokens} tokens · {rate:.1f} tok/s · accepted {acc} · K {k}",
                    style="dim")


def _overlap_rows(stats) -> list[tuple[str, str]]:
    """Rejection sampling's expected acceptance beside exact match's (sampled model drafts)."""
    beta = getattr(stats, "expected_acceptance", None)
    if beta is None:  # greedy (both rules agree) or no model drafts
        return []
    return [("verification", f"rejection sampling: expected acceptance {beta:.3f}; exact match "
                             f"(llama-server, mlx-lm): {stats.exact_match_acceptance:.3f}")]


def stats_table(stats, stop_reason: str, title: str = "specli") -> Table:
    """The end-of-run panel: throughput, acceptance, and where the time went."""
    t = Table(title=title, show_header=False, box=None, pad_edge=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in stats_rows(stats, stop_reason):
        t.add_row(k, v)
    return t


def stats_rows(stats, stop_reason: str) -> list[tuple[str, str]]:
    """(label, value) rows of the stats panel: the terminal table and the HTML trace share them."""
    dec = stats.decode_seconds or 1e-9
    rows = [
        ("tokens", f"{stats.new_tokens} new, {stats.prompt_tokens} prompt"),
        ("speed", f"{stats.tokens_per_s:.1f} tok/s (prompt {stats.prompt_seconds:.2f}s, "
                  f"first token {stats.ttft:.2f}s)"),
        ("rounds", f"{stats.rounds}, {stats.tokens_per_round:.2f} tokens/round"),
        ("drafted", f"{stats.drafted}, accepted {stats.accepted} "
                    f"({100 * stats.acceptance_rate:.1f}%), {stats.mean_accepted:.2f}/round"),
        ("time", f"draft {100 * stats.draft_seconds / dec:.0f}% · verify "
                 f"{100 * stats.verify_seconds / dec:.0f}% · other "
                 f"{100 * stats.other_seconds / dec:.0f}% · outside llama.cpp "
                 f"{100 * stats.python_share:.1f}%"),
        *_overlap_rows(stats),
        ("stopped", stop_reason),
    ]
    return rows
