"""Exact resume: SIGKILL a real training run mid-way, resume it from its last checkpoint, and check
that it trained on exactly the samples an uninterrupted run trains on, in the same order, and ends
with the same adapter weights. Also: a crash during a save leaves the previous checkpoint loadable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reczero.modules.checkpointing import AtomicCheckpointIO

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 10


def _command(model_dir: Path, out: Path, cache: Path, extra: list[str] = ()) -> list[str]:
    return [
        sys.executable, "-m", "reczero", "fit", "--config=configs/grpo.yaml",
        f"--model.init_args.policy.model={model_dir}",
        "--model.init_args.rollout.max_new_tokens=24",
        "--model.init_args.learning_rate=0.01",
        "--model.init_args.weight_decay=0.1",  # moves LoRA A every step even where advantages are 0
        "--model.init_args.reward.format_shaping=0.9",
        f"--model.init_args.adapter_dir={out / 'adapter'}",
        f"--model.init_args.rollout_log={out / 'rollouts.jsonl'}",
        f"--data.cache_dir={cache}",
        "--data.source.synthetic_users=40", "--data.source.synthetic_items=20",
        "--data.samples.min_history=2", "--data.prompt.max_prompt_tokens=1536",
        # a nearly complete answer as the prefix: random tiny-model text then lands on different tag
        # counts, so rewards differ within groups and the adapter really trains
        "--data.prompt.response_prefix=<analyze user>a</analyze user><analyze item>b</analyze item><match>c</match>",
        f"--trainer.default_root_dir={out}", "--trainer.logger=false",
        f"--trainer.callbacks.init_args.dirpath={out / 'ckpt'}",
        "--trainer.callbacks.init_args.every_n_train_steps=3",
        f"--trainer.max_steps={MAX_STEPS}", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _steps(log: Path) -> dict[int, tuple[list[int], str]]:
    """step -> (sample ids, hash of the sampled completions); a step written twice (before the kill,
    again after the resume) keeps the last."""
    steps: dict[int, tuple[list[int], str]] = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        steps[entry["step"]] = (entry["sample_ids"], entry["completions_sha1"])
    return steps


def test_sigkill_and_resume_is_exact(tmp_path, tiny_model_dir):
    cache = tmp_path / "cache"
    full, broken = tmp_path / "full", tmp_path / "broken"
    subprocess.run(_command(tiny_model_dir, full, cache), cwd=REPO, env=_env(), check=True, capture_output=True)

    proc = subprocess.Popen(
        _command(tiny_model_dir, broken, cache),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    target = broken / "ckpt" / "step0003.ckpt"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert target.exists(), proc.stderr.read().decode()[-3000:] if proc.poll() is not None else "no checkpoint in time"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (broken / "adapter").exists(), "the run finished before the kill: nothing was tested"
    killed_at = max(_steps(broken / "rollouts.jsonl"))
    assert killed_at < MAX_STEPS

    resumed = subprocess.run(
        _command(tiny_model_dir, broken, cache, ["--ckpt_path=last"]), cwd=REPO, env=_env(), capture_output=True
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]

    expected, got = _steps(full / "rollouts.jsonl"), _steps(broken / "rollouts.jsonl")
    assert sorted(expected) == list(range(1, MAX_STEPS + 1))
    assert got == expected, (
        "the resumed run must see the same samples in the same order, and sample the same completions"
    )
    a = load_file(full / "adapter" / "adapter_model.safetensors")
    b = load_file(broken / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    early = torch.load(target, weights_only=True)["state_dict"]  # the adapter at step 3
    early = {k.removeprefix("policy.").replace(".default.", "."): v for k, v in early.items()}
    assert early.keys() == a.keys()
    assert any(not torch.equal(early[k], a[k]) for k in a), "training must have moved the adapter after step 3"
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def dying_save(obj, fh, *args, **kwargs):
        fh.write(b"partial bytes of a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    loaded = io.load_checkpoint(path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no temporary file may be left behind"


def test_checkpoints_load_without_unpickling_code(tmp_path):
    io = AtomicCheckpointIO()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        io.load_checkpoint(tmp_path / "evil.ckpt")
