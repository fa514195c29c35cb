"""OpenTelemetry export without a receiver: the span plan of real graph runs (scripted model), and an exporter
whose endpoint nobody listens on logging its failures instead of raising. Spans sent to a real receiver:
tests/servers/test_otel_export.py."""

from __future__ import annotations

import itertools
import json
import time

import pytest
from scripted_otel_runs import PERCEPTION, by_key, run_graph

from emo_r3.agents.backends.vllm.process import free_port
from emo_r3.graphs.traces.otel import OtelRunExporter, run_spans_plan

GEN_AI_CHAT_KEYS = {
    "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.request.temperature",
    "gen_ai.request.top_p", "gen_ai.request.max_tokens", "gen_ai.response.finish_reasons",
}  # fmt: skip


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


def test_exporter_failures_are_logged_not_raised(accepted, monkeypatch, caplog):
    exporter = OtelRunExporter(f"http://127.0.0.1:{free_port()}/v1/traces", timeout_s=0.5)  # nobody listens
    exporter.export(accepted)
    monkeypatch.setattr("emo_r3.graphs.traces.otel.run_spans_plan", lambda *a, **k: 1 / 0)
    exporter.export(accepted)
    started = time.monotonic()
    exporter.shutdown()
    assert time.monotonic() - started < 10
    assert exporter.failures == 2  # one run that could not be planned, one batch that could not be sent
    assert "could not send" in caplog.text and "could not export the trace" in caplog.text
