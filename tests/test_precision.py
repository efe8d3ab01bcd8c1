"""`dtype: auto` (`reczero.policy.precision`): a fixed rule over the hardware, never a timing; and training in
bf16: a bf16 base with float32 LoRA weights, whose micro-batches still accumulate to the whole batch's gradient."""

from __future__ import annotations

import re
import time
from pathlib import Path

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
from reczero.rollout.merge import merged_lora
from reczero.rollout.record import RolloutConfig, record_from_generation

REPO = Path(__file__).resolve().parents[1]
BASE_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ht syscall nx lm avx fma avx2 bmi2"
AVX512 = "avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"
CPUINFO = {  # /proc/cpuinfo of the three kinds of CPU these machines have shown (2 processors each)
    "amx": f"{BASE_FLAGS} {AVX512} avx512_bf16 amx_bf16 amx_tile amx_int8",
    "avx512_bf16": f"{BASE_FLAGS} {AVX512} avx512_bf16",
    "avx2": BASE_FLAGS,
}


def _cpuinfo(path: Path, flags: str) -> Path:
    path.write_text("".join(f"processor\t: {i}\nmodel name\t: a CPU\nflags\t\t: {flags}\n\n" for i in range(2)))
    return path


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = _cpuinfo(tmp_path / "cpuinfo", CPUINFO["amx"])
    assert precision.cpu_bf16_flags(info) == ("amx_bf16", "avx512_bf16")
    assert {"avx2", "amx_tile"} <= precision.cpu_flags(info)
    assert precision.cpu_bf16_flags(_cpuinfo(tmp_path / "cpuinfo", CPUINFO["avx2"])) == ()
    assert precision.cpu_flags(tmp_path / "missing") == frozenset()


def test_the_last_level_cache_is_read_from_sysfs(tmp_path):
    for index, size in enumerate(["48K", "2048K", "266240K", "junk"]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "size").write_text(size + "\n")
    assert precision.last_level_cache_bytes(tmp_path) == 266240 * 2**10
    assert precision.last_level_cache_bytes(tmp_path / "missing") == 0


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("amx", torch.bfloat16), ("avx512_bf16", torch.float32), ("avx2", torch.float32), (None, torch.float32)],
    ids=["amx_bf16", "avx512_bf16-only", "neither", "no-cpuinfo"],
)
def test_auto_resolves_by_the_rule_for_simulated_cpuinfo(tmp_path, monkeypatch, kind, expected):
    """bf16 with AMX only; the same answer every time it is asked (no stopwatch to disagree with itself)."""
    info = _cpuinfo(tmp_path / "cpuinfo", CPUINFO[kind]) if kind else tmp_path / "missing"
    monkeypatch.delenv(precision.PIN_VARIABLE)
    monkeypatch.setattr(precision, "CPUINFO", info)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    choices = {precision.auto_choice() for _ in range(3)}
    assert len(choices) == 1
    (choice,) = choices
    assert choice.dtype is expected and resolve_dtype("auto") is expected
    assert choice.reason.startswith("rule: ") and precision.cpu_kind(precision.cpu_flags(info)) == (kind or "other")


def test_the_gpu_rule(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto") is torch.bfloat16 and precision.check_runnable("bfloat16") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto") is torch.float16
    with pytest.raises(ValueError, match="does not support bfloat16"):
        precision.check_runnable("bfloat16")


def test_the_pin_variable_overrides_the_rule_and_is_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "CPUINFO", _cpuinfo(tmp_path / "cpuinfo", CPUINFO["amx"]))
    assert precision.cpu_choice().dtype is torch.float32, "the tests' session-wide pin (conftest)"
    monkeypatch.setenv(precision.PIN_VARIABLE, "bfloat16")
    monkeypatch.setattr(precision, "CPUINFO", _cpuinfo(tmp_path / "cpuinfo", CPUINFO["avx2"]))
    assert precision.cpu_choice().dtype is torch.bfloat16
    monkeypatch.setenv(precision.PIN_VARIABLE, "fp8")
    with pytest.raises(ValueError, match="RECZERO_CPU_DTYPE='fp8': expected float32 or bfloat16"):
        precision.cpu_choice()


def test_a_recorded_dtype_this_cpu_runs_slowly_is_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "CPUINFO", _cpuinfo(tmp_path / "cpuinfo", CPUINFO["avx512_bf16"]))
    assert "no AMX" in precision.check_runnable("bfloat16")
    assert precision.check_runnable("float32") is None and "float16" in precision.check_runnable("float16")
    monkeypatch.setattr(precision, "CPUINFO", _cpuinfo(tmp_path / "cpuinfo", CPUINFO["amx"]))
    assert precision.check_runnable("bfloat16") is None


def test_the_dtype_and_the_sampling_layout_are_chosen_without_a_clock(monkeypatch, tiny_policy):
    """Every clock raises while `auto` resolves and while the LoRA is merged for sampling."""

    def no_clock(*args):
        raise AssertionError("a numerics decision read a clock")

    for name in ("perf_counter", "perf_counter_ns", "time", "time_ns", "monotonic", "monotonic_ns", "process_time"):
        monkeypatch.setattr(time, name, no_clock)
    monkeypatch.delenv(precision.PIN_VARIABLE)
    monkeypatch.setattr(precision.log, "disabled", True)  # a log record's timestamp reads the clock
    precision.auto_choice()
    with torch.no_grad(), merged_lora(perturb_lora(tiny_policy, scale=0.05)) as merged:
        assert merged


def test_no_timing_decides_computation_in_policy_or_rollout():
    """The grep of the issue: in `reczero/policy` and `reczero/rollout` a clock is read only to report how long
    something took (`start = time.perf_counter()` ... `time.perf_counter() - start` in a log or a record);
    the dtype and the weight layout modules read none."""
    timing = re.compile(r"perf_counter|time\.time|timeit|monotonic|process_time")
    allowed = re.compile(r"^\s*start = time\.perf_counter\(\)$|time\.perf_counter\(\) - start\b")
    found = []
    for folder in ("policy", "rollout"):
        for path in sorted((REPO / "reczero" / folder).glob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if timing.search(line):
                    found.append((path.name, number, line.strip()))
                    assert allowed.search(line), f"{path.name}:{number} reads a clock: {line.strip()}"
    assert not [f for f in found if f[0] in ("precision.py", "merge.py")]
    assert "import time" not in (REPO / "reczero/policy/precision.py").read_text()
    assert "import time" not in (REPO / "reczero/rollout/merge.py").read_text()


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
