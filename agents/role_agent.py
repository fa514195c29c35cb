"""What the three role agents share: call the model, time it, and always leave an LLMCall behind, even on failure."""

from __future__ import annotations

from pydantic import BaseModel

from emo_r3.agents.call_record import LLMCall, Purpose, Role
from emo_r3.agents.chat_model import ChatMessage, ChatModel, Completion, ModelCallError, SamplingParams


class AgentCallError(RuntimeError):
    """A role's model call failed; `call` is the recorded attempt (with its error) so the trace keeps it."""

    def __init__(self, call: LLMCall) -> None:
        super().__init__(f"{call.role} ({call.purpose}, round {call.round}) failed: {call.error}")
        self.call = call


class RoleAgent:
    """Base for a role: one model and its sampling parameters."""

    role: Role

    def __init__(self, model: ChatModel, sampling: SamplingParams) -> None:
        self.model = model
        self.sampling = sampling

    async def _call(
        self,
        purpose: Purpose,
        *,
        node: str,
        round: int,
        messages: list[ChatMessage],
        choices: list[str] | None = None,
        sampling: SamplingParams | None = None,
    ) -> tuple[Completion, LLMCall]:
        sampling = sampling or self.sampling
        fields = dict(
            role=self.role,
            purpose=purpose,
            node=node,
            round=round,
            messages=messages,
            choices=choices,
            sampling=sampling,
        )
        try:
            completion = await self.model.chat(messages, sampling, choices=choices)
        except ModelCallError as error:
            failed = LLMCall(model_id=self.model.model_id, adapter=self.model.adapter, error=str(error), **fields)
            raise AgentCallError(failed) from error
        return completion, LLMCall.from_completion(completion, **fields)

    @staticmethod
    def _with_parsed(call: LLMCall, parsed: BaseModel) -> LLMCall:
        return call.model_copy(update={"parsed": parsed.model_dump(mode="json")})
