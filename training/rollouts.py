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
from typing import Any

from emo_r3.agents.call_record import Role
from emo_r3.agents.chat_model import ChatModel
from emo_r3.evals.datasets import from_hf_dataset, load_dataset
from emo_r3.evals.items import EvalItem, LoadedDataset
from emo_r3.graphs.config import GraphConfig
from emo_r3.graphs.emotion_graph import BAD_INPUT_ERRORS, EmotionGraph
from emo_r3.graphs.state import PreparedQuery
from emo_r3.graphs.trajectory import EmotionQuery, EmotionResult
from emo_r3.training.config import TrainConfig


@dataclass
class Rollout:
    """One graph run of one prompt, with the gold label it is scored against."""

    item: EvalItem
    sample: int
    result: EmotionResult


def sample_seed(seed: int, step: int, slot: int, sample: int, role: str) -> int:
    """A 31-bit seed unique to (run seed, step, prompt slot, sample, role or other use)."""
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


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. every rollout of a step failed); checkpoints written so far are kept."""


async def rollout_step(
    config: GraphConfig,
    model_sets: Sequence[Mapping[Role, ChatModel]],
    items: Sequence[EvalItem],
    *,
    group_size: int,
    seed: int,
    step: int,
    max_concurrency: int,
) -> list[Rollout]:
    """Run every item `group_size` times through the graph; results in (item, sample) order, errors included.

    Run k uses `model_sets[k % len(model_sets)]`: several copies of the policies (e.g. one vLLM server each) share
    the step's runs evenly. Every call is stamped with the weights it was sampled from (`step-<step>`).
    """
    semaphore = asyncio.Semaphore(max_concurrency)
    queries = [
        EmotionQuery(id=item.id, images=[item.image], text=item.text, label_set=item.candidates or item.label_set)
        for item in items
    ]
    preparer = EmotionGraph(config, model_sets[0])
    prepared = await asyncio.gather(*(asyncio.to_thread(_prepared, preparer, query) for query in queries))
    # Slot-major: a prompt's samples start together, so an in-process model batches them.
    jobs = [(slot, item, sample) for slot, item in enumerate(items) for sample in range(group_size)]

    async def one(index: int, slot: int, item: EvalItem, sample: int) -> Rollout:
        models = model_sets[index % len(model_sets)]
        graph = EmotionGraph(seeded_config(config, seed, step, slot, sample), models)
        async with semaphore:
            ready = prepared[slot]
            result = await (graph.arun_prepared(ready) if ready is not None else graph.arun(queries[slot]))
        for call in result.trajectory.calls if result.trajectory else ():
            call.weight_version = f"step-{step}"
        return Rollout(item=item, sample=sample, result=result)

    return list(await asyncio.gather(*(one(index, *job) for index, job in enumerate(jobs))))


def _prepared(graph: EmotionGraph, query: EmotionQuery) -> PreparedQuery | None:
    """The query's images decoded and resized once for all its samples; None when they cannot be (each sample's
    run then reports the bad input itself)."""
    try:
        return graph.prepare(query)
    except BAD_INPUT_ERRORS:
        return None


def usable(rollouts: list[Rollout], step: int) -> list[Rollout]:
    """The step's rollouts, unless none finished: then stop, saying why (a dead server must not train on nothing)."""
    if rollouts and all(not r.result.ok for r in rollouts):
        first = rollouts[0].result
        raise TrainingError(
            f"step {step}: all {len(rollouts)} rollouts failed, e.g. {first.termination}: {first.error}; fix the "
            "cause and run the same command again to resume from the last checkpoint"
        )
    return rollouts


def training_items(config: TrainConfig, dataset: LoadedDataset | Any = None) -> list[EvalItem]:
    """The training items: `dataset` when given (a `LoadedDataset`, or a `datasets.Dataset` read with the default
    columns, as `hf:` reads one), else the config's `data` section, read by the evaluation loaders. TrainingError
    when neither is there or no item is usable."""
    if dataset is not None:
        loaded = dataset if isinstance(dataset, LoadedDataset) else from_hf_dataset(dataset, seed=config.seed)
        where = "the dataset passed to the trainer"
    elif config.data is not None:
        data = config.data
        loaded = load_dataset(
            data.kind, data.path, split=data.split, limit=data.limit, seed=config.seed, columns=data.columns
        )
        where = f"dataset {data.kind}:{data.path} (split {data.split})"
    else:
        raise TrainingError("no training data: add a data section to the config, or pass dataset= to the trainer")
    if not loaded.items:
        raise TrainingError(f"{where} has no usable items; skipped: {loaded.skipped[:3]}")
    return loaded.items


async def step_rollouts(
    config: TrainConfig, items: Sequence[EvalItem], model_sets: Sequence[Mapping[Role, ChatModel]], step: int
) -> list[Rollout]:
    """The rollouts of training step `step`: its prompts (the data position is the step), `group_size` runs each."""
    algo = config.algorithm
    chosen = [items[i] for i in prompt_indices(len(items), algo.prompts_per_step, step, config.seed)]
    return await rollout_step(
        config.graph_config, model_sets, chosen, group_size=algo.group_size, seed=config.seed, step=step,
        max_concurrency=config.rollout.max_concurrency,
    )  # fmt: skip
