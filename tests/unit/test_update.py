"""training/update.py on a tiny in-memory Llama: aggregation weights, the reported loss against losses.py, micro-batch
invariance, the direction of a step, per-policy gradient clipping and per-policy routing of rows."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from emo_r3.agents.backends.transformers.loading import LoadedModel
from emo_r3.training.config import AlgorithmConfig, OptimConfig
from emo_r3.training.logprobs import micro_batches, use_packed_sdpa
from emo_r3.training.losses import kl_loss, policy_loss
from emo_r3.training.policies import Policy, PolicySet
from emo_r3.training.rows import TrainingRow, row_key
from emo_r3.training.update import frozen_logprobs, token_weights, update

VOCAB = 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Matrices this small run fastest on one thread; several threads on a busy machine take 100x longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _loaded(seed: int) -> LoadedModel:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64, attn_implementation="sdpa",
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    use_packed_sdpa(model)
    return LoadedModel(
        model=model, processor=None, tokenizer=None, supports_images=False, eos_token_ids=[], model_type="llama"
    )


def _row(
    trajectory: str,
    call_idx: int,
    prompt: list[int],
    completion: list[int],
    *,
    advantage: float,
    token_weight: float = 1.0,
    policy: str = "p",
    rollout: list[float] | None = None,
) -> TrainingRow:
    return TrainingRow(
        trajectory_id=trajectory, call_idx=call_idx, group="g", role="reasoner", policy=policy,
        prompt_token_ids=prompt, completion_token_ids=completion,
        rollout_logprobs=rollout if rollout is not None else [-4.0] * len(completion),
        advantage=advantage, token_weight=token_weight,
    )  # fmt: skip


# Trajectory t1 has two trained calls (2 + 3 tokens), t2 one call (4 tokens).
ROWS = [
    _row("t1", 0, [1, 2, 3], [4, 5], advantage=1.0, token_weight=1 / 5, rollout=[-4.0, -6.0]),
    _row("t1", 2, [6, 7], [8, 9, 10], advantage=-0.5, token_weight=1 / 5, rollout=[-4.2, -4.1, -3.0]),
    _row("t2", 0, [11, 12, 13, 14], [15, 16, 17, 18], advantage=2.0, token_weight=1 / 4, rollout=[-4.1] * 4),
]
EXPECTED_WEIGHTS = {
    "trajectory": ([1 / 5, 1 / 5, 1 / 4], 2.0),
    "token-mean": ([1.0, 1.0, 1.0], 9.0),
    "seq-mean-token-mean": ([1 / 2, 1 / 3, 1 / 4], 3.0),
}
# log π_old − log π per token: a clipped ratio (A>0, r=e^0.5), a dual-clipped one (A<0, r=e^1.5), others inside.
OLD_OFFSETS = [0.0, -0.5, 0.5, -1.5, 0.2, 0.0, 0.3, -0.4, 1.0]


def _plain_logprobs(loaded: LoadedModel, row: TrainingRow) -> torch.Tensor:
    """log π of the completion from one unpacked forward over the whole vocabulary."""
    ids = torch.tensor([row.input_ids])
    logits = loaded.model(input_ids=ids).logits[0].float()
    start = len(row.prompt_token_ids)
    return logits.log_softmax(-1)[start - 1 : -1].gather(-1, ids[0, start:, None]).squeeze(-1)


def _per_token(rows: list[TrainingRow], values: list[float]) -> torch.Tensor:
    return torch.tensor([v for row, v in zip(rows, values, strict=True) for _ in row.completion_token_ids])[None]


def _policy_set(**policies: Policy) -> PolicySet:
    return PolicySet(policies=dict(policies), policy_of={}, chat_models={})


def _flat(loaded: LoadedModel) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in loaded.model.parameters()])


def _sgd(*policies: Policy, lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": policy.parameters()} for policy in policies], lr=lr)


@pytest.mark.parametrize("aggregation", sorted(EXPECTED_WEIGHTS))
def test_token_weights_and_denominator_per_aggregation(aggregation: str) -> None:
    weights, denominator = token_weights(ROWS, aggregation)
    expected_weights, expected_denominator = EXPECTED_WEIGHTS[aggregation]
    assert weights == pytest.approx(expected_weights)
    assert denominator == expected_denominator


@pytest.mark.parametrize("aggregation", sorted(EXPECTED_WEIGHTS))
def test_every_aggregation_is_a_mean_of_the_per_token_loss(aggregation: str) -> None:
    weights, denominator = token_weights(ROWS, aggregation)
    total = sum(w * len(row.completion_token_ids) for row, w in zip(ROWS, weights, strict=True))
    assert total / denominator == pytest.approx(1.0)


def test_unknown_aggregation_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown aggregation 'sum'"):
        token_weights(ROWS, "sum")


def test_frozen_logprobs_are_the_current_or_the_reference_weights() -> None:
    policy = Policy("p", _loaded(0), reference=_loaded(1))
    policies = _policy_set(p=policy)
    optim = OptimConfig(micro_batch_tokens=10)
    current = frozen_logprobs(policies, ROWS, optim, reference=False)
    reference = frozen_logprobs(policies, ROWS, optim, reference=True)
    assert set(current) == set(reference) == {row_key(row) for row in ROWS}
    with torch.no_grad():
        for row in ROWS:
            torch.testing.assert_close(current[row_key(row)], _plain_logprobs(policy.loaded, row))
            torch.testing.assert_close(reference[row_key(row)], _plain_logprobs(policy.reference, row))
            assert not torch.allclose(current[row_key(row)], reference[row_key(row)], atol=1e-3)


def test_frozen_reference_logprobs_need_a_reference_model() -> None:
    with pytest.raises(RuntimeError, match="policy 'p' has no reference model"):
        frozen_logprobs(_policy_set(p=Policy("p", _loaded(0))), ROWS, OptimConfig(), reference=True)


@pytest.mark.parametrize("aggregation", sorted(EXPECTED_WEIGHTS))
def test_reported_loss_and_stats_equal_losses_py_on_the_same_logprobs(aggregation: str) -> None:
    policy = Policy("p", _loaded(0), reference=_loaded(1))
    policies = _policy_set(p=policy)
    algo = AlgorithmConfig(aggregation=aggregation, kl_coef=0.1)
    optim = OptimConfig(micro_batch_tokens=10)
    with torch.no_grad():
        logprobs = torch.cat([_plain_logprobs(policy.loaded, row) for row in ROWS])[None]
        ref_logprobs = torch.cat([_plain_logprobs(policy.reference, row) for row in ROWS])[None]
    old_logprobs = logprobs + torch.tensor(OLD_OFFSETS)[None]
    lengths = [len(row.completion_token_ids) for row in ROWS]
    old = {row_key(row): lp for row, lp in zip(ROWS, old_logprobs[0].split(lengths), strict=True)}
    ref = frozen_logprobs(policies, ROWS, optim, reference=True)

    metrics = update(policies, _sgd(policy, lr=0.0), ROWS, algo, optim, old=old, ref=ref).metrics

    weights, denominator = EXPECTED_WEIGHTS[aggregation]
    mask = torch.ones_like(logprobs)
    rollout = torch.tensor([lp for row in ROWS for lp in row.rollout_logprobs])[None]
    expected_pg, stats = policy_loss(
        logprobs, old_logprobs, _per_token(ROWS, [row.advantage for row in ROWS]), mask,
        clip_low=algo.clip_low, clip_high=algo.clip_high, dual_clip=algo.dual_clip,
        token_weights=_per_token(ROWS, weights), num_trajectories=denominator,
        rollout_logprobs=rollout, tis_cap=algo.tis_cap,
    )  # fmt: skip
    expected_kl = kl_loss(
        logprobs, ref_logprobs, mask, kind=algo.kl_estimator, token_weights=_per_token(ROWS, weights),
        num_trajectories=denominator,
    )  # fmt: skip
    assert stats["clip_frac"] > 0 and stats["dual_clip_frac"] > 0 and expected_kl > 0
    assert metrics["pg_loss"] == pytest.approx(float(expected_pg), abs=1e-5)
    assert metrics["kl_loss"] == pytest.approx(float(expected_kl), abs=1e-5)
    assert metrics["loss"] == pytest.approx(float(expected_pg + algo.kl_coef * expected_kl), abs=1e-5)
    for name, value in stats.items():
        assert metrics[f"pg/{name}"] == pytest.approx(float(value), abs=1e-5), name
    assert metrics["kl_k1"] == pytest.approx(float((logprobs - ref_logprobs).mean()), abs=1e-5)
    assert metrics["tokens"] == sum(lengths)


@pytest.mark.parametrize("aggregation", sorted(EXPECTED_WEIGHTS))
def test_update_is_the_same_whatever_the_micro_batch_split(aggregation: str) -> None:
    budgets = [1, 10, 100]
    assert [len(list(micro_batches(ROWS, budget))) for budget in budgets] == [3, 2, 1]
    reference = _loaded(1)
    algo = AlgorithmConfig(aggregation=aggregation, kl_coef=0.1)
    weights, losses = [], []
    for budget in budgets:
        policy = Policy("p", _loaded(0), reference=reference)
        policies, optim = _policy_set(p=policy), OptimConfig(micro_batch_tokens=budget)
        ref = frozen_logprobs(policies, ROWS, optim, reference=True)
        initial = _flat(policy.loaded)
        losses.append(update(policies, _sgd(policy), ROWS, algo, optim, ref=ref).metrics["loss"])
        weights.append(_flat(policy.loaded))
        assert (weights[-1] - initial).abs().max() > 1e-3
    for other, loss in zip(weights[1:], losses[1:], strict=True):
        torch.testing.assert_close(other, weights[0], atol=1e-6, rtol=0)
        assert loss == pytest.approx(losses[0], abs=1e-6)


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_one_step_moves_the_completion_logprob_with_the_sign_of_the_advantage(advantage: float) -> None:
    row = _row("t", 0, [1, 2, 3, 4], [5, 6, 7], advantage=advantage, token_weight=1 / 3)
    policy = Policy("p", _loaded(0))
    with torch.no_grad():
        before = _plain_logprobs(policy.loaded, row)

    result = update(_policy_set(p=policy), _sgd(policy, lr=0.5), [row], AlgorithmConfig(kl_coef=0), OptimConfig())

    with torch.no_grad():
        after = _plain_logprobs(policy.loaded, row)
    change = float(after.mean() - before.mean())
    assert change * advantage > 1e-3
    assert not policy.loaded.model.training
    values = result.row_values[row_key(row)]
    assert values["tokens"] == 3
    assert values["logprob_mean"] == pytest.approx(float(before.mean()), abs=1e-5)
    assert values["rollout_logprob_mean"] == pytest.approx(-4.0)


def test_each_policy_gradient_is_clipped_on_its_own() -> None:
    a, b = Policy("a", _loaded(0)), Policy("b", _loaded(1))
    row_a = _row("t1", 0, [1, 2, 3], [4, 5, 6], advantage=50.0, token_weight=1 / 3, policy="a")
    row_b = _row("t2", 0, [7, 8, 9], [10, 11], advantage=0.05, token_weight=1 / 2, policy="b")
    algo, optim = AlgorithmConfig(kl_coef=0, tis_cap=None), OptimConfig(grad_clip=1.0)
    fresh_b = _loaded(1)
    logprobs = _plain_logprobs(fresh_b, row_b)[None]
    loss_b, _ = policy_loss(
        logprobs, logprobs.detach(), torch.full_like(logprobs, 0.05), torch.ones_like(logprobs),
        token_weights=torch.full_like(logprobs, 1 / 2), num_trajectories=2.0,
    )  # fmt: skip
    loss_b.backward()
    expected_norm_b = float(torch.cat([p.grad.flatten() for p in fresh_b.model.parameters()]).norm())
    initial_a, initial_b = _flat(a.loaded), _flat(b.loaded)

    metrics = update(_policy_set(a=a, b=b), _sgd(a, b), [row_a, row_b], algo, optim).metrics

    assert metrics["grad_norm/a"] > 1.0 > metrics["grad_norm/b"]
    assert metrics["grad_norm/b"] == pytest.approx(expected_norm_b, rel=1e-4)
    assert float((_flat(a.loaded) - initial_a).norm()) == pytest.approx(1.0, rel=1e-4)
    assert float((_flat(b.loaded) - initial_b).norm()) == pytest.approx(metrics["grad_norm/b"], rel=1e-4)


def test_rows_of_two_policies_update_only_their_own_policy() -> None:
    # Two calls of one trajectory trained by two separate models: D = 1 trajectory with or without the other row.
    row_a = _row("t", 0, [1, 2, 3], [4, 5, 6], advantage=1.0, token_weight=1 / 5, policy="a")
    row_b = _row("t", 1, [7, 8, 9, 10], [11, 12], advantage=-2.0, token_weight=1 / 5, policy="b")
    algo, optim = AlgorithmConfig(kl_coef=0), OptimConfig(grad_clip=1.0)

    def step(rows: list[TrainingRow]) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = Policy("a", _loaded(0)), Policy("b", _loaded(0))
        update(_policy_set(a=a, b=b), _sgd(a, b), rows, algo, optim)
        return _flat(a.loaded), _flat(b.loaded)

    initial = _flat(_loaded(0))
    a_both, b_both = step([row_a, row_b])
    a_alone, b_untouched = step([row_a])
    a_untouched, b_alone = step([row_b])
    torch.testing.assert_close(b_untouched, initial, atol=0, rtol=0)
    torch.testing.assert_close(a_untouched, initial, atol=0, rtol=0)
    assert (a_alone - initial).abs().max() > 1e-3 and (b_alone - initial).abs().max() > 1e-3
    torch.testing.assert_close(a_both, a_alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(b_both, b_alone, atol=1e-6, rtol=0)
