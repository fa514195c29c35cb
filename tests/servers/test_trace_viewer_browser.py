"""The trace viewer's pages in a real browser, on a store filled by real graph runs: lists, filters and paging,
the path diagram and token colours, hostile model output and user text kept inert, links between pages.

The browser is Debian's Chromium driven by Playwright (support/chromium.py). Without either these tests fail (they
do not skip): CI installs both, and a viewer that renders model output must be checked where scripts would run.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

import pytest
from chromium import launch_chromium
from repo import ARTIFACTS
from viewer_site import FILLER_RUNS, HOSTILE_ANSWER, HOSTILE_TEXT

from emo_r3.graphs.traces.viewer.views import PAGE_SIZE

SCREENSHOT = ARTIFACTS / "trace_viewer_run.png"


@pytest.fixture(scope="module")
def browser(viewer: str) -> Iterator[object]:
    """Started after the store is filled: Playwright's sync API keeps an event loop running in this thread,
    and the graph runs need `asyncio.run`."""
    with launch_chromium("the viewer's browser test") as launched:
        yield launched


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    opened = context.new_page()
    problems: list[str] = []
    opened.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    opened.on("pageerror", lambda error: problems.append(str(error)))
    yield opened
    context.close()
    assert not problems, f"browser console errors (a CSP violation shows here too): {problems}"


def test_run_list_shows_runs_filters_and_pages(page, viewer, traces):
    page.goto(viewer + "/")
    total = FILLER_RUNS + len(traces.real_runs)
    assert f"{total} in total" in page.locator("h1").inner_text()
    assert page.locator("table.runs tbody tr").count() == PAGE_SIZE
    listed = page.locator("a.run-link").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert listed[: len(traces.real_runs)] == [f"/runs/{i}" for i in reversed(traces.real_runs)]  # newest first
    assert page.locator("td.thumb img").first.evaluate("img => img.complete && img.naturalWidth > 0")

    page.click("a[rel=next]")
    page.wait_for_url("**/?page=2")
    assert page.locator("table.runs tbody tr").count() == total - PAGE_SIZE
    assert "page 2 of 2" in page.locator("nav.pager").inner_text()

    page.goto(viewer + "/")
    page.select_option("select[name=status]", "error")
    page.click("form.filters button")
    page.wait_for_url("**status=error**")
    terminations = page.locator("table.runs tbody td .term").all_inner_texts()
    assert terminations and set(terminations) <= {"error", "timeout"}
    assert page.locator(f"a[href='/runs/{traces.error_run}']").count() == 1

    page.goto(viewer + "/")
    page.fill("input[name=label]", "awe")
    page.select_option("select[name=termination]", "accepted")
    page.click("form.filters button")
    page.wait_for_url("**termination=accepted**")
    assert set(page.locator("table.runs .label-name").all_inner_texts()) == {"awe"}
    assert set(page.locator("table.runs td .term").all_inner_texts()) == {"accepted"}
    assert page.locator(f"a[href='/runs/{traces.hostile_answer_run}']").count() == 1

    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    page.goto(f"{viewer}/?since={tomorrow}")
    assert page.locator("table.runs tbody tr").count() == 0 and "No runs match" in page.inner_text("main")


def test_run_page_draws_the_path_colours_tokens_and_keeps_hostile_answers_inert(page, viewer, traces):
    page.goto(f"{viewer}/runs/{traces.hostile_answer_run}")
    nodes = page.locator("svg.path-diagram g.node").evaluate_all("gs => gs.map(g => g.dataset.node)")
    assert nodes == ["perceive", "reason", "reflect", "reason", "reflect", "finalize"]
    assert page.locator("svg line.edge-revise").count() == 1  # the correction loop
    assert page.locator("svg line.edge-accept").count() == 1
    assert page.locator("svg g.end-accepted").count() == 1

    tokens = page.locator("span.tok[data-logprob]")
    assert tokens.count() > 20
    colours = set(tokens.evaluate_all("spans => spans.map(s => getComputedStyle(s).backgroundColor)"))
    logprobs = set(tokens.evaluate_all("spans => spans.map(s => s.dataset.logprob)"))
    assert len(logprobs) > 1 and len(colours) > 1, (logprobs, colours)

    image = page.locator("img.input-image").first
    assert image.evaluate("img => img.complete && img.naturalWidth > 0")

    assert page.locator("pre.answer-text", has_text=HOSTILE_ANSWER).count() >= 1  # literally, as text
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('script').length") == 0
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert not page.evaluate("[...document.querySelectorAll('b')].some(b => b.textContent === 'vast')")
    assert {"accuracy", "verdicts_right"} <= set(page.locator("table.rewards td").all_inner_texts())
    assert "revise_reasoning" in page.locator("table.verdicts").inner_text()

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000


def test_hostile_user_text_renders_as_text(page, viewer, traces):
    page.goto(f"{viewer}/runs/{traces.hostile_text_run}")
    assert page.locator("pre.user-text").inner_text() == HOSTILE_TEXT
    page.locator("details.prompt").first.evaluate("d => d.open = true")
    assert HOSTILE_TEXT in page.locator("pre.message-text").first.inner_text()
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('script, strong, a[href^=\"http://example\"]').length") == 0
    assert page.locator("span.tok").count() > 0
    assert "decoded with the model's tokenizer" in page.locator(".tokens h4 .sub").first.inner_text()


def test_training_step_links_back_to_the_call(page, viewer, traces):
    page.goto(viewer + "/training")
    page.click("a[href='/training/grpo-smoke/3']")
    page.wait_for_url("**/training/grpo-smoke/3")
    assert "0.125" in page.locator("table.metrics").inner_text()
    page.click("a.call-link")
    page.wait_for_url(f"**/runs/{traces.hostile_text_run}#call-1")
    assert page.evaluate("document.querySelector(':target').id") == "call-1"
    assert "reasoner" in page.locator("#call-1 h3").inner_text()


def test_error_run_page_explains_the_failure(page, viewer, traces):
    page.goto(f"{viewer}/runs/{traces.error_run}")
    assert "bad input" in page.locator("pre.error-box").inner_text()
    assert "No node ran" in page.inner_text("main")
