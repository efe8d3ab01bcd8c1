"""A model for evaluation, prediction and teaching: the zero-shot base, base + saved adapter, or a checkpoint.

`load_model(policy_cfg, adapter=..., ckpt=...)` returns the model in eval mode on `resolve_device`,
its tokenizer and a short name for reports. A Lightning checkpoint's LoRA weights (`policy.`-prefixed
state_dict keys) go into a policy built from `policy_cfg` (`load_checkpoint_weights`); a rank or
target mismatch is an error, never a half-load.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch

from reczero.policy.adapters import load_adapter
from reczero.policy.factory import build_policy, is_quantised, load_base_model, load_tokenizer

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _torch_load(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Lightning stores hyper-parameters (config dataclasses) next to the weights: plain pickle.
        log.warning("%s holds Python objects besides tensors; loading it with pickle (trusted files only)", path)
        return torch.load(path, map_location="cpu", weights_only=False)


def load_checkpoint_weights(policy: torch.nn.Module, path: str | Path) -> int:
    """Load the LoRA weights of a Lightning checkpoint into `policy` (a PeftModel); returns the tensor count.

    The checkpoint's `state_dict` keys are the LightningModule's (`policy.base_model.model...lora_A...`).
    Every LoRA parameter of `policy` must be in it and every checkpoint tensor must fit: a different
    rank or different target modules is an error, never a silent half-load.
    """
    ckpt = _torch_load(path)
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path} has no `state_dict`: not a Lightning checkpoint")
    weights = {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}
    if not weights:
        raise ValueError(f"{path}: no `policy.`-prefixed weights in its state_dict (keys: {list(state)[:3]})")
    lora = {name for name, _ in policy.named_parameters() if "lora_" in name}
    missing = sorted(lora - set(weights))
    try:
        result = policy.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shape mismatch: another rank
        raise ValueError(f"{path} does not fit this policy (different LoRA rank?): {err}") from None
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit this policy: {len(missing)} LoRA weights missing (e.g. {missing[:2]}), "
            f"unexpected {list(result.unexpected_keys)[:3]}; build the policy with the run's LoRA settings "
            "(--config <run>/tb/config.yaml or --policy.lora_r / --policy.target_modules)"
        )
    return len(weights)


def load_model(policy_cfg, adapter: str | None = None, ckpt: str | None = None, device: str = "auto"):
    """(model in eval mode, tokenizer, short name): zero-shot base, base + saved adapter, or a checkpoint."""
    if adapter and ckpt:
        raise ValueError("give --adapter or --ckpt, not both")
    tokenizer = load_tokenizer(policy_cfg)
    if ckpt:
        model = build_policy(policy_cfg)
        n = load_checkpoint_weights(model, ckpt)
        log.info("loaded %d LoRA tensors from %s", n, ckpt)
        name = f"ckpt:{Path(ckpt).parent.name}/{Path(ckpt).stem}"
    else:
        if policy_cfg.adapter_path and not adapter:
            log.info("zero-shot: ignoring policy.adapter_path=%s (pass --adapter to use it)", policy_cfg.adapter_path)
        model = load_base_model(policy_cfg)
        if adapter:
            model = load_adapter(model, adapter, trainable=False)
        name = f"adapter:{Path(adapter).name}" if adapter else "zero-shot"
    if not is_quantised(model):  # 4-bit weights were placed while loading
        model = model.to(resolve_device(device))
    return model.eval(), tokenizer, name
