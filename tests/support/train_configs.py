"""The training config the trainer tests start from: the tiny Idefics3 in every role, one prompt per step, 8
rollouts, short answers, and the verifiable `names_gold_label` reward (`train_rewards`)."""

from __future__ import annotations

from pathlib import Path


def tiny_train_config(run_dir: Path, data: Path, *, mode: str, **overrides: object) -> dict:
    """The config as a dict; each override replaces a key, or updates a section when given a dict."""
    sampling = {"temperature": 1.0, "max_tokens": 4}
    config: dict = {
        "run_dir": str(run_dir),
        "seed": 0,
        "steps": 10,
        "save_every": 100,
        "data": {"kind": "fi", "path": str(data), "split": "all"},
        "graph": {
            "max_rounds": 0,
            "models": {"default": {"path": "offline:tiny-idefics3"}},
            "roles": {role: {"sampling": sampling} for role in ("perceiver", "reasoner", "reflector")},
        },
        "policy": {"mode": mode},
        "algorithm": {"group_size": 8, "prompts_per_step": 1, "reward_fn": "train_rewards:names_gold_label"},
        "optim": {"lr": 3e-3},
        "report_to": [],
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config
