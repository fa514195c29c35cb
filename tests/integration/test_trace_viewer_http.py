"""The trace viewer over plain HTTP, served from a thread on a store filled by real graph runs: security headers,
methods, bad requests, images and the stylesheet, the store opened read-only; the token decoder on the tiny
model's tokenizer, and a missing store failing at start; forged Host headers (DNS rebinding) getting a 421 and no
data; damaged and foreign stores getting a 503 page, never a 500."""

from __future__ import annotations

import html
import http.client
import re

import pytest
from damaged_stores import DAMAGES, drop_side_files, good_store, invalid_utf8_call_text
from viewer_site import Answer, request, running_viewer

from emo_r3.graphs.traces.records import RunFilter
from emo_r3.graphs.traces.store import TraceStore, TraceStoreError
from emo_r3.graphs.traces.viewer.server import make_server
from emo_r3.graphs.traces.viewer.tokens import TokenDecoder


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


def test_a_missing_store_fails_at_start(tmp_path):
    with pytest.raises(TraceStoreError, match="no trace store"):
        make_server(tmp_path / "missing.sqlite")


def test_token_decoder_matches_the_answer_text(traces, model_cache):
    with TraceStore(traces.path, readonly=True) as store:
        call = store.get_run(traces.hostile_text_run).result.trajectory.calls[0]
    pieces = TokenDecoder(model_cache).decode(call.model_id, call.completion_token_ids)
    assert pieces is not None and "".join(pieces) == call.text  # 16 tokens cut at the length limit: no specials
    assert TokenDecoder(model_cache).decode("scripted", [1, 2]) is None  # unknown model: the page shows ids


def request_for_host(base: str, path: str, host: str | None, method: str = "GET") -> Answer:
    """Raw http.client with the Host header exactly as given (None: no Host header at all), as a rebinding page's
    browser would send it."""
    address, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(address, int(port), timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read().decode(errors="replace"))
    finally:
        connection.close()


FORGED_HOSTS = {
    "attacker.example": "attacker.example",
    "attacker.example with port": "attacker.example:{port}",
    "localhost.attacker.example": "localhost.attacker.example:{port}",
    "127.0.0.1.nip.io": "127.0.0.1.nip.io:{port}",
    "empty": "",
    "missing": None,
}


@pytest.mark.parametrize("host", FORGED_HOSTS.values(), ids=FORGED_HOSTS.keys())
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_a_forged_host_header_gets_a_421_and_no_data(viewer, traces, host, method):
    port = viewer.rsplit(":", 1)[1]
    header = host.format(port=port) if host is not None else None
    for path in ("/", f"/runs/{traces.hostile_answer_run}", "/training", f"/images/{traces.thumbnail_sha}.jpg"):
        answer = request_for_host(viewer, path, header, method)
        assert answer.status == 421, (path, answer.status)
        assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        if method != "HEAD":
            assert "answers only requests addressed to localhost" in answer.body, answer.body
            assert traces.hostile_answer_run[:12] not in answer.body and "grpo-smoke" not in answer.body
            assert "<table" not in answer.body and "Traceback" not in answer.body


@pytest.mark.parametrize("host", ["localhost", "localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "LOCALHOST"])
def test_loopback_host_headers_get_the_pages(viewer, traces, host):
    header = host.format(port=viewer.rsplit(":", 1)[1])
    answer = request_for_host(viewer, f"/runs/{traces.hostile_answer_run}", header)
    assert answer.status == 200 and traces.hostile_answer_run in answer.body


@pytest.mark.parametrize("case", DAMAGES, ids=lambda case: case.name)
def test_a_damaged_or_foreign_store_is_a_503_page_not_a_500(tmp_path, noise_image, case):
    path = tmp_path / "traces.sqlite"
    [run_id, *_] = good_store(path, noise_image)
    with running_viewer(path) as url:  # a store that was fine when the viewer started, damaged since
        assert request(url, "/").status == 200
        drop_side_files(path)
        case.damage(path)
        drop_side_files(path)
        answers = {page: request(url, page) for page in ("/", f"/runs/{run_id}", "/training", "/static/viewer.css")}
    assert all(answer.status in (200, 503) for answer in answers.values()), {p: a.status for p, a in answers.items()}
    run_page = answers[f"/runs/{run_id}"]
    assert run_page.status == 503 and "Traceback" not in run_page.body
    assert re.search(case.says, html.unescape(run_page.body)), run_page.body
    if case.damage is not invalid_utf8_call_text:  # that one spoils run pages only; the list still reads
        assert answers["/"].status == 503
