"""The reflector: EMO-R3's two reflection checks as explicit, closed-set questions.

coherence   -- from the perception and feeling text alone (no image), which label does it imply?
consistency -- given the image, does the perception text describe it? (yes/no)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from emo_r3.agents.call_record import LLMCall
from emo_r3.agents.chat_model import ChatMessage
from emo_r3.agents.images import PreparedImage
from emo_r3.agents.parsing import parse_choice, parse_yes_no
from emo_r3.agents.role_agent import RoleAgent
from emo_r3.prompts import LabelSet, render

YES_NO = ["yes", "no"]


class CoherenceVerdict(BaseModel, frozen=True):
    """`implied_label`: the judge's answer as a label of the set (None when it names none); `answer`: its raw text
    (stripped; "" in records from before it was kept), which the reward needs to tell "no answer" from a wrong one."""

    implied_label: str | None
    answered_label: str
    passed: bool
    answer: str = ""


class ConsistencyVerdict(BaseModel, frozen=True):
    answer: Literal["yes", "no"] | None
    passed: bool


class Reflector(RoleAgent):
    role = "reflector"

    async def check_coherence(
        self, *, perception: str, feeling: str, answered_label: str, label_set: LabelSet, round: int
    ) -> tuple[CoherenceVerdict, LLMCall]:
        prompt = render("coherence", perception=perception, feeling=feeling, labels=label_set.labels)
        completion, call = await self._call(
            "coherence",
            node="reflect",
            round=round,
            messages=[ChatMessage.user(prompt)],
            choices=list(label_set.labels),
        )
        implied = parse_choice(completion.text, label_set.labels)
        verdict = CoherenceVerdict(
            implied_label=implied,
            answered_label=answered_label,
            passed=implied == answered_label,
            answer=completion.text.strip(),
        )
        return verdict, self._with_parsed(call, verdict)

    async def check_consistency(
        self, images: tuple[PreparedImage, ...], *, perception: str, round: int
    ) -> tuple[ConsistencyVerdict, LLMCall]:
        prompt = render("consistency", perception=perception)
        completion, call = await self._call(
            "consistency",
            node="reflect",
            round=round,
            messages=[ChatMessage.user(prompt, images)],
            choices=YES_NO,
        )
        answer = parse_yes_no(completion.text)
        verdict = ConsistencyVerdict(answer=answer, passed=answer == "yes")
        return verdict, self._with_parsed(call, verdict)
