"""The training configuration (`train.yaml`): data, graph, which roles train as which policy, and the RL recipe."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from emo_r3.agents.backends.vllm.retry_policy import RetryPolicy
from emo_r3.agents.call_record import ROLES, Role
from emo_r3.agents.hub_models import is_hub_id
from emo_r3.agents.model_specs import OFFLINE_PREFIX, ConfigError, TransformersModelSpec, VLLMModelSpec
from emo_r3.evals.datasets import HF, DatasetError, HFColumns, hf_source
from emo_r3.graphs.config import GraphConfig, read_yaml
from emo_r3.training.losses import KLKind
from emo_r3.training.rewards import GraphTermWeights, RERWeights

PolicyMode = Literal["shared", "lora", "separate"]
Estimator = Literal["grpo", "dr_grpo", "rloo", "reinforce_baseline"]
TrackerName = Literal["tensorboard", "wandb", "mlflow"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    """A dataset read by the evaluation loaders (`emo_r3.evals.datasets`), e.g. kind `emoset`, `parquet`, `fi`, or
    `hf`: `path` a hub name `org/name[:config]` (kept as text) or a local folder, `columns` its image/label/text/id
    columns (`{image: img, label: emotion}`)."""

    kind: str
    path: Path | str
    split: str | None = "train"
    limit: int | None = Field(None, ge=1)
    columns: HFColumns | None = None

    @field_validator("path", mode="before")
    @classmethod
    def _hub_name_or_path(cls, value: Any, info: ValidationInfo) -> Any:
        """An hf hub name stays text; every other path (an hf local one too) is a Path."""
        if isinstance(value, str) and str(info.data.get("kind", "")).strip().lower() == HF:
            source = hf_source(value)
            return source if isinstance(source, Path) else str(source)
        return Path(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _columns_for_hf(self) -> DataConfig:
        if self.columns is not None and self.kind.strip().lower() != HF:
            raise ValueError(f"data.columns is for kind hf; a {self.kind} dataset has a fixed layout")
        return self


class LoraConfig(_Section):
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    # The language model's attention and MLP projections; vLLM serves LoRA on the language model only.
    target_modules: str | list[str] = (
        r".*(text_model|language_model|model)\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)"
        r"|mlp\.(gate_proj|up_proj|down_proj))"
    )


class PolicyConfig(_Section):
    """How roles map to trainable weights. `shared`: one model for every role (paper parity); `lora`: one frozen base
    with a LoRA adapter per trained role; `separate`: a model per role (each role's own `graph.models` entry)."""

    mode: PolicyMode = "shared"
    train_roles: list[Role] = Field(default_factory=lambda: list(ROLES), min_length=1)
    lora: LoraConfig = LoraConfig()
    gradient_checkpointing: bool = False


class ServedPolicy(_Section):
    """A vLLM server and what it serves: the base model (`--served-model-name`) of the roles in `roles`; in lora mode
    each trained role's adapter too, under the role's name."""

    base_url: str
    served_model: str
    roles: list[Role] = Field(default_factory=lambda: list(ROLES), min_length=1)


class ServerLaunch(_Section):
    """`trainer: openrlhf`: start the vLLM servers on the Ray cluster instead of giving their URLs, one Ray actor per
    server on a bundle of `gpus` GPUs; `count` servers per served policy share the rollouts."""

    count: int = Field(1, ge=1)
    gpus: int = Field(1, ge=1, description="GPUs per server (its tensor-parallel size)")
    python: str = Field("python", description="the interpreter, on the cluster's nodes, of an environment with vLLM")
    dtype: str = Field("auto", description="vLLM's --dtype (auto: the checkpoint's; float32 for CPU builds)")
    max_model_len: int = Field(4096, ge=1)
    enforce_eager: bool = Field(False, description="no CUDA graphs (CPU builds, debugging)")
    extra_args: list[str] = Field(default_factory=list, description="more `vllm serve` arguments")
    env: dict[str, str] = Field(default_factory=dict)
    ready_timeout_s: float = Field(900.0, gt=0)


class RolloutConfig(_Section):
    """Where rollouts run: in this process on the policies themselves (`local` only), or on vLLM servers reached over
    HTTP by the graph's own client. After every step the servers get the new weights: LoRA adapters reloaded in place
    (lora mode), or full weights (shared and separate modes) by `weight_sync`."""

    backend: Literal["in_process", "vllm"] = "in_process"
    base_url: str | None = Field(None, description="shorthand for one server serving every role")
    served_model: str | None = Field(None, description="the server's --served-model-name of the base model")
    servers: list[ServedPolicy] = Field(default_factory=list, description="more servers; rollouts are spread over them")
    launch: ServerLaunch | None = None
    weight_sync: Literal["reload"] = Field(
        "reload", description="full weights: saved, then reloaded by the servers (needs VLLM_SERVER_DEV_MODE=1)"
    )
    api_key_env: str | None = Field(None, description="environment variable holding the servers' API key")
    timeout_s: float = Field(300.0, gt=0)
    retry: RetryPolicy = Field(
        default_factory=RetryPolicy, description="how a rollout call to a server is retried (as a vLLM model's)"
    )
    max_concurrency: int = Field(16, ge=1, description="graph runs in flight at once (in-process: up to a batch)")

    def served(self) -> list[ServedPolicy]:
        """Every configured server: the `base_url` shorthand first, then `servers`."""
        shorthand = []
        if self.base_url is not None and self.served_model is not None:
            shorthand = [ServedPolicy(base_url=self.base_url, served_model=self.served_model)]
        return [*shorthand, *self.servers]

    def spec(self, served: ServedPolicy, adapter: str | None = None) -> VLLMModelSpec:
        """A server as a graph model spec (its base model, or one adapter): the graph's own client then reaches it,
        with the same API key, timeout and retries."""
        return VLLMModelSpec(
            backend="vllm",
            base_url=served.base_url,
            model=served.served_model,
            adapter=adapter,
            api_key_env=self.api_key_env,
            timeout_s=self.timeout_s,
            **self.retry.model_dump(),
        )

    def server(self, adapter: str | None = None) -> VLLMModelSpec:
        """The first server as a model spec (the one `local` rolls out on)."""
        served = self.served()
        if not served:
            raise ConfigError("rollout.backend 'vllm' needs rollout.base_url and rollout.served_model")
        return self.spec(served[0], adapter)


class AlgorithmConfig(_Section):
    """GRPO-family recipe; defaults are EMO-R3's reference run (docs/method.md)."""

    group_size: int = Field(8, ge=2, description="graph runs per prompt")
    prompts_per_step: int = Field(4, ge=1)
    mini_batches: int = Field(1, ge=1, description="policy updates per rollout step (prompts split evenly)")
    estimator: Estimator = "grpo"
    group_by: Literal["prompt", "prompt_role"] = "prompt"
    rer: RERWeights = RERWeights()
    reward_fn: str | None = Field(
        None,
        description="`module:function` (trajectory, gold) -> {role: RewardBreakdown} replacing RER + graph terms + "
        "per-role credit; e.g. a verifiable reward of your own",
    )
    graph_terms: GraphTermWeights = GraphTermWeights()
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.3, ge=0)
    dual_clip: float | None = 3.0
    aggregation: Literal["trajectory", "token-mean", "seq-mean-token-mean"] = Field(
        "trajectory", description="trajectory = each trajectory's tokens weigh 1 in total, whatever its roles said"
    )
    kl_coef: float = Field(0.01, ge=0)
    kl_estimator: KLKind = "k3"
    tis_cap: float | None = Field(2.0, gt=0, description="truncated importance sampling cap; None = off")


