"""`emo-r3 export`: a training run's checkpoint as folders that others load, one per trained policy.

Full-weight policies (shared, separate) become Hugging Face model folders (config, safetensors, tokenizer and
processor files: what `from_pretrained` and `vllm serve` load); LoRA adapters become PEFT folders, or, merged into
their base, full model folders. The policies are rebuilt from the config the checkpoint keeps, by the trainer's own
code (`build_policies`), and saved by its own `save_weights`, so an exported folder holds exactly the trained weights.
`export.json` (and a README) in the output folder say which role uses which folder, from which run and step.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from emo_r3.agents.backends.transformers.loading import LoadedModel
from emo_r3.agents.call_record import ROLES, Role
from emo_r3.agents.model_specs import resolve_model_dir
from emo_r3.training.checkpoint import CheckpointError, latest_checkpoint, load_policies
from emo_r3.training.config import PolicyMode, TrainConfig
from emo_r3.training.policies import Policy, PolicySet, build_policies

MANIFEST, README = "export.json", "README.md"
# What a run folder holds before its first checkpoint (the trace store, TensorBoard, served weights).
RUN_MARKERS = ("traces.sqlite", "tensorboard", "served")


class ExportError(RuntimeError):
    """An export that cannot be made; the message says what to give instead."""


class ExportedPolicy(BaseModel):
    folder: str  # relative to the export folder
    format: Literal["hf", "peft"]  # a whole model, or a PEFT LoRA adapter on `base_model`
    roles: list[Role]


class ExportManifest(BaseModel):
    """`export.json`: where the folders come from and which role uses which."""

    run_dir: str
    checkpoint: str
    step: int
    mode: PolicyMode
    merged_lora: bool
    base_model: str | None  # lora mode: the model folder the adapters apply to (vLLM serves it with them)
    lora_rank: int | None  # lora mode: vLLM's --max-lora-rank must be at least this
    policies: dict[str, ExportedPolicy]
    roles: dict[Role, str | None]  # role -> policy name; None: not trained, the graph's own model


def export_run(
    run_dir: Path, out: Path, *, merge_lora: bool = False, step: int | None = None, cache_dir: Path | None = None
) -> ExportManifest:
    """Write the trained policies of `run_dir`'s latest checkpoint (or that of `step`) into the new folder `out`."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out} exists and is not an empty folder; give a new or empty folder")
    folder = find_checkpoint(run_dir, step)
    state, tensors = load_policies(folder)
    config = _saved_config(state, folder)
    if merge_lora and config.policy.mode != "lora":
        raise ExportError(
            f"--merge-lora merges LoRA adapters, but {run_dir} trained full weights (policy.mode "
            f"{config.policy.mode!r}); its folders are whole models already: export without --merge-lora"
        )
    policies = build_policies(config.graph_config, config.policy, with_reference=False, cache_dir=cache_dir)
    try:
        policies.load_state_dict(tensors)
    except (KeyError, RuntimeError) as error:
        raise CheckpointError(f"{folder} does not fit the policies of its own config: {error}") from error
    manifest = _manifest(run_dir, folder, int(state["step"]), config, policies, merge_lora, cache_dir)
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        _write_policies(policies, partial, merge_lora)
        (partial / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
        (partial / README).write_text(readme(manifest))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(partial, out)  # a killed export leaves no half-written `out`
    return manifest


def find_checkpoint(run_dir: Path, step: int | None) -> Path:
    """The run's latest checkpoint folder, or that of `step`; an ExportError saying what is wrong otherwise."""
    root = run_dir / "checkpoints"
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is not a folder; give the run_dir of an `emo-r3 train` run")
    if (root / "driver").is_dir():
        raise ExportError(
            f"{run_dir} was trained by the openrlhf trainer, whose policies are DeepSpeed checkpoints, which export "
            f"does not read; the weights of its last steps are Hugging Face folders (or PEFT adapters) under "
            f"{run_dir / 'served'}"
        )
    if not root.is_dir():
        if any((run_dir / marker).exists() for marker in RUN_MARKERS):
            raise ExportError(f"{run_dir} has no checkpoint yet: `emo-r3 train` writes one every save_every steps")
        raise ExportError(f"{run_dir} is not a training run folder (no checkpoints/); give the run_dir of a run")
    if step is None:
        folder = latest_checkpoint(root)
        if folder is None:
            raise ExportError(f"{run_dir} has no checkpoint yet: `emo-r3 train` writes one every save_every steps")
        return folder
    folder = root / f"step-{step:08d}"
    if not folder.is_dir():
        kept = sorted(int(p.name.removeprefix("step-")) for p in root.glob("step-*") if p.name[5:].isdigit())
        raise ExportError(f"{run_dir} has no checkpoint of step {step}; it keeps those of steps {kept}")
    return folder


def _saved_config(state: dict, folder: Path) -> TrainConfig:
    if "config" not in state:
        raise ExportError(f"{folder}/state.json holds no training config, so its policies cannot be rebuilt")
    return TrainConfig.load(state["config"])


def _manifest(
    run_dir: Path,
    folder: Path,
    step: int,
    config: TrainConfig,
    policies: PolicySet,
    merge_lora: bool,
    cache_dir: Path | None,
) -> ExportManifest:
    graph = config.graph_config
    lora = config.policy.mode == "lora"
    base = graph.models[graph.roles[ROLES[0]].model]
    return ExportManifest(
        run_dir=str(run_dir.absolute()),
        checkpoint=folder.name,
        step=step,
        mode=config.policy.mode,
        merged_lora=merge_lora,
        base_model=str(resolve_model_dir(base.path, cache_dir, revision=base.revision)) if lora else None,
        lora_rank=config.policy.lora.rank if lora else None,
        policies={
            name: ExportedPolicy(
                folder=name,
                format="peft" if lora and not merge_lora else "hf",
                roles=[role for role, policy in policies.policy_of.items() if policy == name],
            )
            for name in policies.policies
        },
        roles={role: policies.policy_of.get(role) for role in ROLES},
    )


def _write_policies(policies: PolicySet, out: Path, merge_lora: bool) -> None:
    if merge_lora:
        for name, policy in policies.policies.items():
            _save_merged(policy, out / name)
        return
    folders = policies.save_weights(out)  # named after each policy: its adapter (= role) or its name
    for name, policy in policies.policies.items():
        if policy.adapter is None:
            _save_processing(policy.loaded, folders[name])


def _save_merged(policy: Policy, folder: Path) -> None:
    """The adapter merged into a copy of the base: merging changes the base weights the other adapters share."""
    model = copy.deepcopy(policy.loaded.model)
    model.merge_and_unload(adapter_names=[policy.adapter]).save_pretrained(folder)
    _save_processing(policy.loaded, folder)


def _save_processing(loaded: LoadedModel, folder: Path) -> None:
    """Tokenizer, chat template and image processor next to the weights, as `from_pretrained` and vLLM expect."""
    (loaded.processor if loaded.processor is not None else loaded.tokenizer).save_pretrained(folder)


def readme(manifest: ExportManifest) -> str:
    """The export folder's README: what each folder is, which roles use it, and how to serve it."""
    lines = [
        "# EMO-R3 export",
        "",
        f"Run `{manifest.run_dir}`, checkpoint `{manifest.checkpoint}` (step {manifest.step}), "
        f"policy mode `{manifest.mode}`{', adapters merged' if manifest.merged_lora else ''}.",
        "",
        "| role | folder | format |",
        "|---|---|---|",
    ]
    for role, name in manifest.roles.items():
        if name is None:
            lines.append(f"| {role} | (not trained: the graph's own model) | |")
        else:
            exported = manifest.policies[name]
            adapter = exported.format == "peft"
            kind = f"PEFT LoRA adapter on `{manifest.base_model}`" if adapter else "Hugging Face model"
            lines.append(f"| {role} | `{exported.folder}/` | {kind} |")
    lines += ["", "Serve with vLLM:", "", "```bash"]
    if any(policy.format == "peft" for policy in manifest.policies.values()):
        modules = " ".join(f"{name}=./{policy.folder}" for name, policy in manifest.policies.items())
        lora = f"--enable-lora --max-lora-rank {manifest.lora_rank} --lora-modules {modules}"
        lines.append(f"vllm serve {manifest.base_model} {lora}")
    else:
        lines += [f"vllm serve ./{policy.folder}" for policy in manifest.policies.values()]
    lines += ["```", ""]
    return "\n".join(lines)
