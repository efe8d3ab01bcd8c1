"""Sampling with the LoRA folded into the base weights: `merged_lora`, used by every generation path.

The rollout (`record.build_rollout`), and validation and evaluation (`decoding.decode_batch`), sample
inside `merged_lora(model, mode)`: every LoRA'd linear layer's weight is swapped for a merged copy (W + the
active LoRA's delta), the adapters are switched off, and the original weight tensors are swapped back
on exit, untouched. `MERGE_MODES` are the choices of `RolloutConfig.merge_lora`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from reczero.policy.factory import is_quantised, unwrap_policy

MERGE_MODES = ("auto", "always", "never")


def _sampling_copy(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """W + delta, summed in float32 when W is lower precision, in W's dtype and [out, in] layout."""
    return (weight.float() + delta.float()).to(weight.dtype).contiguous()


@contextlib.contextmanager
def merged_lora(model: torch.nn.Module, mode: str = "auto") -> Iterator[bool]:
    """Sample with the active LoRA folded into the base weights; the exact weights come back on exit.

    At rollout batch sizes decoding is bound by per-op overhead and weight reads, and each LoRA'd
    linear adds two small matmuls to every decode step. Inside the block every LoRA'd linear
    layer's weight is a copy holding W + delta, in W's own dtype and [out, in] layout (a fixed
    layout, the same on every machine, so a resumed run samples from the same kernels;
    `benchmarks/dtype_rule.py` measures the transposed alternative), and the adapters are switched
    off, so the model computes the same function with plain linears. The original tensors are put
    back on exit, never modified. Yields True when merged; False, changing nothing, for a model
    without LoRA, 4-bit weights, DoRA, or sharded parameters (FSDP / ZeRO-3) whose shape is not the
    full weight's. For inference under `torch.no_grad()` only.

    `mode`: "always", "never", or "auto" (default), which merges only on the CPU. There the gain was
    measured (README), and there the copies cost host RAM rather than accelerator memory: for an
    unquantised 7B model in bf16 they would be ~14 GB of GPU memory.
    """
    if mode not in MERGE_MODES:
        raise ValueError(f"merge_lora must be one of {MERGE_MODES}, got {mode!r}")
    from peft.tuners.lora import LoraLayer

    try:
        policy = unwrap_policy(model)
    except TypeError:  # a plain transformers model (zero-shot evaluation): nothing to merge
        policy = None
    merged = policy is not None and not is_quantised(policy) and mode != "never"
    if merged and mode == "auto":
        merged = next(policy.parameters()).device.type == "cpu"
    swapped: list[tuple[torch.nn.Parameter, torch.Tensor]] = []  # (parameter, its original tensor)
    try:
        with torch.no_grad():
            plan: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}  # id -> (W, delta)
            for module in policy.modules() if merged else ():
                if not isinstance(module, LoraLayer) or module.merged:
                    continue
                names = [a for a in module.active_adapters if a in module.lora_A]
                if not names:
                    continue
                weight = module.get_base_layer().weight
                if any(module.use_dora.get(a, False) for a in names) or weight.dim() < 2:
                    merged = False
                    break
                delta = sum(module.get_delta_weight(a) for a in names)
                if delta.shape != weight.shape:
                    merged = False
                    break
                plan[id(weight)] = (weight, delta)
            for weight, delta in plan.values() if merged else ():
                copy = _sampling_copy(weight.data, delta)
                swapped.append((weight, weight.data))
                weight.data = copy
        if swapped:
            with policy.disable_adapter():
                yield True
        else:
            yield False
    finally:
        for weight, original in swapped:
            weight.data = original
