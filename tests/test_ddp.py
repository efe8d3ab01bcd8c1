"""Scale-out through Lightning's own DDP strategy: two CPU processes on gloo, tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _expected_shards(data_args: list[str], steps: int) -> list[list[list[int]]]:
    """Per rank, per step: the sample ids DDP's sampler gives that rank (`ResumableSampler`, 2 replicas)."""
    from reczero.cli import command_parser
    from reczero.data.batching import ResumableSampler
    from reczero.data.stats import stats_command

    parser = command_parser("data stats", stats_command)
    dm = parser.instantiate(parser.parse_args(["--config=configs/grpo.yaml", *data_args])).data
    positions = dm.positions("train")
    out = []
    for rank in range(2):
        order = list(ResumableSampler(len(positions), num_replicas=2, rank=rank, seed=dm.seed))
        b = dm.batch_size
        out.append([[positions[i] for i in order[k * b : (k + 1) * b]] for k in range(steps)])
    return out


def test_two_process_ddp_shards_the_prompts_as_the_sampler_assigns_them(tmp_path, tiny_model_dir):
    out = tmp_path / "ddp"
    data_args = [
        f"--data.cache_dir={tmp_path / 'cache'}", "--data.prompt.max_prompt_tokens=1536",
        "--data.source.synthetic_users=40", "--data.source.synthetic_items=20", "--data.samples.min_history=2",
    ]  # fmt: skip
    cmd = [
        sys.executable, "-m", "reczero", "fit", "--config=configs/grpo.yaml",
        f"--model.init_args.policy.model={tiny_model_dir}",
        "--model.init_args.rollout.max_new_tokens=8", "--model.init_args.val_max_new_tokens=8",
        "--model.init_args.rollout.group_size=4",
        f"--model.init_args.adapter_dir={out / 'adapter'}",
        f"--model.init_args.rollout_log={out / 'rollouts.jsonl'}",
        *data_args,
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
    expected = _expected_shards(data_args, 2)
    for step in range(2):
        ids0, ids1 = entries[0][step]["sample_ids"], entries[1][step]["sample_ids"]
        assert not set(ids0) & set(ids1), "the ranks train on different prompts"
        # each rank sampled (and scored) the groups of exactly the prompts its sampler shard holds
        assert [ids0, ids1] == [expected[0][step], expected[1][step]]
    assert (out / "adapter" / "adapter_config.json").exists()
    assert list((out / "tb").glob("events.out.tfevents.*")), "rank 0 writes TensorBoard logs"
