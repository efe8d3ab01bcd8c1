"""One GRPO step, reczero vs TRL's GRPOTrainer, side by side: per precision, per reward workload.

    pip install -e '.[bench]'        # TRL 1.16.0 (never a dependency of reczero itself)
    python benchmarks/grpo_step.py --path ../shared/data/ml-100k [--runs 3] [--steps 3] [--warmup 1]
        [--precisions fp32,bf16] [--workloads shaped,strict] [--trl-variant default]
    python benchmarks/grpo_step.py --path synthetic --model DIR --engines reczero --runs 1 --steps 1 \
        --warmup 0 --max-new-tokens 4 --out /tmp/x.json   # a smoke run (tests/test_bench.py)
    python benchmarks/grpo_step.py --explore-trl default,no_checkpointing,static_cache,continuous_batching  # TRL options

Each engine runs in its own process (peak RSS is each one's own), with the same settings: the
bundled SmolLM2-135M-Instruct, LoRA r=16 / alpha 32 on all linear layers, one prompt per step, G=8
completions, at most 128 new tokens (stopping at EOS or where the reward template's answer ends,
`</rate>`: reczero's rollout always stops there, and TRL gets it as `generation_kwargs.stop_strings`), temperature 1.0, top-p 1.0, beta 0, one
optimisation pass, token-mean loss, lr 1e-5, seed 0, and the same ML-100K training prompts in the
same order, rendered as `make train-grpo` renders them (6 + 6 history records, `<analyze user>` as
the answer's start, the one-shot example). Workloads: "shaped" scores with the default recipe's
format shaping (0.8), so groups have reward spread and no step can be skipped; "strict" with the
paper's reward. Precisions: "fp32" (reczero `dtype: float32`, TRL fp32) and "bf16" (reczero
`dtype: bfloat16`, TRL `bf16=True`), bf16 by default only where the CPU has native bf16.

Per step: wall time split into generation and optimisation, generated tokens/s, trained (prompt +
completion) tokens/s, the process's CPU time (with `--threads 1` the time an idle core would take,
which a machine shared with other jobs cannot show in wall time), the share of groups with zero
reward spread. Medians over the steps after each
run's warm-up; the engines alternate run by run, ratios are reported per run and pooled. Writes
benchmarks/results/grpo_step.json (`--out`); `--explore-trl` times TRL's CPU options instead
(benchmarks/results/trl_variants.json). Peak memory broken down: benchmarks/memory.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
G, MAX_NEW, MAX_PROMPT, LR, SEED = 8, 128, 512, 1e-5, 0
BUNDLED = "bundled:smollm2-135m-instruct"  # reczero.policy.bundled.BUNDLED, without importing reczero here
RESPONSE_PREFIX = "<analyze user>"
WORKLOADS = {"shaped": 0.8, "strict": 0.0}  # format_shaping of the reward
# TRL options a careful CPU user would try; "default" is GRPOConfig's (gradient checkpointing on)
TRL_VARIANTS = {
    "default": {},
    "no_checkpointing": {"gradient_checkpointing": False},
    "static_cache": {"cache_implementation": "static"},
    "continuous_batching": {"use_transformers_continuous_batching": True},
    "bf16_weights": {},  # the model loaded in bf16 (with bf16=True): meaningful in bf16 only
}


def source(path: str):
    """ML-100K at `path`; "synthetic": the built-in synthetic set (smoke runs, no data needed)."""
    from reczero.data.sources import SourceConfig

    return (
        SourceConfig(format="synthetic") if path == "synthetic" else SourceConfig(format="movielens-100k", path=path)
    )


def stop_strings(spec) -> list[str]:
    """Where the reward template's answers end: both engines stop there (and at EOS)."""
    from reczero import rewards

    return list(rewards.get_template(spec.template).stop_strings)


def prompt_config(max_prompt_tokens: int = MAX_PROMPT):
    """How `make train-grpo` renders prompts (configs/grpo.yaml's `data.prompt`)."""
    from reczero.data.render import PromptConfig

    return PromptConfig(
        max_prompt_tokens=max_prompt_tokens, review_chars=80, response_prefix=RESPONSE_PREFIX, answer_example=True
    )


def datamodule(path: str, model: str = BUNDLED, max_prompt_tokens: int = MAX_PROMPT):
    from reczero.data.datamodule import RatingDataModule
    from reczero.data.samples import SampleConfig

    return RatingDataModule(
        source=source(path),
        samples=SampleConfig(user_history=6, item_history=6),
        prompt=prompt_config(max_prompt_tokens),
        tokenizer=model,
        batch_size=1,
        seed=SEED,
    )


