"""Charts as inline SVG strings, drawn with matplotlib's object API (no pyplot, no global
figure state) and the Agg-free SVG backend: text stays text, nothing refers to a file or
a URL, so a page embedding them views offline."""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib
from matplotlib.figure import Figure

STYLE = {"svg.fonttype": "none", "svg.hashsalt": "specli", "font.size": 9,
         "axes.spines.top": False, "axes.spines.right": False}
COLORS = ["#2b8a3e", "#1971c2", "#e8590c", "#862e9c", "#c92a2a", "#5c940d", "#0c8599",
          "#e64980", "#495057", "#f08c00"]


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: inline in HTML


def _figure(width: float = 5.2, height: float = 2.4):
    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def rounds_chart(k: Sequence[int], drafted: Sequence[int], accepted: Sequence[int]) -> str:
    """K chosen, drafts made and drafts accepted, per round."""
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure()
        x = list(range(1, len(k) + 1))
        ax.bar(x, drafted, color="#dee2e6", label="drafted", width=0.8)
        ax.bar(x, accepted, color=COLORS[0], label="accepted", width=0.8)
        ax.step(x, k, where="mid", color=COLORS[2], label="K", linewidth=1.2)
        ax.set_xlabel("round")
        ax.set_ylabel("tokens")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, ncol=3)
        return _svg(fig)


def rate_chart(seconds: Sequence[float], tokens: Sequence[int]) -> str:
    """Cumulative tok/s against decode time."""
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure()
        rate = [n / t if t > 0 else 0.0 for t, n in zip(seconds, tokens)]
        ax.plot(seconds, rate, color=COLORS[1], marker=".", markersize=3)
        ax.set_xlabel("decode time (s)")
        ax.set_ylabel("tok/s so far")
        ax.set_ylim(bottom=0)
        return _svg(fig)


def lines_chart(series: dict[str, tuple[Sequence, Sequence]], xlabel: str, ylabel: str,
                hline: tuple[float, str] | None = None, styles: dict | None = None) -> str:
    """One line per named series of (x, y); an optional labelled horizontal line."""
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure()
        for i, (name, (xs, ys)) in enumerate(series.items()):
            kw = {"color": COLORS[i % len(COLORS)], "marker": "o", "markersize": 3}
            kw.update((styles or {}).get(name, {}))
            ax.plot(xs, ys, label=name, **kw)
        if hline is not None:
            ax.axhline(hline[0], color="#868e96", linestyle="--", linewidth=1, label=hline[1])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)  # K and n are counts
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _svg(fig)


def hist_chart(hists: dict[str, Sequence[int]]) -> str:
    """Rounds by drafts accepted (0..K), one group of bars per named histogram."""
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure()
        n = max(1, len(hists))
        width = 0.8 / n
        for i, (name, counts) in enumerate(hists.items()):
            total = sum(counts) or 1
            xs = [j + (i - (n - 1) / 2) * width for j in range(len(counts))]
            ax.bar(xs, [c / total for c in counts], width=width, label=name,
                   color=COLORS[i % len(COLORS)])
        ax.set_xlabel("drafts accepted in a round")
        ax.set_ylabel("share of rounds")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _svg(fig)
