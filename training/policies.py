"""Role → policy: the trainable weights behind each role in `shared`, `lora` or `separate` mode, and their references.

A `Policy` is what one optimizer parameter group trains: a whole model (shared/separate) or one LoRA adapter on a
shared frozen base (lora). Its reference for the KL term is a frozen copy of the initial weights, or, for an
adapter, the base model with adapters switched off (no second copy in memory).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from emo_r3.agents.backends.transformers.chat import TransformersChatModel
from emo_r3.agents.backends.transformers.loading import LoadedModel, load_hf_model
from emo_r3.agents.call_record import ROLES, Role
from emo_r3.agents.chat_model import ChatModel
from emo_r3.agents.model_specs import TransformersModelSpec, device_and_dtype, load_chat_model, resolve_model_dir
from emo_r3.graphs.config import GraphConfig
from emo_r3.training.config import PolicyConfig
from emo_r3.training.logprobs import use_packed_sdpa


@dataclass
class Policy:
    name: str
    loaded: LoadedModel
    adapter: str | None = None
    reference: LoadedModel | None = None  # None: the base with adapters off (lora), or no KL term

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The parameters this policy trains (an adapter's own LoRA weights, or every weight of its model)."""
        named = self.loaded.model.named_parameters()
        if self.adapter is None:
            return list(named)
        return [(n, p) for n, p in named if "lora_" in n and f".{self.adapter}." in n]

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        ids = {id(p) for p in self.parameters()}
        return {n: p.detach().clone() for n, p in self.loaded.model.named_parameters() if id(p) in ids}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        params = dict(self.loaded.model.named_parameters())
        missing = sorted(set(self.state_dict()) - set(state))
        if missing:
            raise KeyError(f"checkpoint of policy {self.name!r} lacks {len(missing)} tensors, e.g. {missing[0]}")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    @contextlib.contextmanager
    def active(self) -> Iterator[LoadedModel]:
        """The model with this policy's weights switched on, trainable, for a forward/backward."""
        if self.adapter is not None:
            self.loaded.model.set_adapter(self.adapter)
        for parameter in self.parameters():
            parameter.requires_grad_(True)
        yield self.loaded

    @contextlib.contextmanager
    def reference_model(self) -> Iterator[LoadedModel]:
        """The frozen model the KL term pulls towards."""
        if self.reference is not None:
            yield self.reference
        elif self.adapter is not None:
            with self.loaded.model.disable_adapter():
                yield self.loaded
        else:
            raise RuntimeError(f"policy {self.name!r} has no reference model (kl_coef was 0 when it was built)")


@dataclass
class PolicySet:
    """The trainable policies, which policy each trained role uses, and the ChatModel every role rolls out with."""

    policies: dict[str, Policy]
    policy_of: dict[Role, str]
    chat_models: dict[Role, ChatModel]

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: policy.state_dict() for name, policy in self.policies.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        for name, policy in self.policies.items():
            policy.load_state_dict(state[name])

    def save_weights(self, out_dir: Path) -> dict[str, Path]:
        """Each trained policy as a folder a vLLM server loads: a PEFT adapter per role in lora mode (named after the
        adapter), else the whole model as a Hugging Face folder (named after the policy). Name -> folder."""
        folders = {}
        for name, policy in self.policies.items():
            if policy.adapter is not None:
                policy.loaded.model.save_pretrained(out_dir, selected_adapters=[policy.adapter])
                # PEFT writes an adapter other than "default" into a subfolder named after it.
                folders[policy.adapter] = out_dir / policy.adapter
            else:
                policy.loaded.model.save_pretrained(out_dir / name)
                folders[name] = out_dir / name
        return folders


# Biases and normalisation weights take no weight decay (OpenRLHF's list, so both trainers decay the same tensors).
NO_DECAY = ("bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight")


