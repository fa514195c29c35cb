"""Debian's Chromium driven by Playwright, for the browser tests (trace viewer pages, evaluation reports).

Without Playwright's Python package or the browser these tests fail, they do not skip: CI installs both, and pages
that render model output and user labels must be checked where scripts would actually run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("EMO_R3_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip


@contextmanager
def launch_chromium(who: str) -> Iterator[Any]:
    """Chromium at `CHROMIUM` (no browser download), closed on exit; `who` names the test in the failure message.

    Start it after any `asyncio.run` in the same thread: Playwright's sync API keeps an event loop running there.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"{who} needs Playwright's Python package: pip install playwright (no browser download: it "
                    "drives Debian's chromium)")  # fmt: skip
    if not CHROMIUM.is_file():
        pytest.fail(f"{who} needs Chromium at {CHROMIUM}: apt-get install -y chromium "
                    "(or set EMO_R3_CHROMIUM to its path)")  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
