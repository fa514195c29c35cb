"""training/losses.py: hand-computed PPO / dual-clip / TIS / KL values, aggregations, gradients, OpenRLHF parity."""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from pathlib import Path

import pytest
import torch

from emo_r3.training.losses import (
    aggregate,
    kl_loss,
    kl_penalty,
    masked_seq_mean_token_mean,
    masked_token_mean,
    policy_loss,
    truncated_importance_weights,
)

LN = math.log


def _row(*values: float) -> torch.Tensor:
    return torch.tensor([list(values)], dtype=torch.float64)


def _close(actual: torch.Tensor, expected: float, tol: float = 1e-9) -> None:
    assert actual.item() == pytest.approx(expected, abs=tol)


# --- PPO clip, hand-computed (1 sequence x 3 tokens, old logprobs 0 so ratio = exp(logp)) ---------------------


def test_positive_advantage_clips_only_above_one_plus_clip_high() -> None:
    # ratios 1.0 (inside), 1.5 (> 1.3: clipped to 1.3), 0.5 (< 0.8, but A>0 keeps the smaller r·A = 0.5)
    logp = _row(0.0, LN(1.5), LN(0.5))
    loss, stats = policy_loss(logp, torch.zeros_like(logp), _row(1, 1, 1), torch.ones_like(logp))
    _close(loss, -(1.0 + 1.3 + 0.5) / 3)  # -0.9333...
    _close(stats["clip_frac"], 1 / 3)
    _close(stats["dual_clip_frac"], 0.0)
    _close(stats["ratio_mean"], (1.0 + 1.5 + 0.5) / 3)
    _close(stats["approx_kl"], -(LN(1.5) + LN(0.5)) / 3)


def test_negative_advantage_clip_and_dual_clip() -> None:
    # A=-1; ratios 1.0 -> loss 1; 0.5 -> clipped to 0.8 -> loss 0.8; 5.0 -> -min(-5, -1.3)=5, dual caps at c·|A| = 3
    logp = _row(0.0, LN(0.5), LN(5.0))
    old, adv, mask = torch.zeros_like(logp), _row(-1, -1, -1), torch.ones_like(logp)
    loss, stats = policy_loss(logp, old, adv, mask)
    _close(loss, (1.0 + 0.8 + 3.0) / 3)  # 1.6
    _close(stats["clip_frac"], 1 / 3)
    _close(stats["dual_clip_frac"], 1 / 3)
    no_dual, _ = policy_loss(logp, old, adv, mask, dual_clip=None)
    _close(no_dual, (1.0 + 0.8 + 5.0) / 3)  # 2.2667


def test_dual_clip_inactive_below_c() -> None:
    # A=-2, ratio 2.0: -min(-4, -2.6) = 4 < c·|A| = 6, so dual clip leaves it; ratio 4.0: 8 -> capped at 6
    logp = _row(LN(2.0), LN(4.0))
    loss, stats = policy_loss(logp, torch.zeros_like(logp), _row(-2, -2), torch.ones_like(logp))
    _close(loss, (4.0 + 6.0) / 2)
    _close(stats["dual_clip_frac"], 0.5)


def test_dual_clip_must_exceed_one() -> None:
    x = _row(0.0)
    with pytest.raises(ValueError):
        policy_loss(x, x, x, x, dual_clip=1.0)


def test_gradients_flow_only_through_unclipped_tokens() -> None:
    # A=+1, ratios 1.0, 1.5 (clipped), 0.5; d(-r·A/3)/dlogp = -r/3 on live tokens, 0 on the clipped one
    logp = _row(0.0, LN(1.5), LN(0.5)).requires_grad_(True)
    old = torch.zeros_like(logp, requires_grad=True)
    loss, _ = policy_loss(logp, old, _row(1, 1, 1), torch.ones_like(logp))
    loss.backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, _row(-1 / 3, 0.0, -0.5 / 3))
    # dual-clipped token (A=-1, ratio 5) has zero gradient; ratio 1 token has d(r/2)/dlogp = 1/2
    logp2 = _row(0.0, LN(5.0)).requires_grad_(True)
    loss2, _ = policy_loss(logp2, torch.zeros_like(logp2), _row(-1, -1), torch.ones_like(logp2))
    loss2.backward()
    torch.testing.assert_close(logp2.grad, _row(0.5, 0.0))


# --- aggregations -------------------------------------------------------------------------------------------------

