"""The training forwards (`reczero.policy.forward`): packed shared-prefix log-probs and the chunked LM head
against the plain computation (the model's full logits, log-softmax in float64), in fp32 and bf16."""

from __future__ import annotations

import pytest
import torch
from test_grpo_module import GOOD, SCRIPT, _prompt_batch
from tiny import make_tiny_llama, perturb_lora, scripted_generation

from reczero import rewards
from reczero.data.schema import SCALES
from reczero.policy import forward
from reczero.policy.factory import PolicyConfig, build_policy
from reczero.rollout.record import RolloutConfig, record_from_generation

TEXTS = SCRIPT + [GOOD.format(3), "x", GOOD.format(1), GOOD.format(4) + " trailing"]  # 2 groups of 4, uneven
# bf16 rounds each op to 8 bits of mantissa; the packed and the plain computation round differently
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (3e-2, 3e-2)}


def _policy(tokenizer, dtype: torch.dtype, **lora):
    base = make_tiny_llama(tokenizer).to(dtype)
    policy = build_policy(PolicyConfig(lora_r=4, lora_alpha=8, **lora), base_model=base)
    return perturb_lora(policy, scale=0.05).train()


def _record(tokenizer, prompts: int = 2):
    batch = _prompt_batch(tokenizer, prompts)
    texts = TEXTS[: 4 * prompts]
    gen = scripted_generation(tokenizer, texts, [True] * len(texts))
    return record_from_generation(batch, gen, RolloutConfig(group_size=4), rewards.RewardSpec(), SCALES["1-5"])


def _reference(policy, record, temperature: float) -> torch.Tensor:
    """[N, C] log-probs from the model's full logits, log-softmax in float64, 0 after each completion."""
    ids, mask = record.input_ids, record.attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = policy(input_ids=ids, attention_mask=mask, position_ids=positions).logits.double()
    width = record.completion_mask.shape[1]
    logp = (logits[:, -width - 1 : -1] / temperature).log_softmax(-1)
    logp = logp.gather(-1, ids[:, -width:, None]).squeeze(-1)
    return (logp * record.completion_mask).float()


def _close_to(actual: torch.Tensor, expected: torch.Tensor, rtol: float, name: str) -> None:
    """Equal up to `rtol` of the tensor's largest entry (a gradient's small entries are sums of cancelling terms)."""
    scale = float(expected.abs().max())
    error = float((actual - expected).abs().max())
    assert error <= rtol * scale + 1e-12, f"{name}: max error {error:.3g} against max |grad| {scale:.3g}"


def _value_and_grads(policy, compute) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    policy.zero_grad()
    logp = compute()
    weights = torch.linspace(0.5, 1.5, logp.shape[1])  # a loss that weighs every position differently
    (logp * weights).sum().backward()
    grads = {n: p.grad.float().clone() for n, p in policy.named_parameters() if p.requires_grad}
    return logp.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("lanes", [None, 1, 2, 4], ids=["auto", "1-lane", "2-lanes", "unpacked"])
def test_packed_shared_prefix_matches_the_full_logits(tiny_tokenizer, dtype, lanes):
    """Log-probs and LoRA gradients equal the plain forward's: two left-padded prompts, completions of
    uneven length packed 1, 2 or 4 (= G, one per row) to a lane, temperature 0.9."""
    policy = _policy(tiny_tokenizer, dtype)
    record = _record(tiny_tokenizer)
    rtol, atol = TOLERANCE[dtype]
    expected, expected_grads = _value_and_grads(policy, lambda: _reference(policy, record, 0.9))
    for compute in (
        lambda: forward.shared_prefix_logprobs(policy, record, slice(0, 8), 0.9, lanes=lanes),
        lambda: forward.completion_logprobs(policy, record, slice(0, 8), 0.9),
    ):
        logp, grads = _value_and_grads(policy, compute)
        assert logp.dtype == torch.float32
        torch.testing.assert_close(logp, expected, rtol=rtol, atol=atol)
        assert bool((logp[~record.completion_mask] == 0).all()), "positions after a completion's end hold 0"
        for name, grad in grads.items():
            _close_to(grad, expected_grads[name], rtol, name)


def test_a_trainable_lm_head_falls_back_to_the_model_logits(tiny_tokenizer):
    """With a LoRA on the LM head the hidden-state shortcut would skip the adapter: the model's own
    forward makes the logits instead, and the numbers still match."""
    policy = _policy(tiny_tokenizer, torch.float32, target_modules=["q_proj", "lm_head"])
    assert forward.fused_head(policy) is None
    record = _record(tiny_tokenizer, prompts=1)
    expected, expected_grads = _value_and_grads(policy, lambda: _reference(policy, record, 1.0))
    logp, grads = _value_and_grads(policy, lambda: forward.shared_prefix_logprobs(policy, record, slice(0, 4), 1.0))
    torch.testing.assert_close(logp, expected, rtol=1e-5, atol=1e-5)
    assert any("lm_head" in name and grad.abs().sum() > 0 for name, grad in grads.items())
    for name, grad in grads.items():
        _close_to(grad, expected_grads[name], 1e-5, name)


def test_pack_lanes_and_the_lane_count():
    # longest first into the emptiest lane: 9 -> lane 0 (9), 7 -> lane 1 (7), 3 -> lane 1 (10),
    # 2 -> lane 0 (11), 1 -> lane 1 (11)
    assert forward.pack_lanes([3, 9, 1, 7, 2], 2) == [[1, 4], [3, 0, 2]]
    assert forward.pack_lanes([4, 4], 3) == [[0], [1]], "empty lanes are dropped"
    # attention free: one lane (no padding at all) is cheapest
    assert forward._choose_lanes([[5, 3, 1]], prompt=10, per_token=1.0, per_pair=0.0) == 1
    # attention dear (per_pair 10, prompt 10): cost = lanes * width * (1 + 10 * (10 + width))
    # 1 lane, width 9: 9 * 191 = 1719; 2 lanes [5], [3, 1], width 5: 2 * 5 * 151 = 1510; 3 lanes: 3 * 5 * 151 = 2265
    assert forward._choose_lanes([[5, 3, 1]], prompt=10, per_token=1.0, per_pair=10.0) == 2
