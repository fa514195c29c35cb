"""Where OpenTelemetry spans go without a receiver: the precedence of `--otlp`, the application's tracer provider
and the OTEL_* variables; settings that cannot work; the resource; and runs nesting under the application's span
on a real SDK TracerProvider that keeps its spans in memory. Against a real receiver:
tests/servers/test_otel_export.py."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from scripted_otel_runs import run_graph

from emo_r3.graphs.traces.otel import OtelRunExporter, current_destination, run_resource, run_spans_plan
from emo_r3.graphs.traces.otel_destination import OtelConfigError, OtelDestination, choose_destination
from emo_r3.graphs.traces.store import TraceStore

URL = "http://collector:4318/v1/traces"
BASE = "https://otel.example.com/api/public/otel"
OTEL_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
)  # fmt: skip


@pytest.fixture(autouse=True)
def no_ambient_otel_settings(monkeypatch):
    """The machine's own OTEL_* settings must not decide these tests."""
    for variable in OTEL_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


# -- the precedence (pure) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "application", "environ", "expected"),
    [
        (None, False, {}, None),
        (None, False, {"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, None),
        (URL, True, {"OTEL_EXPORTER_OTLP_ENDPOINT": BASE}, OtelDestination("endpoint", URL)),
        (None, True, {"OTEL_EXPORTER_OTLP_ENDPOINT": BASE}, OtelDestination("application")),
        (
            None,
            False,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": BASE},
            OtelDestination("environment", BASE, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ),
        (
            None,
            False,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": BASE, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": URL},
            OtelDestination("environment", URL, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ),
    ],
    ids=["nothing", "blank", "endpoint-first", "application-next", "environment", "traces-variable-first"],
)
def test_precedence(endpoint, application, environ, expected):
    assert choose_destination(endpoint, application_provider=application, environ=environ) == expected


def test_destination_names_where_spans_go():
    assert str(OtelDestination("endpoint", URL)) == URL
    assert str(OtelDestination("environment", BASE, "OTEL_EXPORTER_OTLP_ENDPOINT")) == (
        f"{BASE} (OTEL_EXPORTER_OTLP_ENDPOINT)"
    )
    assert "application" in str(OtelDestination("application"))


@pytest.mark.parametrize(
    ("endpoint", "environ", "named"),
    [
        ("127.0.0.1:4318/v1/traces", {}, "--otlp"),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": BASE, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "PROTOCOL=grpc"),
        (
            None,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": BASE, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "TRACES_PROTOCOL=http/json",
        ),
    ],
    ids=["no-scheme-flag", "no-scheme-variable", "grpc", "json"],
)
def test_settings_that_cannot_work_are_refused_with_the_setting_named(endpoint, environ, named):
    with pytest.raises(OtelConfigError, match=named) as refused:
        choose_destination(endpoint, application_provider=False, environ=environ)
    assert "4318" in str(refused.value)  # the message shows what a working setting looks like


def test_the_traces_protocol_variable_wins_over_the_general_one():
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": BASE,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",  # for the application's other signals
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    assert choose_destination(None, application_provider=False, environ=environ).kind == "environment"


# -- the exporter's choice in this process -----------------------------------------------------------------


def test_with_nothing_set_nothing_is_exported():
    assert current_destination() is None
    with pytest.raises(OtelConfigError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        OtelRunExporter()


def test_the_environment_endpoint_builds_our_own_exporter(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", BASE)
    exporter = OtelRunExporter()
    try:
        assert exporter.owns_provider
        assert exporter.destination == OtelDestination("environment", BASE, "OTEL_EXPORTER_OTLP_ENDPOINT")
        assert OtelRunExporter(URL).destination == OtelDestination("endpoint", URL)  # --otlp overrides
    finally:
        exporter.shutdown()


def test_an_endpoint_and_a_tracer_provider_together_are_refused():
    with pytest.raises(OtelConfigError, match="not both"):
        OtelRunExporter(URL, tracer_provider=TracerProvider())


def test_resource_defaults_give_way_to_the_standard_variables(monkeypatch):
    assert run_resource(None).attributes["service.name"] == "emo-r3"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes,deployment.environment=staging")
    assert run_resource(None).attributes["service.name"] == "from-attributes"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "emotion-api")
    attributes = run_resource(None).attributes
    assert (attributes["service.name"], attributes["deployment.environment"]) == ("emotion-api", "staging")
    assert "service.version" in attributes
    assert run_resource("explicit").attributes["service.name"] == "explicit"


# -- nesting under the application's span (a real SDK provider, spans kept in memory) -----------------------


@pytest.fixture
def application() -> tuple[TracerProvider, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider, spans


def test_a_run_exported_inside_the_application_span_is_its_child(application, noise_image):
    provider, kept = application
    exporter = OtelRunExporter(tracer_provider=provider)
    assert exporter.destination.kind == "application" and not exporter.owns_provider
    graph_run = run_graph(noise_image)
    with provider.get_tracer("app").start_as_current_span("handle request") as request:
        exporter.export(graph_run)
    exporter.shutdown()
    spans = kept.get_finished_spans()
    app_span = next(s for s in spans if s.name == "handle request")
    root = next(s for s in spans if s.name == "invoke_workflow emo-r3")
    assert root.parent is not None and root.parent.span_id == request.get_span_context().span_id
    assert {s.context.trace_id for s in spans} == {app_span.context.trace_id}  # one trace: the application's
    assert len(spans) == 1 + len(run_spans_plan(graph_run))
    assert root.attributes["emo_r3.run.id"] == graph_run.trajectory.id  # found by the run id all the same


def test_the_application_provider_outlives_our_shutdown(application, noise_image):
    provider, kept = application
    exporter = OtelRunExporter(tracer_provider=provider)
    exporter.shutdown()  # flushes the application's provider, never shuts it down
    with provider.get_tracer("app").start_as_current_span("later work"):
        pass
    assert [s.name for s in kept.get_finished_spans()] == ["later work"]


def test_a_run_with_no_current_span_and_a_stored_run_are_traces_of_their_own(application, noise_image, tmp_path):
    provider, kept = application
    exporter = OtelRunExporter(tracer_provider=provider)
    live = run_graph(noise_image)
    exporter.export(live)
    with TraceStore(tmp_path / "traces.sqlite") as store:
        detail = store.get_run(store.record_run(run_graph(noise_image), source="eval"))
    with provider.get_tracer("app").start_as_current_span("sync job"):
        exporter.export_stored(detail)  # it ran earlier, outside this span
    roots = [s for s in kept.get_finished_spans() if s.name == "invoke_workflow emo-r3"]
    assert [r.attributes["emo_r3.run.id"] for r in roots] == [live.trajectory.id, detail.summary.id]
    assert all(r.parent is None for r in roots)
    assert roots[0].context.trace_id != roots[1].context.trace_id