VALUES = torch.tensor([[1.0, 3.0, 99.0], [10.0, 99.0, 99.0], [99.0, 99.0, 99.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float64)  # lengths 2, 1, 0


def test_aggregations_differ_with_unequal_lengths() -> None:
    _close(masked_token_mean(VALUES, MASK), 14 / 3)  # (1 + 3 + 10) / 3 tokens
    _close(masked_seq_mean_token_mean(VALUES, MASK), (2.0 + 10.0) / 2)  # empty sequence excluded
    _close(aggregate(VALUES, MASK, "seq-mean-token-mean"), 6.0)
    with pytest.raises(ValueError):
        aggregate(VALUES, MASK, "sum")  # type: ignore[arg-type]


def test_all_masked_is_zero_not_nan() -> None:
    zero = torch.zeros_like(MASK)
    _close(masked_token_mean(VALUES, zero), 0.0)
    _close(masked_seq_mean_token_mean(VALUES, zero), 0.0)


def test_policy_loss_aggregation_and_token_weights() -> None:
    # ratio 1 everywhere, so each token's loss is -A
    logp = torch.zeros_like(VALUES)
    kwargs = {"clip_low": 0.2, "clip_high": 0.3}
    tok, _ = policy_loss(logp, logp, VALUES, MASK, aggregation="token-mean", **kwargs)
    seq, _ = policy_loss(logp, logp, VALUES, MASK, aggregation="seq-mean-token-mean", **kwargs)
    _close(tok, -14 / 3)
    _close(seq, -6.0)
    # weights summing to 1 per trajectory (2 trajectories) override the aggregation: weighted sum / 2
    weights = torch.tensor([[0.25, 0.75, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    weighted, _ = policy_loss(logp, logp, VALUES, MASK, aggregation="token-mean", token_weights=weights)
    _close(weighted, -(0.25 * 1 + 0.75 * 3 + 10) / 2)  # -6.25
    explicit, _ = policy_loss(logp, logp, VALUES, MASK, token_weights=weights, num_trajectories=4)
    _close(explicit, -(0.25 * 1 + 0.75 * 3 + 10) / 4)


# --- truncated importance sampling -------------------------------------------------------------------------------


def test_tis_weights_are_capped_and_detached() -> None:
    trainer = _row(0.0, 0.0, 0.0).requires_grad_(True)
    rollout = _row(-1.0, 0.0, 1.0)
    weights = truncated_importance_weights(trainer, rollout, cap=2.0)
    torch.testing.assert_close(weights, _row(2.0, 1.0, math.exp(-1.0)))  # e ≈ 2.718 capped at 2
    assert not weights.requires_grad


def test_policy_loss_with_tis() -> None:
    logp = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 3, dtype=torch.float64)
    loss, stats = policy_loss(logp, old, _row(1, 1, 1), torch.ones(1, 3), rollout_logprobs=_row(-1.0, 0.0, 1.0))
    expected_w = (2.0, 1.0, math.exp(-1.0))
    _close(loss, -sum(expected_w) / 3)
    _close(stats["tis_weight_mean"], sum(expected_w) / 3)
    loss.backward()
    torch.testing.assert_close(logp.grad, -torch.tensor([expected_w], dtype=torch.float64) / 3)
    capped, _ = policy_loss(logp, old, _row(1, 1, 1), torch.ones(1, 3), rollout_logprobs=_row(-1.0, 0, 1), tis_cap=5)
    _close(capped, -(math.e + 1.0 + math.exp(-1.0)) / 3)


# --- KL ----------------------------------------------------------------------------------------------------------


def test_kl_estimators_hand_values() -> None:
    logp = torch.tensor([-1.0, -2.0, -30.0, 0.0], dtype=torch.float64)
    ref = torch.tensor([-2.0, -1.0, -10.0, 0.0], dtype=torch.float64)  # x = logp - ref = 1, -1, -20, 0
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([1.0, -1.0, -10.0, 0.0]))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([0.5, 0.5, 10.0, 0.0]))
    k3 = torch.tensor([math.exp(-1.0), math.e - 2.0, 10.0, 0.0])  # exp(-x) + x - 1, clamped to 10
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), k3)
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")  # type: ignore[arg-type]


