"""Routing and the loop bound, on the real graph; the model is scripted (fault injection), the graph is not."""

import asyncio

import pytest

from emo_r3.agents.backends.scripted import ScriptedChatModel
from emo_r3.agents.chat_model import ModelCallError
from emo_r3.agents.reflector import CoherenceVerdict, ConsistencyVerdict
from emo_r3.graphs import EmotionGraph, EmotionQuery, GraphConfig
from emo_r3.graphs.routing import decide, recursion_limit
from emo_r3.prompts import MIKELS_8

GOOD_SET = "<step2>They feel tiny and amazed.</step2><step3>valence: positive; arousal: low</step3> \\boxed{awe}"
PERCEPTION = "<step1>A huge waterfall in a canyon.</step1>"

PASS_COH = CoherenceVerdict(implied_label="awe", answered_label="awe", passed=True)
FAIL_COH = CoherenceVerdict(implied_label="fear", answered_label="awe", passed=False)
PASS_CON = ConsistencyVerdict(answer="yes", passed=True)
FAIL_CON = ConsistencyVerdict(answer="no", passed=False)


@pytest.mark.parametrize(
    ("coherence", "consistency", "round", "max_rounds", "decision"),
    [
        (PASS_COH, PASS_CON, 0, 1, "accept"),
        (None, None, 0, 0, "accept"),
        (FAIL_COH, PASS_CON, 0, 1, "revise_reasoning"),
        (PASS_COH, FAIL_CON, 0, 1, "revise_perception"),
        (FAIL_COH, FAIL_CON, 0, 1, "revise_perception"),
        (FAIL_COH, PASS_CON, 1, 1, "stop"),
        (FAIL_COH, FAIL_CON, 0, 0, "stop"),
    ],
)
def test_decide(coherence, consistency, round, max_rounds, decision):
    assert decide(coherence, consistency, round=round, max_rounds=max_rounds) == decision


def responder(*, consistency="yes", coherence="awe", reasoner=GOOD_SET, perceiver=PERCEPTION):
    """Answers by prompt kind; `choices` marks the closed-set questions."""

    def respond(messages, sampling, choices):
        text = messages[-1].text
        if choices == ["yes", "no"]:
            return consistency
        if choices:
            return coherence if "<step2>" in text else "sadness"  # coherence check vs. the label-choice fallback
        return reasoner if "<step2>" in text else perceiver

    return respond


def scripted(**answers):
    return ScriptedChatModel(responder(**answers))


def graph_with(model, **config):
    return EmotionGraph.from_config(
        GraphConfig(**config), models=dict.fromkeys(("perceiver", "reasoner", "reflector"), model)
    )


def test_accepted_run_path_and_calls(noise_image):
    result = graph_with(scripted()).run(EmotionQuery(images=[noise_image], text="my holiday"))
    assert result.termination == "accepted" and result.label == "awe" and result.format_ok
    assert result.path == ["perceive", "reason", "reflect", "finalize"]
    assert [c.purpose for c in result.trajectory.calls] == ["perceive", "reason", "coherence", "consistency"]
    assert (result.valence, result.arousal) == ("positive", "low")
    assert result.coherence.passed and result.consistency.passed


@pytest.mark.parametrize("max_rounds", [0, 1, 3])
def test_coherence_failure_loops_back_to_the_reasoner_at_most_max_rounds(noise_image, max_rounds):
    result = graph_with(scripted(coherence="fear"), max_rounds=max_rounds).run(EmotionQuery(images=[noise_image]))
    assert result.termination == "max_rounds"
    assert result.path == ["perceive"] + ["reason", "reflect"] * (max_rounds + 1) + ["finalize"]
    assert result.trajectory.corrections == max_rounds
    assert len(result.path) <= recursion_limit(max_rounds)
    if max_rounds:
        second_reason = [c for c in result.trajectory.calls if c.purpose == "reason"][1]
        assert "fear" in second_reason.messages[-1].text  # the reflector's feedback reached the reasoner
        assert second_reason.round == 1


def test_consistency_failure_goes_back_to_the_perceiver(noise_image):
    result = graph_with(scripted(consistency="no"), max_rounds=1).run(EmotionQuery(images=[noise_image]))
    assert result.path == ["perceive", "reason", "reflect", "perceive", "reason", "reflect", "finalize"]
    assert not result.consistency.passed
    second_perceive = [c for c in result.trajectory.calls if c.purpose == "perceive"][1]
    assert "did not match" in second_perceive.messages[-1].text


