"""OpenTelemetry export to a real receiver: graph runs (scripted model) sent over OTLP/HTTP to Arize Phoenix,
started here as a subprocess, and read back through its REST API to match their span plan span by span.
The span plan itself: tests/unit/test_otel_plan.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from repo import ROOT
from scripted_otel_runs import by_key, scripted_graph

from emo_r3.agents.backends.vllm.process import free_port
from emo_r3.graphs import EmotionQuery
from emo_r3.graphs.traces.otel import OtelRunExporter, SpanPlan, run_spans_plan
from emo_r3.graphs.traces.recorder import TraceRecorder
from emo_r3.graphs.traces.store import TraceStore
from emo_r3.graphs.trajectory import EmotionResult

PHOENIX_VERSION = "20.26.1"
STARTUP_TIMEOUT_S = 300
PORT_ATTEMPTS = 3
# How uvicorn (HTTP) and gRPC report a port that another process bound first.
PORT_TAKEN = ("address already in use", "failed to bind to address")
# Phoenix's own rules: at least 32 characters with a digit and a lower-case letter; the admin secret, different
# from the JWT secret, is accepted as a bearer token on every API route, OTLP ingest (/v1/traces) included.
JWT_SECRET = "jwt-signing-secret-0123456789abcdef"
ADMIN_TOKEN = "admin-bearer-token-0123456789abcdef"
PHOENIX_INSTALL = (
    "python3 -m venv .venv-phoenix && "
    f".venv-phoenix/bin/pip install -c constraints.txt arize-phoenix=={PHOENIX_VERSION}"
)

# What Phoenix adds to a stored span when it translates GenAI attributes into its OpenInference ones.
PHOENIX_DERIVED = ("openinference.", "llm.", "input.", "output.")
PHOENIX_KIND = {"chat": "LLM", "invoke_agent": "AGENT"}


# -- a real OTLP receiver ----------------------------------------------------------------------------------


def phoenix_executable() -> Path:
    candidates = [os.environ.get("EMO_R3_PHOENIX"), ROOT / ".venv-phoenix" / "bin" / "phoenix", shutil.which("phoenix")]
    for candidate in filter(None, candidates):
        if Path(candidate).is_file():
            return Path(candidate)
    pytest.fail(
        "Arize Phoenix, the OTLP receiver these tests read spans back from, is not installed. "
        f"In the repository root run: {PHOENIX_INSTALL}  (or set EMO_R3_PHOENIX to a `phoenix` executable)",
        pytrace=False,
    )


@contextmanager
def running_phoenix(workdir: Path, **settings: str) -> Iterator[str]:
    """A Phoenix server on free loopback ports with its own SQLite file; yields its base URL. A port is free when
    picked, yet another process (a Ray worker, a vLLM server of another test) can bind it first: Phoenix then starts
    again on new ports."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        server, url, log = start_phoenix(workdir, settings)
        try:
            if wait_until_ready(server, url, log, last_attempt=attempt == PORT_ATTEMPTS):
                yield url
                return
        finally:
            stop(server)


def start_phoenix(workdir: Path, settings: dict[str, str]) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env = inherited | {  # Phoenix runs from its own venv: nothing of ours may leak onto its import path
        "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(port), "PHOENIX_GRPC_PORT": str(free_port()),
        "PHOENIX_WORKING_DIR": str(workdir), "PHOENIX_TELEMETRY_ENABLED": "false",
        "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
    } | settings  # fmt: skip
    log = workdir / "phoenix.log"
    with log.open("wb") as output:
        server = subprocess.Popen([phoenix_executable(), "serve"], env=env, stdout=output, stderr=subprocess.STDOUT)
    return server, f"http://127.0.0.1:{port}", log


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory) -> Iterator[str]:
    """Phoenix with authentication on: OTLP ingest and its REST API want a bearer token (ADMIN_TOKEN here)."""
    settings = {"PHOENIX_ENABLE_AUTH": "true", "PHOENIX_SECRET": JWT_SECRET, "PHOENIX_ADMIN_SECRET": ADMIN_TOKEN}
    with running_phoenix(tmp_path_factory.mktemp("phoenix"), **settings) as url:
        yield url


@pytest.fixture(autouse=True)
def bearer_token(monkeypatch) -> dict[str, str]:
    """Every exporter sends the token, as OpenTelemetry's exporter reads it: from OTEL_EXPORTER_OTLP_HEADERS."""
    headers = {"OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{ADMIN_TOKEN}"}
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", headers["OTEL_EXPORTER_OTLP_HEADERS"])
    return headers


