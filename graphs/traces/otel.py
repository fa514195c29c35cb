"""Export finished graph runs as OpenTelemetry traces (OTLP over HTTP), following the GenAI semantic conventions.

One run becomes one trace:

    invoke_workflow emo-r3                 root (INTERNAL): emo_r3.* run attributes
    ├── invoke_agent perceiver             one span per node visit, in path order (INTERNAL)
    │   └── chat {model}                   one span per LLM call (CLIENT): gen_ai.* request/usage attributes
    ├── invoke_agent reasoner
    │   └── chat {model}  (+ label choice)
    ├── invoke_agent reflector
    │   ├── chat {model}  coherence        the two checks ran concurrently, so their spans overlap
    │   └── chat {model}  consistency
    └── finalize

The trace store keeps each call's latency, not its clock time, so spans are laid out from a given start:
calls back to back inside their node (concurrent in `reflect`, as the graph runs them), nodes back to back,
the root covering all. A run that is a trace of its own (below) has the run id as its trace id (both are
128-bit), so it is found by the same id in a trace viewer as in `emo-r3 traces`.

Prompts and completions are recorded only when asked (`include_content`), as the opt-in attributes
gen_ai.input.messages / gen_ai.output.messages; images are always referenced by sha256, never by bytes.

Where the spans go, first match wins (`otel_destination.choose_destination`):

1. an explicit endpoint (`--otlp URL`, `OtelRunExporter(URL)`): our own provider posts to that URL;
2. the application's tracer provider: `OtelRunExporter(tracer_provider=...)`, else the global one when the
   application installed it (`trace.set_tracer_provider`, or `opentelemetry-instrument`); its processors, exporters,
   sampler and resource take the spans;
3. OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/traces): our own provider;
4. nothing: no export (the command line then builds no exporter; `OtelRunExporter()` refuses).

Our own provider leaves every other standard variable to OpenTelemetry: OTEL_EXPORTER_OTLP_(TRACES_)HEADERS (e.g.
`authorization=Bearer%20<token>`, how Langfuse and most hosted backends are reached), _TIMEOUT, _COMPRESSION,
_CERTIFICATE and the client certificate; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override the resource's
defaults (`service.name` emo-r3, `service.version`). Only OTLP/HTTP with protobuf is spoken: another
OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL is refused with a message.

A live run (`export`) nests under the span current when it is exported, the application's span around the graph
call (the recorder exports from the run's own context), so the run is one subtree of the application's trace and
its trace id is the parent's. With no current span it is a trace of its own, whose id is the run id on our own
provider (the application's provider draws its own ids; `emo_r3.run.id` names the run either way). A stored run
(`export_stored`) happened earlier and is always a trace of its own.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Literal

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
except ImportError as missing:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        f"OpenTelemetry export needs optional dependencies ({missing.name} is missing): pip install 'emo-r3[otel]'"
    ) from missing

from emo_r3.agents.call_record import LLMCall
from emo_r3.agents.chat_model import ChatMessage, ImagePart
from emo_r3.graphs.traces.otel_destination import OtelConfigError, OtelDestination, choose_destination
from emo_r3.graphs.trajectory import EmotionResult

if TYPE_CHECKING:
    from emo_r3.graphs.traces.records import RunDetail

logger = logging.getLogger(__name__)

AttributeValue = str | bool | int | float | list[str]
SpanKindName = Literal["internal", "client"]

WORKFLOW_NAME = "emo-r3"
SERVICE_NAME = "emo-r3"  # the resource's default service.name
# None: each call's provider follows from its model id ("vllm:<name>" is the vLLM backend's, see agents).
DEFAULT_PROVIDER: str | None = None


def provider_of(model_id: str) -> str:
    return "vllm" if model_id.startswith("vllm:") else "transformers"


AGENT_OF_NODE = {"perceive": "perceiver", "reason": "reasoner", "reflect": "reflector"}
CONCURRENT_NODES = frozenset({"reflect"})  # nodes whose calls run at the same time (asyncio.gather)
QUEUE_SIZE = 8192  # spans the background processor holds; more would be dropped, so export() flushes first
FLUSH_AT = QUEUE_SIZE // 2
_KINDS = {"internal": trace.SpanKind.INTERNAL, "client": trace.SpanKind.CLIENT}
# The OTLP exporter logs the receiver's answer (status code, reason) just before our line; it cannot be read back.
SEND_FAILURE_HINT = (
    " (the receiver's answer is logged above; 401 or 403 means it wants credentials: set OTEL_EXPORTER_OTLP_HEADERS,"
    " e.g. authorization=Bearer%20<token>)"
)
NOWHERE = (
    "no OpenTelemetry destination: pass an OTLP/HTTP endpoint (--otlp URL), set OTEL_EXPORTER_OTLP_ENDPOINT or "
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or install a tracer provider (trace.set_tracer_provider) first"
)


@dataclass(frozen=True)
class SpanPlan:
    """One span to emit: times are seconds from the run's start; `parent` is another plan's `key`."""

    key: str
    name: str
    kind: SpanKindName
    parent: str | None
    start_s: float
    end_s: float
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    error: str | None = None  # set: status ERROR with this description


@dataclass
class _Visit:
    index: int
    node: str
    in_path: bool
    calls: list[tuple[int, LLMCall]] = field(default_factory=list)


# -- the plan (pure) ---------------------------------------------------------------------------------------


def run_spans_plan(
    result: EmotionResult,
    *,
    include_content: bool = False,
    provider: str | None = DEFAULT_PROVIDER,
    source: str = "run",
) -> list[SpanPlan]:
    """The spans of one finished run, root first, then each node visit followed by its calls."""
    visits = _visits(result)
    plans: list[SpanPlan] = []
    clock, round_ = 0.0, 0
    for visit in visits:
        round_ = visit.calls[0][1].round if visit.calls else round_
        node_plans, clock = _visit_plans(visit, clock, round_, include_content=include_content, provider=provider)
        plans.extend(node_plans)
    root = SpanPlan(
        key="run",
        name=f"invoke_workflow {WORKFLOW_NAME}",
        kind="internal",
        parent=None,
        start_s=0.0,
        end_s=clock,
        attributes=_run_attributes(result, source, include_content),
        error=_run_error(result),
    )
    return [root, *plans]


def _visits(result: EmotionResult) -> list[_Visit]:
    """Node visits in path order, each with the calls it made (calls are logged in the order nodes ran)."""
    trajectory = result.trajectory
    if trajectory is None:
        return []
    pending = list(enumerate(trajectory.calls))
    visits = []
    for index, node in enumerate(trajectory.path):
        visit = _Visit(index=index, node=node, in_path=True)
        while pending and pending[0][1].node == node:
            visit.calls.append(pending.pop(0))
        visits.append(visit)
    for call_index, call in pending:  # calls whose node never reached the path (not expected; kept, not lost)
        if not visits or visits[-1].in_path or visits[-1].node != call.node:
            visits.append(_Visit(index=len(visits), node=call.node, in_path=False))
        visits[-1].calls.append((call_index, call))
    return visits


def _visit_plans(
    visit: _Visit, start: float, round_: int, *, include_content: bool, provider: str | None
) -> tuple[list[SpanPlan], float]:
    key = f"node/{visit.index}"
    call_plans, cursor = [], start
    for call_index, call in visit.calls:
        call_start = start if visit.node in CONCURRENT_NODES else cursor
        end = call_start + max(call.latency_s, 0.0)
        call_plans.append(
            SpanPlan(
                key=f"call/{call_index}",
                name=f"chat {call.model_id}",
                kind="client",
                parent=key,
                start_s=call_start,
                end_s=end,
                attributes=_call_attributes(call, call_index, provider, include_content),
                error=_scrub(call.error) if call.error else None,
            )
        )
        cursor = max(cursor, end)
    failed = [c for _, c in visit.calls if c.error]
    node = SpanPlan(
        key=key,
        name=_node_span_name(visit.node),
        kind="internal",
        parent="run",
        start_s=start,
        end_s=cursor,
        attributes=_node_attributes(visit, round_, provider),
        error=f"{len(failed)} of {len(visit.calls)} calls failed" if failed else None,
    )
    return [node, *call_plans], cursor


def _node_span_name(node: str) -> str:
    agent = AGENT_OF_NODE.get(node)
    return f"invoke_agent {agent}" if agent else node


def _run_attributes(result: EmotionResult, source: str, include_content: bool) -> dict[str, AttributeValue]:
    trajectory = result.trajectory
    attributes: dict[str, AttributeValue | None] = {
        "gen_ai.operation.name": "invoke_workflow",
        "gen_ai.workflow.name": WORKFLOW_NAME,
        "emo_r3.run.id": trajectory.id if trajectory else None,
        "emo_r3.query.id": result.query_id,
        "emo_r3.source": source,
        "emo_r3.label": result.label,
        "emo_r3.label_set": result.label_set,
        "emo_r3.label_source": result.label_source,
        "emo_r3.valence": result.valence,
        "emo_r3.arousal": result.arousal,
        "emo_r3.format_ok": result.format_ok,
        "emo_r3.termination": result.termination,
        "emo_r3.path": list(result.path),
        "emo_r3.rounds": trajectory.corrections if trajectory else 0,
        "emo_r3.call_count": len(trajectory.calls) if trajectory else 0,
        "emo_r3.image.sha256": [i.sha256 for i in trajectory.images] if trajectory else None,
        "error.type": _run_error_type(result),
    }
    if include_content:
        attributes["emo_r3.query.text"] = _scrub(trajectory.text) if trajectory and trajectory.text else None
        attributes["emo_r3.rationale"] = _scrub(result.rationale) or None
    return _present(attributes)


def _run_error(result: EmotionResult) -> str | None:
    if result.ok:
        return None
    return _scrub(result.error or result.termination)


def _run_error_type(result: EmotionResult) -> str | None:
    if result.ok:
        return None
    if result.termination == "timeout":
        return "timeout"
    if result.trajectory and any(c.error for c in result.trajectory.calls):
        return "ModelCallError"
    return "bad_input" if (result.error or "").startswith("bad input") else "_OTHER"


def _node_attributes(visit: _Visit, round_: int, provider: str | None) -> dict[str, AttributeValue]:
    agent = AGENT_OF_NODE.get(visit.node)
    models = {call.model_id for _, call in visit.calls}
    attributes: dict[str, AttributeValue | None] = {
        "emo_r3.node": visit.node,
        "emo_r3.node.index": visit.index,
        "emo_r3.round": round_,
        "emo_r3.node.in_path": None if visit.in_path else False,
    }
    if agent:
        attributes |= {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.provider.name": provider or (provider_of(visit.calls[0][1].model_id) if visit.calls else None),
            "gen_ai.agent.name": agent,
            "gen_ai.request.model": models.pop() if len(models) == 1 else None,
        }
    if any(c.error for _, c in visit.calls):
        attributes["error.type"] = "ModelCallError"
    return _present(attributes)


def _call_attributes(
    call: LLMCall, index: int, provider: str | None, include_content: bool
) -> dict[str, AttributeValue]:
    sampling = call.sampling
    attributes: dict[str, AttributeValue | None] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider or provider_of(call.model_id),
        "gen_ai.request.model": call.model_id,
        "gen_ai.request.temperature": sampling.temperature,
        "gen_ai.request.top_p": sampling.top_p,
        "gen_ai.request.top_k": float(sampling.top_k) if sampling.top_k >= 0 else None,
        "gen_ai.request.max_tokens": sampling.max_tokens,
        "gen_ai.request.seed": sampling.seed,
        "gen_ai.response.model": None if call.error else call.model_id,
        "gen_ai.response.finish_reasons": [call.finish_reason],
        "gen_ai.usage.input_tokens": call.usage.prompt_tokens if call.usage else None,
        "gen_ai.usage.output_tokens": call.usage.completion_tokens if call.usage else None,
        "error.type": "ModelCallError" if call.error else None,
        "emo_r3.call.index": index,
        "emo_r3.role": call.role,
        "emo_r3.purpose": call.purpose,
        "emo_r3.node": call.node,
        "emo_r3.round": call.round,
        "emo_r3.latency_s": call.latency_s,
        "emo_r3.queue_s": call.queue_s,
        "emo_r3.request.min_p": sampling.min_p or None,
        "emo_r3.choices": list(call.choices) if call.choices else None,
        "emo_r3.adapter": call.adapter,
        "emo_r3.weight_version": call.weight_version,
        "emo_r3.image.sha256": [i.sha256 for m in call.messages for i in m.images] or None,
    }
    if include_content:
        attributes["gen_ai.input.messages"] = json.dumps([_message_json(m) for m in call.messages])
        attributes["gen_ai.output.messages"] = json.dumps([_output_json(call)]) if not call.error else None
    return _present(attributes)


def _message_json(message: ChatMessage) -> dict[str, object]:
    """A message in the GenAI input-messages schema; an image is a reference to its sha256, never its bytes."""
    parts: list[dict[str, object]] = []
    for part in message.content:
        if isinstance(part, ImagePart):
            image = part.image
            parts.append(
                {
                    "type": "image",
                    "modality": "image",
                    "sha256": image.sha256,
                    "width": image.width,
                    "height": image.height,
                }
            )
        else:
            parts.append({"type": "text", "content": _scrub(part.text)})
    return {"role": message.role, "parts": parts}


def _output_json(call: LLMCall) -> dict[str, object]:
    return {
        "role": "assistant",
        "parts": [{"type": "text", "content": _scrub(call.text)}],
        "finish_reason": call.finish_reason,
    }


def _present(attributes: dict[str, AttributeValue | None]) -> dict[str, AttributeValue]:
    return {key: value for key, value in attributes.items() if value is not None and value != []}


_SECRETS = [
    (re.compile(r"data:[\w.+/-]+;base64,[A-Za-z0-9+/=]+"), "[inline data omitted]"),
    (re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]{16,}"), "Bearer [REDACTED]"),
    (
        re.compile(r"(?i)\b((?:api|access|secret)[_-]?key|token|password|authorization)(\s*[=:]\s*)\S+"),
        r"\1\2[REDACTED]",
    ),
    (re.compile(r"\b(sk|pk|hf|ghp|gho|xox[abp])[-_][A-Za-z0-9_-]{12,}"), "[REDACTED]"),
    (re.compile(r"(://)[^/@\s:]+:[^/@\s]+@"), r"\1[REDACTED]@"),
]


def _scrub(text: str) -> str:
    """Mask what looks like a credential or inline image data before it leaves the process."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


