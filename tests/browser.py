"""A real headless browser (Debian's chromium, which .ci/run installs) for tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str:
    """The browser's path, or a skip with the reason."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no headless browser: install Debian's chromium (.ci/run does) to run this test")


def headless(browser: str, profile: Path, *extra: str) -> list[str]:
    """The command line of a quiet headless run; `profile` is a fresh user-data dir."""
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", *extra]


def dump_dom(browser: str, url: str, profile: Path, *extra: str, budget_ms: int = 2000) -> str:
    """The page's DOM after its scripts ran (up to `budget_ms` of virtual time)."""
    r = subprocess.run(headless(browser, profile, f"--virtual-time-budget={budget_ms}", *extra)
                       + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout
