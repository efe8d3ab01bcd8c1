"""GRPO math on tiny tensors whose values are worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from reczero.grpo import (
    GRPOLossConfig,
    clipped_surrogate,
    group_advantages,
    grpo_loss,
    k3_kl,
    loss_mask,
    masked_mean,
    reduce_loss,
    zero_std_group_fraction,
)

LN2 = math.log(2.0)


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual.double(), torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


# --- advantages -------------------------------------------------------------------------------------

REWARDS = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])  # prompt 0: 1, 2, 3; prompt 1: 5, 5, 5


def test_group_advantages_group_scale():
    # group 0: mean 2, unbiased std 1 -> (-1, 0, 1) / (1 + 1e-4); group 1: constant -> exactly 0
    adv = group_advantages(REWARDS, group_size=3)
    close(adv, [-1 / 1.0001, 0.0, 1 / 1.0001, 0.0, 0.0, 0.0])
    assert torch.equal(adv[3:], torch.zeros(3))


def test_group_advantages_batch_scale():
    # batch mean 3.5; squared deviations 6.25 + 2.25 + 0.25 + 3 * 2.25 = 15.5; unbiased var 15.5 / 5 = 3.1
    adv = group_advantages(REWARDS, group_size=3, scale="batch")
    denominator = math.sqrt(3.1) + 1e-4
    close(adv, [-1 / denominator, 0.0, 1 / denominator, 0.0, 0.0, 0.0])


def test_group_advantages_no_scale_and_eps():
    close(group_advantages(REWARDS, 3, scale="none"), [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    close(
        group_advantages(torch.tensor([0.0, 2.0]), 2, eps=0.5), [-1 / (math.sqrt(2) + 0.5), 1 / (math.sqrt(2) + 0.5)]
    )


def test_zero_std_group_is_exactly_zero_even_with_float_noise():
    rewards = torch.full((8,), 0.1)  # in float32 the mean of eight 0.1s is not exactly 0.1
    assert (rewards - rewards.mean()).abs().max() > 0
    assert torch.equal(group_advantages(rewards, 8), torch.zeros(8))
    assert torch.equal(group_advantages(rewards, 8, scale="batch"), torch.zeros(8))


def test_group_advantages_edge_cases():
    close(group_advantages(torch.tensor([1, 3]), 2, scale="none"), [-1.0, 1.0])  # integer rewards
    assert torch.equal(group_advantages(torch.tensor([1.0, 2.0]), 1), torch.zeros(2))  # G = 1 teaches nothing
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.ones(5), 3)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.ones(2, 3), 3)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.ones(3), 3, scale="rank")


def test_zero_std_group_fraction():
    assert zero_std_group_fraction(REWARDS, 3) == 0.5
    assert zero_std_group_fraction(torch.tensor([-1.0] * 8), 8) == 1.0
    assert zero_std_group_fraction(torch.tensor([1.0, 2.0]), 2) == 0.0


# --- k3 KL --------------------------------------------------------------------------------------------


def test_k3_by_hand():
    logp = torch.tensor([[math.log(0.5), math.log(0.5), math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5), math.log(1.0)]])
    # d = ref - logp: -ln2 -> 0.5 + ln2 - 1; 0 -> 0; +ln2 -> 2 - ln2 - 1
    close(k3_kl(logp, ref), [[LN2 - 0.5, 0.0, 1.0 - LN2]])


def test_k3_clamps():
    logp = torch.tensor([[0.0, 0.0, -1000.0]])
    ref = torch.tensor([[30.0, -30.0, 0.0]])
    # d = 30 -> clamp 20 -> e^20 - 21 -> clamp 10; d = -30 -> clamp -20 -> e^-20 + 19 -> clamp 10
    out = k3_kl(logp, ref)
    close(out, [[10.0, 10.0, 10.0]])
    close(k3_kl(logp, ref, clamp=100.0)[0, 1], math.exp(-20) + 19)
    assert torch.isfinite(out).all()


# --- clipped surrogate ------------------------------------------------------------------------------


def test_clipped_surrogate_both_sides():
    old = torch.zeros(4, 3)  # [N, T]
    # columns: ratio 1.5, 0.5, 1.1
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]])).expand(4, 3).clone()
    adv = torch.tensor([1.0, -1.0, 2.0, 0.0])  # [N]
    loss, clipped = clipped_surrogate(logp, old, adv, 0.2, 0.2)
    expected = [
        [-1.2, -0.5, -1.1],  # A = +1: min(1.5, 1.2) = 1.2 clipped; min(0.5, 0.8) = 0.5; 1.1 inside
        [1.5, 0.8, 1.1],  # A = -1: min(-1.5, -1.2) = -1.5; min(-0.5, -0.8) = -0.8 clipped; -1.1
        [-2.4, -1.0, -2.2],  # A = +2
        [0.0, 0.0, 0.0],  # A = 0
    ]
    close(loss, expected)
    assert clipped.tolist() == [[True, False, False], [False, True, False], [True, False, False], [False] * 3]


def test_clipped_surrogate_asymmetric_and_gradients():
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.25, 1.1]])).requires_grad_()
    adv = torch.tensor([1.0])
    loss, clipped = clipped_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.28)  # DAPO clip-higher
    close(loss, [[-1.25, -1.1]])
    assert not clipped.any()
    loss, clipped = clipped_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.2)
    close(loss, [[-1.2, -1.1]])
    assert clipped.tolist() == [[True, False]]
    loss.sum().backward()
    # clipped token: no gradient; inside: d(-ratio * A)/dlogp = -ratio * A = -1.1
    close(logp.grad, [[0.0, -1.1]])


def test_clipped_surrogate_log_ratio_clamp():
    loss, clipped = clipped_surrogate(torch.tensor([[100.0]]), torch.tensor([[0.0]]), torch.tensor([-1.0]))
    assert torch.isfinite(loss).all()
    close(loss, [[math.exp(20.0)]], atol=1e-3 * math.exp(20.0))
    assert not clipped.any()


# --- masked mean and reductions ----------------------------------------------------------------------

MASK = torch.tensor([[True, True, True], [True, False, False]])
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


def test_masked_mean():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, float("inf"), float("nan")]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    close(masked_mean(values, mask), 7 / 3)  # (1 + 2 + 4) / 3; inf and nan never leak
    close(masked_mean(values, mask, dim=1), [1.5, 4.0])
    close(masked_mean(values, torch.zeros_like(mask)), 0.0)
    close(masked_mean(values, torch.tensor([[1, 1, 0], [0, 0, 0]])), 1.5)  # integer masks work


def test_reduce_loss_each_type():
    close(reduce_loss(PER_TOKEN, MASK, "token_mean"), 2.5)  # (1 + 2 + 3 + 4) / 4
    close(reduce_loss(PER_TOKEN, MASK, "sequence_mean"), 3.0)  # (mean(1, 2, 3) + 4) / 2
    close(reduce_loss(PER_TOKEN, MASK, "dr_grpo", max_completion_length=5), 1.0)  # 10 / (2 * 5)
    close(reduce_loss(PER_TOKEN, MASK, "dr_grpo"), 10 / 6)  # padded width T = 3


def test_reduce_loss_edge_cases():
    empty_row = torch.tensor([[True, True, True], [False, False, False]])
    close(reduce_loss(PER_TOKEN, empty_row, "sequence_mean"), 2.0)  # the empty row is not averaged in
    close(reduce_loss(PER_TOKEN, torch.zeros_like(MASK), "token_mean"), 0.0)
    with pytest.raises(ValueError, match="loss_type"):
        reduce_loss(PER_TOKEN, MASK, "sum")
    with pytest.raises(ValueError, match="differ"):
        reduce_loss(PER_TOKEN, MASK[:, :2], "token_mean")
    with pytest.raises(ValueError, match="max_completion_length"):
        reduce_loss(PER_TOKEN, MASK, "dr_grpo", max_completion_length=0)


# --- the full loss -----------------------------------------------------------------------------------

LOSS_MASK = torch.tensor([[True, True, False], [True, True, True]])  # 5 counted tokens
ADV = torch.tensor([2.0, -1.0])


def _logp() -> torch.Tensor:
    return torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, -2.5]], requires_grad=True)


def test_one_pass_loss_value_and_gradient():
    logp = _logp()
    loss, stats = grpo_loss(logp, LOSS_MASK, ADV)
    # ratio 1 everywhere: loss = -(2 + 2 - 1 - 1 - 1) / 5 = -0.2
    close(loss, -0.2)
    loss.backward()
    # d loss / d logp = -A / n_tokens on counted tokens, 0 on padding
    close(logp.grad, [[-2 / 5, -2 / 5, 0.0], [1 / 5, 1 / 5, 1 / 5]])
    close(stats["ratio_mean"], 1.0)
    close(stats["clip_frac"], 0.0)
    close(stats["token_count"], 5.0)
    assert "kl" not in stats
    assert all(not value.requires_grad for value in stats.values())


def test_loss_types_in_grpo_loss():
    # sequence_mean: -(mean over row 0 of 2 + mean over row 1 of -1) / 2 = -0.5
    loss, _ = grpo_loss(_logp(), LOSS_MASK, ADV, cfg=GRPOLossConfig(loss_type="sequence_mean"))
    close(loss, -0.5)
    # dr_grpo: -(2 * 2 - 3) / (2 rows * 4)
    loss, _ = grpo_loss(_logp(), LOSS_MASK, ADV, cfg=GRPOLossConfig(loss_type="dr_grpo"), max_completion_length=4)
    close(loss, -1 / 8)
    logp = _logp()
    loss, _ = grpo_loss(logp, LOSS_MASK, ADV, cfg=GRPOLossConfig(loss_type="sequence_mean"))
    loss.backward()
    # row 0 has 2 tokens: -2 / (2 * 2); row 1 has 3 tokens: 1 / (2 * 3)
    close(logp.grad, [[-0.5, -0.5, 0.0], [1 / 6, 1 / 6, 1 / 6]])


def test_truncated_rows_are_masked():
    truncated = torch.tensor([False, True])
    cfg = GRPOLossConfig(mask_truncated=True)
    logp = _logp()
    loss, stats = grpo_loss(logp, LOSS_MASK, ADV, cfg=cfg, truncated=truncated)
    close(loss, -2.0)  # only row 0 counts: -A0
    close(stats["token_count"], 2.0)
    loss.backward()
    close(logp.grad, [[-1.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    loss, _ = grpo_loss(_logp(), LOSS_MASK, ADV, truncated=truncated)  # mask_truncated off: ignored
    close(loss, -0.2)
    with pytest.raises(ValueError, match="truncated"):
        grpo_loss(_logp(), LOSS_MASK, ADV, cfg=cfg, truncated=torch.tensor([True]))


def test_loss_mask_drops_truncated_rows_only_when_given():
    truncated = torch.tensor([False, True])
    assert loss_mask(LOSS_MASK).tolist() == LOSS_MASK.tolist()
    assert loss_mask(LOSS_MASK, truncated).tolist() == [[True, True, False], [False, False, False]]
    with pytest.raises(ValueError, match="truncated"):
        loss_mask(LOSS_MASK, torch.tensor([True]))


def test_clip_stats_with_old_logp():
    logp = torch.log(torch.tensor([[1.5, 1.0], [0.5, 1.0]])).requires_grad_()
    old = torch.zeros(2, 2)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss, stats = grpo_loss(logp, mask, adv, old_logp=old)
    # tokens: A=+1 ratio 1.5 -> -1.2 (high clip); A=+1 ratio 1 -> -1; A=-1 ratio .5 -> .8 (low clip); A=-1 ratio 1 -> 1
    close(loss, (-1.2 - 1.0 + 0.8 + 1.0) / 4)
    close(stats["clip_frac_high"], 0.25)
    close(stats["clip_frac_low"], 0.25)
    close(stats["clip_frac"], 0.5)
    close(stats["ratio_mean"], (1.5 + 1.0 + 0.5 + 1.0) / 4)
    close(stats["policy_loss"], stats["loss"])


def test_kl_term():
    logp = torch.full((1, 2), math.log(0.5), requires_grad=True)
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]])
    cfg = GRPOLossConfig(beta=0.1)
    loss, stats = grpo_loss(logp, torch.ones(1, 2, dtype=torch.bool), torch.zeros(1), ref_logp=ref, cfg=cfg)
    # A = 0: policy term 0; k3 per token (ln2 - 0.5, 0), token mean (ln2 - 0.5) / 2, times beta
    close(loss, 0.1 * (LN2 - 0.5) / 2)
    close(stats["kl"], (LN2 - 0.5) / 2)
    close(stats["policy_loss"], 0.0)
    loss.backward()
    # d k3 / d logp = 1 - exp(ref - logp): token 0: 1 - 0.5; token 1: 0; times beta / 2 tokens
    close(logp.grad, [[0.1 * 0.5 / 2, 0.0]])
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, torch.ones(1, 2, dtype=torch.bool), torch.zeros(1), cfg=cfg)
    # beta = 0 with a reference: KL logged, not in the loss
    loss, stats = grpo_loss(logp, torch.ones(1, 2, dtype=torch.bool), torch.zeros(1), ref_logp=ref)
    close(loss, 0.0)
    close(stats["kl"], (LN2 - 0.5) / 2)


def test_grpo_loss_validates_shapes_and_config():
    logp = _logp()
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, LOSS_MASK, torch.zeros(3))
    with pytest.raises(ValueError, match="completion_mask"):
        grpo_loss(logp, LOSS_MASK[:, :2], ADV)
    with pytest.raises(ValueError, match="old_logp"):
        grpo_loss(logp, LOSS_MASK, ADV, old_logp=torch.zeros(2, 2))
    for kwargs in ({"beta": -1.0}, {"eps_low": 1.0}, {"eps_high": -0.1}, {"loss_type": "mean"}, {"kl_clamp": 0.0}):
        with pytest.raises(ValueError):
            GRPOLossConfig(**kwargs)


def test_paper_defaults():
    cfg = GRPOLossConfig()
    assert (cfg.beta, cfg.eps_low, cfg.eps_high, cfg.loss_type, cfg.mask_truncated) == (
        0.0,
        0.2,
        0.2,
        "token_mean",
        False,
    )
