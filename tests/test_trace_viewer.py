"""The trace viewer on a store filled by real graph runs: pages in a real browser, hostile data, HTTP edge cases.

The browser is Debian's Chromium driven by Playwright. Without either the browser test fails (it does not skip):
CI installs both, and a viewer that renders model output must be checked where scripts would actually run.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest

from agents.scripted_backend import ScriptedChatModel
from graphs import EmotionGraph, EmotionQuery, EmotionResult, GraphConfig
from graphs.trace_recorder import TraceRecorder
from graphs.trace_store import RunFilter, TraceStore, TraceStoreError, TrainingRowRecord
from graphs.trace_viewer import (
    PAGE_SIZE,
    TokenDecoder,
    check_host,
    is_loopback,
    layout_path,
    logprob_bucket,
    make_server,
)
from graphs.trajectory import Reflection

CHROMIUM = Path(os.environ.get("EMO_R3_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
SCREENSHOT = Path(__file__).resolve().parents[1] / "test-artifacts" / "trace_viewer_run.png"

HOSTILE_TEXT = (
    '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> **bold** [link](http://example.com)'
)
HOSTILE_ANSWER = (
    '<script>window.__pwned=3</script><img src=x onerror="window.__pwned=4">'
    "<step2>Tiny people under a <b>vast</b> sky feel awed.</step2><step3>valence: positive; arousal: low</step3>"
    " \\boxed{awe}"
)
FILLER_RUNS = PAGE_SIZE + 8  # enough for a second page
ROLES = ("perceiver", "reasoner", "reflector")


def tiny_config(**max_tokens: int) -> GraphConfig:
    sampling = {role: {"sampling": {"temperature": 0, "max_tokens": max_tokens.get(role, 16)}} for role in ROLES}
    return GraphConfig(models={"default": {"path": "offline:tiny-idefics3"}}, roles=sampling)


@dataclass(frozen=True)
class Traces:
    path: Path
    hostile_text_run: str  # real tiny model, hostile user text
    hostile_answer_run: str  # real perceiver, scripted hostile reasoner, scripted reflector forcing one correction
    error_run: str  # corrupt image
    real_runs: list[str]
    thumbnail_sha: str


def filler_answer(messages, sampling, choices) -> str:
    if choices == ["yes", "no"]:
        return "yes"
    if choices:
        return "contentment"
    if "<step2>" in messages[-1].text:
        return "<step2>Calm.</step2><step3>valence: positive; arousal: low</step3> \\boxed{contentment}"
    return "<step1>A rocket on a launch pad.</step1>"


def hostile_reasoner(messages, sampling, choices) -> str:
    return "awe" if choices else HOSTILE_ANSWER


def correcting_reflector() -> ScriptedChatModel:
    """Fails coherence once (implies fear for an awe answer), then agrees: exactly one correction loop."""
    coherence = itertools.chain(["fear"], itertools.repeat("awe"))
    return ScriptedChatModel(lambda messages, sampling, choices: "yes" if choices == ["yes", "no"] else next(coherence))


def run_id(result: EmotionResult, store: TraceStore) -> str:
    if result.trajectory is not None:
        return result.trajectory.id
    return next(s.id for s in store.list_runs(limit=500) if s.query_id == result.query_id)


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory, bundled_images: dict[str, Path], model_cache: Path) -> Traces:
    folder = tmp_path_factory.mktemp("viewer")
    path = folder / "traces.sqlite"
    store = TraceStore(path)
    scripted = dict.fromkeys(ROLES, ScriptedChatModel(filler_answer))
    filler = EmotionGraph(GraphConfig(), scripted, traces=TraceRecorder(store, source="batch"))
    asyncio.run(filler.abatch([bundled_images["rocket"]] * FILLER_RUNS, max_concurrency=8))

    graph = EmotionGraph.from_config(tiny_config(), cache_dir=model_cache, traces=TraceRecorder(store))
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    queries = [
        EmotionQuery(images=[bundled_images["astronaut"]], text=HOSTILE_TEXT),
        EmotionQuery(images=[bundled_images["coffee"]]),
        EmotionQuery(images=[bundled_images["chelsea"]], text="my cat at home"),
        EmotionQuery(images=[corrupt]),
    ]
    results = [graph.run(query) for query in queries]
    models = {"perceiver": graph.models["perceiver"], "reasoner": ScriptedChatModel(hostile_reasoner),
              "reflector": correcting_reflector()}  # fmt: skip
    hostile_graph = EmotionGraph(tiny_config(reasoner=512), models, traces=TraceRecorder(store))
    hostile = hostile_graph.run(EmotionQuery(images=[bundled_images["grace_hopper"]], text="a portrait"))

    ids = [run_id(result, store) for result in [*results, hostile]]
    store.record_rewards(ids[-1], {"accuracy": 1.0, "format": 0.0})
    store.record_rewards(ids[-1], {"verdicts_right": 0.5}, role="reflector")
    store.record_training_step(
        "grpo-smoke", 3, {"loss": 0.125, "kl": 0.01, "reward_mean": 0.5},
        [TrainingRowRecord(run_id=ids[0], call_idx=1, policy="reasoner", advantage=0.75, values={"ratio": 1.0})],
    )  # fmt: skip
    store.close()
    assert hostile.path == ["perceive", "reason", "reflect", "reason", "reflect", "finalize"], hostile.path
    assert results[3].termination == "error"
    return Traces(path, ids[0], ids[-1], ids[3], ids, hostile.trajectory.images[0].sha256)


@pytest.fixture(scope="module")
def viewer(traces: Traces) -> Iterator[str]:
    server = make_server(traces.path, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: str


def request(base: str, path: str, method: str = "GET") -> Answer:
    """Raw http.client, so odd methods and odd paths go out exactly as written."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read().decode(errors="replace"))
    finally:
        connection.close()


