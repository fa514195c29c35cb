"""OpenTelemetry export: the span plan on real graph runs (scripted model), then the same runs sent over OTLP/HTTP
to a real receiver (Arize Phoenix, started here as a subprocess) and read back through its REST API."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agents.chat_model import ModelCallError
from agents.scripted_backend import ScriptedChatModel
from graphs import EmotionGraph, EmotionQuery, EmotionResult, GraphConfig
from graphs.otel_export import OtelRunExporter, SpanPlan, run_spans_plan
from graphs.trace_store import TraceStore
from graphs.vllm_process import free_port

ROOT = Path(__file__).resolve().parents[1]
PHOENIX_VERSION = "20.26.1"
PHOENIX_INSTALL = (
    "python3 -m venv .venv-phoenix && "
    f".venv-phoenix/bin/pip install -c constraints.txt arize-phoenix=={PHOENIX_VERSION}"
)

GOOD_SET = "<step2>They feel tiny and amazed.</step2><step3>valence: positive; arousal: low</step3> \\boxed{awe}"
PERCEPTION = "<step1>A huge waterfall in a canyon.</step1>"
REFUSED = "server at http://admin:hunter2@127.0.0.1:9 refused the connection (api_key=sk-live-0123456789abcdef)"
# What Phoenix adds to a stored span when it translates GenAI attributes into its OpenInference ones.
PHOENIX_DERIVED = ("openinference.", "llm.", "input.", "output.")
PHOENIX_KIND = {"chat": "LLM", "invoke_agent": "AGENT"}
GEN_AI_CHAT_KEYS = {
    "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.request.temperature",
    "gen_ai.request.top_p", "gen_ai.request.max_tokens", "gen_ai.response.finish_reasons",
}  # fmt: skip


def responder(*, coherence: str = "awe", fail_reason_call: int | None = None, fail_consistency: bool = False):
    """Answers by prompt kind (as in test_routing); optionally the n-th reasoner call or the consistency check fails."""
    reason_calls = 0

    def respond(messages, sampling, choices):
        nonlocal reason_calls
        text = messages[-1].text
        if choices == ["yes", "no"]:
            if fail_consistency:
                raise ModelCallError(REFUSED)
            return "yes"
        if choices:
            return coherence if "<step2>" in text else "sadness"
        if "<step2>" not in text:
            return PERCEPTION
        reason_calls += 1
        if reason_calls == fail_reason_call:
            raise ModelCallError(REFUSED)
        return GOOD_SET

    return respond


def run_graph(image: Path, *, max_rounds: int = 1, text: str | None = None, **answers) -> EmotionResult:
    model = ScriptedChatModel(responder(**answers), model_id="scripted-vlm")
    config = GraphConfig(max_rounds=max_rounds)
    graph = EmotionGraph.from_config(config, models=dict.fromkeys(("perceiver", "reasoner", "reflector"), model))
    return graph.run(EmotionQuery(images=[image], text=text))


@pytest.fixture
def loop_then_failure(noise_image) -> EmotionResult:
    """Round 0: the reflector rejects the label (coherence); round 1: the reasoner's model call fails."""
    result = run_graph(noise_image, coherence="fear", fail_reason_call=2)
    assert result.path == ["perceive", "reason", "reflect", "reason", "finalize"]
    assert result.termination == "error"
    return result


@pytest.fixture
def accepted(noise_image) -> EmotionResult:
    result = run_graph(noise_image, text="my holiday, token: abcdef123456")
    assert result.termination == "accepted"
    return result


def by_key(plans: list[SpanPlan]) -> dict[str, SpanPlan]:
    return {plan.key: plan for plan in plans}


# -- the span plan -----------------------------------------------------------------------------------------


def test_plan_hierarchy_names_and_rounds(loop_then_failure):
    plans = run_spans_plan(loop_then_failure, source="batch")
    assert [(p.key, p.name, p.parent) for p in plans] == [
        ("run", "invoke_workflow emo-r3", None),
        ("node/0", "invoke_agent perceiver", "run"),
        ("call/0", "chat scripted-vlm", "node/0"),
        ("node/1", "invoke_agent reasoner", "run"),
        ("call/1", "chat scripted-vlm", "node/1"),
        ("node/2", "invoke_agent reflector", "run"),
        ("call/2", "chat scripted-vlm", "node/2"),
        ("call/3", "chat scripted-vlm", "node/2"),
        ("node/3", "invoke_agent reasoner", "run"),
        ("call/4", "chat scripted-vlm", "node/3"),
        ("node/4", "finalize", "run"),
    ]
    spans = by_key(plans)
    assert [spans[f"node/{i}"].attributes["emo_r3.round"] for i in range(5)] == [0, 0, 0, 1, 1]
    assert [spans[f"call/{i}"].attributes["emo_r3.purpose"] for i in range(5)] == [
        "perceive", "reason", "coherence", "consistency", "reason",
    ]  # fmt: skip
    assert {p.kind for p in plans if p.key.startswith("call/")} == {"client"}
    assert {p.kind for p in plans if not p.key.startswith("call/")} == {"internal"}
    root = spans["run"].attributes
    trajectory = loop_then_failure.trajectory
    assert root["gen_ai.operation.name"] == "invoke_workflow" and root["gen_ai.workflow.name"] == "emo-r3"
    assert root["emo_r3.run.id"] == trajectory.id and root["emo_r3.query.id"] == loop_then_failure.query_id
    assert root["emo_r3.path"] == trajectory.path and root["emo_r3.rounds"] == 1
    assert (root["emo_r3.termination"], root["emo_r3.label_set"], root["emo_r3.source"]) == (
        "error",
        "mikels8",
        "batch",
    )
    assert root["emo_r3.image.sha256"] == [trajectory.images[0].sha256]
    agent = spans["node/2"].attributes
    assert (agent["gen_ai.operation.name"], agent["gen_ai.agent.name"]) == ("invoke_agent", "reflector")
    assert "gen_ai.operation.name" not in spans["node/4"].attributes  # finalize runs no agent