# -- the exporter ------------------------------------------------------------------------------------------


class _RunIdGenerator(RandomIdGenerator):
    """Random ids, except that the next trace id can be pinned (to the run id) for the current thread."""

    def __init__(self) -> None:
        self._pinned = threading.local()

    def pin(self, trace_id: int | None) -> None:
        self._pinned.trace_id = trace_id

    def generate_trace_id(self) -> int:
        pinned = getattr(self._pinned, "trace_id", None)
        return pinned if pinned else super().generate_trace_id()


class _LoggingExporter(SpanExporter):
    """Delegates to the OTLP exporter; a failed send is counted and logged, never raised."""

    def __init__(self, inner: SpanExporter, destination: str) -> None:
        self._inner = inner
        self._destination = destination
        self.failures = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            outcome = self._inner.export(spans)
        except Exception as error:  # an exporter bug must not kill the processor's worker thread
            logger.error("OTLP export to %s raised: %s", self._destination, error)
            outcome = SpanExportResult.FAILURE
        if outcome is not SpanExportResult.SUCCESS:
            self.failures += 1
            logger.warning("could not send %d spans to %s%s", len(spans), self._destination, SEND_FAILURE_HINT)
        return outcome

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def application_tracer_provider() -> trace.TracerProvider | None:
    """The provider the application installed globally; None while it is OpenTelemetry's stand-in (proxy, no-op)."""
    provider = trace.get_tracer_provider()
    return None if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider) else provider


