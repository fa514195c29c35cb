"""Grouped key/value heads read in place vs transformers' sdpa: one batched decoding step of a padded batch.

SmolLM2 attends with 9 query heads on 3 key/value heads; for a masked (padded) batch transformers' sdpa copies each
key/value head out for its 3 query heads at every step. `grouped_sdpa_attention` reads them in place. Both run on
the same model and cache shapes in this process, alternating, and the script prints the median step of each and
the ratio.

    python benchmarks/grouped_attention.py [--model offline:smollm2] [--rows 8] [--cached 200 400] [--steps 8]
        [--json benchmarks/results/grouped_attention_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from emo_r3.agents.backends.transformers.grouped_attention import GROUPED_SDPA
from emo_r3.agents.backends.transformers.loading import load_hf_model
from emo_r3.agents.model_specs import resolve_model_dir


def decoding_steps(model: torch.nn.Module, rows: int, cached: int, steps: int) -> list[float]:
    """Seconds of each decoding step after a `cached`-token prefill of `rows` rows, the first left-padded."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 1000, (rows, cached), generator=generator)
    mask = torch.ones(rows, cached, dtype=torch.long)
    mask[0, : cached // 10] = 0
    seconds = []
    with torch.no_grad():
        cache = model(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
        token = ids[:, -1:]
        for _ in range(steps):
            start = time.perf_counter()
            mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
            positions = (mask.cumsum(-1) - 1)[:, -1:]
            model(input_ids=token, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
            seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="offline:smollm2")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--cached", type=int, nargs="+", default=[200, 400])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    model = load_hf_model(resolve_model_dir(args.model)).model
    report: dict = {"model": args.model, "rows": args.rows, "threads": torch.get_num_threads(), "cached": {}}
    for cached in args.cached:
        steps: dict[str, list[float]] = {"sdpa": [], GROUPED_SDPA: []}
        for _ in range(args.rounds):  # alternating, so a slow spell of the machine hits both
            for implementation, seconds in steps.items():
                model.set_attn_implementation(implementation)
                seconds += decoding_steps(model, args.rows, cached, args.steps)[1:]
        sdpa_ms, grouped_ms = (1000 * statistics.median(steps[name]) for name in ("sdpa", GROUPED_SDPA))
        report["cached"][str(cached)] = {"sdpa_step_ms": sdpa_ms, "grouped_step_ms": grouped_ms}
        print(
            f"{args.rows} rows, {cached} cached tokens: sdpa {sdpa_ms:.1f} ms/step, grouped {grouped_ms:.1f} ms/step, "
            f"ratio {sdpa_ms / grouped_ms:.2f}x",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
