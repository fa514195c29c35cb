"""Graph runs with a scripted model whose span plans the OpenTelemetry tests check: one that loops once and then
fails on a model call (whose error message carries credentials), and one accepted at once with user text."""

from __future__ import annotations

from pathlib import Path

import pytest

from emo_r3.agents.backends.scripted import ScriptedChatModel
from emo_r3.agents.chat_model import ModelCallError
from emo_r3.graphs import EmotionGraph, EmotionQuery, EmotionResult, GraphConfig
from emo_r3.graphs.traces.otel import SpanPlan
from emo_r3.graphs.traces.recorder import TraceRecorder

GOOD_SET = "<step2>They feel tiny and amazed.</step2><step3>valence: positive; arousal: low</step3> \\boxed{awe}"
PERCEPTION = "<step1>A huge waterfall in a canyon.</step1>"
REFUSED = "server at http://admin:hunter2@127.0.0.1:9 refused the connection (api_key=sk-live-0123456789abcdef)"


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


def scripted_graph(*, max_rounds: int = 1, traces: TraceRecorder | None = None, **answers) -> EmotionGraph:
    model = ScriptedChatModel(responder(**answers), model_id="scripted-vlm")
    roles = dict.fromkeys(("perceiver", "reasoner", "reflector"), model)
    return EmotionGraph.from_config(GraphConfig(max_rounds=max_rounds), models=roles, traces=traces)


def run_graph(image: Path, *, max_rounds: int = 1, text: str | None = None, **answers) -> EmotionResult:
    return scripted_graph(max_rounds=max_rounds, **answers).run(EmotionQuery(images=[image], text=text))


def loop_then_failure_run(image: Path) -> EmotionResult:
    """Round 0: the reflector rejects the label (coherence); round 1: the reasoner's model call fails."""
    result = run_graph(image, coherence="fear", fail_reason_call=2)
    assert result.path == ["perceive", "reason", "reflect", "reason", "finalize"]
    assert result.termination == "error"
    return result


def accepted_run(image: Path) -> EmotionResult:
    result = run_graph(image, text="my holiday, token: abcdef123456")
    assert result.termination == "accepted"
    return result


def by_key(plans: list[SpanPlan]) -> dict[str, SpanPlan]:
    return {plan.key: plan for plan in plans}


@pytest.fixture
def loop_then_failure(noise_image: Path) -> EmotionResult:
    return loop_then_failure_run(noise_image)


@pytest.fixture
def accepted(noise_image: Path) -> EmotionResult:
    return accepted_run(noise_image)
