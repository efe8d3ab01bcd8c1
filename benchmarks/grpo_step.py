"""One GRPO step, reczero vs TRL's GRPOTrainer, same model, prompts and settings, side by side.

    pip install -e '.[bench]'           # TRL 1.16.0 (never a dependency of reczero itself)
    python benchmarks/grpo_step.py --path ../shared/data/ml-100k [--runs 2] [--steps 3] [--warmup 1]

Both engines run in their own process (so peak RSS is each one's own): the bundled
SmolLM2-135M-Instruct in fp32 on the CPU, LoRA r=16 / alpha 32 on all linear layers, one prompt per
step, G=8 completions, at most 128 new tokens, temperature 1.0, top-p 1.0, beta 0 (no reference),
one optimisation pass per rollout, token-mean loss, lr 1e-5, the paper's reward, seed 0, and the
same rendered ML-100K training prompts in the same order. Per step: wall time split into generation
and optimisation, generated tokens/s, trained (prompt + completion) tokens/s; medians over the steps
after each run's warm-up, pooled over `--runs` runs (the engines alternate). Prints a table with
ratios (also per run); writes benchmarks/results/grpo_step.json (`--out`).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
G, MAX_NEW, LR, SEED = 8, 128, 1e-5, 0


def prompt_set(path: str, count: int):
    """The first `count` training prompts in our sampler's order, rendered, with their targets."""
    from reczero.data.datamodule import RatingDataModule
    from reczero.data.sources import SourceConfig
    from reczero.policy.factory import PolicyConfig, load_tokenizer

    tok = load_tokenizer(PolicyConfig())
    dm = RatingDataModule(source=SourceConfig(format="movielens-100k", path=path), batch_size=1, seed=SEED)
    dm.set_tokenizer(tok)
    dm.setup()
    loader = iter(dm.train_dataloader())
    out = []
    for _ in range(count):
        batch = next(loader)
        pos = int(batch["sample_id"][0])
        out.append((dm.dataset("train").prompt_text(dm.positions("train").index(pos)), float(batch["target"][0])))
    return dm, tok, out


def run_reczero(path: str, steps: int) -> dict:
    import lightning as L
    import torch

    from reczero import rewards
    from reczero.data.datamodule import RatingDataModule
    from reczero.data.sources import SourceConfig
    from reczero.modules.grpo_module import GRPOModule
    from reczero.policy.factory import PolicyConfig
    from reczero.rollout.record import RolloutConfig

    L.seed_everything(SEED)
    policy = PolicyConfig(lora_r=16, lora_alpha=32)
    dm = RatingDataModule(
        source=SourceConfig(format="movielens-100k", path=path), tokenizer=policy.model, batch_size=1, seed=SEED
    )
    module = GRPOModule(
        policy=policy,
        rollout=RolloutConfig(group_size=G, max_new_tokens=MAX_NEW, temperature=1.0, stop_strings=()),
        reward=rewards.RewardSpec(),
        learning_rate=LR,
        micro_batch_size=G,
    )
    rows: list[dict] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rec = pl_module.rollout
            total = time.perf_counter() - self.start
            rows.append(
                {
                    "step_s": total,
                    "generation_s": rec.generation_seconds,
                    "optimization_s": total - rec.generation_seconds,
                    "generated_tokens": int(rec.completion_mask.sum()),
                    "trained_tokens": int(rec.attention_mask.sum()),
                }
            )

    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, limit_val_batches=0,
        num_sanity_val_steps=0, enable_progress_bar=False, callbacks=[Timer()],
    )  # fmt: skip
    torch.manual_seed(SEED)
    trainer.fit(module, datamodule=dm)
    return {"steps": rows}


def run_trl(path: str, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reczero import rewards
    from reczero.policy.bundled import bundled_model_dir

    _, tok, prompts = prompt_set(path, steps)
    data = Dataset.from_dict({"prompt": [p for p, _ in prompts], "target": [t for _, t in prompts]})
    scale = __import__("reczero.data.schema", fromlist=["SCALES"]).SCALES["1-5"]
    spec = rewards.RewardSpec()

    def reward(completions, target, **kwargs):
        return [rewards.score(c, t, scale, spec).total for c, t in zip(completions, target)]

    model = AutoModelForCausalLM.from_pretrained(bundled_model_dir(), dtype=torch.float32)
    rows: list[dict] = []
    gen_time = [0.0]

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()
            gen_time[0] = 0.0

        def on_step_end(self, args, state, control, **kwargs):
            rows.append({"step_s": time.perf_counter() - self.start, "generation_s": gen_time[0]})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs and rows:
                rows[-1]["generated_tokens"] = logs["completions/mean_length"] * G

    config = GRPOConfig(
        output_dir="/tmp/trl-bench", use_cpu=True, bf16=False, fp16=False, per_device_train_batch_size=G,
        num_generations=G, max_completion_length=MAX_NEW, temperature=1.0, top_p=1.0, beta=0.0,
        learning_rate=LR, max_steps=steps, logging_steps=1, report_to=[], shuffle_dataset=False,
        gradient_accumulation_steps=1, save_strategy="no", seed=SEED, loss_type="dapo",
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model, reward_funcs=[reward], args=config, train_dataset=data, processing_class=tok,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        callbacks=[Timer()],
    )  # fmt: skip
    inner = trainer.model
    original = inner.generate

    def timed_generate(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            gen_time[0] += time.perf_counter() - start

    inner.generate = timed_generate
    trainer.train()
    for row, (prompt, _) in zip(rows, prompts):
        row["optimization_s"] = row["step_s"] - row["generation_s"]
        prompt_tokens = len(tok(prompt, add_special_tokens=False)["input_ids"])
        row["trained_tokens"] = G * prompt_tokens + row.get("generated_tokens", 0)
    return {"steps": rows}


def child(engine: str, path: str, steps: int) -> None:
    result = run_reczero(path, steps) if engine == "reczero" else run_trl(path, steps)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result))


