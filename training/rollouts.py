"""Group rollouts: the same graph code, n runs per prompt, concurrently, each run with its own sampling seeds.

Seeds are a pure function of (run seed, step, prompt slot, sample), so a resumed run re-samples exactly what an
uninterrupted one would have, whatever order concurrent calls happen to finish in.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from emo_r3.agents.call_record import Role
from emo_r3.agents.chat_model import ChatModel
from emo_r3.evals.items import EvalItem
from emo_r3.graphs.config import GraphConfig
from emo_r3.graphs.emotion_graph import EmotionGraph
from emo_r3.graphs.trajectory import EmotionQuery, EmotionResult


@dataclass
class Rollout:
    """One graph run of one prompt, with the gold label it is scored against."""

    item: EvalItem
    sample: int
    result: EmotionResult


def sample_seed(seed: int, step: int, slot: int, sample: int, role: Role) -> int:
    """A 31-bit seed unique to (run seed, step, prompt slot, sample, role)."""
    digest = hashlib.sha256(f"{seed}:{step}:{slot}:{sample}:{role}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def seeded_config(config: GraphConfig, seed: int, step: int, slot: int, sample: int) -> GraphConfig:
    """The graph config with every role's sampling seed fixed for this run."""
    roles = {}
    for role, role_config in config.roles.items():
        sampling = role_config.sampling.model_copy(update={"seed": sample_seed(seed, step, slot, sample, role)})
        roles[role] = role_config.model_copy(update={"sampling": sampling})
    return config.model_copy(update={"roles": roles})


def prompt_indices(num_items: int, per_step: int, step: int, seed: int) -> list[int]:
    """Dataset positions for `step`: epochs are seeded permutations laid end to end, read `per_step` at a time."""
    orders: dict[int, list[int]] = {}
    indices = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, num_items)
        if epoch not in orders:  # a step spans one or a few epochs: shuffle each once
            orders[epoch] = list(range(num_items))
            random.Random(f"{seed}:{epoch}").shuffle(orders[epoch])
        indices.append(orders[epoch][offset])
    return indices


async def rollout_step(
    config: GraphConfig,
    models: Mapping[Role, ChatModel],
    items: Sequence[EvalItem],
    *,
    group_size: int,
    seed: int,
    step: int,
    max_concurrency: int,
) -> list[Rollout]:
    """Run every item `group_size` times through the graph; results in (item, sample) order, errors included."""
    semaphore = asyncio.Semaphore(max_concurrency)

    async def one(slot: int, item: EvalItem, sample: int) -> Rollout:
        graph = EmotionGraph(seeded_config(config, seed, step, slot, sample), models)
        query = EmotionQuery(
            id=item.id, images=[item.image], text=item.text, label_set=item.candidates or item.label_set
        )
        async with semaphore:
            return Rollout(item=item, sample=sample, result=await graph.arun(query))

    jobs = [one(slot, item, sample) for slot, item in enumerate(items) for sample in range(group_size)]
    return list(await asyncio.gather(*jobs))
