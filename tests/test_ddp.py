"""Scale-out through Lightning's own DDP strategy: two CPU processes on gloo, tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_two_process_ddp_keeps_groups_on_one_rank(tmp_path, tiny_model_dir):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "reczero", "fit", "--config=configs/grpo.yaml",
        f"--model.init_args.policy.model={tiny_model_dir}",
        "--model.init_args.rollout.max_new_tokens=8", "--model.init_args.val_max_new_tokens=8",
        "--model.init_args.rollout.group_size=4",
        f"--model.init_args.adapter_dir={out / 'adapter'}",
        f"--model.init_args.rollout_log={out / 'rollouts.jsonl'}",
        f"--data.cache_dir={tmp_path / 'cache'}", "--data.max_prompt_tokens=1536",
        "--data.source.synthetic_users=40", "--data.source.synthetic_items=20", "--data.samples.min_history=2",
        f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.callbacks.init_args.dirpath={out / 'ckpt'}",
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
        "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-4000:]

    logs = [out / "rollouts.jsonl", out / "rollouts.jsonl.rank1"]
    entries = [[json.loads(line) for line in log.read_text().splitlines()] for log in logs]
    assert [len(e) for e in entries] == [2, 2], "each rank runs both steps"
    for step in range(2):
        ids0, ids1 = entries[0][step]["sample_ids"], entries[1][step]["sample_ids"]
        assert not set(ids0) & set(ids1), "the ranks train on different prompts"
        for rank in range(2):  # every prompt's whole group of 4 was sampled and scored on its own rank
            entry = entries[rank][step]
            assert len(entry["rewards"]) == 4 * len(entry["sample_ids"])
    assert (out / "adapter" / "adapter_config.json").exists()
    assert list((out / "tb").glob("events.out.tfevents.*")), "rank 0 writes TensorBoard logs"
