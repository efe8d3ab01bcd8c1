"""Exact resume: SIGKILL a real training run mid-way, on one process or on two (DDP on gloo), resume it
from its last checkpoint, and check that every rank trained on exactly the samples an uninterrupted run
trains on, in the same order, sampled the same completions, and ends with the same adapter weights.
Also: a crash during a save leaves the previous checkpoint loadable, and checkpoints never unpickle code.

`RECZERO_RESUME_TRIES=N` repeats the kill N times per process count (after alternating checkpoints,
at a random point of the following step): the README's reliability table.
"""

from __future__ import annotations

import json
import os
import random
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
MAX_STEPS = 6
EVERY = 2  # checkpoint interval
TRIES = int(os.environ.get("RECZERO_RESUME_TRIES", "1"))


def _command(model_dir: Path, out: Path, cache: Path, devices: int, extra: list[str] = ()) -> list[str]:
    ddp = ["--trainer.strategy=ddp", "--trainer.accelerator=cpu"] if devices > 1 else []
    return [
        sys.executable, "-m", "reczero", "fit", "--config=configs/grpo.yaml",
        f"--model.init_args.policy.model={model_dir}",
        "--model.init_args.rollout.max_new_tokens=24",
        "--model.init_args.rollout.group_size=4",
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
        f"--trainer.callbacks.init_args.every_n_train_steps={EVERY}",
        f"--trainer.max_steps={MAX_STEPS}", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false", f"--trainer.devices={devices}",
        *ddp,
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


def _logs(out: Path, devices: int) -> list[Path]:
    return [out / "rollouts.jsonl"] + [out / f"rollouts.jsonl.rank{r}" for r in range(1, devices)]


def _kill_after(
    model_dir: Path, out: Path, cache: Path, devices: int, checkpoint: int, delay: float, extra: list[str] = ()
) -> bool:
    """Start a run and SIGKILL all its processes `delay` seconds after `checkpoint` is written; False
    when the run had already finished by then (nothing was interrupted)."""
    proc = subprocess.Popen(
        _command(model_dir, out, cache, devices, extra),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # DDP's rank 1 is a child of rank 0: kill the whole group
    )
    target, last = out / "ckpt" / f"step{checkpoint:04d}.ckpt", out / "ckpt" / "last.ckpt"

    def saved() -> bool:  # `last.ckpt` is written after the step's own file: wait for both
        try:
            return last.stat().st_mtime_ns >= target.stat().st_mtime_ns
        except FileNotFoundError:
            return False

    deadline = time.time() + 300
    while not saved() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    try:
        assert saved(), proc.stderr.read().decode()[-3000:] if proc.poll() is not None else "no checkpoint in time"
        time.sleep(delay)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return not (out / "adapter").exists()


@pytest.mark.parametrize(
    ("devices", "dtype"), [(1, "float32"), (2, "float32"), (1, "bfloat16")], ids=["1-fp32", "2-fp32", "1-bf16"]
)
def test_sigkill_and_resume_is_exact(tmp_path, tiny_model_dir, devices, dtype):
    cache = tmp_path / "cache"
    full = tmp_path / "full"
    precision = [f"--model.init_args.policy.dtype={dtype}"]
    done = subprocess.run(
        _command(tiny_model_dir, full, cache, devices, precision), cwd=REPO, env=_env(), capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    expected = [_steps(log) for log in _logs(full, devices)]
    assert all(sorted(e) == list(range(1, MAX_STEPS + 1)) for e in expected), "every rank logs every step"
    if devices > 1:
        for step in expected[0]:  # the ranks train on different prompts, each group sampled on its own rank
            assert not set(expected[0][step][0]) & set(expected[1][step][0])
    a = load_file(full / "adapter" / "adapter_model.safetensors")
    early = torch.load(full / "ckpt" / f"step{EVERY:04d}.ckpt", weights_only=True)["state_dict"]
    early = {k.removeprefix("policy.").replace(".default.", "."): v for k, v in early.items()}
    assert early.keys() == a.keys()
    assert any(not torch.equal(early[k], a[k]) for k in a), "training must have moved the adapter after the kill"

    rng = random.Random(devices)
    for attempt in range(TRIES):
        checkpoint = EVERY * (1 + attempt % (MAX_STEPS // EVERY - 1))
        delay = rng.uniform(0.0, 1.5) if attempt else 0.0
        while True:  # a delay past the run's end interrupts nothing: try again with half of it
            broken = tmp_path / f"broken{attempt}-{delay:.4f}"
            if _kill_after(tiny_model_dir, broken, cache, devices, checkpoint, delay, precision):
                break
            assert delay > 0.01, "the run finished before the kill: nothing was tested"
            delay /= 2
        resumed = subprocess.run(
            _command(tiny_model_dir, broken, cache, devices, [*precision, "--ckpt_path=last"]),
            cwd=REPO,
            env=_env(),
            capture_output=True,
        )
        assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
        for log in _logs(broken, devices):  # the resumed run continues after a checkpoint, it does not start over
            steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
            again = [b for a, b in zip(steps, steps[1:]) if b <= a]
            assert not again or again[0] > EVERY, f"try {attempt}: the resumed run restarted at step {again[0]}"
        got = [_steps(log) for log in _logs(broken, devices)]
        assert got == expected, (
            f"try {attempt}: every rank of the resumed run must see the same samples in the same order, and "
            "sample the same completions"
        )
        b = load_file(broken / "adapter" / "adapter_model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=f"try {attempt}: {key}")


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


def test_remote_checkpoint_paths_save_load_and_resume(tmp_path, tiny_model_dir):
    """fsspec URLs (here `memory://`) work as they do with Lightning's own checkpoint IO: a run saves its
    checkpoints there and another resumes from one; a local `file://` URL saves atomically too."""
    import fsspec
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from tiny import synthetic_data

    from reczero.data.render import PromptConfig
    from reczero.modules.grpo_module import GRPOModule
    from reczero.policy.factory import PolicyConfig
    from reczero.rollout.record import RolloutConfig

    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.ones(2)}, f"file://{tmp_path}/local/a.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "local" / "a.ckpt")["w"], torch.ones(2))

    prompt = PromptConfig(max_prompt_tokens=1536)

    def run(max_steps: int, ckpt_path: str | None = None) -> L.Trainer:
        module = GRPOModule(
            policy=PolicyConfig(model=str(tiny_model_dir), lora_r=4),
            prompt=prompt,
            rollout=RolloutConfig(group_size=2, max_new_tokens=4),
            micro_batch_size=2,
        )
        data = synthetic_data(tiny_model_dir, prompt, tmp_path / "cache")
        trainer = L.Trainer(
            accelerator="cpu", max_steps=max_steps, logger=False, num_sanity_val_steps=0, limit_val_batches=0,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
            plugins=[AtomicCheckpointIO()],
            callbacks=[ModelCheckpoint(dirpath="memory://reczero-test/ckpt", save_last=True, every_n_train_steps=1)],
        )  # fmt: skip
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return trainer

    run(2)
    memory = fsspec.filesystem("memory")
    assert memory.exists("/reczero-test/ckpt/last.ckpt")
    assert not (Path.cwd() / "memory:").exists(), "a remote URL must not become a local folder"
    saved = AtomicCheckpointIO().load_checkpoint("memory://reczero-test/ckpt/last.ckpt")
    assert saved["global_step"] == 2
    resumed = run(3, ckpt_path="memory://reczero-test/ckpt/last.ckpt")
    assert resumed.global_step == 3
    memory.rm("/reczero-test", recursive=True)
