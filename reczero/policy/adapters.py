"""The LoRA adapter: the KL reference, saving and loading, stacking two adapters, and merged export.

- `reference_mode(model)`: the KL reference is the same network with the adapter switched off,
  never a second copy of the weights.
- `save_adapter` / `load_adapter`: the adapter alone (a few MB of safetensors); RecOne starts GRPO
  from the SFT adapter through `PolicyConfig.adapter_path`.
- `merged_base` / `stacked_config` / `save_stacked_adapter`: GRPO's `reference="sft"` (one of
  `REFERENCES`): the SFT adapter folded into the base weights, a fresh LoRA trained on top, and the
  two saved as one adapter of the plain base model.
- `export_merged(model, out_dir)`: a plain Hugging Face checkpoint with LoRA folded into the
  weights, for serving (vLLM, llama.cpp conversion, `AutoModelForCausalLM`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reczero.policy.factory import _QUANTISED_PARAMS, PolicyConfig, load_base_model, resolve_dtype, unwrap_policy

log = logging.getLogger(__name__)


@contextlib.contextmanager
def reference_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run `model` as the KL reference: the same weights with the LoRA adapter switched off.

    Yields `model` itself; the adapter is back on when the block exits, even on an exception.
    Wrap the reference forward in `torch.no_grad()` yourself: this does not change autograd.
    """
    with unwrap_policy(model).disable_adapter():
        yield model


REFERENCES = ("base", "sft")


def merged_base(cfg: PolicyConfig, base_model=None):
    """The base model of `cfg` (or `base_model`) with the saved adapter `cfg.adapter_path` folded into
    its weights (peft `merge_and_unload`; with 4-bit weights the sum is re-quantised, approximately)."""
    base = load_base_model(cfg) if base_model is None else base_model
    return PeftModel.from_pretrained(base, cfg.adapter_path).merge_and_unload()


def stacked_config(cfg: PolicyConfig) -> PolicyConfig:
    """The fresh LoRA trained on top of a merged adapter: `cfg`'s rank / alpha, the saved adapter's targets
    (so the two stack into one adapter, `save_stacked_adapter`)."""
    targets = LoraConfig.from_pretrained(cfg.adapter_path).target_modules
    targets = targets if isinstance(targets, str) else sorted(targets)
    return dataclasses.replace(cfg, adapter_path=None, target_modules=targets)


def save_stacked_adapter(policy, first_dir: str | Path, out_dir: str | Path) -> Path:
    """Save ONE adapter equal to the saved adapter `first_dir` plus the policy's (trained on top of it).

    Exact: per layer, B1 s1 A1 + B2 s2 A2 = [s1 B1, s2 B2] [A1; A2], an adapter of rank r1 + r2 with
    scale 1 (alpha = rank). The result applies to the plain base model, like every other adapter, so
    `reczero evaluate --adapter` and `policy.adapter_path` take it as is.
    """
    from peft.utils import get_peft_model_state_dict, load_peft_weights
    from safetensors.torch import save_file

    model = unwrap_policy(policy)
    first_cfg, second_cfg = LoraConfig.from_pretrained(str(first_dir)), model.peft_config[model.active_adapter]
    for c in (first_cfg, second_cfg):
        if c.rank_pattern or c.alpha_pattern or c.use_dora or c.modules_to_save:
            raise NotImplementedError("stacking adapters with rank/alpha patterns, DoRA or modules_to_save")
    first, second = load_peft_weights(str(first_dir), device="cpu"), get_peft_model_state_dict(model)
    if set(first) != set(second):
        raise ValueError(f"adapters at {first_dir} and in the policy target different modules: cannot stack")

    def scale(c) -> float:
        return c.lora_alpha / (math.sqrt(c.r) if c.use_rslora else c.r)

    stacked = {}
    for key in first:
        if ".lora_A." in key:  # A: [r, in], B: [out, r]
            b_key = key.replace(".lora_A.", ".lora_B.")
            stacked[key] = torch.cat([first[key], second[key].detach().cpu().to(first[key].dtype)], dim=0)
            b1, b2 = first[b_key] * scale(first_cfg), second[b_key].detach().cpu().to(first[b_key].dtype)
            stacked[b_key] = torch.cat([b1, b2 * scale(second_cfg)], dim=1).contiguous()
    rank = first_cfg.r + second_cfg.r
    config = dataclasses.replace(second_cfg, r=rank, lora_alpha=rank, use_rslora=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out_dir))
    save_file({k: v.contiguous() for k, v in stacked.items()}, str(out_dir / "adapter_model.safetensors"))
    return out_dir


def save_adapter(model: torch.nn.Module, path: str | Path) -> Path:
    """Save only the LoRA adapter (adapter_config.json + adapter_model.safetensors) to `path`."""
    path = Path(path)
    unwrap_policy(model).save_pretrained(path, safe_serialization=True)
    return path


def load_adapter(model: torch.nn.Module, path: str | Path, trainable: bool = True) -> PeftModel:
    """Load a saved adapter: into a policy's active adapter in place, or around a plain base model.

    - `model` is a policy (PeftModel, possibly wrapped): its active adapter's weights are replaced
      by the saved ones (same rank and targets required); returns that PeftModel.
    - `model` is a plain `PreTrainedModel`: it is wrapped with the saved adapter; returns the new PeftModel.
    """
    try:
        policy = unwrap_policy(model)
    except TypeError:
        return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)

    from peft.utils import load_peft_weights, set_peft_model_state_dict

    adapter = policy.active_adapter
    device = next(p.device for n, p in policy.named_parameters() if "lora_" in n)
    weights = load_peft_weights(str(path), device=str(device))
    result = set_peft_model_state_dict(policy, weights, adapter_name=adapter)
    missing_lora = [key for key in result.missing_keys if "lora_" in key]
    if result.unexpected_keys or missing_lora:
        raise ValueError(
            f"Adapter at {path} does not fit this policy: unexpected {list(result.unexpected_keys)[:5]}, "
            f"missing {missing_lora[:5]} (different rank or target modules?)"
        )
    for name, param in policy.named_parameters():
        if "lora_" in name:
            param.requires_grad_(trainable)
    return policy


