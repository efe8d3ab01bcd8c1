"""The GPU recipes rehearsed on the CPU: every `configs/qwen2.5-*.yaml` (found by glob, so a config added
later is covered) runs 2 optimizer steps through `reczero fit` with its own settings - 4-bit NF4 where it
says so (bitsandbytes on the CPU), bf16 autocast, gradient checkpointing as configured, its group
size, prompt batch and micro-batches, checkpoints and the adapter export - and one validation batch.

What changes, so that a CPU runs it in seconds: the model is a tiny random Qwen2 (built in-process,
no download), the data is the embedded synthetic set with 3 history records a side and 2 prompts a
batch, completions are cut to 4 new tokens, validation to one batch of 8, and an SFT config trains
on rule-based traces (`reczero coldstart --teacher template`) with 2 batches accumulated per step; a
config that starts from a saved adapter gets a tiny one. (bitsandbytes' 4-bit CPU kernels are slow:
this is where the time goes.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tiny import bitsandbytes_cpu_usable, save_tiny_qwen2

from reczero.policy.adapters import save_adapter
from reczero.policy.factory import PolicyConfig, build_policy

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs").glob("qwen2.5-*.yaml"))


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    return save_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


def test_recipes_are_found():
    assert len(RECIPES) >= 5, [p.name for p in RECIPES]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_gpu_recipe_runs_two_steps_on_the_cpu(recipe, tmp_path, tiny_qwen):
    from reczero.cli import main

    config = yaml.safe_load(recipe.read_text())
    init = config["model"]["init_args"]
    policy = init["policy"]
    if policy.get("load_in_4bit") and not bitsandbytes_cpu_usable():
        pytest.skip("bitsandbytes 4-bit does not run on this CPU")
    sft = config["model"]["class_path"].endswith("SFTModule")
    out = tmp_path / "run"
    args = [
        f"--config={recipe}",
        f"--model.init_args.policy.model={tiny_qwen}",
        f"--model.init_args.adapter_dir={out / 'adapter'}",
        "--model.init_args.val_max_new_tokens=4",
        "--data.source.format=synthetic", "--data.source.path=null",
        "--data.source.synthetic_users=40", "--data.source.synthetic_items=20",
        "--data.samples.min_history=2", "--data.samples.user_history=3", "--data.samples.item_history=3",
        "--data.prompt.max_prompt_tokens=1536", "--data.batch_size=2", "--data.eval_batch_size=8",
        f"--data.cache_dir={tmp_path / 'cache'}",
        "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.callbacks.init_args.dirpath={out / 'ckpt'}",
        "--trainer.callbacks.init_args.every_n_train_steps=1",
    ]  # fmt: skip
    if sft:
        traces = tmp_path / "traces.jsonl"
        data = [a for a in args if a.startswith("--data.")]
        coldstart = ["--config", str(recipe), *data, "--teacher", "template", "--num-traces", "24"]
        main(["coldstart", *coldstart, "--output", str(traces), f"--model.init_args.policy.model={tiny_qwen}"])
        args += [f"--data.traces={traces}", "--data.heldout_traces=2"]
        # 22 traces, 2 a batch, 2 accumulated per step (the recipe's 4 would double the CPU time): one
        # validation in the first epoch
        args += ["--trainer.accumulate_grad_batches=2", "--trainer.val_check_interval=4"]
    else:
        args += ["--model.init_args.rollout.max_new_tokens=4", "--trainer.val_check_interval=2"]
        args += [f"--model.init_args.rollout_log={out / 'rollouts.jsonl'}"]
    if policy.get("adapter_path"):  # RecOne's GRPO stage starts from the SFT adapter
        start = build_policy(PolicyConfig(model=str(tiny_qwen), lora_r=policy.get("lora_r", 16)))
        args.append(f"--model.init_args.policy.adapter_path={save_adapter(start, tmp_path / 'sft-adapter')}")
    main(["fit", *args])

    last = torch.load(out / "ckpt" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2
    assert last["state_dict"] and all("lora_" in k for k in last["state_dict"])
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    saved = last["hyper_parameters"]["policy"]
    assert saved["load_in_4bit"] == policy.get("load_in_4bit", False)
    assert saved["gradient_checkpointing"] == policy.get("gradient_checkpointing", False)
    if not sft:
        steps = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
        group = init["rollout"]["group_size"]
        assert [len(s["rewards"]) for s in steps] == [2 * group] * 2
        assert init["micro_batch_size"] % group == 0, "the recipe must keep the shared-prefix forward on"
