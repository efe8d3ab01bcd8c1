"""Sampling with the LoRA folded into the base weights: `merged_lora`, used by every generation path.

The rollout (`record.build_rollout`), and validation and evaluation (`decoding.decode_batch`), sample
inside `merged_lora(model, mode)`: every linear layer's weight is swapped for a merged copy (W + the
active LoRA's delta), the adapters are switched off, and the original weight tensors are swapped back
on exit, untouched. `MERGE_MODES` are the choices of `RolloutConfig.merge_lora`.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Iterator

import torch

from reczero.policy.factory import is_quantised, unwrap_policy

log = logging.getLogger(__name__)

MERGE_MODES = ("auto", "always", "never")


_LAYOUT_CHOICES: dict[tuple, bool] = {}
_PROBE_BYTES = 64 * 2**20  # enough weights to stream from memory, as a model's do in a decode step


def transposed_is_faster(weights: list[torch.Tensor]) -> bool:
    """Whether decode-sized matmuls (8 rows) against these weights run faster from a transposed
    copy ([in, out] contiguous, used through its `.t()` view) than from the usual [out, in] layout.

    Timed once per process for each set of shapes and dtype, on (up to 64 MiB of) the weights
    themselves, the two layouts alternating over 9 rounds and the median ratio deciding. Which layout
    wins depends on the BLAS kernels, the shape, the dtype and the thread count (the README's
    performance section has what it found here), so the layout is measured, never assumed.
    """
    key = (weights[0].dtype, tuple(tuple(w.shape) for w in weights))
    if key in _LAYOUT_CHOICES:
        return _LAYOUT_CHOICES[key]
    probe, size = [], 0
    for w in weights:
        if size >= _PROBE_BYTES:
            break
        probe.append(w)
        size += w.numel() * w.element_size()
    layouts = {"usual": probe, "transposed": [w.t().contiguous().t() for w in probe]}
    inputs = [torch.randn(8, w.shape[1], generator=torch.Generator().manual_seed(0)).to(w.dtype) for w in probe]
    ratios = []  # usual time / transposed time per round; the order alternates so load hits both
    with torch.no_grad():
        for round_ in range(9):
            seconds = {}
            for name in sorted(layouts, reverse=bool(round_ % 2)):
                start = time.perf_counter()
                for x, w in zip(inputs, layouts[name]):
                    torch.nn.functional.linear(x, w)
                seconds[name] = time.perf_counter() - start
            ratios.append(seconds["usual"] / seconds["transposed"])
    speedup = statistics.median(ratios[1:])  # the first round warms up
    _LAYOUT_CHOICES[key] = speedup > 1.1
    log.info(
        "decode matmuls on %d weights like %s (%s): the transposed layout runs at %.2fx the usual's speed: %s",
        len(weights),
        tuple(weights[0].shape),
        str(weights[0].dtype).removeprefix("torch."),
        speedup,
        "sampling from transposed copies" if _LAYOUT_CHOICES[key] else "keeping the usual layout",
    )
    return _LAYOUT_CHOICES[key]


def _sampling_copy(weight: torch.Tensor, delta: torch.Tensor | None, transposed: bool) -> torch.Tensor:
    """W + delta (summed in float32 when W is lower precision), stored transposed if `transposed`,
    returned as an [out, in] tensor either way."""
    merged = weight if delta is None else (weight.float() + delta.float()).to(weight.dtype)
    return merged.t().contiguous().t() if transposed else merged.contiguous()


@contextlib.contextmanager
def merged_lora(model: torch.nn.Module, mode: str = "auto") -> Iterator[bool]:
    """Sample with the active LoRA folded into the base weights; the exact weights come back on exit.

    At rollout batch sizes decoding is bound by per-op overhead and weight reads, and each LoRA'd
    linear adds two small matmuls to every decode step. Inside the block every linear
    layer's weight (the LM head's too) is a copy holding W + delta, stored in the layout whose
    decode matmuls are faster on this CPU (`transposed_is_faster`), and the adapters are switched
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
            plan: dict[int, tuple[torch.nn.Parameter, torch.Tensor | None]] = {}
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
            if merged and plan:
                # the other linears (the LM head, layers outside target_modules) only change layout
                for module in policy.modules():
                    weight = getattr(module, "weight", None)
                    frozen = isinstance(weight, torch.nn.Parameter) and not weight.requires_grad  # not a LoRA matrix
                    if type(module) is torch.nn.Linear and frozen:
                        plan.setdefault(id(weight), (weight, None))
                # the LM head (one large matrix) and the layers' weights are timed apart
                weights = [weight for weight, _ in plan.values()]
                widest = max(w.shape[0] for w in weights)
                heads = [w for w in weights if w.shape[0] == widest]
                layers = [w for w in weights if all(w is not h for h in heads)]
                choice = {id(w): transposed_is_faster(group) for group in (heads, layers) if group for w in group}
                for weight, delta in plan.values():
                    transposed = choice[id(weight)]
                    if delta is None and not transposed:
                        continue
                    copy = _sampling_copy(weight.data, delta, transposed)
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
