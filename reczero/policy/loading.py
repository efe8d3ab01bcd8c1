"""A model for training, evaluation, prediction and teaching: the policy GRPO trains, the zero-shot base,
base + saved adapter, or a checkpoint.

`training_policy(cfg, reference)` builds the policy the way `GRPOModule` trains it (with the SFT
adapter merged under a fresh LoRA for `reference: sft`). `load_model(policy_cfg, adapter=..., ckpt=...)`
returns the model in eval mode on `resolve_device`, its tokenizer and a short name for reports. A
Lightning checkpoint's LoRA weights (`policy.`-prefixed state_dict keys) go into a policy built like
the run that wrote them (`load_checkpoint_weights`); a rank or target mismatch is an error, never a
half-load. Checkpoints load with `weights_only=True`; pickled objects only with `trust_pickle`.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from pathlib import Path

import torch

from reczero.policy.adapters import load_adapter, merged_base, stacked_config
from reczero.policy.factory import PolicyConfig, build_policy, is_quantised, load_base_model, load_tokenizer

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> dict:
    """A checkpoint file, loaded with `weights_only=True` (tensors and plain containers, no code).

    A file that also holds pickled Python objects is refused unless `trust_pickle`: unpickling runs
    code named in the file, so only files you trust may be loaded that way.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise ValueError(
                f"{path} holds pickled Python objects besides tensors, which a weights-only load refuses "
                f"({str(err).splitlines()[0]}); pass --trust-pickle to unpickle it, for files you trust only"
            ) from None
        log.warning("%s holds Python objects besides tensors; unpickling it (--trust-pickle)", path)
        return torch.load(path, map_location="cpu", weights_only=False)


def load_checkpoint_weights(policy: torch.nn.Module, path: str | Path, trust_pickle: bool = False) -> int:
    """Load the LoRA weights of a Lightning checkpoint into `policy` (a PeftModel); returns the tensor count.

    The checkpoint's `state_dict` keys are the LightningModule's (`policy.base_model.model...lora_A...`).
    Every LoRA parameter of `policy` must be in it and every checkpoint tensor must fit: a different
    rank or different target modules is an error, never a silent half-load.
    """
    return _load_weights(policy, read_checkpoint(path, trust_pickle), path)


def _load_weights(policy: torch.nn.Module, ckpt: dict, path: str | Path) -> int:
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


def training_policy(cfg: PolicyConfig, reference: str = "base"):
    """The policy as GRPO training builds it (`GRPOModule.reference`): with "sft", the saved adapter
    `cfg.adapter_path` merged into the base weights and a fresh LoRA on top; else `build_policy(cfg)`."""
    if reference == "sft":
        return build_policy(stacked_config(cfg), base_model=merged_base(cfg))
    return build_policy(cfg)


def _checkpoint_policy(policy_cfg: PolicyConfig, ckpt: dict, path: str | Path):
    """The policy a checkpoint's LoRA weights belong to, built like the run that wrote it: in the dtype it
    recorded (where `policy.dtype` is `auto`), and for a `reference: sft` run, which trained its LoRA on
    top of the SFT adapter merged into the base, with that adapter merged first."""
    hparams = (ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None) or {}
    recorded = ((ckpt.get("reczero_hyper_parameters") if isinstance(ckpt, dict) else None) or {}).get("policy_dtype")
    if policy_cfg.dtype == "auto" and recorded not in (None, "auto"):
        log.info("%s: built in the dtype its run computed in, %s", path, recorded)
        policy_cfg = dataclasses.replace(policy_cfg, dtype=recorded)
    reference = hparams.get("reference", "base")
    if reference != "sft":
        return training_policy(policy_cfg)
    saved = hparams.get("policy") or {}
    saved_adapter = saved.get("adapter_path") if isinstance(saved, dict) else getattr(saved, "adapter_path", None)
    adapter = policy_cfg.adapter_path or saved_adapter
    if not adapter:
        raise ValueError(
            f"{path} was trained with reference: sft (a LoRA on top of the SFT adapter), and no SFT adapter is "
            "known: pass --policy.adapter_path=<the run's policy.adapter_path> or the run's --config"
        )
    log.info("%s: reference sft run, merging the SFT adapter %s under its LoRA", path, adapter)
    return training_policy(dataclasses.replace(policy_cfg, adapter_path=adapter), "sft")


def load_model(
    policy_cfg, adapter: str | None = None, ckpt: str | None = None, device: str = "auto", trust_pickle: bool = False
):
    """(model in eval mode, tokenizer, short name): zero-shot base, base + saved adapter, or a checkpoint.

    A checkpoint's LoRA goes into a policy built the way its run built it (`_checkpoint_policy`).
    """
    if adapter and ckpt:
        raise ValueError("give --adapter or --ckpt, not both")
    tokenizer = load_tokenizer(policy_cfg)
    if ckpt:
        state = read_checkpoint(ckpt, trust_pickle)
        model = _checkpoint_policy(policy_cfg, state, ckpt)
        n = _load_weights(model, state, ckpt)
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