@pytest.fixture
def no_otel_settings(monkeypatch) -> dict[str, str]:
    """This process without the machine's OTEL_* variables; returns that environment for child processes."""
    for variable in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(variable)
    return dict(os.environ)


def wait_until_ready(server: subprocess.Popen, url: str, log: Path, *, last_attempt: bool) -> bool:
    """True once Phoenix answers; False if it exited because a port was taken (and another attempt is left).
    Its start imports much and migrates its database: on two busy cores (the suite's other worker training on
    Ray) that can take minutes."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            output = log.read_text()
            if any(sign in output.lower() for sign in PORT_TAKEN) and not last_attempt:
                return False
            pytest.fail(f"Phoenix exited with {server.returncode}:\n{output[-3000:]}", pytrace=False)
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"Phoenix did not answer {url}/healthz within {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def read_traces(
    url: str, trace_ids: list[str], count: int, timeout_s: float = 30, token: str = ADMIN_TOKEN
) -> dict[str, list[dict]]:
    """Each trace's spans as Phoenix stored them; it ingests in the background, so wait for `count` spans each."""
    deadline = time.monotonic() + timeout_s
    headers = {"authorization": f"Bearer {token}"}
    while True:
        reply = httpx.get(
            f"{url}/v1/projects/default/spans/otlpv1",
            params={"trace_id": trace_ids, "limit": 1000},
            headers=headers,
            timeout=10,
        )
        assert reply.status_code != 401, "Phoenix wants a token to read spans back"
        traces: dict[str, list[dict]] = {trace_id: [] for trace_id in trace_ids}
        for span in reply.json()["data"] if reply.status_code == 200 else []:
            traces[span["trace_id"]].append(span)
        if all(len(spans) >= count for spans in traces.values()) or time.monotonic() > deadline:
            return traces
        time.sleep(0.2)


def read_trace(url: str, trace_id: str, count: int, **options) -> list[dict]:
    return read_traces(url, [trace_id], count, **options)[trace_id]


def otlp_value(value: dict):
    if value.get("array_value") is not None:
        return [otlp_value(item) for item in value["array_value"]["values"]]
    for kind in ("string_value", "bool_value", "int_value", "double_value"):
        if value.get(kind) is not None:
            return value[kind]
    return None


def check_trace_matches_plan(spans: list[dict], plans: list[SpanPlan], started_at: float) -> None:
    """Every planned span arrived once, with its name, parent, attributes, status and times."""
    assert len(spans) == len(plans)
    received = {span["span_id"]: span for span in spans}

    def identity(span: dict) -> str:  # a span's plan key, from the attributes that number it
        attributes = {a["key"]: otlp_value(a["value"]) for a in span["attributes"]}
        if "emo_r3.call.index" in attributes:
            return f"call/{attributes['emo_r3.call.index']}"
        return f"node/{attributes['emo_r3.node.index']}" if "emo_r3.node.index" in attributes else "run"

    keys = {span_id: identity(span) for span_id, span in received.items()}
    assert sorted(keys.values()) == sorted(plan.key for plan in plans)
    start_ns = round(started_at * 1e9)
    for span_id, span in received.items():
        plan = by_key(plans)[keys[span_id]]
        assert span["name"] == plan.name
        assert (keys[span["parent_span_id"]] if span["parent_span_id"] else None) == plan.parent
        attributes = {a["key"]: otlp_value(a["value"]) for a in span["attributes"]}
        assert {key: attributes.get(key) for key in plan.attributes} == plan.attributes
        derived = attributes.keys() - plan.attributes.keys()
        assert all(key.startswith(PHOENIX_DERIVED) for key in derived), derived
        # Phoenix maps GenAI spans to its own kinds: proof that it read them as the conventions define them.
        assert attributes.get("openinference.span.kind") == PHOENIX_KIND.get(plan.name.split()[0])
        assert span["status"]["code"] == (2 if plan.error else 0)
        assert (span["status"]["message"] or None) == plan.error
        assert span["start_time_unix_nano"] == pytest.approx(start_ns + plan.start_s * 1e9, abs=2_000)
        assert span["end_time_unix_nano"] == pytest.approx(start_ns + plan.end_s * 1e9, abs=2_000)


