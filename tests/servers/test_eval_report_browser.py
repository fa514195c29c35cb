"""Evaluation reports opened from their files in a real browser: plots decode, tables fill, hostile labels and ids
show as text, nothing runs and nothing is fetched.

The browser is Debian's Chromium driven by Playwright (support/chromium.py); without either these tests fail (they
do not skip), as in the trace viewer's tests: a page that shows user labels and ids must be checked where scripts
would run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from chromium import launch_chromium
from eval_reports import HOSTILE_ERROR, HOSTILE_ID, HOSTILE_LABEL, MATHTEXT_LABEL, write_reports
from repo import ARTIFACTS


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    return write_reports(tmp_path_factory.mktemp("reports"))


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with launch_chromium("the report's browser test") as launched:
        yield launched


class OpenedReport:
    """A report opened from its file with every other request aborted and recorded."""

    def __init__(self, browser, html: Path) -> None:
        self.url = html.as_uri()
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        self.page = self.context.new_page()
        self.attempted: list[str] = []
        self.problems: list[str] = []
        self.page.on("request", self._request)
        self.page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda error: self.problems.append(str(error)))
        self.page.route("**/*", self._route)
        self.page.goto(self.url, wait_until="load")

    def _request(self, request) -> None:
        if request.url != self.url and not request.url.startswith("data:"):
            self.attempted.append(request.url)

    def _route(self, route) -> None:
        if route.request.url == self.url or route.request.url.startswith("data:"):
            route.continue_()
        else:
            self.attempted.append(route.request.url)
            route.abort()


@pytest.fixture
def open_report(browser) -> Iterator:
    opened: list[OpenedReport] = []

    def open_(html: Path) -> OpenedReport:
        opened.append(OpenedReport(browser, html))
        return opened[-1]

    yield open_
    for report in opened:
        report.context.close()
        assert report.attempted == [], f"the report tried to fetch {report.attempted}"
        assert report.problems == [], f"browser console errors (a CSP violation shows here too): {report.problems}"


def plots_decoded(page) -> list[tuple[str, int]]:
    return page.locator("img.plot").evaluate_all(
        "imgs => imgs.map(i => [i.id, i.complete && i.naturalWidth > 0 ? i.naturalWidth : 0])"
    )


def test_report_renders_its_plots_and_tables(open_report, reports):
    report = open_report(reports["mikels"][1])
    page = report.page
    assert page.title() == "EMO-R3 eval: EmoSet test (synthetic)"
    plots = dict(plots_decoded(page))
    assert set(plots) == {"plot-confusion", "plot-per-class", "plot-flips"}
    assert all(width > 200 for width in plots.values()), plots
    for key in ("per-class", "confusion", "reflection", "latency", "tokens", "misclassified", "errors"):
        assert page.locator(f"table#table-{key} tbody tr").count() > 0, key
    assert page.locator("table#table-per-class tbody tr").count() == 8
    assert page.locator("table#table-confusion thead th").count() == 10  # corner + 8 labels + (none)
    assert "accuracy" in page.locator("#headline").inner_text().lower()
    assert page.locator("table#table-errors", has_text=HOSTILE_ERROR).count() == 1  # as text
    assert page.locator("table#table-misclassified td", has_text=HOSTILE_ID).count() == 1  # as text
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('script').length") == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "eval_report.png"), full_page=True)
    assert (ARTIFACTS / "eval_report.png").stat().st_size > 50_000


def test_hostile_labels_and_ids_show_as_text_and_nothing_runs(open_report, reports):
    page = open_report(reports["hostile"][1]).page
    assert page.title() == f"run {HOSTILE_LABEL}"
    assert page.locator("h1").inner_text() == f"run {HOSTILE_LABEL}"
    labels = page.locator("table#table-per-class tbody td:first-child").all_inner_texts()
    assert labels == ["calm", HOSTILE_LABEL, MATHTEXT_LABEL]
    assert page.locator("table.meta td").inner_text() == HOSTILE_ID
    assert page.locator("table#table-misclassified td", has_text=HOSTILE_ID).count() == 1
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('script').length") == 0
    assert page.evaluate("document.querySelectorAll('img').length") == 3  # the plots, no injected <img>
    assert all(width > 0 for _, width in plots_decoded(page))
    page.screenshot(path=str(ARTIFACTS / "eval_report_hostile.png"), full_page=True)


def test_comparison_page_renders(open_report, reports):
    page = open_report(reports["compare"][1]).page
    verdict = page.locator("#verdict").inner_text()
    assert "reflection" in verdict and "baseline" in verdict
    assert dict(plots_decoded(page)).get("plot-recall", 0) > 200
    assert page.locator("table#table-mcnemar tbody tr").count() == 2
    assert page.locator("table#table-recall tbody tr").count() == 8
    page.screenshot(path=str(ARTIFACTS / "eval_comparison.png"), full_page=True)
