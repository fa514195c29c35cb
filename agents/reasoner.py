"""The reasoner: how a viewer would feel (step 2), valence/arousal (step 3) and the label in \\boxed{}."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from emo_r3.agents.call_record import LLMCall
from emo_r3.agents.chat_model import ChatMessage, SamplingParams
from emo_r3.agents.images import PreparedImage
from emo_r3.agents.parsing import parse_choice, parse_set
from emo_r3.agents.role_agent import RoleAgent
from emo_r3.prompts import LabelSet, render

# The reasoner is asked for steps 2 and 3 only: step 1 is the perceiver's.
REASONER_STEPS = (2, 3)
# A closed-set decision, not a creative one: take the model's most likely option.
LABEL_CHOICE_SAMPLING = SamplingParams(temperature=0.0, max_tokens=16)


class Reasoning(BaseModel, frozen=True):
    feeling: str
    affect: str
    valence: Literal["positive", "negative", "neutral"] | None
    arousal: Literal["high", "low"] | None
    boxed: str | None
    label: str
    label_source: Literal["boxed", "closed_set"]
    format_ok: bool
    problems: list[str] = []


class Reasoner(RoleAgent):
    role = "reasoner"

    async def reason(
        self,
        images: tuple[PreparedImage, ...],
        *,
        context: str | None,
        perception: str,
        label_set: LabelSet,
        feedback: str | None,
        previous_label: str | None,
        round: int,
    ) -> tuple[Reasoning, list[LLMCall]]:
        """Answer in the SET format; when the answer carries no usable label, ask the same model to pick one."""
        prompt = render(
            "reasoner",
            context=context,
            perception=perception,
            labels=label_set.labels,
            feedback=feedback,
            previous_label=previous_label,
        )
        seen = images if self.model.supports_images else ()
        completion, call = await self._call(
            "reason", node="reason", round=round, messages=[ChatMessage.user(prompt, seen)]
        )
        parsed = parse_set(
            completion.text,
            label_set,
            required_steps=REASONER_STEPS,
            truncated=completion.finish_reason == "length",
        )
        calls = [call]
        label, source = parsed.label, "boxed"
        if label is None:
            label, choice_call = await self._choose_label(seen, completion.text, label_set, round)
            calls.append(choice_call)
            source = "closed_set"
        reasoning = Reasoning(
            feeling=parsed.steps.get(2, ""),
            affect=parsed.steps.get(3, ""),
            valence=parsed.valence,
            arousal=parsed.arousal,
            boxed=parsed.boxed,
            label=label,
            label_source=source,
            format_ok=parsed.format_ok and parsed.label is not None,
            problems=parsed.problems,
        )
        calls[0] = self._with_parsed(call, reasoning)
        return reasoning, calls

    async def _choose_label(
        self, images: tuple[PreparedImage, ...], response: str, label_set: LabelSet, round: int
    ) -> tuple[str, LLMCall]:
        prompt = render("label_choice", response=response.strip(), labels=label_set.labels)
        completion, call = await self._call(
            "label_choice",
            node="reason",
            round=round,
            messages=[ChatMessage.user(prompt, images)],
            choices=list(label_set.labels),
            sampling=LABEL_CHOICE_SAMPLING,
        )
        # A backend that honours `choices` returns an option; if it still does not, fall back to the first
        # label rather than no label, and the call's parsed output says so.
        chosen = parse_choice(completion.text, label_set.labels)
        label = chosen or label_set.labels[0]
        return label, call.model_copy(update={"parsed": {"label": label, "constrained_ok": chosen is not None}})
