"""Sampling with the LoRA folded into the base weights: `merged_lora`, used by every generation path.

The rollout (`record.build_rollout`), and validation and evaluation (`decoding.decode_batch`), sample inside `merged_lora(model, mode)`: the active LoRA is added into each
base weight, the adapters are switched off, and the exact original weights are copied back on exit.
`MERGE_MODES` are the choices of `RolloutConfig.merge_lora`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from reczero.policy.factory import is_quantised, unwrap_policy

MERGE_MODES = ("auto", "always", "never")


@contextlib.contextmanager
def merged_lora(model: torch.nn.Module, mode: str = "auto") -> Iterator[bool]:
    """Sample with the active LoRA folded into the base weights; the exact weights come back on exit.

    At rollout batch sizes decoding is bound by per-op overhead and weight reads, and each LoRA'd
    linear adds two small matmuls to every decode step.
    Inside the block every LoRA'd weight holds W + delta and the adapters are switched off, so the
    model computes the same function with plain linears. The original W is copied back (not
    `W + delta - delta`, which would drift by rounding). Yields True when merged; False, changing
    nothing, for a model without LoRA, 4-bit weights, DoRA, or sharded parameters (FSDP / ZeRO-3)
    whose shape is not the full weight's. For inference under `torch.no_grad()` only.

    `mode`: "always", "never", or "auto" (default), which merges only on the CPU. There the gain was
    measured (README), and there the copy of the original weights costs host RAM rather than accelerator
    memory: for an unquantised 7B model in bf16 that copy would be ~14 GB of GPU memory.
    """
    if mode not in MERGE_MODES:
        raise ValueError(f"merge_lora must be one of {MERGE_MODES}, got {mode!r}")
    from peft.tuners.lora import LoraLayer

    try:
        policy = unwrap_policy(model)
    except TypeError:  # a plain transformers model (zero-shot evaluation): nothing to merge
        policy = None
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    merged = policy is not None and not is_quantised(policy) and mode != "never"
    if merged and mode == "auto":
        merged = next(policy.parameters()).device.type == "cpu"
    try:
        with torch.no_grad():
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
                saved.append((weight, weight.detach().clone()))
                weight.add_(delta.to(weight.dtype))
            if not merged:  # undo a partial merge before running unmerged
                for weight, original in saved:
                    weight.copy_(original)
                saved.clear()
        if merged and saved:
            with policy.disable_adapter():
                yield True
        else:
            yield False
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)
