"""GRPO on one CUDA GPU with the recipes' QLoRA settings: step time, its generation / optimisation split,
generated and trained tokens/s, peak GPU memory; the same in plain bf16; what `dtype: auto` picks; and the
bf16-vs-fp32 drift of the training log-probs on the same completions.

    python benchmarks/gpu_check.py        # the bundled SmolLM2-135M-Instruct (real weights): qlora, then bf16
    python benchmarks/gpu_check.py --run smollm2-135m/qlora smollm2-135m/bf16 qwen2.5-1.5b/qlora \
        --tokenizer DIR --out F.json      # random-weight models of those architectures

Run it from a checkout whose venv holds the CUDA build of torch (README, "GPU machines"); nothing is
downloaded. Each case trains the way the `configs/qwen2.5-*-qlora.yaml` recipes do: G = 8 completions of
8 prompts a step (embedded synthetic data), temperature 1, beta 0, token-mean loss, LoRA r=32 on every
linear layer, micro-batches of 8 (the shared-prefix forward on), bf16-mixed autocast; "qlora" loads the
base in 4-bit NF4 with double quantisation and bf16 compute, "bf16" loads it with `dtype: auto`.

`--run ARCH/CASE ...` names the runs. ARCH `bundled` is the bundled model; any other builds the model
from that architecture (`ARCHS`) with random weights instead (written once to a
temporary folder, then loaded by the same `PolicyConfig` path a hub model takes). Random weights never
write the stop string `</rate>` and reach EOS only by chance, so nearly every completion runs to
`max_new_tokens`: a fixed, worst-case workload. Every answer then fails the format, all advantages are 0,
and `skip_zero_advantage` would skip the whole forward and backward; it is off here, so every step does
the full optimisation a learning step does. The architecture's vocabulary is the tokenizer's (SmolLM2's
49,152 for the Qwen shapes too: sampled ids must decode), so a Qwen-shaped model's embedding and head
are smaller than the real one's; the JSON gives each model's parameter count.

The JSON is rewritten after each case, so a run cut short keeps what it measured; `--budget-s` skips
the cases that would start after it and ends a running one early (fewer measured steps, recorded).
Without CUDA it stops with a message saying so, unless `--accelerator cpu` (a rehearsal of the script,
not a measurement).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import logging
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

RESULTS = Path(__file__).parent / "results"
log = logging.getLogger("gpu_check")

# published shapes (the models' config.json); vocab_size and the special tokens come from the tokenizer
ARCHS: dict[str, dict | None] = {
    "smollm2-135m": None,  # the tokenizer folder's own config.json (the bundled model's)
    "qwen2.5-1.5b": {
        "model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
        "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
    },
    "qwen2.5-7b": {
        "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
    },
    "tiny-llama": {  # the CPU rehearsal's
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": True,
    },
}  # fmt: skip
SETTINGS = {
    "prompts_per_step": 8,
    "group_size": 8,
    "max_new_tokens": 256,
    "micro_batch_size": 8,
    "max_prompt_tokens": 1024,
    "lora_r": 32,
    "lora_alpha": 64,
    "learning_rate": 2e-5,
}
CASES = {  # PolicyConfig settings of each case
    "qlora": {"load_in_4bit": True, "bnb_compute_dtype": "bfloat16", "dtype": "auto"},
    "bf16": {"load_in_4bit": False, "dtype": "auto"},
}
LOGGED = ("generation_seconds", "optimization_seconds", "completion_len_mean", "truncated_frac")
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "lightning", "tokenizers", "accelerate", "numpy")


def require_cuda() -> None:
    """Stop with the reason and the fix where this check cannot run."""
    if not torch.cuda.is_available():
        sys.exit(
            f"gpu_check.py needs a CUDA GPU, and torch {torch.__version__} sees none "
            f"(torch.cuda.is_available() is False; built for CUDA {torch.version.cuda}). Run it on a machine "
            "with an NVIDIA GPU, in a venv holding the CUDA build of torch (README: GPU machines), or rehearse "
            "it with --accelerator cpu."
        )


def versions() -> dict[str, str | None]:
    found = {"python": platform.python_version(), "cuda": torch.version.cuda}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def arch_config(arch: str, tokenizer):
    """The transformers config of `arch` (`ARCHS`) on `tokenizer`'s vocabulary and special tokens."""
    from transformers import AutoConfig

    if ARCHS[arch] is None:
        return AutoConfig.from_pretrained(tokenizer.name_or_path)
    special = {f"{t}_token_id": getattr(tokenizer, f"{t}_token_id") for t in ("bos", "eos", "pad")}
    return AutoConfig.for_model(**ARCHS[arch], vocab_size=len(tokenizer), **special)