def _export_dtype(base: PreTrainedModel, dtype: str | torch.dtype | None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None:
        return resolve_dtype(dtype)
    quant = getattr(base.config, "quantization_config", None)
    compute = getattr(quant, "bnb_4bit_compute_dtype", None)
    if compute is None and isinstance(quant, dict):
        compute = quant.get("bnb_4bit_compute_dtype")
    config_dtype = compute if compute is not None else getattr(base.config, "dtype", None)
    if isinstance(config_dtype, str):
        config_dtype = getattr(torch, config_dtype, None)
    return config_dtype if isinstance(config_dtype, torch.dtype) else torch.float32


def _merged_state_dict(policy: PeftModel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The base model's state dict with the active LoRA folded in and quantised weights dequantised.

    Built tensor by tensor on the CPU; the live model is not modified. Tensors shared in the model
    (tied embeddings) stay shared, so the exported model keeps them tied.
    """
    from peft.tuners.lora import LoraLayer

    base = policy.get_base_model()
    adapter = policy.active_adapter
    state: dict[str, torch.Tensor] = {}
    exported: dict[int, torch.Tensor] = {}

    def put(key: str, tensor: torch.Tensor) -> None:
        if id(tensor) not in exported:
            target = dtype if tensor.is_floating_point() else tensor.dtype
            exported[id(tensor)] = tensor.detach().to("cpu", target)
        state[key] = exported[id(tensor)]

    def dense_weight(layer: torch.nn.Module) -> torch.Tensor:
        # Not peft's `dequantize_module_weight`: on CPU it re-assigns `layer.weight` (a mutation).
        weight = layer.weight
        kind = type(weight).__name__
        if kind == "Params4bit":
            import bitsandbytes.functional as bnb_functional

            data, state = weight.data, weight.quant_state
            if getattr(state, "packing_format_for_cpu", False):
                # Repacked for bnb's CPU inference kernel (see `factory._keep_bnb_cpu_weights_differentiable`);
                # `dequantize_4bit` misreads that layout, so unpack a copy first.
                data, state = bnb_functional._convert_weight_packed_for_cpu_inverse(data.clone(), copy.deepcopy(state))
            return bnb_functional.dequantize_4bit(data, state).float()
        if kind == "Int8Params":
            from peft.utils.integrations import dequantize_bnb_weight

            return dequantize_bnb_weight(weight, state=layer.state).float()
        return weight.detach().float()

    handled = None  # prefix of a LoRA or quantised layer already exported whole
    for name, module in base.named_modules():
        if handled is not None and name.startswith(handled):
            continue
        prefix = f"{name}." if name else ""
        layer = module.get_base_layer() if isinstance(module, LoraLayer) else module
        has_lora = isinstance(module, LoraLayer) and (
            adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {})
        )
        if isinstance(module, LoraLayer) or type(getattr(module, "weight", None)).__name__ in _QUANTISED_PARAMS:
            weight = dense_weight(layer)
            if has_lora and not module.merged:
                weight = weight + module.get_delta_weight(adapter).detach().float()
            state[f"{prefix}weight"] = weight.to("cpu", dtype)
            if getattr(layer, "bias", None) is not None:
                put(f"{prefix}bias", layer.bias)
            handled = prefix
            continue
        for pname, param in module.named_parameters(recurse=False):
            put(prefix + pname, param)
        for bname, buf in module.named_buffers(recurse=False):
            if bname not in module._non_persistent_buffers_set:
                put(prefix + bname, buf)
    return state


def export_merged(
    model: torch.nn.Module,
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    dtype: str | torch.dtype | None = None,
) -> Path:
    """Write a plain Hugging Face checkpoint with the active LoRA adapter merged into the weights.

    The live policy is left untouched (no merge/unmerge round trip, which is lossy in bf16); the
    merged tensors are built one at a time on the CPU, so peak extra memory is one CPU copy of the
    weights. `dtype` defaults to the model's compute dtype (the bnb compute dtype for 4-bit).

    4-bit (QLoRA) policies: each NF4 weight is dequantised and the LoRA update added, W = deq(W_nf4)
    + (alpha/r)·B·A, saved in `dtype` with no quantisation config. The result reproduces the
    trained 4-bit model (the adapter learned to correct the quantised weights), not the original
    full-precision base plus adapter; re-quantise it for serving if memory requires.
    The tokenizer, when given, is saved alongside so the folder is self-contained.
    """
    policy = unwrap_policy(model)
    if getattr(policy.peft_config[policy.active_adapter], "use_dora", False):
        raise NotImplementedError("export_merged does not merge DoRA adapters")
    base = policy.get_base_model()
    target = _export_dtype(base, dtype)
    state = _merged_state_dict(policy, target)

    config = copy.deepcopy(base.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = target
    config.use_cache = True
    with torch.device("meta"):
        merged = type(base)(config)
    missing, unexpected = merged.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(
            f"Merged weights do not fit {type(base).__name__}: missing {missing}, unexpected {unexpected}"
        )
    merged.generation_config = copy.deepcopy(base.generation_config)
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    log.info("Exported merged %s weights to %s", target, out_dir)
    return out_dir
