"""Does the `local` trainer's whole loop run in bf16 on a GPU? A few real training steps per policy mode, and a resume.

With `dtype: auto` the policies load in bfloat16 on cuda (float32 on cpu), so this runs `LocalTrainer` end to end on
the given device — in-process rollouts through the graph, the verifiable `train_rewards:names_gold_label` reward,
GRPO advantages, packed bf16 forward/backward, AdamW, traces, TensorBoard, checkpoints — in each policy mode
(shared, lora, separate) with the tests' settings (`tests/integration/test_local_trainer.py`), and records per mode
the reward curve, loss, grad norms, |trainer − rollout| logprob gap, step time, peak GPU memory, the dtype and device
of the trained parameters. Then a resume check: 2 steps, a new LocalTrainer on the same run folder trained to 4,
against a straight 4-step run (steps 0–1 of the two runs also show run-to-run (non)determinism on the device).

    python benchmarks/gpu_train_check.py --model /path/to/tiny-idefics3 --device cuda --steps 5 --json out.json
    python benchmarks/gpu_train_check.py --model offline:tiny-idefics3 --device cpu --steps 2

Measured on an H200 (benchmarks/results/gpu_train_check.json, tiny-idefics3 saved in bf16, 5 steps, group 8): every
mode trains on cuda:0 with bf16 weights (LoRA adapters in fp32 on the bf16 base), |trainer − rollout| logprob gap
1e-4–5e-4 (4e-7 in fp32 on CPU), peak 0.6–0.8 GiB, and the 2+2-step resume equals the straight run bit for bit.

The JSON is rewritten after every step, so a run cut short still leaves what it measured. Needs emo-r3 installed
(`pip install --no-deps .`, or a wheel built elsewhere: `pip wheel --no-deps -w dist .`); the reward function comes
from tests/support/train_rewards.py, which the script puts on the path itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

SUPPORT = Path(__file__).resolve().parents[1] / "tests" / "support"
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))

from emo_r3.training.config import TrainConfig  # noqa: E402
from emo_r3.training.local_trainer import LocalTrainer  # noqa: E402

# The tests' per-mode settings (test_reward_rises_in_each_policy_mode).
MODES: dict[str, tuple[dict, float]] = {
    "shared": ({}, 3e-3),
    "lora": ({"lora": {"rank": 8, "alpha": 16}}, 1e-2),
    "separate": ({"train_roles": ["reflector"]}, 1e-3),
}


def one_image_dataset(root: Path) -> Path:
    """FI layout: `root/contentment/astronaut.png`, 64×48 (the tests' fixture; numpy noise if skimage is absent)."""
    (root / "contentment").mkdir(parents=True, exist_ok=True)
    try:
        import skimage.data

        picture = Image.fromarray(skimage.data.astronaut())
    except ImportError:
        picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    picture.resize((64, 48)).save(root / "contentment" / "astronaut.png")
    return root


def train_config(run_dir: Path, data: Path, args: argparse.Namespace, *, mode: str, steps: int) -> dict:
    """tests/integration/test_local_trainer.py's `train_config`, with the model folder and device given here."""
    policy, lr = MODES[mode]
    sampling = {"temperature": 1.0, "max_tokens": 4}
    return {
        "run_dir": str(run_dir),
        "seed": 0,
        "steps": steps,
        "save_every": 100,
        "data": {"kind": "fi", "path": str(data), "split": "all"},
        "graph": {
            "max_rounds": 0,
            "models": {"default": {"path": args.model, "device": args.device, "dtype": "auto"}},
            "roles": {role: {"sampling": sampling} for role in ("perceiver", "reasoner", "reflector")},
        },
        "policy": {"mode": mode, **policy},
        "algorithm": {
            "group_size": args.group_size,
            "prompts_per_step": 1,
            "reward_fn": "train_rewards:names_gold_label",
        },
        "optim": {"lr": lr},
        "tensorboard": args.tensorboard,
    }


def _cuda() -> bool:
    return torch.cuda.is_available()


def _sync() -> None:
    if _cuda():
        torch.cuda.synchronize()


def placement(trainer: LocalTrainer) -> dict[str, Any]:
    """dtype and device of each policy's trained parameters, and of the whole model behind it."""
    out: dict[str, Any] = {}
    for name, policy in trainer.policies.policies.items():
        trained = policy.parameters()
        everything = list(policy.loaded.model.parameters())
        out[name] = {
            "trained_params": sum(p.numel() for p in trained),
            "trained_dtypes": sorted({str(p.dtype) for p in trained}),
            "trained_devices": sorted({str(p.device) for p in trained}),
            "model_dtypes": sorted({str(p.dtype) for p in everything}),
            "model_devices": sorted({str(p.device) for p in everything}),
            "reference": None if policy.reference is None else sorted(
                {f"{p.dtype}@{p.device}" for p in policy.reference.model.parameters()}
            ),
        }  # fmt: skip
    return out


def run_training(config: dict, *, on_record) -> tuple[LocalTrainer, list[dict[str, Any]]]:
    """Train to config['steps'] (resuming if the run folder has a checkpoint); one record per step."""
    trainer = LocalTrainer(TrainConfig.load(config))
    records: list[dict[str, Any]] = []
    _sync()
    last = time.perf_counter()

    def on_step(step: int, metrics: dict[str, float]) -> None:
        nonlocal last
        _sync()
        now = time.perf_counter()
        record = {"step": step - 1, "wall_s": now - last, **metrics}
        if _cuda():
            record["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
        last = now
        records.append(record)
        on_record(record)

    trainer.train(on_step=on_step)
    return trainer, records


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    def column(name: str) -> list[float]:
        return [float(f"{r[name]:.6g}") for r in records if name in r]

    grad_names = sorted({k for r in records for k in r if k.startswith("grad_norm/")})
    walls = [r["wall_s"] for r in records]
    return {
        "reward_curve": column("reward/mean"),
        "loss": column("loss"),
        "grad_norms": {name: column(name) for name in grad_names},
        "rollout_logprob_abs_diff": column("rollout_logprob_abs_diff"),
        "step_wall_s": [round(w, 3) for w in walls],
        "step_wall_s_after_first": round(float(np.mean(walls[1:])), 3) if len(walls) > 1 else None,
        "rollout_s": column("time/rollout_s"),
        "update_s": column("time/update_s"),
        "peak_mem_mib": round(max(column("peak_mem_mib")), 1) if column("peak_mem_mib") else None,
    }


def compare(straight: list[dict[str, Any]], other: list[dict[str, Any]]) -> dict[str, Any]:
    """Per step: identical metrics (timings aside), or the largest absolute difference and where."""
    by_step = {r["step"]: r for r in straight}
    out = {}
    for record in other:
        reference = by_step.get(record["step"])
        if reference is None:
            continue
        names = [k for k in reference if k in record and not k.startswith("time/") and k not in SKIP]
        diffs = {k: abs(float(record[k]) - float(reference[k])) for k in names}
        worst = max(diffs, key=lambda k: diffs[k]) if diffs else None
        out[str(record["step"])] = {
            "identical": all(d == 0 for d in diffs.values()),
            "max_abs_diff": diffs[worst] if worst else 0.0,
            "worst_metric": worst,
            "reward": [reference.get("reward/mean"), record.get("reward/mean")],
            "loss": [reference.get("loss"), record.get("loss")],
        }
    return out


SKIP = {"step", "wall_s", "peak_mem_mib"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder (or offline:tiny-idefics3)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=5, help="training steps per policy mode")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--modes", default="shared,lora,separate")
    parser.add_argument("--resume-steps", type=int, default=4, help="0: skip the resume check")
    parser.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.tensorboard:
        try:
            import torch.utils.tensorboard
        except Exception as error:
            print(f"tensorboard unavailable ({error}); running without it", file=sys.stderr)
            args.tensorboard = False

    import transformers

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu-train-check-"))
    data = one_image_dataset(work / "data")
    report: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "env": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": sys.version.split()[0],
            "cuda_available": _cuda(),
            "gpu": torch.cuda.get_device_name(0) if _cuda() else None,
            "bf16_supported": torch.cuda.is_bf16_supported() if _cuda() else None,
            "torch_threads": torch.get_num_threads(),
        },
        "modes": {},
        "errors": {},
    }

    def dump() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1, default=str))

    dump()
    started = time.perf_counter()
    for mode in [m for m in args.modes.split(",") if m]:
        entry: dict[str, Any] = {"steps": []}
        report["modes"][mode] = entry
        if _cuda():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

        def on_record(record: dict[str, Any], entry: dict[str, Any] = entry, mode: str = mode) -> None:
            entry["steps"].append(record)
            entry["summary"] = summarize(entry["steps"])
            dump()
            print(
                f"  {mode:8s} step {record['step']}: reward {record['reward/mean']:.3f} loss {record['loss']:+.4f} "
                f"|Δlogp| {record['rollout_logprob_abs_diff']:.2e} "
                f"{record['wall_s']:.2f}s",
                flush=True,
            )

        try:
            t0 = time.perf_counter()
            config = train_config(work / mode, data, args, mode=mode, steps=args.steps)
            trainer, _ = run_training(config, on_record=on_record)
            entry["placement"] = placement(trainer)
            entry["rollout_model_devices"] = sorted(
                {str(chat._loaded.model.device) for chat in trainer.models.values() if hasattr(chat, "_loaded")}
            )
            entry["total_s"] = round(time.perf_counter() - t0, 2)
            del trainer
        except Exception as error:
            report["errors"][mode] = f"{type(error).__name__}: {error}"
            print(f"  {mode}: FAILED {error!r}\n{traceback.format_exc()}", flush=True)
        dump()

    if args.resume_steps >= 2:
        half = args.resume_steps // 2
        resume: dict[str, Any] = {"mode": "shared", "split_at": half, "to": args.resume_steps}
        report["resume"] = resume
        try:
            runs: dict[str, list[dict[str, Any]]] = {"straight": [], "resumed": []}

            def recorder(name: str):
                def on_record(record: dict[str, Any]) -> None:
                    runs[name].append(record)
                    print(f"  resume/{name} step {record['step']}: reward {record['reward/mean']:.3f} "
                          f"{record['wall_s']:.2f}s", flush=True)  # fmt: skip

                return on_record

            config = train_config(work / "resume-straight", data, args, mode="shared", steps=args.resume_steps)
            run_training(config, on_record=recorder("straight"))
            first = train_config(work / "resume-split", data, args, mode="shared", steps=half)
            run_training(first, on_record=recorder("resumed"))
            second = train_config(work / "resume-split", data, args, mode="shared", steps=args.resume_steps)
            trainer, _ = run_training(second, on_record=recorder("resumed"))
            resume["resumed_started_at_step"] = runs["resumed"][half]["step"] if len(runs["resumed"]) > half else None
            resume["reward_straight"] = [round(r["reward/mean"], 4) for r in runs["straight"]]
            resume["reward_resumed"] = [round(r["reward/mean"], 4) for r in runs["resumed"]]
            resume["wall_s_straight"] = [round(r["wall_s"], 3) for r in runs["straight"]]
            resume["wall_s_resumed"] = [round(r["wall_s"], 3) for r in runs["resumed"]]
            resume["loss_straight"] = [r["loss"] for r in runs["straight"]]
            resume["loss_resumed"] = [r["loss"] for r in runs["resumed"]]
            resume["per_step"] = compare(runs["straight"], runs["resumed"])
            if "shared" in report["modes"] and report["modes"]["shared"]["steps"]:
                resume["straight_vs_shared_mode_run"] = compare(report["modes"]["shared"]["steps"], runs["straight"])
            del trainer
        except Exception as error:
            report["errors"]["resume"] = f"{type(error).__name__}: {error}"
            print(f"  resume: FAILED {error!r}\n{traceback.format_exc()}", flush=True)
    report["total_s"] = round(time.perf_counter() - started, 2)
    dump()
    print_table(report)
    return 1 if report["errors"] else 0


