"""`dtype: auto` on the CPU (`reczero.policy.precision`), and training in bf16: a bf16 base with float32
LoRA weights, whose micro-batches still accumulate to the whole batch's gradient."""

from __future__ import annotations

import math

import pytest
import torch
from test_grpo_module import GOOD, SCRIPT, _prompt_batch
from tiny import make_tiny_llama, perturb_lora, scripted_generation

from reczero import grpo, rewards
from reczero.data.schema import SCALES
from reczero.modules.grpo_module import GRPOModule
from reczero.policy import precision
from reczero.policy.factory import PolicyConfig, build_policy, resolve_dtype
from reczero.policy.forward import completion_logprobs, shared_prefix_logprobs
from reczero.rollout.record import RolloutConfig, record_from_generation


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n\nprocessor\t: 1\n")
    assert precision.cpu_bf16_flags(info) == ("amx_bf16", "avx512_bf16")
    info.write_text("flags\t\t: fpu sse2 avx2\n")
    assert precision.cpu_bf16_flags(info) == ()
    assert precision.cpu_bf16_flags(tmp_path / "missing") == ()


def test_the_last_level_cache_is_read_from_sysfs(tmp_path):
    for index, size in enumerate(["48K", "2048K", "266240K", "junk"]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "size").write_text(size + "\n")
    assert precision.last_level_cache_bytes(tmp_path) == 266240 * 2**10
    assert precision.last_level_cache_bytes(tmp_path / "missing") == 0


@pytest.mark.parametrize(
    ("flags", "speedups", "expected"),
    [
        ((), None, torch.float32),  # no native bf16: never probed
        (("amx_bf16", "avx512_bf16"), (1.8, 4.0), torch.bfloat16),
        (("avx512_bf16",), (1.3, 0.85), torch.float32),  # faster decode, slower training: not both
        (("avx512_bf16",), (1.05, 1.5), torch.float32),
        (("avx512_bf16",), (1.2, 1.2), torch.float32),  # faster, but not by the margin
    ],
)
def test_cpu_choice_needs_native_bf16_that_wins_both_probes(monkeypatch, flags, speedups, expected):
    monkeypatch.delenv(precision.PIN_VARIABLE)
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)

    def probe():
        assert speedups is not None, "a CPU without native bf16 must not be probed"
        return speedups

    monkeypatch.setattr(precision, "probe_bf16_speedups", probe)
    choice = precision.cpu_choice()
    assert choice.dtype is expected and choice.flags == flags
    assert ("AMX" in choice.reason) if not flags else (f"{speedups[1]:.2f}x" in choice.reason)
    assert precision.cpu_choice() is choice, "decided once per process"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_dtype("auto") is expected


def test_the_pin_variable_decides_and_is_checked(monkeypatch):
    monkeypatch.setenv(precision.PIN_VARIABLE, "bfloat16")
    assert precision.cpu_choice().dtype is torch.bfloat16
    monkeypatch.setattr(precision, "_CHOICE", None)
    monkeypatch.setenv(precision.PIN_VARIABLE, "fp8")
    with pytest.raises(ValueError, match="RECZERO_CPU_DTYPE='fp8': expected float32 or bfloat16"):
        precision.cpu_choice()


def test_the_probe_times_both_kinds_of_matmul():
    decode, train = precision.probe_bf16_speedups()
    assert all(math.isfinite(x) and x > 0 for x in (decode, train))


def _bf16_policy(tokenizer):
    policy = build_policy(PolicyConfig(lora_r=4, lora_alpha=8), base_model=make_tiny_llama(tokenizer).bfloat16())
    return perturb_lora(policy, scale=0.05)


def test_a_bf16_policy_trains_float32_lora_weights(tiny_tokenizer):
    policy = _bf16_policy(tiny_tokenizer).train()
    lora = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    frozen = [p for p in policy.parameters() if not p.requires_grad]
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    assert all(p.dtype == torch.bfloat16 for p in frozen)
    batch = _prompt_batch(tiny_tokenizer, 1)
    gen = scripted_generation(tiny_tokenizer, SCRIPT, [True] * 4)
    record = record_from_generation(batch, gen, RolloutConfig(group_size=4), rewards.RewardSpec(), SCALES["1-5"])
    logp = shared_prefix_logprobs(policy, record, slice(0, 4), 1.0)
    assert logp.dtype == torch.float32
    loss, _ = grpo.grpo_loss(logp, record.completion_mask, record.advantages, max_completion_length=logp.shape[1])
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in lora.values())
    assert any(float(p.grad.abs().sum()) > 0 for p in lora.values())


def test_bf16_micro_batches_accumulate_to_the_full_batch_gradient(tiny_tokenizer):
    """Micro-batches that divide by the whole batch's denominator (as `training_step` does) add up to the
    whole batch's gradient on a bf16 base: equal up to bf16 rounding (the two layouts round
    differently), per loss type."""
    policy = _bf16_policy(tiny_tokenizer)
    batch = _prompt_batch(tiny_tokenizer, 2)
    texts = SCRIPT + [GOOD.format(3), "x", GOOD.format(1), GOOD.format(4) + " trailing"]
    gen = scripted_generation(tiny_tokenizer, texts, [True] * 8)
    record = record_from_generation(batch, gen, RolloutConfig(group_size=4), rewards.RewardSpec(), SCALES["1-5"])
    for loss_type in grpo.LOSS_TYPES:
        module = GRPOModule(loss=grpo.GRPOLossConfig(loss_type=loss_type), micro_batch_size=4)
        module.policy = policy
        mask = grpo.loss_mask(record.completion_mask, record.truncated if module.loss_config.mask_truncated else None)
        whole = grpo.loss_denominator(mask, loss_type, mask.shape[1]).clamp(min=1)  # every part divides by it
        grads = []
        for chunks in ([slice(0, 8)], [slice(0, 4), slice(4, 8)]):
            policy.zero_grad()
            for rows in chunks:
                logp = completion_logprobs(policy, record, rows, 1.0)
                loss, _ = grpo.grpo_loss(
                    logp,
                    mask[rows],
                    record.advantages[rows],
                    cfg=module.loss_config,
                    max_completion_length=mask.shape[1],
                    denominator=whole,
                )
                loss.backward()
            grads.append([p.grad.clone() for p in policy.parameters() if p.requires_grad])
        for full, accumulated in zip(*grads):
            scale = float(full.abs().max())
            assert float((full - accumulated).abs().max()) <= 2e-2 * scale + 1e-9, loss_type
