"""HTML traces (`run --html`) and bench reports (`bench --html`): self-contained, one element
per generated token, nothing loaded from the network, and rendered by a real browser."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from browser import dump_dom, find_browser, headless


def specli(*args, timeout=180):
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100"}
    return subprocess.run([sys.executable, "-m", "specli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


class Page(HTMLParser):
    """Counts token spans and collects everything that could make a browser fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.rejected, self.svgs, self.paths = 0, 0, 0, 0
        self.fetches: list[str] = []
        self.tags: set[str] = set()
        self.token_text: list[str] = []
        self._in_tok = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        classes = (a.get("class") or "").split()
        self.tokens += "tok" in classes
        self._in_tok = tag == "span" and "tok" in classes
        self.rejected += "rej" in classes
        self.svgs += tag == "svg"
        self.paths += tag in ("path", "rect", "polyline", "line", "use")
        for name in ("src", "href", "xlink:href", "action", "data", "poster"):
            v = a.get(name)
            if v and not v.startswith("#"):  # an in-page reference (SVG <use>) fetches nothing
                self.fetches.append(f"{tag} {name}={v}")
        if tag in ("link", "iframe", "object", "embed", "img", "base"):
            self.fetches.append(tag)


    def handle_endtag(self, tag):
        self._in_tok = False

    def handle_data(self, data):
        if self._in_tok:
            self.token_text.append(data)


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    assert "@import" not in text, "CSS must not load anything"
    # url(#id) refers inside the page (matplotlib's clip paths); any other url( could fetch
    assert re.findall(r"url\(\s*['\"]?([^#'\")\s][^)]*)\)", text) == []
    return page


@pytest.fixture(scope="module")
def run_html(tiny_target, tiny_draft, tmp_path_factory):
    path = tmp_path_factory.mktemp("html") / "t.html"
    r = specli("run", "--target", tiny_target, "--draft", tiny_draft, "--threads", "1", "--ctx",
               "512", "--raw", "--k", "3", "--temperature", "0.8", "-n", "40", "--json",
               "--html", path, "The quick brown fox")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), path


def test_run_html_one_element_per_token_and_offline(run_html):
    data, path = run_html
    page = parse(path.read_text(encoding="utf-8"))
    assert page.tokens == len(data["tokens"]) == 40
    assert page.rejected == sum(1 for r in data["rounds"] if r["accepted"] < len(r["draft"]))
    assert page.fetches == []
    assert page.svgs == 2 and page.paths > 10  # two charts, with marks in them
    assert "script" in page.tags and "style" in page.tags


def test_chat_html_is_the_trace_of_each_reply(tiny_target, tiny_draft, tmp_path):
    """chat --html rewrites FILE after every reply with that reply's trace."""
    path = tmp_path / "reply.html"
    env = {**os.environ, "NO_COLOR": "1"}
    r = subprocess.run([sys.executable, "-m", "specli", "chat", "--target", str(tiny_target),
                        "--draft", str(tiny_draft), "--threads", "1", "--ctx", "512", "--k", "3",
                        "--temperature", "0", "-n", "12", "--html", str(path)],
                       input="Hello there\nAnd again\n", capture_output=True, text=True,
                       timeout=180, env=env)
    assert r.returncode == 0, r.stderr
    page = parse(path.read_text(encoding="utf-8"))
    assert page.fetches == [] and 0 < page.tokens <= 12
    assert "".join(page.token_text).strip() in r.stdout  # the last reply's text


def test_run_html_detail_data(run_html):
    data, path = run_html
    text = path.read_text(encoding="utf-8")
    blob = text.split("<script type='application/json' id='data'>")[1].split("</script>")[0]
    detail = json.loads(blob)
    assert len(detail["t"]) == 40
    assert all(d["p"] is not None and d["p_top"] for d in detail["t"])
    drafts = [d for d in detail["t"] if d["kind"].startswith("accepted draft")]
    assert drafts and all(d["q"] and d["u"] < d["accept"] for d in drafts)
    assert "expected acceptance" in text and "exact match" in text  # the stats panel, item 5


def test_help_does_not_import_the_plotting_library():
    code = ("import sys\nfrom specli.cli import main\nsys.argv = ['specli', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('LOADED' if 'matplotlib' in sys.modules or 'specli.views.report.html' in sys.modules "
            "else 'CLEAN', file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stderr.strip().endswith("CLEAN"), r.stderr


@pytest.fixture(scope="module")
def bench_html(tiny_target, tiny_draft, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-html")
    prompts = out / "p.jsonl"
    prompts.write_text('{"id": "fox", "prompt": "The quick brown fox"}\n', encoding="utf-8")
    r = specli("bench", "--target", tiny_target, "--draft", tiny_draft, "--threads", "1",
               "--ctx", "512", "--prompts", prompts, "--k", "0,1,2,auto", "--max-tokens", "12",
               "--warmup", "0", "--temperature", "0.8", "--html", out / "b.html")
    assert r.returncode == 0, r.stderr
    return out / "b.html"


def test_bench_html_charts_offline(bench_html):
    text = bench_html.read_text(encoding="utf-8")
    page = parse(text)
    assert page.fetches == []
    assert page.svgs == 4  # tok/s by K, speedups, verify-cost curve, acceptance histograms
    for caption in ("tok/s by K", "predicted speedup", "verify-cost curve", "acceptance histograms"):
        assert caption in text
    assert "Recommendation" in text and "β/exact" in text


def _dump_dom(browser: str, page: Path, tmp_path: Path) -> str:
    profile = tmp_path / "profile"
    shot = tmp_path / "shot.png"
    r = subprocess.run(headless(browser, profile, "--virtual-time-budget=2000")
                       + [f"--screenshot={shot}", "--window-size=1200,1400", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 5000, r.stderr[-2000:]
    return dump_dom(browser, page.as_uri(), profile)


def test_browser_renders_the_trace(run_html, tmp_path):
    data, path = run_html
    dom = _dump_dom(find_browser(), path, tmp_path)
    page = parse(dom)
    assert page.tokens == len(data["tokens"])
    assert page.svgs == 2 and page.paths > 10
    assert "".join(page.token_text) == data["text"]  # the page shows the generated text
    assert "hover or click a token" in dom  # the detail panel, before any hover


def test_browser_hover_shows_the_details(run_html, tmp_path):
    """Hovering a token (an event dispatched in the page) fills the panel with its numbers."""
    _, path = run_html
    hover = ("<script>for (const el of document.querySelectorAll('.tok.acc-model'))"
             "{ el.dispatchEvent(new Event('mouseenter')); break; }</script></body>")
    page = tmp_path / "hover.html"
    page.write_text(path.read_text(encoding="utf-8").replace("</body>", hover), encoding="utf-8")
    dom = _dump_dom(find_browser(), page, tmp_path)
    panel = dom.split("id=\"detail\"")[1].split("id=\"text\"")[0]
    assert "accepted draft (model)" in panel and "min(1, p/q)" in panel
    assert "u drawn" in panel and "top p:" in panel and "top q:" in panel


def test_browser_renders_the_bench_report(bench_html, tmp_path):
    dom = _dump_dom(find_browser(), bench_html, tmp_path)
    page = parse(dom)
    assert page.svgs == 4 and page.paths > 20
    assert "Recommendation" in dom
