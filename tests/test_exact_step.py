"""The GRPO step on one process, exact where it claims to be: real `GRPOModule` steps (Lightning, manual
optimisation, AdamW) on the tiny policy, fed scripted rollouts through the real record path.

- Rows of advantage 0 skipped (beta 0, one pass) give the update the unskipped step gives, for every
  loss type and both forwards; a step with nothing to learn leaves the weights, the optimizer and
  the scheduler exactly as running it would.
- Dr. GRPO divides by max_new_tokens, not by the rollout's padded width.
- fp16 mixed precision (a real loss scaler): the gradient norm and the clip act on the unscaled
  gradient, and an overflow is the scaler's business, not a bad step.
"""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from tiny import make_tiny_tokenizer, prompt_batch, scripted_generation, synthetic_data

from reczero import grpo, rewards
from reczero.data.render import PromptConfig
from reczero.data.schema import SCALES
from reczero.modules.grpo_module import GRPOModule
from reczero.modules.rollout_callback import RolloutCallback
from reczero.policy.factory import PolicyConfig
from reczero.rollout.record import RolloutConfig, RolloutRecord, record_from_generation

GROUP = 4
GOOD = "<analyze user>{}</analyze user><analyze item>a drama</analyze item><match>fits</match><rate>{}</rate>"


def _record(groups: list[list[str]], finished: list[bool] | None = None) -> RolloutRecord:
    """The rollout of len(groups) prompts, each with its G scripted completions."""
    tokenizer = make_tiny_tokenizer()
    prompts = [f"prompt number {i} about a film" for i in range(len(groups))]
    texts = [t for g in groups for t in g]
    gen = scripted_generation(tokenizer, texts, finished or [True] * len(texts))
    batch = prompt_batch(tokenizer, prompts, [4.0] * len(groups))
    return record_from_generation(batch, gen, RolloutConfig(group_size=GROUP), rewards.RewardSpec(), SCALES["1-5"])


SPREAD = [GOOD.format("likes drama", 4), GOOD.format("likes long films", 2), "no tags", GOOD.format("x", 5)]
FLAT = [GOOD.format("likes drama a lot", 3)] * GROUP  # all alike: advantage 0
# rewards 2, 1.5, 1, 1.5 (target 4): rows 1 and 3 sit exactly at the group mean, advantage 0
MIDDLE = [GOOD.format("a", 4), GOOD.format("b", 5), GOOD.format("c", 2), GOOD.format("d", 3)]


class _Replay(RolloutCallback):
    """Step k trains on `records[k]`, with the loss settings `losses[k]` when given."""

    def __init__(self, records: list[RolloutRecord], losses: list[grpo.GRPOLossConfig] | None):
        super().__init__(RolloutConfig(group_size=GROUP), rewards.RewardSpec())
        self.records, self.losses = records, losses

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pl_module.rollout = copy.deepcopy(self.records[batch_idx])
        if self.losses:
            pl_module.loss_config = self.losses[batch_idx]


class _Capture(L.Callback):
    """After every step: the weights, the optimizer and scheduler states, the logged metrics."""

    def __init__(self):
        self.after: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append(
            {
                "weights": {n: p.detach().clone() for n, p in pl_module.policy.named_parameters() if p.requires_grad},
                "optimizer": copy.deepcopy(pl_module.optimizers().optimizer.state_dict()),
                "scheduler": pl_module.lr_schedulers().state_dict()["last_epoch"],
                "logged": {k: float(v) for k, v in trainer.callback_metrics.items()},
                "global_step": trainer.global_step,
            }
        )


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("samples")