def test_plan_gen_ai_attributes_of_a_call(loop_then_failure):
    spans = by_key(run_spans_plan(loop_then_failure, provider="vllm"))
    call = loop_then_failure.trajectory.calls[1]
    attributes = spans["call/1"].attributes
    assert attributes.keys() >= GEN_AI_CHAT_KEYS
    assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.provider.name"] == "vllm"
    assert attributes["gen_ai.request.model"] == attributes["gen_ai.response.model"] == "scripted-vlm"
    assert attributes["gen_ai.request.temperature"] == call.sampling.temperature
    assert attributes["gen_ai.request.top_p"] == call.sampling.top_p
    assert attributes["gen_ai.request.max_tokens"] == call.sampling.max_tokens
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["gen_ai.usage.input_tokens"] == call.usage.prompt_tokens > 0
    assert attributes["gen_ai.usage.output_tokens"] == call.usage.completion_tokens > 0
    assert (attributes["emo_r3.role"], attributes["emo_r3.round"]) == ("reasoner", 0)
    assert attributes["emo_r3.latency_s"] == pytest.approx(call.latency_s)
    assert not any(key.startswith("gen_ai.input") or key.startswith("gen_ai.output") for key in attributes)


def test_plan_marks_the_failed_call_its_node_and_the_run(loop_then_failure):
    spans = by_key(run_spans_plan(loop_then_failure))
    failed = spans["call/4"]
    assert failed.error and "refused the connection" in failed.error
    assert "hunter2" not in failed.error and "sk-live" not in failed.error  # credentials never leave the process
    assert failed.attributes["error.type"] == "ModelCallError"
    assert failed.attributes["gen_ai.response.finish_reasons"] == ["error"]
    assert "gen_ai.usage.input_tokens" not in failed.attributes and "gen_ai.response.model" not in failed.attributes
    assert spans["node/3"].error == "1 of 1 calls failed"
    assert spans["run"].error and spans["run"].attributes["error.type"] == "ModelCallError"
    assert all(spans[key].error is None for key in ("node/0", "call/0", "node/2", "call/3", "node/4"))


def test_plan_timing_is_nested_and_sequential(loop_then_failure):
    plans = run_spans_plan(loop_then_failure)
    spans = by_key(plans)
    nodes = [p for p in plans if p.parent == "run"]
    assert nodes[0].start_s == 0.0 and spans["run"].end_s == nodes[-1].end_s
    assert all(a.end_s == b.start_s for a, b in itertools.pairwise(nodes))
    for plan in plans[1:]:
        parent = spans[plan.parent]
        assert parent.start_s <= plan.start_s <= plan.end_s <= parent.end_s
    reason = spans["node/1"]
    assert reason.end_s - reason.start_s == pytest.approx(loop_then_failure.trajectory.calls[1].latency_s)
    coherence, consistency = spans["call/2"], spans["call/3"]  # run concurrently by the graph
    assert coherence.start_s == consistency.start_s == spans["node/2"].start_s
    assert spans["node/2"].end_s == max(coherence.end_s, consistency.end_s)


def test_one_failed_check_of_two_concurrent_checks(noise_image):
    result = run_graph(noise_image, fail_consistency=True)
    spans = by_key(run_spans_plan(result))
    assert spans["node/2"].error == "1 of 2 calls failed"
    assert spans["call/2"].error is None and spans["call/3"].error


def test_content_is_opt_in_and_images_go_by_hash(accepted):
    assert not any("gen_ai.input.messages" in p.attributes for p in run_spans_plan(accepted))
    plans = run_spans_plan(accepted, include_content=True)
    perceive = by_key(plans)["call/0"].attributes
    messages = json.loads(perceive["gen_ai.input.messages"])
    image = next(part for part in messages[0]["parts"] if part["type"] == "image")
    assert image["sha256"] == accepted.trajectory.images[0].sha256 and set(image) == {
        "type", "modality", "sha256", "width", "height",
    }  # fmt: skip
    assert "iVBORw0KGgo" not in perceive["gen_ai.input.messages"]  # no PNG bytes, inline or base64
    output = json.loads(perceive["gen_ai.output.messages"])
    assert output == [
        {"role": "assistant", "parts": [{"type": "text", "content": PERCEPTION}], "finish_reason": "stop"}
    ]
    root = by_key(plans)["run"].attributes
    assert root["emo_r3.query.text"] == "my holiday, token: [REDACTED]"