def test_runs_round_trip_through_a_real_otlp_receiver(phoenix, loop_then_failure, accepted):
    endpoint = f"{phoenix}/v1/traces"
    started_at = time.time() - 60
    plain = OtelRunExporter(endpoint, provider="scripted")
    plain.export(loop_then_failure, started_at=started_at, source="batch")
    plain.shutdown()
    with_content = OtelRunExporter(endpoint, provider="scripted", include_content=True)
    with_content.export(accepted, started_at=started_at + 1)
    with_content.shutdown()
    assert plain.failures == with_content.failures == 0

    cases = [
        (loop_then_failure, run_spans_plan(loop_then_failure, provider="scripted", source="batch"), started_at),
        (accepted, run_spans_plan(accepted, provider="scripted", include_content=True), started_at + 1),
    ]
    for result, plans, start in cases:
        spans = read_trace(phoenix, result.trajectory.id, len(plans))  # the trace id is the run id
        check_trace_matches_plan(spans, plans, start)

    spans = read_trace(phoenix, accepted.trajectory.id, 1)
    calls = [{a["key"]: otlp_value(a["value"]) for a in s["attributes"]} for s in spans if s["name"].startswith("chat")]
    perceive = next(c for c in calls if c["emo_r3.purpose"] == "perceive")
    assert accepted.trajectory.images[0].sha256 in perceive["gen_ai.input.messages"]


def test_a_bulk_export_waits_for_the_sender_instead_of_dropping_spans(phoenix, accepted, monkeypatch):
    monkeypatch.setattr("emo_r3.graphs.traces.otel.QUEUE_SIZE", 40)  # 30 runs of 9 spans would overflow this queue
    monkeypatch.setattr("emo_r3.graphs.traces.otel.FLUSH_AT", 20)
    runs = [accepted.model_copy(update={"trajectory": accepted.trajectory.model_copy(update={"id": uuid.uuid4().hex})})
            for _ in range(30)]  # fmt: skip
    exporter = OtelRunExporter(f"{phoenix}/v1/traces")
    for run in runs:
        exporter.export(run)
    exporter.shutdown()
    assert exporter.failures == 0
    expected = len(run_spans_plan(accepted))
    traces = read_traces(phoenix, [run.trajectory.id for run in runs], expected)
    assert [len(spans) for spans in traces.values()] == [expected] * len(runs)


def test_export_stored_run_ends_when_it_was_recorded(phoenix, accepted, tmp_path):
    with TraceStore(tmp_path / "traces.sqlite") as store:
        run_id = store.record_run(accepted, source="eval")
        detail = store.get_run(run_id)
    exporter = OtelRunExporter(f"{phoenix}/v1/traces")
    exporter.export_stored(detail)
    exporter.shutdown()
    plans = run_spans_plan(detail.result, source="eval")
    spans = read_trace(phoenix, run_id, len(plans))
    check_trace_matches_plan(spans, plans, detail.summary.created_at - plans[0].end_s)


