"""An application with its own OpenTelemetry setup, as a service instrumented by hand has one: a global SDK
TracerProvider exporting to ENDPOINT, and a request span inside which it runs the graph (scripted model), once
synchronously and twice concurrently. EMO-R3's exporter is made with no endpoint and no OTEL_* variables, so it
must use the application's provider. Prints the request span's ids and the results as JSON.

Run as a child process (tests/servers/test_otel_export.py): a global tracer provider can be set once per process.

    python tests/support/otel_application.py ENDPOINT IMAGE
"""

from __future__ import annotations

import asyncio
import json
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from scripted_otel_runs import scripted_graph

from emo_r3.graphs import EmotionQuery
from emo_r3.graphs.traces.otel import OtelRunExporter
from emo_r3.graphs.traces.recorder import TraceRecorder

REQUEST_SPAN = "POST /classify"


def main(endpoint: str, image: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "emotion-app"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    exporter = OtelRunExporter()
    graph = scripted_graph(traces=TraceRecorder(None, exporter=exporter))
    with trace.get_tracer("emotion-app").start_as_current_span(REQUEST_SPAN) as request:
        first = graph.run(EmotionQuery(images=[image]))
        concurrent = asyncio.run(
            graph.abatch([EmotionQuery(images=[image]), EmotionQuery(images=[image], text="at the lake")])
        )
    exporter.shutdown()
    provider.shutdown()
    context = request.get_span_context()
    report = {
        "destination": exporter.destination.kind,
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "results": [result.model_dump(mode="json") for result in (first, *concurrent)],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