def print_table(report: dict[str, Any]) -> None:
    env = report["env"]
    print(f"\n{env['gpu'] or 'cpu'}  torch {env['torch']}  transformers {env['transformers']}")
    print(
        f"{'mode':9s}{'dtype':16s}{'device':10s}{'reward curve':36s}{'|Δlogp| mean':>13s}{'step s':>8s}{'peak MiB':>9s}"
    )
    for mode, entry in report["modes"].items():
        s = entry.get("summary", {})
        place = entry.get("placement", {})
        dtypes = sorted({d for p in place.values() for d in p["trained_dtypes"]})
        devices = sorted({d for p in place.values() for d in p["trained_devices"]})
        gaps = s.get("rollout_logprob_abs_diff") or [math.nan]
        print(
            f"{mode:9s}{','.join(dtypes):16s}{','.join(devices):10s}{s.get('reward_curve')!s:36s}"
            f"{float(np.mean(gaps)):13.2e}{s.get('step_wall_s_after_first') or math.nan:8.2f}"
            f"{s.get('peak_mem_mib') or math.nan:9.1f}"
        )
    resume = report.get("resume")
    if resume and "per_step" in resume:
        print(f"resume: straight {resume['reward_straight']} vs resumed {resume['reward_resumed']}")
        for step, c in resume["per_step"].items():
            print(f"  step {step}: identical={c['identical']} max|diff|={c['max_abs_diff']:.3g} ({c['worst_metric']})")
    for what, error in report["errors"].items():
        print(f"ERROR {what}: {error}")
    print(f"total {report.get('total_s')} s")


if __name__ == "__main__":
    sys.exit(main())