def _run(tmp_path, model_dir, records, cache, plugins=(), losses=None, **kwargs) -> list[dict]:
    class Replayed(GRPOModule):
        def configure_callbacks(self):
            return [_Replay(records, losses)]

    kwargs = {"learning_rate": 1e-2, "weight_decay": 0.1, "micro_batch_size": GROUP, **kwargs}
    kwargs.setdefault("rollout", RolloutConfig(group_size=GROUP))
    prompt = PromptConfig(max_prompt_tokens=1536)
    module = Replayed(policy=PolicyConfig(model=str(model_dir), lora_r=4, lora_alpha=8), prompt=prompt, **kwargs)
    capture = _Capture()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=len(records), logger=False, enable_checkpointing=False,
        num_sanity_val_steps=0, limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=[capture], plugins=list(plugins),
    )  # fmt: skip
    L.seed_everything(0)
    trainer.fit(module, datamodule=synthetic_data(model_dir, prompt, cache))
    return capture.after


# Non-exact comparisons are norm-relative, per tensor: |a - b| <= TOLERANCE * |b|. float32's noise floor here
# (the same step summed in another order: skipped rows, micro-batches, padding), measured over every step of
# these tests: AdamW's moments (which hold the gradient and its square) at most 1.0e-6, the weights 1.3e-6.
# A wrong scale or a missing row moves them by far more than the tolerance, 15x above the floor.
FP32_NOISE_FLOOR = 1.3e-6
TOLERANCE = 2e-5


def _norm_close(got: torch.Tensor, want: torch.Tensor, msg) -> None:
    error, scale = float((got.double() - want.double()).norm()), float(want.double().norm())
    assert error <= TOLERANCE * scale, f"{msg}: |difference| / |expected| = {error / scale if scale else error:.2e}"


def _same(a: dict, b: dict, exact: bool) -> None:
    for name in a["weights"]:
        if exact:
            assert torch.equal(a["weights"][name], b["weights"][name]), name
        else:
            _norm_close(a["weights"][name], b["weights"][name], name)
    for key, state in a["optimizer"]["state"].items():
        for field, value in state.items():
            other = b["optimizer"]["state"][key][field]
            if exact or field == "step":
                assert torch.equal(value, other), (key, field)
            else:
                _norm_close(value, other, (key, field))
    assert a["scheduler"] == b["scheduler"] and a["global_step"] == b["global_step"]


@pytest.mark.parametrize("shared", [True, False], ids=["shared-prefix", "unshared"])
def test_skipping_zero_advantage_rows_gives_the_unskipped_update(tmp_path, tiny_model_dir, cache, shared):
    """Per loss type, two steps: a group with spread, a flat group and a group with two rows exactly at
    the mean; then nothing to learn anywhere. Each step is compared with the unskipped run's."""
    steps = [_record([SPREAD, FLAT, MIDDLE]), _record([FLAT, FLAT])]
    assert (steps[0].advantages == 0).sum() == 6 and not steps[1].advantages.any()
    records = steps * len(grpo.LOSS_TYPES)
    losses = [grpo.GRPOLossConfig(loss_type=t) for t in grpo.LOSS_TYPES for _ in steps]
    size = GROUP if shared else 3  # a multiple of G runs the shared-prefix forward (whole groups)
    skipped = _run(tmp_path / "skip", tiny_model_dir, records, cache, losses=losses, micro_batch_size=size)
    full = _run(
        tmp_path / "full",
        tiny_model_dir,
        records,
        cache,
        losses=losses,
        micro_batch_size=size,
        skip_zero_advantage=False,
    )
    rows = 4 if shared else 6
    for k, loss in enumerate(losses):
        mixed = k % 2 == 0
        assert skipped[k]["logged"]["train/skipped_rows_frac"] == pytest.approx(rows / 12 if mixed else 1.0)
        assert full[k]["logged"]["train/skipped_rows_frac"] == 0.0
        try:
            _same(skipped[k], full[k], exact=False)
        except AssertionError as err:
            raise AssertionError(f"step {k} ({loss.loss_type}): {err}") from None
    # a step with nothing to learn changes exactly what running it changes (AdamW momentum, decay)
    moved = {n for n, w in skipped[1]["weights"].items() if not torch.equal(w, skipped[0]["weights"][n])}
    assert moved, "a zero-gradient AdamW step still moves the weights: skipping it would be wrong"