def summarise(result: dict, warmup: int) -> dict:
    steps = result["steps"][warmup:]
    med = lambda key: statistics.median(s[key] for s in steps)  # noqa: E731
    return {
        "step_s": med("step_s"),
        "generation_s": med("generation_s"),
        "optimization_s": med("optimization_s"),
        "generated_tokens_per_s": statistics.median(s.get("generated_tokens", 0) / s["step_s"] for s in steps),
        "trained_tokens_per_s": statistics.median(s["trained_tokens"] / s["step_s"] for s in steps),
        "peak_rss_gib": result["peak_rss_gib"],
        "measured_steps": len(steps),
    }


def pool(results: list[dict], warmup: int) -> dict:
    """The measured steps of several runs as one result (warm-up steps dropped); peak RSS: the max."""
    steps = [step for r in results for step in r["steps"][warmup:]]
    return {"steps": steps, "peak_rss_gib": max(r["peak_rss_gib"] for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", default="../shared/data/ml-100k")
    ap.add_argument("--steps", type=int, default=3, help="measured steps per engine")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2, help="runs per engine, alternating; medians pool their steps")
    ap.add_argument("--out", default="grpo_step.json", help="file name under benchmarks/results/")
    ap.add_argument("--engine", choices=["reczero", "trl"], default=None, help="(internal) run one engine")
    args = ap.parse_args()
    total = args.steps + args.warmup
    if args.engine:
        child(args.engine, args.path, total)
        return
    raw: dict[str, list[dict]] = {"reczero": [], "trl": []}
    for run in range(args.runs):  # engines alternate, so a slow spell of the machine hits both
        for engine in ("reczero", "trl"):
            cmd = [sys.executable, __file__, "--engine", engine, "--path", args.path]
            cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{engine} failed:\n{done.stderr[-4000:]}")
            raw[engine].append(json.loads(line[len("RESULT ") :]))
            print(f"run {run + 1}/{args.runs} {engine}: {summarise(raw[engine][-1], args.warmup)}", flush=True)
    summary = {engine: summarise(pool(results, args.warmup), 0) for engine, results in raw.items()}
    ours, theirs = summary["reczero"], summary["trl"]
    print(
        f"GRPO step, bundled SmolLM2-135M fp32 CPU, G={G}, 1 prompt/step, <= {MAX_NEW} new tokens; medians of "
        f"{ours['measured_steps']} steps ({args.runs} runs x {args.steps} after {args.warmup} warm-up each)"
    )
    print("| engine | step s | generation s | optimisation s | generated tok/s | trained tok/s | peak RSS GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in summary.items():
        print(
            f"| {name} | {row['step_s']:.1f} | {row['generation_s']:.1f} | {row['optimization_s']:.1f} | "
            f"{row['generated_tokens_per_s']:.1f} | {row['trained_tokens_per_s']:.1f} | {row['peak_rss_gib']:.2f} |"
        )
    speedup = theirs["step_s"] / ours["step_s"]
    throughput = ours["trained_tokens_per_s"] / theirs["trained_tokens_per_s"]
    per_run = [
        summarise(r, args.warmup)["trained_tokens_per_s"] / summarise(t, args.warmup)["trained_tokens_per_s"]
        for r, t in zip(raw["reczero"], raw["trl"])
    ]
    rss = ours["peak_rss_gib"] / theirs["peak_rss_gib"]
    print(f"reczero vs TRL: step {speedup:.2f}x faster, trained tokens/s {throughput:.2f}x, peak RSS ratio {rss:.2f}")
    print("trained tokens/s ratio per run: " + ", ".join(f"{x:.2f}x" for x in per_run))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "summary": summary,
        "speedup_step": speedup,
        "speedup_trained_tokens_per_s": throughput,
        "speedup_trained_tokens_per_s_per_run": per_run,
        "peak_rss_ratio": rss,
        "raw": raw,
        "runs": args.runs,
        "steps": args.steps,
        "warmup": args.warmup,
    }
    target = RESULTS / args.out
    target.write_text(json.dumps(out, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