def test_unusable_reflector_answer_is_a_failed_check_not_a_crash(noise_image):
    result = graph_with(scripted(consistency="not sure", coherence="purple"), max_rounds=0).run(
        EmotionQuery(images=[noise_image])
    )
    assert result.termination == "max_rounds"
    assert result.consistency.answer is None and result.coherence.implied_label is None


def test_missing_box_gets_a_label_by_closed_set_question(noise_image):
    result = graph_with(scripted(reasoner="I think it is quite lovely " * 3)).run(EmotionQuery(images=[noise_image]))
    assert result.label == "sadness" and result.label_source == "closed_set"
    assert not result.format_ok
    purposes = [c.purpose for c in result.trajectory.calls]
    assert purposes[:3] == ["perceive", "reason", "label_choice"]
    choice_call = result.trajectory.calls[2]
    assert choice_call.choices == list(MIKELS_8.labels)


def test_out_of_set_label_and_endless_repetition(noise_image):
    looping = "<step2>" + "so so so " * 500
    result = graph_with(scripted(reasoner=looping), max_rounds=0).run(EmotionQuery(images=[noise_image]))
    reason_call = result.trajectory.calls[1]
    assert reason_call.finish_reason == "length"
    assert any("length" in p for p in result.trajectory.reasonings[0].problems)
    assert result.label in MIKELS_8.labels and result.label_source == "closed_set"


def test_model_error_ends_the_run_with_the_failed_call_recorded(noise_image):
    def respond(messages, sampling, choices):
        if "<step2>" in messages[-1].text:
            raise ModelCallError("server at 127.0.0.1:9 refused the connection")
        return PERCEPTION

    result = graph_with(ScriptedChatModel(respond)).run(EmotionQuery(images=[noise_image]))
    assert result.termination == "error" and not result.ok
    assert "refused" in result.error
    assert result.path == ["perceive", "reason", "finalize"]
    assert result.trajectory.calls[-1].error and result.trajectory.calls[0].error is None
    with pytest.raises(Exception, match="refused"):
        result.raise_for_error()


def test_timeout_keeps_the_completed_calls(noise_image):
    async def respond(messages, sampling, choices):
        if "<step2>" in messages[-1].text:
            await asyncio.sleep(5)
        return PERCEPTION

    result = graph_with(ScriptedChatModel(respond)).run(EmotionQuery(images=[noise_image]), timeout=0.3)
    assert result.termination == "timeout"
    assert [c.purpose for c in result.trajectory.calls] == ["perceive"]


def test_bad_input_is_a_result_not_an_exception(tmp_path):
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    result = graph_with(scripted()).run(EmotionQuery(images=[corrupt]))
    assert result.termination == "error" and "broken.jpg" in result.error and result.label is None


def test_text_limits():
    assert EmotionQuery(images=["x.png"], text="   ").text is None
    with pytest.raises(ValueError, match="over the limit"):
        EmotionQuery(images=["x.png"], text="a" * 5000)


def test_text_only_perceiver_is_a_config_error():
    with pytest.raises(ValueError, match="text-only"):
        graph_with(ScriptedChatModel(lambda *a: "", supports_images=False))
    text_only = ScriptedChatModel(lambda *a: "", supports_images=False)
    vision = scripted()
    config = GraphConfig(checks=["coherence"])
    graph = EmotionGraph(config, {"perceiver": vision, "reasoner": text_only, "reflector": text_only})
    assert graph.config.checks == ["coherence"]


def test_abatch_keeps_input_order_and_bounds_concurrency(noise_image, tmp_path):
    running = peak = 0
    answer = responder()

    async def respond(messages, sampling, choices):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return answer(messages, sampling, choices)

    graph = graph_with(ScriptedChatModel(respond))
    queries = [EmotionQuery(id=f"q{i}", images=[noise_image]) for i in range(8)]
    results = asyncio.run(graph.abatch(queries, max_concurrency=3))
    assert [r.query_id for r in results] == [q.id for q in queries]
    assert all(r.label == "awe" for r in results)
    assert 1 < peak <= 3 * 2  # 3 graphs at once, each with up to 2 concurrent reflection calls


def test_progress_names_each_node_as_it_starts_with_its_round(noise_image):
    events = []
    graph = graph_with(scripted(coherence="fear"), max_rounds=1)
    result = graph.run(EmotionQuery(id="q1", images=[noise_image]), progress=events.append)
    assert [(e.node, e.round) for e in events] == [
        ("prepare", 0), ("perceive", 0), ("reason", 0), ("reflect", 0), ("reason", 1), ("reflect", 1),
        ("finalize", 1),
    ]  # fmt: skip
    assert [e.node for e in events[1:]] == result.path and {e.query_id for e in events} == {"q1"}
