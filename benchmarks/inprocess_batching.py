"""In-process batching: N concurrent graph runs on one in-process model, batched vs one call at a time.

The same model folder is loaded twice in this process: once with batching off (`max_size: 1`, the baseline) and
once batched. Every run is seeded (as training rollouts are), so both sides generate the same tokens and the ratio
compares equal work; the script checks that they did. Also times one rollout step of the `local` trainer
(`group_size` samples of `prompts` prompts). Targets (issue 12, 2-core CPU): ≥ 3× runs/s at N = 8, rollout step
≥ 2.5× faster.

Each side's forward time is split into prefill (passes over prompt tokens) and decode (one token per row): batching
speeds decode up far more than prefill, which is compute-bound already at one row, so the split bounds the ratio.

    python benchmarks/inprocess_batching.py [--model offline:smollm2-idefics3] [--n 1 8 32] [--max-tokens 48]
        [--json benchmarks/results/inprocess_batching_cpu.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from emo_r3.agents.call_record import Role
from emo_r3.agents.chat_model import ChatModel
from emo_r3.evals.items import EvalItem
from emo_r3.graphs import EmotionGraph, GraphConfig
from emo_r3.graphs.role_models import load_role_models
from emo_r3.graphs.trajectory import EmotionQuery, EmotionResult
from emo_r3.training.rollouts import rollout_step, seeded_config

PICTURES = [(255, 200, 40), (30, 60, 200), (120, 120, 120), (200, 30, 30)]


def graph_config(model: str, max_tokens: int, max_size: int) -> GraphConfig:
    # No per-run deadline: the last of 32 runs served one at a time waits for the 31 before it (>10 min on a slow CPU).
    config = GraphConfig.model_validate(
        {"models": {"default": {"path": model, "batching": {"max_size": max_size}}}, "timeout_s": None}
    )
    roles = {}
    for role, role_config in config.roles.items():
        budget = min(role_config.sampling.max_tokens, max_tokens)
        roles[role] = role_config.model_copy(
            update={"sampling": role_config.sampling.model_copy(update={"max_tokens": budget})}
        )
    return config.model_copy(update={"roles": roles})


def picture(index: int) -> bytes:
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (256, 192), PICTURES[index % len(PICTURES)])
    ImageDraw.Draw(image).ellipse((40 + 8 * index % 80, 30, 200, 160), fill=(250, 250, 250))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def concurrent_runs(config: GraphConfig, models: dict[Role, ChatModel], n: int) -> list[EmotionResult]:
    async def one(index: int) -> EmotionResult:
        graph = EmotionGraph(seeded_config(config, 0, 0, index, 0), models)
        return await graph.arun(EmotionQuery(id=f"q{index}", images=[picture(index)]))

    return list(await asyncio.gather(*(one(index) for index in range(n))))


@contextmanager
def forward_seconds(models: dict[Role, ChatModel]) -> Iterator[dict[str, float]]:
    """Seconds spent in the models' forward passes while inside, as prefill (more than one new token per row)
    and decode."""
    seconds = {"prefill_s": 0.0, "decode_s": 0.0}
    started: list[float] = []

    def before(_module, _args, kwargs) -> None:
        started.append(time.perf_counter())

    def after(_module, _args, kwargs, _output) -> None:
        tokens = kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        seconds["prefill_s" if tokens.shape[1] > 1 else "decode_s"] += time.perf_counter() - started.pop()

    loaded = {id(model.loaded.model): model.loaded.model for model in models.values()}  # type: ignore[attr-defined]
    hooks = [
        hook
        for model in loaded.values()
        for hook in (
            model.register_forward_pre_hook(before, with_kwargs=True),
            model.register_forward_hook(after, with_kwargs=True),
        )
    ]
    try:
        yield seconds
    finally:
        for hook in hooks:
            hook.remove()


def completions(results: list[EmotionResult]) -> list[list[int]]:
    return [call.completion_token_ids for r in results if r.trajectory for call in r.trajectory.calls]


def timed(label: str, work, models: dict[Role, ChatModel]) -> tuple[float, dict[str, float], list[EmotionResult]]:
    start = time.perf_counter()
    with forward_seconds(models) as forwards:
        results = asyncio.run(work())
    seconds = time.perf_counter() - start
    errors = [r.error for r in results if not r.ok]
    if errors:
        raise SystemExit(f"{label}: {len(errors)} runs failed, e.g. {errors[0]}")
    return seconds, forwards, results


def measure(name: str, serial_work, batched_work, runs: int, models: tuple[dict, dict]) -> dict:
    serial_s, serial_forwards, serial = timed(f"{name} serialised", serial_work, models[0])
    batched_s, batched_forwards, batched = timed(f"{name} batched", batched_work, models[1])
    tokens = sum(len(ids) for ids in completions(batched))
    same = completions(serial) == completions(batched)
    row = {
        "runs": runs, "generated_tokens": tokens, "serialised_s": serial_s, "batched_s": batched_s,
        "serialised_runs_per_s": runs / serial_s, "batched_runs_per_s": runs / batched_s,
        "serialised_tokens_per_s": tokens / serial_s, "batched_tokens_per_s": tokens / batched_s,
        "speedup": serial_s / batched_s, "same_tokens": same,
        "serialised_forward_s": serial_forwards, "batched_forward_s": batched_forwards,
    }  # fmt: skip
    print(
        f"{name:>14}  {runs:>3} runs  {tokens:>5} tokens  serialised {runs / serial_s:6.3f} runs/s "
        f"{tokens / serial_s:7.1f} tok/s  batched {runs / batched_s:6.3f} runs/s {tokens / batched_s:7.1f} tok/s  "
        f"ratio {serial_s / batched_s:5.2f}x  same tokens: {same}\n{'':>16}prefill / decode seconds: serialised "
        f"{serial_forwards['prefill_s']:.1f} / {serial_forwards['decode_s']:.1f}, batched "
        f"{batched_forwards['prefill_s']:.1f} / {batched_forwards['decode_s']:.1f}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="offline:smollm2-idefics3")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=48, help="cap on every role's completion length")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    largest = max([*args.n, args.group_size * args.prompts])
    serial_config = graph_config(args.model, args.max_tokens, max_size=1)
    batched_config = graph_config(args.model, args.max_tokens, max_size=largest)
    serial_models, batched_models = load_role_models(serial_config), load_role_models(batched_config)

    # One untimed run on each side first: a process's first forward passes are not typical of the ones after.
    for config, models in ((serial_config, serial_models), (batched_config, batched_models)):
        asyncio.run(concurrent_runs(config, models, 1))
    report: dict = {"model": args.model, "max_tokens": args.max_tokens, "graph_runs": {}}
    for n in args.n:
        report["graph_runs"][str(n)] = measure(
            f"graph N={n}",
            lambda n=n: concurrent_runs(serial_config, serial_models, n),
            lambda n=n: concurrent_runs(batched_config, batched_models, n),
            n,
            (serial_models, batched_models),
        )

    items = [EvalItem(id=f"p{i}", image=picture(i), label="awe", label_set="mikels8") for i in range(args.prompts)]
    runs = args.group_size * args.prompts

    def step(config: GraphConfig, models: dict[Role, ChatModel]):
        kwargs = {"group_size": args.group_size, "seed": 0, "step": 0, "max_concurrency": runs}

        async def results() -> list[EmotionResult]:
            return [rollout.result for rollout in await rollout_step(config, [models], items, **kwargs)]

        return results

    report["rollout_step"] = measure(
        "rollout step",
        step(serial_config, serial_models),
        step(batched_config, batched_models),
        runs,
        (serial_models, batched_models),
    )
    rollouts = report["rollout_step"]
    rollouts["group_size"], rollouts["prompts"] = args.group_size, args.prompts
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