class OptimConfig(_Section):
    lr: float = Field(2e-6, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0)
    micro_batch_tokens: int = Field(4096, ge=1, description="tokens per forward/backward (padding-free packed)")
    logprob_chunk: int = Field(1024, ge=1, description="tokens per LM-head chunk")


class ClusterConfig(_Section):
    """`trainer: openrlhf`: each policy trained by OpenRLHF's DeepSpeed policy actors on a Ray cluster, with a frozen
    reference group for the KL term; rollouts on vLLM servers (`rollout`)."""

    ray_address: str | None = Field(None, description="None: $RAY_ADDRESS if set, else a new local Ray cluster")
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="Ray runtime_env for ray.init")
    gpus_per_policy: int = Field(1, ge=1, description="DeepSpeed ranks (one GPU each) of every policy group")
    nodes_per_policy: int = Field(1, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 2
    param_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    colocate_reference: bool = Field(True, description="the reference shares its policy's GPUs")
    adam_offload: bool = Field(False, description="optimizer states on the CPU (DeepSpeed CPU Adam)")
    rows_per_micro_batch: int = Field(1, ge=1, description="rows of one forward/backward on a rank")
    max_rows_per_rank: int | None = Field(
        None, ge=1, description="rows a rank takes per optimizer step (DeepSpeed fixes it); None: the worst case"
    )
    openrlhf_args: list[str] = Field(default_factory=list, description="more OpenRLHF flags, e.g. --ds.zpg 8")


class WandbConfig(_Section):
    """`report_to: [wandb]`. Unset fields fall back to W&B's environment variables, then to the defaults; WANDB_MODE
    (e.g. offline) and WANDB_DIR (default: the run folder) work as usual."""

    project: str | None = Field(None, description="default: $WANDB_PROJECT, else 'emo-r3'")
    entity: str | None = Field(None, description="default: $WANDB_ENTITY, else your W&B default entity")


class MlflowConfig(_Section):
    """`report_to: [mlflow]`. Unset fields fall back to MLflow's environment variables, then to the defaults."""

    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI, else MLflow's own default")
    experiment: str | None = Field(None, description="default: $MLFLOW_EXPERIMENT_NAME, else 'emo-r3'")


class TrainConfig(_Section):
    """Validated `train.yaml`. `graph` is a graph config (inline, or a path to one) whose models are the policies."""

    trainer: Literal["local", "openrlhf"] = Field(
        "local", description="local: one process (CPU or one GPU); openrlhf: DeepSpeed actors on a Ray cluster"
    )
    run_dir: Path = Path("runs/train")
    run_name: str | None = Field(None, description="name in the trace store; default: the run_dir's name")
    seed: int = 0
    steps: int = Field(100, ge=1)
    save_every: int = Field(10, ge=1, description="checkpoint every N steps (and at the end)")
    keep_checkpoints: int = Field(2, ge=1)
    data: DataConfig | None = Field(None, description="required unless the trainer is given `dataset=`")
    graph: GraphConfig | Path = GraphConfig()
    policy: PolicyConfig = PolicyConfig()
    rollout: RolloutConfig = RolloutConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    optim: OptimConfig = OptimConfig()
    cluster: ClusterConfig = ClusterConfig()
    traces: bool = Field(True, description="record rollouts, rewards and training rows in run_dir/traces.sqlite")
    report_to: list[TrackerName] = Field(
        default_factory=lambda: ["tensorboard"],
        description="experiment trackers that get each step's metrics (wandb and mlflow: pip install "
        "'emo-r3[tracking]'); [] for none",
    )
    wandb: WandbConfig = WandbConfig()
    mlflow: MlflowConfig = MlflowConfig()

    @model_validator(mode="before")
    @classmethod
    def _tensorboard_flag(cls, data: Any) -> Any:
        """The old `tensorboard: true|false` switch, kept working: it adds or removes `tensorboard` in `report_to`."""
        if not isinstance(data, dict) or "tensorboard" not in data:
            return data
        data = dict(data)
        on = data.pop("tensorboard")
        if not isinstance(on, bool):
            raise ValueError(f"tensorboard must be true or false, got {on!r}; better, list trackers in report_to")
        warnings.warn(
            "`tensorboard: true|false` in a training config is deprecated: list the trackers in `report_to` instead, "
            "e.g. `report_to: [tensorboard]`, or `report_to: []` for none",
            FutureWarning,
            stacklevel=1,  # the callers are pydantic internals: point at this validator instead
        )
        others = [name for name in data.get("report_to", ["tensorboard"]) if name != "tensorboard"]
        data["report_to"] = ["tensorboard", *others] if on else others
        return data

    @field_validator("report_to")
    @classmethod
    def _each_once(cls, names: list[TrackerName]) -> list[TrackerName]:
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"report_to lists {', '.join(twice)} more than once")
        return names

    @model_validator(mode="after")
    def _coherent(self) -> TrainConfig:
        graph = self.graph_config
        if self.algorithm.prompts_per_step % self.algorithm.mini_batches:
            raise ValueError(
                f"algorithm.prompts_per_step ({self.algorithm.prompts_per_step}) must be a multiple of "
                f"algorithm.mini_batches ({self.algorithm.mini_batches})"
            )
        specs = {role: graph.models[graph.roles[role].model] for role in ROLES}
        for role in self.policy.train_roles:
            if not isinstance(specs[role], TransformersModelSpec):
                raise ValueError(
                    f"role {role} trains, so its model must be a local folder (backend: transformers); vLLM rollouts "
                    "are configured under `rollout`, not in the graph's models"
                )
        if self.policy.mode in ("shared", "lora") and len({graph.roles[r].model for r in ROLES}) > 1:
            raise ValueError(
                f"policy.mode {self.policy.mode!r} runs every role on one model, but graph.roles map to "
                f"{sorted({graph.roles[r].model for r in ROLES})}; use mode 'separate' or one `models` entry"
            )
        self._check_rollouts()
        return self

    def _check_rollouts(self) -> None:
        rollout, mode = self.rollout, self.policy.mode
        if rollout.backend == "in_process":
            if self.trainer == "openrlhf":
                raise ValueError("trainer 'openrlhf' rolls out on vLLM servers: set rollout.backend 'vllm'")
            return
        served = rollout.served()
        if not served and rollout.launch is None:
            raise ValueError(
                "rollout.backend 'vllm' needs servers: rollout.base_url + served_model, or rollout.servers"
            )
        if rollout.launch is not None and self.trainer != "openrlhf":
            raise ValueError("rollout.launch starts servers on a Ray cluster: it needs trainer 'openrlhf'")
        launched = set(ROLES) if rollout.launch is not None and mode != "separate" else set()
        if rollout.launch is not None and mode == "separate":
            launched = set(self.policy.train_roles)  # a server per trained role's policy; frozen roles need URLs
        for role in ROLES:
            if role not in launched and not any(role in server.roles for server in served):
                raise ValueError(
                    f"no server in rollout.servers serves role {role}"
                    + (" (rollout.launch starts servers for the trained roles only)" if launched else "")
                )
        if mode == "separate":
            for server in served:
                trained = [role for role in server.roles if role in self.policy.train_roles]
                if len(trained) > 1:
                    raise ValueError(
                        f"{server.base_url} serves the trained roles {trained}, but in separate mode each has a model "
                        "of its own: give every trained role servers of its own"
                    )

    @property
    def graph_config(self) -> GraphConfig:
        return GraphConfig.load(self.graph) if isinstance(self.graph, Path) else self.graph

    @property
    def name(self) -> str:
        return self.run_name or self.run_dir.name

    def saved(self) -> dict[str, Any]:
        """The config as the JSON a checkpoint keeps: the graph inline and local model folders absolute, so the
        policies can be rebuilt from the run folder alone (`emo-r3 export`), from any working directory."""
        graph = self.graph_config
        models = {
            name: spec.model_copy(update={"path": _absolute_model_path(spec.path)})
            if isinstance(spec, TransformersModelSpec)
            else spec
            for name, spec in graph.models.items()
        }
        return self.model_copy(update={"graph": graph.model_copy(update={"models": models})}).model_dump(mode="json")

    @classmethod
    def load(cls, source: str | Path | dict) -> TrainConfig:
        """From a YAML file (relative paths inside resolve against the file's folder) or a dict."""
        if isinstance(source, str | Path):
            path = Path(source)
            data = _resolve_paths(read_yaml(path, "training config"), path.parent)
        else:
            data = source
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise ConfigError(f"invalid training config:\n{error}") from error


def _absolute_model_path(path: str) -> str:
    """A local folder made absolute; an offline kind or a Hub id (`org/name`) as written."""
    if path.startswith(OFFLINE_PREFIX) or is_hub_id(path):
        return path
    return str(Path(path).expanduser().absolute())


def _resolve_paths(data: dict, base: Path) -> dict:
    """Make `run_dir`, `data.path` and a `graph` file path relative to the config file, as users expect."""
    data = dict(data)
    for key in ("run_dir", "graph"):
        if isinstance(data.get(key), str):
            data[key] = str(base / data[key])
    if isinstance(data.get("data"), dict) and isinstance(data["data"].get("path"), str):
        data["data"] = {**data["data"], "path": _resolve_data_path(data["data"], base)}
    return data


def _resolve_data_path(section: dict, base: Path) -> str | Path:
    """`data.path` against the config's folder; an hf hub name is no path and stays as written."""
    path = section["path"]
    if str(section.get("kind", "")).strip().lower() != HF:
        return str(base / path)
    with contextlib.suppress(DatasetError):  # a malformed name: validation reports it with the config's other errors
        source = hf_source(path, base)
        return source if isinstance(source, Path) else path
    return path