def test_a_run_that_failed_on_input_is_a_single_error_span(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    result = run_graph(broken)
    [root] = run_spans_plan(result)
    assert root.error and "broken.jpg" in root.error
    assert root.attributes["error.type"] == "bad_input" and root.attributes["emo_r3.call_count"] == 0


def test_import_without_opentelemetry_names_the_extra():
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "try:\n"
        "    import graphs.otel_export\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "pip install 'emo-r3[otel]'" in done.stdout


def test_exporter_failures_are_logged_not_raised(accepted, monkeypatch, caplog):
    exporter = OtelRunExporter(f"http://127.0.0.1:{free_port()}/v1/traces", timeout_s=0.5)  # nobody listens
    exporter.export(accepted)
    monkeypatch.setattr("graphs.otel_export.run_spans_plan", lambda *a, **k: 1 / 0)
    exporter.export(accepted)
    started = time.monotonic()
    exporter.shutdown()
    assert time.monotonic() - started < 10
    assert exporter.failures == 2  # one run that could not be planned, one batch that could not be sent
    assert "could not send" in caplog.text and "could not export the trace" in caplog.text


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


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory) -> Iterator[str]:
    """A Phoenix server on free loopback ports with its own SQLite file; yields its base URL."""
    workdir = tmp_path_factory.mktemp("phoenix")
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env = inherited | {  # Phoenix runs from its own venv: nothing of ours may leak onto its import path
        "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(port), "PHOENIX_GRPC_PORT": str(free_port()),
        "PHOENIX_WORKING_DIR": str(workdir), "PHOENIX_TELEMETRY_ENABLED": "false",
        "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
    }  # fmt: skip
    log = (workdir / "phoenix.log").open("wb")
    server = subprocess.Popen([phoenix_executable(), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(server, url, workdir / "phoenix.log")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def wait_until_ready(server: subprocess.Popen, url: str, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"Phoenix exited with {server.returncode}:\n{log.read_text()[-3000:]}", pytrace=False)
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"Phoenix did not answer {url}/healthz within {timeout_s} s:\n{log.read_text()[-3000:]}")


def read_traces(url: str, trace_ids: list[str], count: int, timeout_s: float = 30) -> dict[str, list[dict]]:
    """Each trace's spans as Phoenix stored them; it ingests in the background, so wait for `count` spans each."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = httpx.get(
            f"{url}/v1/projects/default/spans/otlpv1", params={"trace_id": trace_ids, "limit": 1000}, timeout=10
        )
        traces: dict[str, list[dict]] = {trace_id: [] for trace_id in trace_ids}
        for span in reply.json()["data"] if reply.status_code == 200 else []:
            traces[span["trace_id"]].append(span)
        if all(len(spans) >= count for spans in traces.values()) or time.monotonic() > deadline:
            return traces
        time.sleep(0.2)


def read_trace(url: str, trace_id: str, count: int) -> list[dict]:
    return read_traces(url, [trace_id], count)[trace_id]


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
    monkeypatch.setattr("graphs.otel_export.QUEUE_SIZE", 40)  # 30 runs of 9 spans would overflow this queue
    monkeypatch.setattr("graphs.otel_export.FLUSH_AT", 20)
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


def test_cli_exports_a_store_and_live_runs_to_the_receiver(phoenix, tmp_path, bundled_images, tiny_config):
    """`emo-r3 run --otlp` exports live; `emo-r3 traces export --otlp` sends what a store holds."""
    import json
    import sys

    config = tiny_config
    traces, emo_r3 = tmp_path / "traces.sqlite", [sys.executable, "-m", "graphs.cli"]
    endpoint = f"{phoenix}/v1/traces"
    live = subprocess.run(
        [*emo_r3, "run", str(bundled_images["coffee"]), "--config", str(config), "--traces", str(traces),
         "--otlp", endpoint, "--json"], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert live.returncode == 0, live.stderr
    run_id = json.loads(live.stdout)["trajectory"]["id"]
    detail = TraceStore(traces, readonly=True).get_run(run_id)
    plans = run_spans_plan(detail.result)
    assert len(read_trace(phoenix, run_id, len(plans))) == len(plans)

    bulk = subprocess.run([*emo_r3, "traces", "export", "--traces", str(traces), "--otlp", endpoint],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert bulk.returncode == 0 and "exported 1 runs as OpenTelemetry spans" in bulk.stderr
    nobody = f"http://127.0.0.1:{free_port()}/v1/traces"
    dead = subprocess.run([*emo_r3, "traces", "export", "--traces", str(traces), "--otlp", nobody],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert dead.returncode == 1 and "could not be sent" in dead.stderr