def test_cli_exports_a_store_to_the_receiver(phoenix, tmp_path, noise_image):
    """`emo-r3 traces export --otlp` sends what a store holds (live `run` export: the OTEL_* test below)."""
    traces, emo_r3 = tmp_path / "traces.sqlite", [sys.executable, "-m", "emo_r3.graphs.cli"]
    with TraceStore(traces) as store:
        result = scripted_graph(traces=TraceRecorder(store)).run(EmotionQuery(images=[noise_image]))
    endpoint = f"{phoenix}/v1/traces"
    bulk = subprocess.run([*emo_r3, "traces", "export", "--traces", str(traces), "--otlp", endpoint],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert bulk.returncode == 0 and "exported 1 runs as OpenTelemetry spans" in bulk.stderr
    detail = TraceStore(traces, readonly=True).get_run(result.trajectory.id)
    plans = run_spans_plan(detail.result)
    assert len(read_trace(phoenix, result.trajectory.id, len(plans))) == len(plans)
    nobody = f"http://127.0.0.1:{free_port()}/v1/traces"
    dead = subprocess.run([*emo_r3, "traces", "export", "--traces", str(traces), "--otlp", nobody],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert dead.returncode == 1 and "could not be sent" in dead.stderr


# -- the application's tracer provider, and the standard OTEL_* variables ----------------------------------


def test_runs_nest_under_the_application_span(phoenix, noise_image, no_otel_settings, bearer_token):
    """An application with its own SDK provider runs the graph inside its request span: in Phoenix each run's root
    is a child of that span, in the application's trace."""
    script = ROOT / "tests" / "support" / "otel_application.py"
    app = subprocess.run(
        [sys.executable, str(script), f"{phoenix}/v1/traces", str(noise_image)],
        env=no_otel_settings | bearer_token, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert app.returncode == 0, app.stderr
    report = json.loads(app.stdout)
    assert report["destination"] == "application"
    runs = [EmotionResult.model_validate(result) for result in report["results"]]
    plans = {run.trajectory.id: run_spans_plan(run) for run in runs}
    expected = 1 + sum(len(plan) for plan in plans.values())
    spans = read_trace(phoenix, report["trace_id"], expected)
    assert len(spans) == expected  # every span of every run is in the application's trace
    [request] = [span for span in spans if not span["parent_span_id"]]
    assert (request["name"], request["span_id"]) == ("POST /classify", report["span_id"])
    roots = {attribute(span, "emo_r3.run.id"): span for span in spans if span["name"] == "invoke_workflow emo-r3"}
    assert roots.keys() == plans.keys()
    assert {root["parent_span_id"] for root in roots.values()} == {report["span_id"]}
    for run_id, root in roots.items():  # below each root, its own run's spans only
        assert len(descendants(spans, root["span_id"])) == len(plans[run_id]) - 1


def attribute(span: dict, key: str):
    return next((otlp_value(a["value"]) for a in span["attributes"] if a["key"] == key), None)


def descendants(spans: list[dict], span_id: str) -> list[dict]:
    children = [span for span in spans if span["parent_span_id"] == span_id]
    return children + [grandchild for child in children for grandchild in descendants(spans, child["span_id"])]


def test_headers_from_the_environment_reach_the_receiver(phoenix, accepted, monkeypatch, caplog):
    """Phoenix with authentication refuses spans without a token; OTEL_EXPORTER_OTLP_HEADERS carries it."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_HEADERS", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix)  # a base URL: /v1/traces is appended
    started_at = time.time() - 30
    refused = OtelRunExporter()
    refused.export(accepted, started_at=started_at)
    refused.shutdown()
    assert refused.failures == 1
    assert "code: 401" in caplog.text  # the receiver's answer, logged by OpenTelemetry's exporter
    plans = run_spans_plan(accepted)
    assert f"could not send {len(plans)} spans to {phoenix} (OTEL_EXPORTER_OTLP_ENDPOINT)" in caplog.text
    assert "set OTEL_EXPORTER_OTLP_HEADERS" in caplog.text
    assert read_trace(phoenix, accepted.trajectory.id, 1, timeout_s=2) == []

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer%20{ADMIN_TOKEN}")
    sent = OtelRunExporter()
    sent.export(accepted, started_at=started_at)
    sent.shutdown()
    assert sent.failures == 0
    check_trace_matches_plan(read_trace(phoenix, accepted.trajectory.id, len(plans)), plans, started_at)


def test_cli_follows_the_otel_variables(phoenix, tmp_path, bundled_images, tiny_config, no_otel_settings):
    """`emo-r3 run` with no --otlp exports where the OTEL_* variables say, with their headers; `traces export
    --otlp` without the token says what went wrong and what to set."""
    emo_r3, traces = [sys.executable, "-m", "emo_r3.graphs.cli"], tmp_path / "traces.sqlite"
    otel = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{phoenix}/v1/traces",
        "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{ADMIN_TOKEN}",
    }
    live = subprocess.run(
        [*emo_r3, "run", str(bundled_images["coffee"]), "--config", str(tiny_config), "--traces", str(traces),
         "--json"], env=no_otel_settings | otel, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert live.returncode == 0, live.stderr
    run_id = json.loads(live.stdout)["trajectory"]["id"]
    plans = run_spans_plan(TraceStore(traces, readonly=True).get_run(run_id).result)
    assert len(read_trace(phoenix, run_id, len(plans))) == len(plans)

    endpoint = f"{phoenix}/v1/traces"
    no_token = subprocess.run([*emo_r3, "traces", "export", "--traces", str(traces), "--otlp", endpoint],
                              env=no_otel_settings, capture_output=True, text=True, check=False)  # fmt: skip
    assert no_token.returncode == 1
    assert "code: 401" in no_token.stderr and "set OTEL_EXPORTER_OTLP_HEADERS" in no_token.stderr
    assert f"1 runs or span batches could not be sent to {endpoint}" in no_token.stderr