def prompt_set(path: str, model: str, count: int, max_prompt_tokens: int = MAX_PROMPT):
    """The first `count` training prompts in our sampler's order: (rendered text, target, the texts its
    reasoning must not copy), as reczero's rollout scores them."""
    from reczero.policy.factory import PolicyConfig, load_tokenizer

    tok = load_tokenizer(PolicyConfig(model=model))
    dm = datamodule(path, model, max_prompt_tokens)
    dm.set_tokenizer(tok)
    dm.setup()
    loader = iter(dm.train_dataloader())
    out = []
    for _ in range(count):
        batch = next(loader)
        pos = int(batch["sample_id"][0])
        text = dm.dataset("train").prompt_text(dm.positions("train").index(pos))
        out.append((text, float(batch["target"][0]), tuple(batch["copy_sources"][0])))
    return tok, out


def run_reczero(
    path: str, model: str, steps: int, precision: str, shaping: float, max_new: int, max_prompt_tokens: int
) -> dict:
    import lightning as L
    import torch

    from reczero import grpo, rewards
    from reczero.modules import rollout_callback
    from reczero.modules.grpo_module import GRPOModule
    from reczero.policy.factory import PolicyConfig
    from reczero.rollout.record import RolloutConfig

    L.seed_everything(SEED)
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[precision]
    spec = rewards.RewardSpec(format_shaping=shaping)
    module = GRPOModule(
        policy=PolicyConfig(model=model, lora_r=16, lora_alpha=32, dtype=dtype),
        prompt=prompt_config(max_prompt_tokens),
        rollout=RolloutConfig(
            group_size=G, max_new_tokens=max_new, temperature=1.0, stop_strings=tuple(stop_strings(spec))
        ),
        reward=spec,
        learning_rate=LR,
        micro_batch_size=G,
        val_max_new_tokens=max_new,  # the bench never validates
    )
    rows: list[dict] = []
    gen_cpu = [0.0]
    original = rollout_callback.build_rollout

    def timed_rollout(*args, **kwargs):
        start = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            gen_cpu[0] = time.process_time() - start

    rollout_callback.build_rollout = timed_rollout

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rec = pl_module.rollout
            total = time.perf_counter() - self.start
            rows.append(
                {
                    "step_s": total,
                    "generation_s": rec.generation_seconds,
                    "optimization_s": total - rec.generation_seconds,
                    "step_cpu_s": time.process_time() - self.cpu,
                    "generation_cpu_s": gen_cpu[0],
                    "generated_tokens": int(rec.completion_mask.sum()),
                    "trained_tokens": int(rec.attention_mask.sum()),
                    "zero_std_groups": grpo.zero_std_group_fraction(rec.rewards, G),
                }
            )

    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, limit_val_batches=0,
        num_sanity_val_steps=0, enable_progress_bar=False, callbacks=[Timer()],
    )  # fmt: skip
    torch.manual_seed(SEED)
    trainer.fit(module, datamodule=datamodule(path, model, max_prompt_tokens))
    return {"steps": rows}