def optimizer_groups(policies: PolicySet, weight_decay: float) -> list[dict]:
    """AdamW parameter groups over every policy: decayed weights, and biases/norm weights without decay."""
    named = [(n, p) for policy in policies.policies.values() for n, p in policy.named_parameters()]
    decayed = [p for n, p in named if not any(part in n for part in NO_DECAY)]
    plain = [p for n, p in named if any(part in n for part in NO_DECAY)]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _load(
    spec: TransformersModelSpec, cache_dir: Path | None, *, gradient_checkpointing: bool, full_training: bool = False
) -> LoadedModel:
    """Frozen weights load in the spec's dtype. Fully trained weights stay float32 and compute under autocast to
    that dtype: at RL learning rates (2e-6) most AdamW steps on bf16 weights round to no change at all."""
    device, dtype = device_and_dtype(spec)
    low_precision = dtype in (torch.bfloat16, torch.float16)
    load_dtype = torch.float32 if full_training and low_precision else dtype
    folder = resolve_model_dir(spec.path, cache_dir, revision=spec.revision)
    loaded = load_hf_model(folder, device=device, dtype=load_dtype, batching=spec.batching)
    if load_dtype != dtype:
        loaded.autocast_dtype = dtype
    for parameter in loaded.model.parameters():
        parameter.requires_grad_(False)
    use_packed_sdpa(loaded.model)  # packed training forwards attend row by row; generation is grouped sdpa
    if gradient_checkpointing:
        loaded.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return loaded


def _frozen_copy(loaded: LoadedModel) -> LoadedModel:
    """A frozen copy of the initial weights, held in the compute dtype (it is never updated)."""
    model = copy.deepcopy(loaded.model).eval()
    if loaded.autocast_dtype is not None:
        model.to(loaded.autocast_dtype)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return dataclasses.replace(loaded, model=model, lock=threading.Lock(), autocast_dtype=None)


def build_policies(
    graph: GraphConfig, config: PolicyConfig, *, with_reference: bool, cache_dir: Path | None = None
) -> PolicySet:
    """Load the graph's models as policies in `config.mode`; roles not in `train_roles` roll out frozen."""
    build = {"shared": _shared, "lora": _lora, "separate": _separate}[config.mode]
    return build(graph, config, with_reference, cache_dir)


def _spec(graph: GraphConfig, role: Role) -> TransformersModelSpec:
    spec = graph.models[graph.roles[role].model]
    assert isinstance(spec, TransformersModelSpec)  # TrainConfig validation guarantees it for trained roles
    return spec


def _shared(graph: GraphConfig, config: PolicyConfig, with_reference: bool, cache_dir: Path | None) -> PolicySet:
    spec = _spec(graph, ROLES[0])
    loaded = _load(spec, cache_dir, gradient_checkpointing=config.gradient_checkpointing, full_training=True)
    policy = Policy("shared", loaded, reference=_frozen_copy(loaded) if with_reference else None)
    chat = TransformersChatModel(loaded, model_id=spec.path)
    return PolicySet(
        policies={"shared": policy},
        policy_of=dict.fromkeys(config.train_roles, "shared"),
        chat_models=dict.fromkeys(ROLES, chat),
    )


def _lora(graph: GraphConfig, config: PolicyConfig, with_reference: bool, cache_dir: Path | None) -> PolicySet:
    from peft import LoraConfig, get_peft_model  # the `local` extra

    spec = _spec(graph, ROLES[0])
    base = _load(spec, cache_dir, gradient_checkpointing=config.gradient_checkpointing)
    lora = LoraConfig(
        r=config.lora.rank, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
    )  # fmt: skip
    roles = list(config.train_roles)
    model = get_peft_model(base.model, lora, adapter_name=roles[0])
    for role in roles[1:]:
        model.add_adapter(role, lora)
    loaded = dataclasses.replace(base, model=model)
    policies = {role: Policy(role, loaded, adapter=role) for role in roles}
    chat_models: dict[Role, ChatModel] = {
        role: TransformersChatModel(loaded, model_id=spec.path, adapter=role if role in policies else None)
        for role in ROLES
    }
    return PolicySet(policies=policies, policy_of={role: role for role in roles}, chat_models=chat_models)


def _separate(graph: GraphConfig, config: PolicyConfig, with_reference: bool, cache_dir: Path | None) -> PolicySet:
    policies: dict[str, Policy] = {}
    chat_models: dict[Role, ChatModel] = {}
    for role in ROLES:
        spec = graph.models[graph.roles[role].model]
        if role not in config.train_roles:
            chat_models[role] = load_chat_model(spec, cache_dir=cache_dir)
            continue
        assert isinstance(spec, TransformersModelSpec)
        loaded = _load(spec, cache_dir, gradient_checkpointing=config.gradient_checkpointing, full_training=True)
        policies[role] = Policy(role, loaded, reference=_frozen_copy(loaded) if with_reference else None)
        chat_models[role] = TransformersChatModel(loaded, model_id=f"{spec.path}#{role}")
    return PolicySet(policies=policies, policy_of={role: role for role in config.train_roles}, chat_models=chat_models)