# --------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser(viewer: str) -> Iterator[object]:
    """Started after the store is filled: Playwright's sync API keeps an event loop running in this thread,
    and the graph runs need `asyncio.run`."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the viewer's browser test needs Playwright's Python package: pip install playwright (no browser "
                    "download: it drives Debian's chromium)")  # fmt: skip
    if not CHROMIUM.is_file():
        pytest.fail(f"the viewer's browser test needs Chromium at {CHROMIUM}: apt-get install -y chromium "
                    "(or set EMO_R3_CHROMIUM to its path)")  # fmt: skip
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


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


# --------------------------------------------------------------------------- plain HTTP


def test_pages_carry_security_headers(viewer, traces):
    for path in ("/", f"/runs/{traces.hostile_answer_run}", "/training", "/nope", "/?page=x"):
        answer = request(viewer, path)
        policy = answer.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src" not in policy, policy
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "<script" not in answer.body.lower()


def test_head_answers_like_get_without_a_body(viewer):
    get, head = request(viewer, "/"), request(viewer, "/", "HEAD")
    assert head.status == 200 and head.body == ""
    assert head.headers["Content-Length"] == get.headers["Content-Length"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
def test_everything_but_get_and_head_is_405(viewer, method):
    answer = request(viewer, "/", method)
    assert answer.status == 405 and answer.headers["Allow"] == "GET, HEAD"
    assert answer.headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/runs/ffffffffdoesnotexist", 404, "no run with id starting"),
        ("/runs/", 404, "no page"),
        ("/nope", 404, "no page"),
        ("/static/..%2F..%2Fpyproject.toml", 404, "no page"),
        ("/images/" + "0" * 64 + ".jpg", 404, "no image"),
        ("/images/not-hex.jpg", 400, "sha256"),
        ("/images/" + "A" * 64 + ".jpg", 400, "sha256"),
        ("/training/grpo-smoke/99", 404, "no training step"),
        ("/training/grpo-smoke/three", 400, "whole number"),
        ("/?page=abc", 400, "page must be"),
        ("/?page=0", 400, "page must be"),
        ("/?page=99999999999999999999", 400, "page must be"),
        ("/?status=maybe", 400, "status must be"),
        ("/?termination=exploded", 400, "termination must be"),
        ("/?since=yesterday", 400, "since must be"),
        ("/?page=1&page=2", 400, "more than once"),
        ("/?%ff=1", 400, "malformed"),
        ("/training?x=1", 400, "no query parameters"),
    ],
)
def test_bad_requests_get_clear_error_pages(viewer, path, status, says):
    answer = request(viewer, path)
    assert answer.status == status, answer.body
    assert says in answer.body.replace("&#39;", "'")
    assert "Traceback" not in answer.body


def test_run_by_prefix_image_bytes_and_stylesheet(viewer, traces):
    assert request(viewer, f"/runs/{traces.hostile_answer_run[:10]}").status == 200
    image = request(viewer, f"/images/{traces.thumbnail_sha}.jpg")
    assert image.status == 200 and image.headers["Content-Type"] == "image/jpeg"
    css = request(viewer, "/static/viewer.css")
    assert css.status == 200 and ".tok" in css.body and css.headers["Content-Type"].startswith("text/css")


def test_a_failing_view_is_a_500_page_not_a_traceback(viewer, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(TraceStore, "list_training_steps", broken)
    answer = request(viewer, "/training")
    assert answer.status == 500 and "secret detail" not in answer.body and "Traceback" not in answer.body


def test_the_store_is_opened_read_only(traces, viewer):
    before = traces.path.stat().st_mtime_ns
    for path in ("/", "/training", f"/runs/{traces.hostile_answer_run}"):
        request(viewer, path)
    assert traces.path.stat().st_mtime_ns == before
    with TraceStore(traces.path, readonly=True) as store:
        assert store.count_runs(RunFilter(status="error")) >= 1


# --------------------------------------------------------------------------- server set-up and pure helpers


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "::", "10.0.0.1"])
def test_non_loopback_hosts_are_refused_without_allow_remote(traces, host):
    with pytest.raises(ValueError, match="--allow-remote"):
        make_server(traces.path, host=host)
    check_host(host, allow_remote=True)  # allowed when asked for


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "localhost", "::1", "[::1]"])
def test_loopback_hosts_are_accepted(host):
    assert is_loopback(host)
    check_host(host, allow_remote=False)


def test_a_missing_store_fails_at_start(tmp_path):
    with pytest.raises(TraceStoreError, match="no trace store"):
        make_server(tmp_path / "missing.sqlite")


def test_token_decoder_matches_the_answer_text(traces, model_cache):
    with TraceStore(traces.path, readonly=True) as store:
        call = store.get_run(traces.hostile_text_run).result.trajectory.calls[0]
    pieces = TokenDecoder(model_cache).decode(call.model_id, call.completion_token_ids)
    assert pieces is not None and "".join(pieces) == call.text  # 16 tokens cut at the length limit: no specials
    assert TokenDecoder(model_cache).decode("scripted", [1, 2]) is None  # unknown model: the page shows ids


def test_logprob_buckets_order_confident_to_unlikely():
    buckets = [logprob_bucket(lp) for lp in (0.0, -0.1, -0.3, -0.7, -1.5, -3.0, -5.0, -9.0, -20.0, float("-inf"))]
    assert buckets == ["lp0", "lp1", "lp2", "lp3", "lp4", "lp5", "lp6", "lp7", "lp8", "lp8"]
    assert logprob_bucket(float("nan")) == logprob_bucket(None) == "lp-none"


def test_path_layout_puts_corrections_on_a_new_row():
    reflections = [Reflection(round=0, coherence=None, consistency=None, decision="revise_perception"),
                   Reflection(round=1, coherence=None, consistency=None, decision="stop")]  # fmt: skip
    path = ["perceive", "reason", "reflect", "perceive", "reason", "reflect", "finalize"]
    diagram = layout_path(path, reflections, "max_rounds")
    assert diagram is not None and [n.name for n in diagram.nodes] == path
    assert [e.kind for e in diagram.edges] == ["next", "next", "revise", "next", "next", "stop"]
    assert diagram.edges[2].label == "revise perception" and diagram.nodes[3].y > diagram.nodes[0].y
    assert layout_path([], [], "error") is None
    failed = layout_path(["perceive", "finalize"], [], "error")
    assert failed is not None and "node-failed" in failed.nodes[0].css and failed.edges[0].kind == "error"