def count_parameters(config) -> int:
    """The model's parameter count, from its shapes alone (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())


def random_checkpoint(arch: str, tokenizer_dir: str, dest: Path, device: str) -> Path:
    """A Hugging Face folder: `arch` with random bf16 weights (initialised on `device`) and the tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = arch_config(arch, tokenizer)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    del model
    return dest


class Measure(L.Callback):
    """Per measured step the logged split, the synced wall time and the tokens; the peak memory counted
    from the first measured step; the run stopped once the deadline has passed (after one measured step)."""

    def __init__(self, warmup: int, cuda: bool, deadline: float):
        self.warmup, self.cuda, self.deadline = warmup, cuda, deadline
        self.steps: list[dict] = []
        self.fit_start = time.perf_counter()
        self.setup_seconds: float | None = None
        self.started = 0.0

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync()
        if self.setup_seconds is None:
            self.setup_seconds = time.perf_counter() - self.fit_start
        if batch_idx == self.warmup and self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync()
        wall = time.perf_counter() - self.started
        if batch_idx >= self.warmup:
            metrics, record = trainer.callback_metrics, pl_module.rollout
            step = {k: float(metrics[f"train/{k}"]) for k in LOGGED}
            step["wall_seconds"] = wall
            step["generated_tokens"] = int(record.completion_mask.sum())
            step["trained_tokens"] = int(record.attention_mask.sum())
            self.steps.append(step)
        if self.steps and time.perf_counter() > self.deadline:  # one measured step at least
            trainer.should_stop = True


def run_case(model_dir: str, case: str, settings: dict, steps: int, warmup: int, accelerator: str, deadline: float):
    """`warmup + steps` GRPO steps of `case`; (result, the trained module: its policy and last rollout)."""
    from reczero import rewards
    from reczero.data.datamodule import RatingDataModule
    from reczero.data.render import PromptConfig
    from reczero.data.sources import SourceConfig
    from reczero.modules.grpo_module import GRPOModule
    from reczero.policy.factory import PolicyConfig
    from reczero.rollout.record import RolloutConfig

    cuda = accelerator == "gpu"
    precision = "bf16-mixed" if not cuda or torch.cuda.is_bf16_supported() else "16-mixed"
    policy = PolicyConfig(model=model_dir, lora_r=settings["lora_r"], lora_alpha=settings["lora_alpha"], **CASES[case])
    prompt = PromptConfig(max_prompt_tokens=settings["max_prompt_tokens"])
    L.seed_everything(0)
    module = GRPOModule(
        policy=policy,
        prompt=prompt,
        rollout=RolloutConfig(group_size=settings["group_size"], max_new_tokens=settings["max_new_tokens"]),
        reward=rewards.RewardSpec(),
        learning_rate=settings["learning_rate"],
        micro_batch_size=settings["micro_batch_size"],
        skip_zero_advantage=False,  # random weights: every advantage is 0; run the full optimisation anyway
        log_completions_every_n_steps=0,
    )
    data = RatingDataModule(
        source=SourceConfig(format="synthetic"),
        prompt=prompt,
        tokenizer=model_dir,
        batch_size=settings["prompts_per_step"],
        use_cache=False,  # no `datasets` cache: the synthetic set builds in a second
    )
    measure = Measure(warmup, cuda, deadline)
    left_over = torch.cuda.memory_allocated() / 2**30 if cuda else None  # what earlier cases did not free
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, precision=precision, max_steps=warmup + steps,
        logger=False, enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[measure],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    dtypes: dict[str, int] = {}
    for p in module.policy.parameters():
        dtypes[str(p.dtype)] = dtypes.get(str(p.dtype), 0) + p.numel()
    result = {
        "case": case,
        "policy": {**CASES[case], "lora_r": settings["lora_r"], "lora_alpha": settings["lora_alpha"]},
        "precision": precision,
        "shared_prefix": module._shared_prefix(),
        "parameter_dtypes": dtypes,
        "setup_seconds": measure.setup_seconds,
        "measured_steps": len(measure.steps),
        "steps": measure.steps,
    }
    for key in (*LOGGED, "wall_seconds", "generated_tokens", "trained_tokens"):
        result[key] = statistics.median(s[key] for s in measure.steps)
    result["step_seconds"] = result["generation_seconds"] + result["optimization_seconds"]
    result["generated_tokens_per_s"] = result["generated_tokens"] / result["generation_seconds"]
    result["trained_tokens_per_s"] = result["trained_tokens"] / result["optimization_seconds"]
    if cuda:
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        result["allocated_before_gib"] = left_over
    return result, module