def current_destination(endpoint: str | None = None) -> OtelDestination | None:
    """Where `OtelRunExporter(endpoint)` would send spans now (see the module's precedence); None: nowhere."""
    has_application = application_tracer_provider() is not None
    return choose_destination(endpoint, application_provider=has_application, environ=os.environ)


class OtelRunExporter:
    """Sends finished runs as spans, in the background, to the destination the module docstring's precedence picks:
    `endpoint` (e.g. `http://127.0.0.1:4318/v1/traces`), else the application's tracer provider (`tracer_provider`,
    as OpenTelemetry instrumentations take it, else the global one), else the OTEL_* endpoint variables;
    `OtelConfigError` when there is none, or when those settings cannot work.

    Nothing here raises into the caller after that: a run that cannot be turned into spans, or spans that cannot be
    sent, are logged and counted in `failures` (sends through the application's provider are its own exporters'
    business, not counted here). Call `shutdown()` before exit to send what is queued.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        service_name: str | None = None,
        include_content: bool = False,
        provider: str | None = DEFAULT_PROVIDER,
        timeout_s: float | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        if endpoint and tracer_provider is not None:
            raise OtelConfigError("give an OTLP endpoint or a tracer provider to export through, not both")
        application = tracer_provider if tracer_provider is not None else application_tracer_provider()
        destination = choose_destination(endpoint, application_provider=application is not None, environ=os.environ)
        if destination is None:
            raise OtelConfigError(NOWHERE)
        self.destination = destination
        self.include_content = include_content
        self.provider = provider
        self._build_failures = 0
        self._queued = 0
        self._queue_lock = threading.Lock()
        self._ids: _RunIdGenerator | None = None  # set on our own provider only: the application's draws its own
        self._exporter: _LoggingExporter | None = None
        if destination.kind == "application" and application is not None:
            self._tracer_provider = application
        else:
            self._tracer_provider = self._own_provider(service_name, timeout_s)
        self._tracer = self._tracer_provider.get_tracer("emo_r3.otel_export", _version())

    def _own_provider(self, service_name: str | None, timeout_s: float | None) -> TracerProvider:
        """OTLP/HTTP to the destination; what is not given here (headers, timeout, TLS ...) the exporter reads
        from the OTEL_* variables itself."""
        self._ids = _RunIdGenerator()
        own = TracerProvider(resource=run_resource(service_name), id_generator=self._ids)
        url = self.destination.url if self.destination.kind == "endpoint" else None
        self._exporter = _LoggingExporter(OTLPSpanExporter(endpoint=url, timeout=timeout_s), str(self.destination))
        own.add_span_processor(
            BatchSpanProcessor(self._exporter, max_queue_size=QUEUE_SIZE, max_export_batch_size=min(512, QUEUE_SIZE))
        )
        return own

    @property
    def owns_provider(self) -> bool:
        return self._exporter is not None

    @property
    def failures(self) -> int:
        """Runs that could not be turned into spans plus span batches our own provider could not send."""
        return self._build_failures + (self._exporter.failures if self._exporter else 0)

    def export(self, result: EmotionResult, *, started_at: float | None = None, source: str = "run") -> None:
        """Queue the spans of one finished run, under the span current now (if any); `started_at` (epoch seconds)
        defaults to "it just finished"."""
        self._export(result, started_at, source, otel_context.get_current())

    def export_stored(self, detail: RunDetail) -> None:
        """Queue a run read back from the trace store, as a trace of its own; it ends when it was recorded."""
        duration = run_spans_plan(detail.result)[0].end_s
        started_at = detail.summary.created_at - duration
        self._export(detail.result, started_at, detail.summary.source, otel_context.Context())

    def _export(
        self, result: EmotionResult, started_at: float | None, source: str, parent: otel_context.Context
    ) -> None:
        try:
            plans = run_spans_plan(result, include_content=self.include_content, provider=self.provider, source=source)
            start = started_at if started_at is not None else time.time() - plans[0].end_s
            self._emit(plans, start, parent, _trace_id(result))
        except Exception as error:
            self._build_failures += 1
            logger.error("could not export the trace of query %s: %s", result.query_id, error)
            return
        self._throttle(len(plans))

    def _throttle(self, spans: int) -> None:
        """A bulk export (thousands of stored runs) waits for the sender instead of overflowing its queue."""
        with self._queue_lock:
            self._queued += spans
            backlog, self._queued = self._queued, (0 if self._queued >= FLUSH_AT else self._queued)
        if backlog >= FLUSH_AT:
            self.flush()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Send everything queued so far; False if it did not finish in time."""
        force_flush = getattr(self._tracer_provider, "force_flush", None)  # not part of the API's provider
        return force_flush(int(timeout_s * 1000)) if force_flush else True

    def shutdown(self) -> None:
        """Send what is queued, then stop our own provider (later exports are dropped, with a warning from
        OpenTelemetry); the application's provider is only flushed: it is the application's to shut down."""
        try:
            if self.owns_provider:
                self._tracer_provider.shutdown()
            else:
                self.flush()
        except Exception as error:
            logger.error("OTLP exporter shutdown failed: %s", error)

    def _emit(self, plans: list[SpanPlan], start: float, parent: otel_context.Context, trace_id: int | None) -> None:
        """`parent` holds the span the run nests under (its trace id wins); without one, the root's trace id is
        `trace_id` on our own provider."""
        spans: dict[str, trace.Span] = {}
        if self._ids is not None:
            self._ids.pin(trace_id)
        try:
            for plan in plans:  # parents come before their children in a plan
                context = trace.set_span_in_context(spans[plan.parent], parent) if plan.parent else parent
                span = self._tracer.start_span(
                    plan.name,
                    context=context,
                    kind=_KINDS[plan.kind],
                    attributes=plan.attributes,
                    start_time=_ns(start + plan.start_s),
                )
                if plan.error is not None:
                    span.set_status(trace.Status(trace.StatusCode.ERROR, plan.error))
                spans[plan.key] = span
        finally:
            if self._ids is not None:
                self._ids.pin(None)
        for plan in reversed(plans):
            spans[plan.key].end(end_time=_ns(start + plan.end_s))


def run_resource(service_name: str | None) -> Resource:
    """Our service name and version as defaults; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over them, an
    explicit `service_name` over everything."""
    resource = Resource.create({"service.name": SERVICE_NAME, "service.version": _version()})
    resource = resource.merge(OTELResourceDetector().detect())
    return resource.merge(Resource({"service.name": service_name})) if service_name else resource


def _trace_id(result: EmotionResult) -> int | None:
    """The run id as a trace id when it is one (32 hex digits, not all zero)."""
    run_id = result.trajectory.id if result.trajectory else ""
    if re.fullmatch(r"[0-9a-f]{32}", run_id) and int(run_id, 16):
        return int(run_id, 16)
    return None


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _version() -> str:
    try:
        return metadata.version("emo-r3")
    except metadata.PackageNotFoundError:
        return "0+unknown"