def test_zero_step_is_bit_for_bit_the_unskipped_one(tmp_path, tiny_model_dir, cache):
    records = [_record([SPREAD]), _record([FLAT])]
    skipped = _run(tmp_path / "skip", tiny_model_dir, records, cache)
    full = _run(tmp_path / "full", tiny_model_dir, records, cache, skip_zero_advantage=False)
    _same(skipped[0], full[0], exact=True)  # nothing skipped in step 1: the same computation
    _same(skipped[1], full[1], exact=True)


def test_dr_grpo_divides_by_max_new_tokens_not_the_padded_width(tmp_path, tiny_model_dir, cache):
    record = _record([SPREAD])
    wide = copy.deepcopy(record)  # the same completions, padded 10 columns wider
    pad = torch.zeros(record.input_ids.shape[0], 10, dtype=torch.long)
    wide.input_ids = torch.cat([record.input_ids, pad], dim=1)
    wide.attention_mask = torch.cat([record.attention_mask, pad], dim=1)
    wide.completion_mask = torch.cat([record.completion_mask, pad.bool()], dim=1)
    loss = grpo.GRPOLossConfig(loss_type="dr_grpo")
    kwargs = {"loss": loss, "rollout": RolloutConfig(group_size=GROUP, max_new_tokens=96), "weight_decay": 0.0}
    kwargs["learning_rate"], kwargs["shared_prefix"] = 1e-3, False
    narrow = _run(tmp_path / "narrow", tiny_model_dir, [record], cache, **kwargs)
    padded = _run(tmp_path / "wide", tiny_model_dir, [wide], cache, **kwargs)
    _same(narrow[0], padded[0], exact=False)


def _fp16(init_scale: float, backoff: float = 0.5) -> MixedPrecision:
    """Lightning's fp16 mixed precision with a real loss scaler, on the CPU (Lightning's `16-mixed` flag
    maps to bf16 there, so the plugin is passed as is)."""
    return MixedPrecision(
        "16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=init_scale, backoff_factor=backoff)
    )


def test_fp16_norm_and_clip_act_on_the_unscaled_gradient(tmp_path, tiny_model_dir, cache):
    records = [_record([SPREAD, MIDDLE])]
    clip = 1e-4
    runs = [
        _run(tmp_path / f"s{k}", tiny_model_dir, records, cache, plugins=[_fp16(2.0**k)], max_grad_norm=clip)
        for k in (4, 12)
    ]
    norms = [r[0]["logged"]["train/grad_norm"] for r in runs]
    assert norms[0] == pytest.approx(norms[1], rel=1e-2), "the logged norm is the true one, whatever the scale"
    assert norms[0] > 10 * clip, "the clip must be active for this test"
    for run in runs:  # AdamW's first moment is (1 - beta1) x the clipped gradient: its norm is 0.1 x clip
        moments = [s["exp_avg"] for s in run[0]["optimizer"]["state"].values()]
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(m) for m in moments]))
        assert float(total) == pytest.approx(0.1 * clip, rel=1e-3)


def test_fp16_overflow_is_left_to_the_loss_scaler(tmp_path, tiny_model_dir, cache):
    """A scale so large that the first steps overflow: the scaler skips them and backs off; the run
    goes on (max_bad_steps=1 would stop it at the first bad step) and then trains."""
    records = [_record([SPREAD, MIDDLE])] * 3
    after = _run(
        tmp_path / "overflow", tiny_model_dir, records, cache, plugins=[_fp16(2.0**60, 2.0**-40)], max_bad_steps=1
    )
    assert [a["global_step"] for a in after] == [1, 2, 3]
    assert after[0]["logged"]["train/overflow_steps"] >= 1
    assert "train/grad_norm" in after[-1]["logged"], "after backing off, a real step ran"
    assert not after[0]["optimizer"]["state"], "the overflowing step left AdamW untouched"
