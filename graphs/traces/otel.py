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
the root covering all. The trace id is the run id (both are 128-bit), so a run is found by the same id in a
trace viewer as in `emo-r3 traces`.

Prompts and completions are recorded only when asked (`include_content`), as the opt-in attributes
gen_ai.input.messages / gen_ai.output.messages; images are always referenced by sha256, never by bytes.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Literal

try:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
except ImportError as missing:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        f"OpenTelemetry export needs optional dependencies ({missing.name} is missing): pip install 'emo-r3[otel]'"
    ) from missing

from emo_r3.agents.call_record import LLMCall
from emo_r3.agents.chat_model import ChatMessage, ImagePart
from emo_r3.graphs.trajectory import EmotionResult

if TYPE_CHECKING:
    from emo_r3.graphs.traces.records import RunDetail

logger = logging.getLogger(__name__)

AttributeValue = str | bool | int | float | list[str]
SpanKindName = Literal["internal", "client"]

WORKFLOW_NAME = "emo-r3"
# None: each call's provider follows from its model id ("vllm:<name>" is the vLLM backend's, see agents).
DEFAULT_PROVIDER: str | None = None


def provider_of(model_id: str) -> str:
    return "vllm" if model_id.startswith("vllm:") else "transformers"


AGENT_OF_NODE = {"perceive": "perceiver", "reason": "reasoner", "reflect": "reflector"}
CONCURRENT_NODES = frozenset({"reflect"})  # nodes whose calls run at the same time (asyncio.gather)
QUEUE_SIZE = 8192  # spans the background processor holds; more would be dropped, so export() flushes first
FLUSH_AT = QUEUE_SIZE // 2
_KINDS = {"internal": trace.SpanKind.INTERNAL, "client": trace.SpanKind.CLIENT}


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

    def __init__(self, inner: SpanExporter, endpoint: str) -> None:
        self._inner = inner
        self._endpoint = endpoint
        self.failures = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            outcome = self._inner.export(spans)
        except Exception as error:  # an exporter bug must not kill the processor's worker thread
            logger.error("OTLP export to %s raised: %s", self._endpoint, error)
            outcome = SpanExportResult.FAILURE
        if outcome is not SpanExportResult.SUCCESS:
            self.failures += 1
            logger.warning("could not send %d spans to %s", len(spans), self._endpoint)
        return outcome

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class OtelRunExporter:
    """Sends finished runs to an OTLP/HTTP endpoint (e.g. `http://127.0.0.1:4318/v1/traces`) in the background.

    Nothing here raises into the caller: a run that cannot be turned into spans, or spans that cannot be
    sent, are logged and counted in `failures`. Call `shutdown()` before exit to send what is queued.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        service_name: str = "emo-r3",
        include_content: bool = False,
        provider: str | None = DEFAULT_PROVIDER,
        timeout_s: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.include_content = include_content
        self.provider = provider
        self._build_failures = 0
        self._queued = 0
        self._queue_lock = threading.Lock()
        self._ids = _RunIdGenerator()
        resource = Resource.create({"service.name": service_name, "service.version": _version()})
        self._provider = TracerProvider(resource=resource, id_generator=self._ids)
        self._exporter = _LoggingExporter(OTLPSpanExporter(endpoint=endpoint, timeout=timeout_s), endpoint)
        self._provider.add_span_processor(
            BatchSpanProcessor(self._exporter, max_queue_size=QUEUE_SIZE, max_export_batch_size=min(512, QUEUE_SIZE))
        )
        self._tracer = self._provider.get_tracer("emo_r3.otel_export", _version())

    @property
    def failures(self) -> int:
        """Runs that could not be turned into spans plus span batches that could not be sent."""
        return self._build_failures + self._exporter.failures

    def export(self, result: EmotionResult, *, started_at: float | None = None, source: str = "run") -> None:
        """Queue the spans of one finished run; `started_at` (epoch seconds) defaults to "it just finished"."""
        try:
            plans = run_spans_plan(result, include_content=self.include_content, provider=self.provider, source=source)
            start = started_at if started_at is not None else time.time() - plans[0].end_s
            self._emit(plans, start, _trace_id(result))
        except Exception as error:
            self._build_failures += 1
            logger.error("could not export the trace of query %s: %s", result.query_id, error)
            return
        self._throttle(len(plans))

    def export_stored(self, detail: RunDetail) -> None:
        """Queue a run read back from the trace store; it ends when it was recorded (`created_at`)."""
        duration = run_spans_plan(detail.result)[0].end_s
        self.export(detail.result, started_at=detail.summary.created_at - duration, source=detail.summary.source)

    def _throttle(self, spans: int) -> None:
        """A bulk export (thousands of stored runs) waits for the sender instead of overflowing its queue."""
        with self._queue_lock:
            self._queued += spans
            backlog, self._queued = self._queued, (0 if self._queued >= FLUSH_AT else self._queued)
        if backlog >= FLUSH_AT:
            self.flush()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Send everything queued so far; False if it did not finish in time."""
        return self._provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Send what is queued, then stop; later exports are dropped (with a warning from OpenTelemetry)."""
        try:
            self._provider.shutdown()
        except Exception as error:
            logger.error("OTLP exporter shutdown failed: %s", error)

    def _emit(self, plans: list[SpanPlan], start: float, trace_id: int | None) -> None:
        spans: dict[str, trace.Span] = {}
        self._ids.pin(trace_id)
        try:
            for plan in plans:  # parents come before their children in a plan
                parent = trace.set_span_in_context(spans[plan.parent]) if plan.parent else None
                span = self._tracer.start_span(
                    plan.name,
                    context=parent,
                    kind=_KINDS[plan.kind],
                    attributes=plan.attributes,
                    start_time=_ns(start + plan.start_s),
                )
                if plan.error is not None:
                    span.set_status(trace.Status(trace.StatusCode.ERROR, plan.error))
                spans[plan.key] = span
        finally:
            self._ids.pin(None)
        for plan in reversed(plans):
            spans[plan.key].end(end_time=_ns(start + plan.end_s))


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
