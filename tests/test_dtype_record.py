"""One dtype per run: rank 0 resolves `policy.dtype: auto` and every rank takes its choice; the choice is
recorded in the checkpoint and the hyper-parameters, and a resume computes in it (`reczero.modules.base`).
Evaluation from a checkpoint builds its policy in the recorded dtype too."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_precision import CPUINFO, _cpuinfo
from tiny import synthetic_data

from reczero.data.render import PromptConfig
from reczero.modules.grpo_module import GRPOModule
from reczero.policy import precision
from reczero.policy.factory import PolicyConfig
from reczero.policy.loading import load_model
from reczero.rollout.record import RolloutConfig

REPO = Path(__file__).resolve().parents[1]


def test_two_ranks_take_rank_zeros_dtype_where_their_own_rules_differ(tmp_path, tiny_model_dir):
    """A real 2-process gloo group. Scenario 1: rank 0 has AMX (bf16), rank 1 AVX2 only (fp32); scenario 2
    the other way round. Each rank's own rule disagrees with the other's; both build in rank 0's dtype."""
    amx = _cpuinfo(tmp_path / "amx", CPUINFO["amx"])
    avx2 = _cpuinfo(tmp_path / "avx2", CPUINFO["avx2"])
    cpuinfos = {0: [amx, avx2], 1: [avx2, amx]}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "tests/dtype_ranks.py", str(rank), str(tmp_path / "group"), str(tiny_model_dir)]
            + [str(tmp_path), *map(str, cpuinfos[rank])],
            cwd=REPO,
            env=env,
            stderr=subprocess.PIPE,
        )
        for rank in (0, 1)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for scenario, expected in enumerate(["bfloat16", "float32"]):
        own = [ranks[r][scenario]["own_rule"] for r in (0, 1)]
        assert own[0] == expected and own[1] != expected, "each rank's own rule must disagree for this test"
        for rank in (0, 1):
            got = ranks[rank][scenario]
            assert got["config"] == got["hparams"] == expected, f"scenario {scenario}, rank {rank}"
            assert got["frozen"] == [f"torch.{expected}"], f"scenario {scenario}, rank {rank}: the weights"


class _Dtypes(L.Callback):
    """The dtype of the frozen base weights when training starts, and the module's recorded dtype."""

    def on_train_start(self, trainer, pl_module):
        self.frozen = {p.dtype for p in pl_module.policy.parameters() if not p.requires_grad}
        self.hparams = pl_module.hparams.policy.dtype
        self.logged = pl_module.hparams_initial["policy"].dtype


def _fit(tmp_path: Path, model_dir: Path, steps: int, ckpt_path: str | None = None, dtype: str = "auto"):
    prompt = PromptConfig(max_prompt_tokens=1536)
    module = GRPOModule(
        policy=PolicyConfig(model=str(model_dir), lora_r=4, dtype=dtype),
        prompt=prompt,
        rollout=RolloutConfig(group_size=2, max_new_tokens=4),
        micro_batch_size=2,
    )
    dtypes = _Dtypes()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, num_sanity_val_steps=0, limit_val_batches=0,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[dtypes, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)],
    )  # fmt: skip
    trainer.fit(module, datamodule=synthetic_data(model_dir, prompt, tmp_path / "cache"), ckpt_path=ckpt_path)
    return dtypes


def test_a_resume_keeps_the_recorded_dtype(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """Trained in bf16 (`auto` pinned to bf16 here); resumed where `auto` gives fp32: the resumed run computes
    in bf16, says so, and records bf16 again. An explicit dtype on resume is kept, with a warning."""
    monkeypatch.setenv(precision.PIN_VARIABLE, "bfloat16")
    first = _fit(tmp_path, tiny_model_dir, steps=1)
    assert first.frozen == {torch.bfloat16} and first.hparams == first.logged == "bfloat16"
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["reczero_hyper_parameters"]["policy_dtype"] == "bfloat16"
    assert saved["hyper_parameters"]["policy"]["dtype"] == "bfloat16"

    monkeypatch.setenv(precision.PIN_VARIABLE, "float32")
    with caplog.at_level(logging.INFO, logger="reczero"):
        resumed = _fit(tmp_path, tiny_model_dir, steps=2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.frozen == {torch.bfloat16} and resumed.hparams == resumed.logged == "bfloat16"
    assert "resuming in the checkpoint's dtype bfloat16 (this machine's rule gives float32)" in caplog.text
    again = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert again["global_step"] == 2 and again["reczero_hyper_parameters"]["policy_dtype"] == "bfloat16"

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reczero"):
        explicit = _fit(
            tmp_path, tiny_model_dir, steps=3, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), dtype="float32"
        )
    assert explicit.frozen == {torch.float32}
    assert "computed in bfloat16; this run computes in float32 (policy.dtype): not an exact resume" in caplog.text


def test_a_recorded_dtype_this_machine_cannot_run_stops_the_resume(tmp_path, monkeypatch):
    module = GRPOModule(policy=PolicyConfig(lora_r=4))
    module.policy_config = PolicyConfig(lora_r=4, dtype="float32")  # as `configure_model` leaves it
    module.policy = torch.nn.Linear(1, 1)  # built (not injected): the recorded dtype is checked

    def no_bf16(name):
        raise ValueError("this GPU does not support bfloat16")

    monkeypatch.setattr(precision, "check_runnable", no_bf16)
    checkpoint = {"reczero_hyper_parameters": {"policy_dtype": "bfloat16"}}
    with pytest.raises(ValueError, match="computed in bfloat16, but this GPU does not support bfloat16; set "):
        module.keep_recorded_dtype(checkpoint)


def test_evaluating_a_checkpoint_builds_the_policy_in_its_recorded_dtype(tmp_path, tiny_model_dir):
    from reczero.policy.factory import build_policy

    policy = build_policy(PolicyConfig(model=str(tiny_model_dir), lora_r=4))
    state = {f"policy.{n}": p.detach() for n, p in policy.named_parameters() if "lora_" in n}
    torch.save({"state_dict": state, "reczero_hyper_parameters": {"policy_dtype": "bfloat16"}}, tmp_path / "step.ckpt")
    model, _, _ = load_model(PolicyConfig(model=str(tiny_model_dir), lora_r=4), ckpt=str(tmp_path / "step.ckpt"))
    assert {p.dtype for n, p in model.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    explicit, _, _ = load_model(
        PolicyConfig(model=str(tiny_model_dir), lora_r=4, dtype="float32"), ckpt=str(tmp_path / "step.ckpt")
    )
    assert {p.dtype for n, p in explicit.named_parameters() if "lora_" not in n} == {torch.float32}