def logprob_drift(module, accelerator: str) -> dict:
    """The training log-probs of the last rollout's completions, bf16 (autocast, as trained) against the same
    weights in fp32: how far bf16 moves them, and the share of tokens whose ratio leaves the 0.2 clip range."""
    from reczero.policy.forward import completion_logprobs

    policy = module.policy
    device = next(p for p in policy.parameters()).device
    record = module.rollout.to(device)
    mask = record.completion_mask  # [N, C]
    size = module.hparams.micro_batch_size
    chunks = [torch.arange(i, min(i + size, mask.shape[0]), device=device) for i in range(0, mask.shape[0], size)]
    temperature = module.rollout_config.temperature
    policy.eval()

    def logprobs(autocast: bool) -> torch.Tensor:  # [N, C]
        kind = "cuda" if accelerator == "gpu" else "cpu"
        with torch.no_grad(), torch.autocast(kind, dtype=torch.bfloat16, enabled=autocast):
            return torch.cat([completion_logprobs(policy, record, c, temperature).float() for c in chunks])

    low = logprobs(autocast=True)
    policy.float()
    high = logprobs(autocast=False)
    diff = (low - high)[mask]  # [T] over the completion tokens
    ratio = diff.exp()
    per_sequence = ((low - high) * mask).sum(-1)  # [N]
    return {
        "tokens": int(mask.sum()),
        "mean_abs_logprob_diff": float(diff.abs().mean()),
        "max_abs_logprob_diff": float(diff.abs().max()),
        "mean_logprob_diff": float(diff.mean()),
        "max_abs_sequence_logprob_diff": float(per_sequence.abs().max()),
        "tokens_ratio_outside_clip_0.2": float(((ratio - 1).abs() > 0.2).float().mean()),
        "mean_fp32_token_logprob": float(high[mask].mean()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run",
        nargs="+",
        default=["bundled/qlora", "bundled/bf16"],
        metavar="ARCH/CASE",
        help=f"ARCH: bundled or {', '.join(ARCHS)} (random weights); CASE: {', '.join(CASES)}",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer folder of the random-weight models "
        "(default: the bundled model's; its config.json is smollm2-135m's shape)",
    )
    parser.add_argument("--steps", type=int, default=3, help="measured steps per case")
    parser.add_argument("--warmup", type=int, default=1, help="steps run before measuring")
    parser.add_argument("--budget-s", type=float, default=330.0, help="no case starts after this many seconds")
    parser.add_argument("--accelerator", choices=("gpu", "cpu"), default="gpu", help="cpu: a rehearsal")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=NUMBER", help="override SETTINGS")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/...)")
    args = parser.parse_args(argv)  # fmt: skip
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    runs = [tuple(r.split("/", 1)) for r in args.run]
    for run in runs:
        if len(run) != 2 or (run[0] != "bundled" and run[0] not in ARCHS) or run[1] not in CASES:
            parser.error(f"--run {'/'.join(run)}: expected ARCH/CASE, ARCH bundled or one of {sorted(ARCHS)}, "
                         f"CASE one of {sorted(CASES)}")  # fmt: skip
    unknown = [kv for kv in args.set if kv.split("=", 1)[0] not in SETTINGS or "=" not in kv]
    if unknown:
        parser.error(f"--set {unknown}: expected KEY=NUMBER with KEY one of {sorted(SETTINGS)}")
    settings = {**SETTINGS, **{k: type(SETTINGS[k])(float(v)) for k, v in (kv.split("=", 1) for kv in args.set)}}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    cuda = args.accelerator == "gpu"
    if cuda:
        require_cuda()
    start = time.perf_counter()
    deadline = start + args.budget_s
    from transformers import AutoConfig

    from reczero.policy.factory import resolve_dtype, resolve_model_path

    gpu = torch.cuda.get_device_name(0) if cuda else "cpu"
    auto = {"dtype_auto": str(resolve_dtype("auto")), "bf16_supported": cuda and torch.cuda.is_bf16_supported()}
    log.info("device %s; PolicyConfig dtype: auto -> %s; versions %s", gpu, auto["dtype_auto"], versions())
    random = any(arch != "bundled" for arch, _ in runs)
    report: dict = {
        "gpu": gpu,
        "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
        "versions": versions(),
        "auto": auto,
        "settings": settings,
        "warmup_steps": args.warmup,
        "steps_asked": args.steps,
        "workload": (
            "random weights: completions run to max_new_tokens unless EOS comes by chance (a fixed, worst-case "
            "workload); every answer fails the format, so skip_zero_advantage is off to run the full optimisation"
            if random else "the bundled model's real weights; skip_zero_advantage off"
        ),
        "models": {},
        "skipped": [],
    }  # fmt: skip
    out = args.out or RESULTS / f"gpu_check_{re.sub(r'[^a-z0-9]+', '-', gpu.lower()).strip('-')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        report["total_seconds"] = time.perf_counter() - start
        out.write_text(json.dumps(report, indent=2) + "\n")

    tokenizer_dir = args.tokenizer or resolve_model_path("bundled:smollm2-135m-instruct")
    dirs: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        for arch, case in runs:
            if time.perf_counter() > deadline:
                report["skipped"].append(f"{arch}/{case}: not started, past --budget-s")
                continue
            if arch not in dirs:
                made = time.perf_counter()
                if arch == "bundled":
                    dirs[arch] = resolve_model_path("bundled:smollm2-135m-instruct")
                else:
                    dirs[arch] = str(
                        random_checkpoint(arch, tokenizer_dir, Path(tmp) / arch, "cuda" if cuda else "cpu")
                    )
                config = AutoConfig.from_pretrained(dirs[arch])
                report["models"][arch] = {
                    "parameters": count_parameters(config),
                    "vocab_size": config.vocab_size,
                    "build_seconds": time.perf_counter() - made,
                    "cases": {},
                }
            entry = report["models"][arch]
            result, module = run_case(dirs[arch], case, settings, args.steps, args.warmup, args.accelerator, deadline)
            entry["cases"][case] = result
            log.info("%s/%s: %s", arch, case, {k: v for k, v in result.items() if k != "steps"})
            if case == "bf16" and "drift" not in report:
                report["drift"] = {"arch": arch, **logprob_drift(module, args.accelerator)}
                log.info("bf16 vs fp32 log-probs: %s", report["drift"])
            del module
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            save()
    save()
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
