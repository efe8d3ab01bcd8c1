"""GRPO on one CUDA GPU with the recipe's QLoRA settings: step time, generated tokens/s, peak GPU memory.

    python benchmarks/gpu_check.py [--steps 5] [--warmup 1] [--out benchmarks/results/gpu_check_<gpu>.json]

Run it from a checkout whose venv holds the CUDA build of torch (README, "GPU machines"); nothing is
downloaded. It trains the bundled SmolLM2-135M-Instruct (`bundled:smollm2-135m-instruct`) the way the
`configs/qwen2.5-*-qlora.yaml` recipes train a Qwen2.5: 4-bit NF4 base with double quantisation, bf16
compute and bf16-mixed autocast, LoRA r=32 on every linear layer, 8 prompts x G=8 completions a step,
up to 256 new tokens, micro-batches of 8 (the shared-prefix forward on), beta 0, token-mean loss, on
the embedded synthetic data. After `--warmup` steps it measures `--steps` steps: per step the
generation and optimisation seconds and the tokens/s that `GRPOModule` logs, then the medians, and
the peak GPU memory (allocated and reserved) over the measured steps. The JSON names the GPU, the
versions and the settings. On a machine without CUDA it stops with a message saying so.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
SETTINGS = {
    "model": "bundled:smollm2-135m-instruct",
    "load_in_4bit": True,
    "bnb_compute_dtype": "bfloat16",
    "precision": "bf16-mixed",
    "lora_r": 32,
    "lora_alpha": 64,
    "prompts_per_step": 8,
    "group_size": 8,
    "max_new_tokens": 256,
    "micro_batch_size": 8,
    "max_prompt_tokens": 1024,
}
LOGGED = (
    "step_seconds",
    "generation_seconds",
    "optimization_seconds",
    "generated_tokens_per_s",
    "trained_tokens_per_s",
)


def require_cuda() -> None:
    """Stop with the reason and the fix where this check cannot run."""
    if not torch.cuda.is_available():
        sys.exit(
            f"gpu_check.py needs a CUDA GPU, and torch {torch.__version__} sees none "
            f"(torch.cuda.is_available() is False; built for CUDA {torch.version.cuda}). Run it on a machine "
            "with an NVIDIA GPU, in a venv holding the CUDA build of torch 2.13.0 (README: GPU machines)."
        )
    if not torch.cuda.is_bf16_supported():
        sys.exit(f"gpu_check.py measures bf16 QLoRA; {torch.cuda.get_device_name(0)} does not support bf16")


def measure(settings: dict, steps: int, warmup: int, accelerator: str = "gpu", cache_dir: str | None = None) -> dict:
    """Run `warmup + steps` GRPO steps with `settings`; the medians of the measured steps and peak memory."""
    import lightning as L

    from reczero import rewards
    from reczero.data.datamodule import RatingDataModule
    from reczero.data.sources import SourceConfig
    from reczero.modules.grpo_module import GRPOModule
    from reczero.policy.factory import PolicyConfig
    from reczero.rollout.record import RolloutConfig

    per_step: list[dict] = []
    cuda = accelerator == "gpu"

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup and cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx >= warmup:
                metrics = trainer.callback_metrics
                per_step.append({k: float(metrics[f"train/{k}"]) for k in LOGGED})

    L.seed_everything(0)
    module = GRPOModule(
        policy=PolicyConfig(
            model=settings["model"],
            load_in_4bit=settings["load_in_4bit"],
            bnb_compute_dtype=settings["bnb_compute_dtype"],
            lora_r=settings["lora_r"],
            lora_alpha=settings["lora_alpha"],
        ),
        rollout=RolloutConfig(group_size=settings["group_size"], max_new_tokens=settings["max_new_tokens"]),
        reward=rewards.RewardSpec(),
        learning_rate=2e-5,
        micro_batch_size=settings["micro_batch_size"],
        log_completions_every_n_steps=0,
    )
    data = RatingDataModule(
        source=SourceConfig(format="synthetic"),
        max_prompt_tokens=settings["max_prompt_tokens"],
        batch_size=settings["prompts_per_step"],
        cache_dir=cache_dir,
    )
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, precision=settings["precision"], max_steps=warmup + steps,
        logger=False, enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    result = {k: statistics.median(s[k] for s in per_step) for k in LOGGED}
    result["steps"] = per_step
    if cuda:
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="measured steps")
    parser.add_argument("--warmup", type=int, default=1, help="steps run before measuring")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    require_cuda()
    name = torch.cuda.get_device_name(0)
    result = measure(SETTINGS, args.steps, args.warmup)
    report = {
        "gpu": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "settings": SETTINGS,
        "warmup_steps": args.warmup,
        "measured_steps": args.steps,
        **result,
    }
    out = args.out or RESULTS / f"gpu_check_{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{name}: step {result['step_seconds']:.2f} s (generation {result['generation_seconds']:.2f} s), "
        f"{result['generated_tokens_per_s']:.0f} generated tokens/s, peak {result['peak_allocated_gib']:.2f} GiB "
        f"allocated ({result['peak_reserved_gib']:.2f} reserved); wrote {out}"
    )
    return report


if __name__ == "__main__":
    main()