def run_trl(
    path: str,
    model_name: str,
    steps: int,
    precision: str,
    shaping: float,
    variant: str,
    max_new: int,
    max_prompt_tokens: int,
) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reczero import rewards
    from reczero.policy.factory import resolve_model_path
    from reczero.scale import SCALES

    tok, prompts = prompt_set(path, model_name, steps, max_prompt_tokens)
    data = Dataset.from_dict({"prompt": [p for p, _, _ in prompts], "index": list(range(len(prompts)))})
    spec = rewards.RewardSpec(format_shaping=shaping)

    def reward(completions, index, **kwargs):  # with the answer's prefix and the copy check, as reczero scores
        return [
            rewards.score(RESPONSE_PREFIX + c, prompts[i][1], SCALES["1-5"], spec, prompts[i][2]).total
            for c, i in zip(completions, index)
        ]

    weights = torch.bfloat16 if variant == "bf16_weights" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(model_name), dtype=weights)
    rows: list[dict] = []
    gen_time = [0.0, 0.0]  # wall, CPU

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start, self.cpu = time.perf_counter(), time.process_time()
            gen_time[:] = [0.0, 0.0]

        def on_step_end(self, args, state, control, **kwargs):
            rows.append(
                {
                    "step_s": time.perf_counter() - self.start,
                    "generation_s": gen_time[0],
                    "step_cpu_s": time.process_time() - self.cpu,
                    "generation_cpu_s": gen_time[1],
                }
            )

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs and rows:
                rows[-1]["generated_tokens"] = logs["completions/mean_length"] * G
                rows[-1]["zero_std_groups"] = logs.get("frac_reward_zero_std")

    options = {k: v for k, v in TRL_VARIANTS[variant].items()}
    config = GRPOConfig(
        output_dir="/tmp/trl-bench", use_cpu=True, bf16=precision == "bf16", fp16=False,
        per_device_train_batch_size=G, num_generations=G, max_completion_length=max_new, temperature=1.0,
        top_p=1.0, beta=0.0, learning_rate=LR, max_steps=steps, logging_steps=1, report_to=[],
        shuffle_dataset=False, gradient_accumulation_steps=1, save_strategy="no", seed=SEED, loss_type="dapo",
        generation_kwargs={"stop_strings": stop_strings(spec)}, **options,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model, reward_funcs=[reward], args=config, train_dataset=data, processing_class=tok,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        callbacks=[Timer()],
    )  # fmt: skip
    inner = trainer.model
    for name in ("generate", "generate_batch"):  # the default path, and the continuous-batching one
        original = getattr(inner, name, None)
        if original is None:
            continue

        def timed(*args, _original=original, _name=name, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            if _name == "generate":  # transformers needs the tokenizer to match stop strings
                kwargs.setdefault("tokenizer", tok)
            try:
                return ends_with_eos(_original(*args, **kwargs), kwargs.get("input_ids"), tok)
            finally:
                gen_time[0] += time.perf_counter() - start
                gen_time[1] += time.process_time() - cpu

        setattr(inner, name, timed)
    trainer.train()
    for row, (prompt, _, _) in zip(rows, prompts):
        row["optimization_s"] = row["step_s"] - row["generation_s"]
        prompt_tokens = len(tok(prompt, add_special_tokens=False)["input_ids"])
        row["trained_tokens"] = G * prompt_tokens + row.get("generated_tokens", 0)
    return {"steps": rows}


def ends_with_eos(sequences, input_ids, tok):
    """transformers pads a row that a stop string ended; TRL cuts completions at the first EOS only, so
    the padding becomes EOS (a no-op where pad is EOS, as in SmolLM2) and is not trained as completion."""
    if input_ids is None or not hasattr(sequences, "shape") or tok.pad_token_id == tok.eos_token_id:
        return sequences
    completion = sequences[:, input_ids.shape[1] :]  # [B, C] view: the fix writes through
    completion[completion == tok.pad_token_id] = tok.eos_token_id
    return sequences


def child(args) -> None:
    import torch

    shaping = WORKLOADS[args.workload]
    start_load = os.getloadavg()
    if args.engine == "reczero":
        result = run_reczero(
            args.path,
            args.model,
            args.steps + args.warmup,
            args.precision,
            shaping,
            args.max_new_tokens,
            args.max_prompt_tokens,
        )
    else:
        result = run_trl(
            args.path,
            args.model,
            args.steps + args.warmup,
            args.precision,
            shaping,
            args.trl_variant,
            args.max_new_tokens,
            args.max_prompt_tokens,
        )
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result["threads"] = torch.get_num_threads()
    result["loadavg_1min"] = [start_load[0], os.getloadavg()[0]]
    print("RESULT " + json.dumps(result))


def summarise(result: dict, warmup: int) -> dict:
    steps = result["steps"][warmup:]
    med = lambda key: statistics.median(s[key] for s in steps)  # noqa: E731
    zero = [s["zero_std_groups"] for s in steps if s.get("zero_std_groups") is not None]
    return {
        "step_s": med("step_s"),
        "generation_s": med("generation_s"),
        "optimization_s": med("optimization_s"),
        "generated_tokens_per_s": statistics.median(s.get("generated_tokens", 0) / s["step_s"] for s in steps),
        "trained_tokens_per_s": statistics.median(s["trained_tokens"] / s["step_s"] for s in steps),
        "step_cpu_s": med("step_cpu_s"),
        "generation_cpu_s": med("generation_cpu_s"),
        "trained_tokens_per_cpu_s": statistics.median(s["trained_tokens"] / s["step_cpu_s"] for s in steps),
        "zero_std_groups": statistics.mean(zero) if zero else None,
        "peak_rss_gib": result["peak_rss_gib"],
        "measured_steps": len(steps),
    }


def pool(results: list[dict], warmup: int) -> dict:
    """The measured steps of several runs as one result (warm-up steps dropped); peak RSS: the max."""
    steps = [step for r in results for step in r["steps"][warmup:]]
    return {"steps": steps, "peak_rss_gib": max(r["peak_rss_gib"] for r in results)}


def launch(args, engine: str, precision: str, workload: str, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--engine", engine, "--path", args.path, "--precision", precision]
    cmd += ["--workload", workload, "--trl-variant", variant, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--max-new-tokens", str(args.max_new_tokens), "--max-prompt-tokens", str(args.max_prompt_tokens)]
    cmd += ["--model", args.model]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else None
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": done.stderr[-4000:]}
    return json.loads(line[len("RESULT ") :])


def machine() -> dict:
    import torch

    from reczero.policy import precision

    model = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "bf16_flags": list(precision.cpu_bf16_flags()),
        "last_level_cache_mib": precision.last_level_cache_bytes() / 2**20,
        "dtype_auto": precision.cpu_choice().reason,  # what `dtype: auto` picks here, at this process's threads
        "torch": torch.__version__,
    }


def compare(args, workload: str, precision: str, variant: str) -> dict:
    """`args.runs` alternating runs of the engines (both by default) on one workload and precision."""
    engines = args.engines.split(",")
    raw: dict[str, list[dict]] = {engine: [] for engine in engines}
    for run in range(args.runs):
        for engine in engines if run % 2 == 0 else engines[::-1]:
            result = launch(args, engine, precision, workload, variant)
            if "error" in result:
                raise SystemExit(f"{engine} ({workload}, {precision}) failed:\n{result['error']}")
            raw[engine].append(result)
            print(f"  run {run + 1}/{args.runs} {engine}: {summarise(result, args.warmup)}", flush=True)
    summary = {engine: summarise(pool(results, args.warmup), 0) for engine, results in raw.items()}
    if len(engines) < 2:
        return {"summary": summary, "raw": raw}
    per_run = [
        {
            "trained_tokens_per_s": summarise(r, args.warmup)["trained_tokens_per_s"]
            / summarise(t, args.warmup)["trained_tokens_per_s"],
            "trained_tokens_per_cpu_s": summarise(r, args.warmup)["trained_tokens_per_cpu_s"]
            / summarise(t, args.warmup)["trained_tokens_per_cpu_s"],
            "step": summarise(t, args.warmup)["step_s"] / summarise(r, args.warmup)["step_s"],
            "peak_rss": r["peak_rss_gib"] / t["peak_rss_gib"],
        }
        for r, t in zip(raw["reczero"], raw["trl"])
    ]
    ours, theirs = summary["reczero"], summary["trl"]
    pooled = {
        "trained_tokens_per_s": ours["trained_tokens_per_s"] / theirs["trained_tokens_per_s"],
        "trained_tokens_per_cpu_s": ours["trained_tokens_per_cpu_s"] / theirs["trained_tokens_per_cpu_s"],
        "step": theirs["step_s"] / ours["step_s"],
        "peak_rss": ours["peak_rss_gib"] / theirs["peak_rss_gib"],
    }
    return {"summary": summary, "pooled_ratios": pooled, "per_run_ratios": per_run, "raw": raw}


def table(name: str, block: dict) -> str:
    lines = [
        f"{name}: medians of {block['summary']['reczero']['measured_steps']} measured steps per engine",
        "| engine | step s | generation s | optimisation s | generated tok/s | trained tok/s | step CPU s | trained tok/CPU-s | zero-spread groups | peak RSS GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for engine, row in block["summary"].items():
        zero = "-" if row["zero_std_groups"] is None else f"{row['zero_std_groups']:.2f}"
        lines.append(
            f"| {engine} | {row['step_s']:.1f} | {row['generation_s']:.1f} | {row['optimization_s']:.1f} | "
            f"{row['generated_tokens_per_s']:.1f} | {row['trained_tokens_per_s']:.1f} | {row['step_cpu_s']:.1f} | "
            f"{row['trained_tokens_per_cpu_s']:.1f} | {zero} | {row['peak_rss_gib']:.2f} |"
        )
    if "pooled_ratios" not in block:
        return "\n".join(lines)
    p = block["pooled_ratios"]
    runs = ", ".join(f"{r['trained_tokens_per_s']:.2f}x" for r in block["per_run_ratios"])
    cpu_runs = ", ".join(f"{r['trained_tokens_per_cpu_s']:.2f}x" for r in block["per_run_ratios"])
    lines.append(
        f"reczero / TRL: trained tokens/s {p['trained_tokens_per_s']:.2f}x pooled ({runs} per run), "
        f"per CPU-second {p['trained_tokens_per_cpu_s']:.2f}x ({cpu_runs}), step {p['step']:.2f}x faster, "
        f"peak RSS {p['peak_rss']:.2f}x TRL's"
    )
    return "\n".join(lines)


def header(args) -> dict:
    """What a results file records besides the results: the machine, the command, the settings."""
    keys = ("runs", "steps", "warmup", "trl_variant", "max_new_tokens", "max_prompt_tokens", "model", "engines")
    settings = {key: getattr(args, key) for key in keys} | {"threads": args.threads or "default"}
    return {"machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": settings}


def best_trl_variant(precision: str, path: Path = RESULTS / "trl_variants.json") -> str:
    """The TRL variant with the most trained tokens/s at `precision` in an `--explore-trl` result."""
    if not path.exists():
        raise SystemExit(f"--trl-variant best needs {path}: run --explore-trl first")
    timed = {
        key.split("/", 1)[1]: row["trained_tokens_per_s"]
        for key, row in json.loads(path.read_text())["variants"].items()
        if key.startswith(precision + "/") and "error" not in row
    }
    if not timed:
        raise SystemExit(f"{path} has no working {precision} variant")
    return max(timed, key=timed.get)


def explore_trl(args) -> None:
    """Each TRL variant once per precision (shaped workload), to pick TRL's best CPU configuration."""
    out: dict = {**header(args), "variants": {}}
    for precision in args.precisions.split(","):
        for variant in args.explore_trl.split(","):
            if variant == "bf16_weights" and precision != "bf16":
                continue
            result = launch(args, "trl", precision, "shaped", variant)
            key = f"{precision}/{variant}"
            out["variants"][key] = result if "error" in result else {**summarise(result, args.warmup), "raw": result}
            print(key, {k: v for k, v in out["variants"][key].items() if k != "raw"}, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trl_variants.json").write_text(json.dumps(out, indent=2))


def main() -> None:
    from reczero.policy.precision import cpu_bf16_flags

    ap = argparse.ArgumentParser()
    ap.add_argument("--path", default="../shared/data/ml-100k", help='ML-100K folder, or "synthetic"')
    ap.add_argument("--model", default=BUNDLED, help="policy model (a folder for smoke runs)")
    ap.add_argument("--engines", default="reczero,trl", help="comma-separated: reczero, trl")
    ap.add_argument("--steps", type=int, default=3, help="measured steps per run")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3, help="runs per engine, alternating; medians pool their steps")
    ap.add_argument("--precisions", default="fp32,bf16" if cpu_bf16_flags() else "fp32")
    ap.add_argument("--workloads", default="shaped,strict")
    ap.add_argument(
        "--trl-variant",
        default="default",
        choices=[*sorted(TRL_VARIANTS), "best"],
        help="TRL configuration; best: per precision, the fastest in trl_variants.json (--explore-trl)",
    )
    ap.add_argument("--explore-trl", default=None, help="comma-separated TRL variants to time instead")
    ap.add_argument("--max-new-tokens", type=int, default=MAX_NEW, help="per completion (lower: a quick check only)")
    ap.add_argument("--max-prompt-tokens", type=int, default=MAX_PROMPT, help="prompt budget (as configs/grpo.yaml)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in both engines (0: torch's default)")
    ap.add_argument("--out", default="grpo_step.json", help="file name under benchmarks/results/, or a path")
    ap.add_argument("--engine", choices=["reczero", "trl"], default=None, help="(internal) run one engine")
    ap.add_argument("--precision", default="fp32", help="(internal)")
    ap.add_argument("--workload", default="shaped", help="(internal)")
    args = ap.parse_args()
    if args.engine:
        child(args)
        return
    if args.explore_trl:
        explore_trl(args)
        return
    out = {**header(args), "results": {}}
    out_path = RESULTS / args.out  # an absolute --out stays as given
    for workload in args.workloads.split(","):
        for precision in args.precisions.split(","):
            variant = best_trl_variant(precision) if args.trl_variant == "best" else args.trl_variant
            if variant == "bf16_weights" and precision == "fp32":
                variant = "default"
            name = f"{workload} reward, {precision}, TRL {variant}"
            print(name, flush=True)
            block = compare(args, workload, precision, variant)
            out["results"][f"{workload}/{precision}"] = {"trl_variant": variant, **block}
            print(table(name, block), flush=True)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(out, indent=2))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
