"""The perceiver: what in the image can trigger an emotion (SET step 1)."""

from __future__ import annotations

from pydantic import BaseModel

from emo_r3.agents.call_record import LLMCall
from emo_r3.agents.chat_model import ChatMessage
from emo_r3.agents.images import PreparedImage
from emo_r3.agents.parsing import parse_perception
from emo_r3.agents.role_agent import RoleAgent
from emo_r3.prompts import render


class Perception(BaseModel, frozen=True):
    text: str
    format_ok: bool
    problems: list[str] = []


class Perceiver(RoleAgent):
    role = "perceiver"

    async def perceive(
        self, images: tuple[PreparedImage, ...], *, context: str | None, feedback: str | None, round: int
    ) -> tuple[Perception, LLMCall]:
        prompt = render("perceiver", context=context, feedback=feedback)
        completion, call = await self._call(
            "perceive", node="perceive", round=round, messages=[ChatMessage.user(prompt, images)]
        )
        parsed = parse_perception(completion.text, truncated=completion.finish_reason == "length")
        perception = Perception(text=parsed.text, format_ok=parsed.format_ok, problems=parsed.problems)
        return perception, self._with_parsed(call, perception)
