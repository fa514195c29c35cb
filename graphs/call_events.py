"""What a node tells the outside world about each LLM call once it completed: a `CallEvent` on LangGraph's custom
stream (`stream_mode="custom"`), and a chat-model run under the node's own run for LangChain callbacks (LangSmith,
`astream_events`). The calls are already recorded in the state; this only announces them, so it costs nothing when
nobody listens.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.callbacks import AsyncCallbackManager
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_async_callback_manager_for_config
from langgraph.config import get_stream_writer
from pydantic import BaseModel

from emo_r3.agents.call_record import LLMCall
from emo_r3.agents.chat_model import ChatMessage, ImagePart, ModelCallError


class CallEvent(BaseModel):
    """One completed LLM call, as the custom stream carries it (the full record is in the state's `calls`)."""

    query_id: str
    role: str
    purpose: str
    node: str
    round: int
    model_id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    finish_reason: str
    error: str | None

    @classmethod
    def of(cls, call: LLMCall, query_id: str) -> CallEvent:
        return cls(
            query_id=query_id,
            **call.model_dump(include={"role", "purpose", "node", "round", "model_id", "text", "latency_s", "error"}),
            prompt_tokens=len(call.prompt_token_ids),
            completion_tokens=len(call.completion_token_ids),
            finish_reason=call.finish_reason,
        )


async def announce(calls: Sequence[LLMCall], query_id: str, config: RunnableConfig) -> None:
    """Each call on the custom stream, in order, and as a chat-model run for the node's callbacks."""
    write = get_stream_writer()  # a no-op unless the caller streams "custom"
    for call in calls:
        write(CallEvent.of(call, query_id))
    manager = get_async_callback_manager_for_config(config)
    if manager.handlers:
        for call in calls:
            await _report(manager, call)


async def _report(manager: AsyncCallbackManager, call: LLMCall) -> None:
    manager = manager.copy()
    manager.add_metadata({"ls_model_name": call.model_id, "emo_r3_round": call.round, "emo_r3_adapter": call.adapter})
    (run,) = await manager.on_chat_model_start(
        {"name": call.model_id},
        [[_message(m) for m in call.messages]],
        name=f"{call.role}.{call.purpose}",
        invocation_params=call.sampling.model_dump(),
    )
    if call.error is not None:
        await run.on_llm_error(ModelCallError(call.error))
        return
    prompt, completion = len(call.prompt_token_ids), len(call.completion_token_ids)
    usage = {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}
    finished = {"finish_reason": call.finish_reason}
    message = AIMessage(content=call.text, usage_metadata=usage, response_metadata=finished)
    result = LLMResult(generations=[[ChatGeneration(message=message)]], llm_output={"model_name": call.model_id})
    await run.on_llm_end(result)


def _message(message: ChatMessage) -> BaseMessage:
    """A LangChain message with the text as sent; an image as its hash and size (traces never hold pixels)."""
    parts = [
        {"type": "text", "text": f"[image {p.image.sha256[:12]} {p.image.width}x{p.image.height}]"}
        if isinstance(p, ImagePart)
        else {"type": "text", "text": p.text}
        for p in message.content
    ]
    kind = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}[message.role]
    return kind(content=parts)
