"""Evaluation reports: Markdown tables, and the self-contained HTML page checked in a real browser.

The browser is Debian's Chromium driven by Playwright; without either the browser tests fail (they do not skip),
as in the trace viewer's tests: a page that shows user labels and ids must be checked where scripts would run.
"""

from __future__ import annotations

import html as html_module
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from evals.compare import compare_runs
from evals.metrics import compute_metrics
from evals.predictions import PredictionRecord
from evals.report import write_comparison, write_report
from prompts.label_sets import MIKELS_8, LabelSet

CHROMIUM = Path(os.environ.get("EMO_R3_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

HOSTILE_LABEL = "<script>window.__pwned=1</script>"
HOSTILE_ID = '<img src=x onerror="window.__pwned=2">'
HOSTILE_ERROR = "<script>window.__pwned=3</script> | broken"
MATHTEXT_LABEL = r"$\nosuchcommand{$"  # would make matplotlib raise if it reached mathtext
HOSTILE_SET = LabelSet(
    name="hostile", labels=("calm", HOSTILE_LABEL, MATHTEXT_LABEL),
    valence={"calm": "positive", HOSTILE_LABEL: "negative", MATHTEXT_LABEL: "neutral"},
)  # fmt: skip


def mikels_run(n: int = 96, skill: float = 0.65, seed: int = 0) -> list[PredictionRecord]:
    """A plausible Mikels-8 run: mostly right, some corrections and flips, two errors, one hostile id."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        gold = MIKELS_8.labels[i % 8]
        first = gold if rng.random() < skill else rng.choice(MIKELS_8.labels)
        corrected = rng.random() < 0.25
        final = (gold if rng.random() < 0.5 else rng.choice(MIKELS_8.labels)) if corrected else first
        records.append(PredictionRecord(
            id=HOSTILE_ID if i == 5 else f"emoset-{i:04d}", status="ok", label=gold, label_set="mikels8",
            prediction="awe" if i == 5 else final, first_label=first,
            termination="accepted" if rng.random() < 0.8 else "max_rounds",
            format_ok=rng.random() < 0.9, rounds=int(corrected), accepted=rng.random() < 0.8,
            coherence_passed=[not corrected, True][: 1 + corrected], consistency_passed=[rng.random() < 0.9],
            node_latency_s={"perceive": rng.uniform(0.8, 2.0), "reason": rng.uniform(1.0, 4.0),
                            "reflect": rng.uniform(0.3, 1.0)},
            prompt_tokens=rng.randint(900, 1300), completion_tokens=rng.randint(80, 220),
        ))  # fmt: skip
    for i in (7, 11):
        records[i] = records[i].model_copy(update={
            "status": "error", "prediction": None, "first_label": None, "termination": "error", "accepted": False,
            "coherence_passed": [], "consistency_passed": [], "error": HOSTILE_ERROR if i == 7 else "timed out",
        })  # fmt: skip
    return records


def hostile_run() -> list[PredictionRecord]:
    rows = [("a", "calm", "calm"), ("b", "calm", HOSTILE_LABEL), ("c", HOSTILE_LABEL, HOSTILE_LABEL),
            ("d", HOSTILE_LABEL, "calm"), ("e", MATHTEXT_LABEL, MATHTEXT_LABEL), (HOSTILE_ID, MATHTEXT_LABEL, None)]
    return [PredictionRecord(id=i, status="ok", label=g, label_set="hostile", prediction=p, first_label=g)
            for i, g, p in rows]  # fmt: skip


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("reports")
    records = mikels_run()
    meta = {"dataset": "emoset:/data/EmoSet-118K", "split": "test", "config_hash": "3f9a1c", "skipped": ["x.jpg"]}
    hostile = hostile_run()
    baseline, improved = mikels_run(skill=0.55, seed=1), mikels_run(skill=0.7, seed=1)
    comparison = compare_runs(baseline, improved, MIKELS_8, name_a="baseline", name_b="reflection")
    return {
        "mikels": write_report(compute_metrics(records, MIKELS_8), records, root / "mikels",
                               title="EMO-R3 eval: EmoSet test (synthetic)", meta=meta),
        "hostile": write_report(compute_metrics(hostile, HOSTILE_SET), hostile, root / "hostile",
                                title=f"run {HOSTILE_LABEL}", meta={"note": HOSTILE_ID}),
        "compare": write_comparison(comparison, root / "compare", title="baseline vs reflection",
                                    meta={"a": "runs/eval/a", "b": "runs/eval/b"}),
    }  # fmt: skip


# ---------------------------------------------------------------- files


def test_report_files_are_written_with_their_tables(reports):
    md, html = reports["mikels"]
    assert (md.name, html.name) == ("report.md", "report.html")
    text = md.read_text()
    for heading in ("## Headline", "## Per class", "## Confusion matrix", "## Reflection", "## Latency per node",
                    "## Tokens per item", "## Misclassified items", "## Errors"):  # fmt: skip
        assert heading in text
    assert "| label | precision | recall | F1 | support | predicted |" in text
    assert "| gold / predicted | amusement | awe |" in text and "(none) |" in text
    assert "flip: wrong → right" in text


def test_markdown_escapes_labels_ids_and_errors(reports):
    text = reports["hostile"][0].read_text() + reports["mikels"][0].read_text()
    assert not re.search(r"(?<!\\)<", text), "an unescaped < in the Markdown"
    assert r"\<script\>window.__pwned=1\</script\>" in text
    assert r"\<script\>window.__pwned=3\</script\> \| broken" in text  # the pipe cannot split the row
    for line in text.splitlines():
        if line.startswith("|") and "broken" in line:
            assert len(re.findall(r"(?<!\\)\|", line)) == 5  # 4 columns → 5 unescaped separators


def test_html_is_one_file_that_fetches_nothing(reports):
    for _, html in reports.values():
        page = html.read_text()
        tags = re.findall(r"<[a-zA-Z][^>]*>", page)  # real tags only: escaped text holds no "<"
        sources = [s for tag in tags for s in re.findall(r"""\s(?:src|href)\s*=\s*["']?([^"' >]+)""", tag)]
        assert sources and all(s.startswith("data:image/png;base64,") for s in sources), sources
        assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
        assert "default-src 'none'" in html_module.unescape(page)


def test_comparison_markdown_leads_with_the_verdict(reports):
    text = reports["compare"][0].read_text()
    assert re.search(r"^\*\*(reflection is (better|worse) than baseline|no significant difference)", text, re.M)
    assert "## McNemar (exact)" in text and "## Per-class recall" in text and "95% CI" in text


# ---------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the report's browser test needs Playwright's Python package (no browser download: it drives "
                    "Debian's chromium)")  # fmt: skip
    if not CHROMIUM.is_file():
        pytest.fail(f"the report's browser test needs Chromium at {CHROMIUM} (or set EMO_R3_CHROMIUM)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


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