def test_kl_loss_aggregates_and_backprops() -> None:
    logp = torch.tensor([[-1.0, -2.0, 5.0], [0.0, 5.0, 5.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    a, b = math.exp(-1.0), math.e - 2.0  # KL is computed in float32, as OpenRLHF does
    _close(kl_loss(logp, ref, mask), (a + b + 0.0) / 3, tol=1e-6)
    _close(kl_loss(logp, ref, mask, aggregation="seq-mean-token-mean"), ((a + b) / 2 + 0.0) / 2, tol=1e-6)
    _close(kl_loss(logp, ref, mask, kind="k1"), (1.0 - 1.0 + 0.0) / 3, tol=1e-6)
    kl_loss(logp, ref, mask).backward()
    # d k3 / dx = 1 - exp(-x): x=1 -> 1 - 1/e, x=-1 -> 1 - e; masked tokens get 0
    expected = torch.tensor([[1 - math.exp(-1.0), 1 - math.e, 0.0], [0.0, 0.0, 0.0]]) / 3
    torch.testing.assert_close(logp.grad, expected)


# --- parity with OpenRLHF 0.11.2 (skipped unless `pip install --no-deps openrlhf==0.11.2`) ------------------------


@pytest.fixture(scope="module")
def openrlhf_models() -> types.SimpleNamespace:
    """OpenRLHF's loss.py and utils.py loaded by file path (`openrlhf.models` imports flash_attn)."""
    spec = importlib.util.find_spec("openrlhf")
    if spec is None or spec.origin is None:
        pytest.skip("openrlhf not installed")
    folder = Path(spec.origin).parent / "models"
    package = "_openrlhf_models_by_path"
    pkg = types.ModuleType(package)
    pkg.__path__ = [str(folder)]
    saved = {name: sys.modules.get(name) for name in (package, "deepspeed")}
    sys.modules[package] = pkg
    if importlib.util.find_spec("deepspeed") is None:
        sys.modules["deepspeed"] = types.ModuleType("deepspeed")  # utils.py only needs the name at import
    try:
        loaded = {}
        for name in ("utils", "loss"):
            mod_spec = importlib.util.spec_from_file_location(f"{package}.{name}", folder / f"{name}.py")
            assert mod_spec is not None and mod_spec.loader is not None
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_spec.name] = module
            mod_spec.loader.exec_module(module)
            loaded[name] = module
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return types.SimpleNamespace(**loaded)


def _random_batch(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batch, length = 6, 11
    old = -torch.rand(batch, length, generator=gen, dtype=torch.float64) * 3
    logp = old + torch.randn(batch, length, generator=gen, dtype=torch.float64) * 0.6  # many clipped tokens
    rollout = old + torch.randn(batch, length, generator=gen, dtype=torch.float64) * 0.5
    ref = old + torch.randn(batch, length, generator=gen, dtype=torch.float64) * 2.0
    adv = torch.randn(batch, 1, generator=gen, dtype=torch.float64).expand(batch, length) * 2
    lengths = torch.tensor([11, 7, 3, 1, 9, 5])
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(torch.float64)
    return {"logp": logp, "old": old, "rollout": rollout, "ref": ref, "adv": adv.contiguous(), "mask": mask}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("tis", [False, True])
def test_policy_loss_parity_with_openrlhf(openrlhf_models, seed: int, aggregation: str, tis: bool) -> None:
    data = _random_batch(seed)
    theirs_fn = openrlhf_models.loss.PolicyLoss(
        clip_eps_low=0.2,
        clip_eps_high=0.3,
        dual_clip=3.0,
        token_level_loss=aggregation == "token-mean",
        is_correction_level="token" if tis else "off",
        is_correction_mode="clip",
        is_correction_threshold=(0.0, 2.0),
    )
    logp_a = data["logp"].clone().requires_grad_(True)
    logp_b = data["logp"].clone().requires_grad_(True)
    rollout = data["rollout"] if tis else None
    theirs, clip_ratio, ppo_kl, _, _ = theirs_fn(logp_a, data["old"], data["adv"], data["mask"], rollout)
    ours, stats = policy_loss(
        logp_b, data["old"], data["adv"], data["mask"], aggregation=aggregation, rollout_logprobs=rollout, tis_cap=2.0
    )
    assert stats["clip_frac"].item() > 0
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(stats["clip_frac"], clip_ratio)
    torch.testing.assert_close(stats["approx_kl"], ppo_kl)
    theirs.backward()
    ours.backward()
    torch.testing.assert_close(logp_b.grad, logp_a.grad)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_parity_with_openrlhf(openrlhf_models, kind: str) -> None:
    data = _random_batch(7)
    data["ref"][0, :3] = torch.tensor([-40.0, 40.0, 0.0])  # exercise both clamps
    logp_a = data["logp"].clone().requires_grad_(True)
    logp_b = data["logp"].clone().requires_grad_(True)
    theirs = openrlhf_models.utils.compute_approx_kl(logp_a, data["ref"], kl_estimator=kind)
    ours = kl_penalty(logp_b, data["ref"], kind)  # type: ignore[arg-type]
    torch.testing.assert_close(ours, theirs)
    theirs_loss = openrlhf_models.loss.aggregate_loss(theirs, data["mask"].float(), token_level_loss=True)
    ours_loss = kl_loss(logp_b, data["ref"], data["mask"], kind=kind)  # type: ignore[arg-type]
    torch.testing.assert_close(ours_loss, theirs_loss)
    theirs_loss.backward()
    ours_loss.backward()
    torch.testing.assert_close(logp_b.grad, logp_a.grad)
