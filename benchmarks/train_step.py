"""Tokens/s of one training step (forward + backward of a policy-gradient loss): ours vs plain transformers.

Ours is the trainer's path, `emo_r3.training.logprobs`: padding-free micro-batches (`micro_batches`), rows packed with
restarting positions and attended row by row (`use_packed_sdpa`), only completion positions through the LM head in
recomputed chunks (`micro_batch_logprobs`), one backward per micro-batch, and no gradient checkpointing where the
micro-batch fits without it. Variants measure the micro-batch budget, transformers' dense block mask instead of the
per-row attention, and checkpointing. The baseline is the common plain-transformers step: one padded batch,
`model(input_ids, attention_mask)` → full logits → log_softmax → gather on completion tokens, gradient checkpointing
on. Both minimise the same loss, L = −Σ_{completion tokens} A·log π / N_completion, on the same rows, and record it
so a test can check they agree. No optimizer step in either. Issue target: ours ≥ 1.5× the baseline's tokens/s in
the same run (3B preset, GPU).

    python benchmarks/train_step.py --preset 3b --device cuda --json train_step.json
    python benchmarks/train_step.py --preset tiny --device cpu --iters 1 --warmup 0

Two row shapes: `full` (every row seq_len tokens, half prompt, half completion) and `ragged` (seeded lengths from
seq_len/4 to seq_len, prompt about half; the baseline pads them to seq_len). Tokens/s counts real (unpadded) tokens.
Measured on an H200 (benchmarks/results/train_step_h200.json): 1.21× on `full`, 1.71× on `ragged`, both at one
16384-token micro-batch without checkpointing; 1.18× and 1.63× at 8192 tokens, which fits an 80 GB card.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from emo_r3.agents.backends.transformers.loading import LoadedModel
from emo_r3.training.logprobs import micro_batch_logprobs, micro_batches, use_packed_sdpa
from emo_r3.training.rows import TrainingRow

# Qwen2.5-VL-3B-Instruct's shape (its config.json), and a tiny one with the same structure for CPU smoke runs.
PRESETS: dict[str, dict[str, Any]] = {
    "3b": {
        "text_config": {
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            "tie_word_embeddings": True,
        },
        "vision_config": {
            "depth": 32,
            "hidden_size": 1280,
            "out_hidden_size": 2048,
            "intermediate_size": 3420,
            "num_heads": 16,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
        "tie_word_embeddings": True,
        "seq_len": 2048,
    },
    "tiny": {
        "text_config": {
            "vocab_size": 1024,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": 0,
            "eos_token_id": 1,
            "tie_word_embeddings": True,
        },
        "vision_config": {
            "depth": 1,
            "hidden_size": 32,
            "out_hidden_size": 64,
            "intermediate_size": 64,
            "num_heads": 2,
            "window_size": 112,
            "fullatt_block_indexes": [0],
        },
        "tie_word_embeddings": True,
        "seq_len": 256,
    },
}
# Vision placeholder ids and the other special tokens sit at the top of Qwen's vocabulary; text rows stay below.
QWEN_TEXT_VOCAB = 151643
BASELINE = "baseline[padded, full logits, ckpt]"
DEFAULT_VARIANTS = ("16384", "8192", "4096", "4096:mask", "8192:ckpt")


@dataclass(frozen=True)
class Variant:
    """One configuration of our path: micro-batch token budget, packing, attention, gradient checkpointing."""

    max_tokens: int
    pack: bool = True
    dense_mask: bool = False
    checkpointing: bool = False

    @property
    def name(self) -> str:
        options = [f"pack≤{self.max_tokens}" if self.pack else "row per forward"]
        options += ["dense mask"] * self.dense_mask + ["ckpt"] * self.checkpointing
        return f"ours[{', '.join(options)}]"


def parse_variant(spec: str) -> Variant:
    """BUDGET or `rows` (one row per forward), then options: `:mask` (transformers' dense block mask), `:ckpt`."""
    budget, *options = spec.split(":")
    if unknown := set(options) - {"mask", "ckpt"}:
        raise argparse.ArgumentTypeError(f"unknown variant options {sorted(unknown)} in {spec!r}")
    pack = budget != "rows"
    return Variant(int(budget) if pack else 1, pack, "mask" in options, "ckpt" in options)


def build_model(preset: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A randomly initialised Qwen2.5-VL of the preset's shape, built directly on `device`, in train mode."""
    spec = {key: value for key, value in PRESETS[preset].items() if key != "seq_len"}
    config = Qwen2_5_VLConfig(**spec)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.train()
    return LoadedModel(
        model=model,
        processor=None,
        tokenizer=None,
        supports_images=False,
        eos_token_ids=[],
        model_type=config.model_type,
    )


def make_rows(shape: str, num_rows: int, seq_len: int, vocab: int, seed: int = 0) -> list[TrainingRow]:
    """`num_rows` random text rows; each completion token weighs 1/N_completion so Σ w·A·log π is a token mean."""
    rng = random.Random(seed)
    lengths = [seq_len if shape == "full" else rng.randint(seq_len // 4, seq_len) for _ in range(num_rows)]
    prompt_lengths = [
        length // 2 if shape == "full" else rng.randint(length * 2 // 5, length * 3 // 5) for length in lengths
    ]
    weight = 1.0 / sum(length - prompt for length, prompt in zip(lengths, prompt_lengths, strict=True))
    rows = []
    for i, (length, prompt) in enumerate(zip(lengths, prompt_lengths, strict=True)):
        ids = [rng.randrange(vocab) for _ in range(length)]
        rows.append(
            TrainingRow(
                trajectory_id=f"t{i}",
                call_idx=0,
                group="g",
                role="reasoner",
                policy="p",
                prompt_token_ids=ids[:prompt],
                completion_token_ids=ids[prompt:],
                rollout_logprobs=[0.0] * (length - prompt),
                advantage=rng.choice([-1.0, 1.0]),
                token_weight=weight,
            )
        )
    return rows


@dataclass
class PaddedBatch:
    """The rows right-padded to one length, as a plain transformers training loop feeds them."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    advantages: torch.Tensor


def pad_rows(rows: list[TrainingRow], seq_len: int, device: torch.device) -> PaddedBatch:
    input_ids = torch.zeros(len(rows), seq_len, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    completion_mask = torch.zeros(len(rows), seq_len)
    for i, row in enumerate(rows):
        input_ids[i, : row.num_tokens] = torch.tensor(row.input_ids)
        attention_mask[i, : row.num_tokens] = 1
        completion_mask[i, len(row.prompt_token_ids) : row.num_tokens] = 1
    advantages = torch.tensor([[row.advantage] for row in rows])
    return PaddedBatch(
        input_ids.to(device), attention_mask.to(device), completion_mask.to(device), advantages.to(device)
    )


def baseline_step(loaded: LoadedModel, batch: PaddedBatch) -> torch.Tensor:
    """Full logits of the padded batch → log_softmax → gather on completion tokens → −mean(A·log π) → backward."""
    logits = loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    mask = batch.completion_mask[:, 1:]
    loss = -(logprobs * batch.advantages * mask).sum() / mask.sum()
    loss.backward()
    return loss.detach()


def ours_step(loaded: LoadedModel, rows: list[TrainingRow], variant: Variant, chunk_size: int) -> torch.Tensor:
    """−Σ w·A·log π over `emo_r3.training.logprobs` micro-batches, one backward each (gradients accumulate)."""
    total = torch.zeros((), device=loaded.model.device)
    for batch in micro_batches(rows, variant.max_tokens, pack=variant.pack):
        values = micro_batch_logprobs(loaded, batch, chunk_size=chunk_size)
        loss = -sum(
            (row.token_weight * row.advantage * value).sum() for row, value in zip(batch.rows, values, strict=True)
        )
        loss.backward()
        total += loss.detach()
    return total


def configure(loaded: LoadedModel, *, packed_attention: bool, checkpointing: bool) -> None:
    """Attention implementation (per-row packed, or transformers' sdpa) and gradient checkpointing of one method."""
    if packed_attention:
        use_packed_sdpa(loaded.model)
    else:
        loaded.model.set_attn_implementation("sdpa")
    if checkpointing:
        loaded.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        loaded.model.gradient_checkpointing_disable()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    loaded: LoadedModel, step: Callable[[], torch.Tensor], warmup: int, iters: int, tokens: int
) -> dict[str, Any]:
    """Median wall time of `iters` steps after `warmup` ones, with the loss and the peak memory of the steps."""
    device = loaded.model.device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for i in range(warmup + iters):
        loaded.model.zero_grad(set_to_none=True)
        synchronize(device)
        start = time.perf_counter()
        loss = step()
        synchronize(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    loaded.model.zero_grad(set_to_none=True)
    median = statistics.median(seconds)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "seconds": seconds,
        "median_s": median,
        "tokens_per_s": tokens / median,
        "loss": float(loss),
        "peak_gib": peak,
    }


def measure_safely(loaded: LoadedModel, step: Callable[[], torch.Tensor], **kwargs: Any) -> dict[str, Any]:
    """`measure`, with a method that fails (out of memory, say) recorded as such instead of ending the run."""
    try:
        return measure(loaded, step, **kwargs)
    except Exception as error:  # one failing method must not cost the others' numbers on a rented GPU
        loaded.model.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"error": f"{type(error).__name__}: {str(error)[:300]}"}


def print_line(shape: str, name: str, result: dict[str, Any], baseline: dict[str, Any] | None) -> None:
    if "error" in result:
        print(f"{shape:7} {name:40} {result['error']}", flush=True)
        return
    ratio = result["tokens_per_s"] / baseline["tokens_per_s"] if baseline and "tokens_per_s" in baseline else None
    peak = f"{result['peak_gib']:8.1f}" if result["peak_gib"] is not None else f"{'-':>8}"
    ratio_text = f"{ratio:6.2f}×" if ratio is not None else f"{'-':>7}"
    print(
        f"{shape:7} {name:40} {result['tokens_per_s']:10.0f} {result['median_s']:9.3f} {peak} {ratio_text} "
        f"{result['loss']:+.6f}",
        flush=True,
    )


@dataclass(frozen=True)
class Method:
    """A measured configuration: its attention, its checkpointing, and one training step."""

    name: str
    packed_attention: bool
    checkpointing: bool
    step: Callable[[], torch.Tensor]


def methods(loaded: LoadedModel, rows: list[TrainingRow], args: argparse.Namespace) -> list[Method]:
    """The baseline (sdpa, checkpointing), then each of our variants."""
    seq_len = max(row.num_tokens for row in rows)
    device = loaded.model.device
    found = [Method(BASELINE, False, True, lambda: baseline_step(loaded, pad_rows(rows, seq_len, device)))]
    for v in args.variants:
        step = partial(ours_step, loaded, rows, v, args.chunk)
        found.append(Method(v.name, not v.dense_mask, v.checkpointing, step))
    return found


def run_shape(
    loaded: LoadedModel, shape: str, args: argparse.Namespace, report: dict[str, Any], save: Callable[[], None]
) -> None:
    """Every method on one row shape into `report`, printing and saving after each so a cut-off run still reports."""
    vocab = min(loaded.model.config.text_config.vocab_size, QWEN_TEXT_VOCAB)
    rows = make_rows(shape, args.rows, args.seq_len, vocab)
    tokens = sum(row.num_tokens for row in rows)
    result = {"real_tokens": tokens, "padded_tokens": args.rows * args.seq_len, "methods": {}}
    report["shapes"][shape] = result
    for method in methods(loaded, rows, args):
        if time.monotonic() > args.deadline:
            result["methods"][method.name] = {"error": "skipped: --max-seconds reached"}
            continue
        configure(loaded, packed_attention=method.packed_attention, checkpointing=method.checkpointing)
        measured = measure_safely(loaded, method.step, warmup=args.warmup, iters=args.iters, tokens=tokens)
        result["methods"][method.name] = measured
        print_line(shape, method.name, measured, result["methods"].get(BASELINE))
        summarise(result)
        save()


def summarise(result: dict[str, Any]) -> None:
    """Name the fastest of our variants and its throughput over the baseline's."""
    baseline = result["methods"].get(BASELINE, {})
    ours = {name: m for name, m in result["methods"].items() if name != BASELINE and "tokens_per_s" in m}
    if ours and "tokens_per_s" in baseline:
        best = max(ours, key=lambda name: ours[name]["tokens_per_s"])
        result["best_ours"] = best
        result["ratio"] = ours[best]["tokens_per_s"] / baseline["tokens_per_s"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="3b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seq-len", type=int, help="longest row; default: the preset's (2048 for 3b)")
    parser.add_argument("--shapes", nargs="+", choices=["full", "ragged"], default=["full", "ragged"])
    parser.add_argument(
        "--variants",
        nargs="+",
        type=parse_variant,
        default=[parse_variant(spec) for spec in DEFAULT_VARIANTS],
        help="our configurations: BUDGET (pack up to BUDGET tokens) or rows (one row per forward), then :mask "
        "(transformers' dense block mask instead of per-row attention) and/or :ckpt (gradient checkpointing)",
    )
    parser.add_argument("--chunk", type=int, default=1024, help="LM-head chunk (tokens) of our path")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=1e9, help="skip methods that would start after this")
    parser.add_argument("--json", type=Path, help="write the results here (rewritten after every method)")
    args = parser.parse_args()
    if args.iters < 1:
        parser.error("--iters must be at least 1")
    args.seq_len = args.seq_len or PRESETS[args.preset]["seq_len"]
    return args


def main() -> None:
    args = parse_args()
    start = time.monotonic()
    args.deadline = start + args.max_seconds
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    loaded = build_model(args.preset, device, dtype)
    report: dict[str, Any] = {
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "preset": args.preset,
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "rows": args.rows,
        "seq_len": args.seq_len,
        "chunk": args.chunk,
        "warmup": args.warmup,
        "iters": args.iters,
        "build_s": time.monotonic() - start,
        "shapes": {},
    }

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2))

    print(
        f"{report['card']}, torch {torch.__version__}, transformers {transformers.__version__}: "
        f"{report['parameters'] / 1e9:.2f} B parameters, {report['dtype']}, "
        f"built in {report['build_s']:.0f} s"
    )
    print(f"{'shape':7} {'method':40} {'tokens/s':>10} {'median s':>9} {'peak GiB':>8} {'ratio':>7} loss")
    for shape in args.shapes:
        run_shape(loaded, shape, args, report, save)
    for shape, result in report["shapes"].items():
        if "ratio" in result:
            print(f"{shape}: best {result['best_ours']} = {result['ratio']:.2f}× the baseline's tokens/s")
    save()


if __name__ == "__main__":
    main()
