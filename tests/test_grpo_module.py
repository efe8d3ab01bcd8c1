"""GRPOModule on the tiny policy: the shared-prefix forward, one real optimisation step, the CLI."""

from __future__ import annotations

import math
import re

import lightning as L
import pytest
import torch
from tiny import perturb_lora, prompt_batch, scripted_generation

from reczero import grpo, rewards
from reczero.data.batching import scale_of
from reczero.data.datamodule import RatingDataModule
from reczero.data.render import PromptConfig
from reczero.data.samples import SampleConfig
from reczero.data.sources import SourceConfig
from reczero.modules.grpo_module import GRPOModule
from reczero.modules.rollout_callback import RolloutCallback
from reczero.policy.factory import PolicyConfig
from reczero.policy.forward import completion_logprobs, shared_prefix_logprobs
from reczero.rollout.record import RolloutConfig, record_from_generation

GOOD = "<analyze user>likes drama</analyze user><analyze item>a drama</analyze item><match>fits</match><rate>{}</rate>"
SCRIPT = [GOOD.format(4), GOOD.format(2), "no tags at all", GOOD.format(5)]  # one prompt's group of 4


def _prompt_batch(tokenizer, n_prompts: int = 2) -> dict[str, torch.Tensor]:
    texts = ["a short prompt", "a somewhat longer prompt about films"][:n_prompts]
    return prompt_batch(tokenizer, texts, [4.0, 3.0][:n_prompts])


def test_scripted_rewards_advantages_and_loss(tiny_tokenizer):
    from reczero.data.schema import SCALES

    cfg = RolloutConfig(group_size=4)
    batch = _prompt_batch(tiny_tokenizer, 1)
    record = record_from_generation(
        batch, scripted_generation(tiny_tokenizer, SCRIPT, [True] * 4), cfg, rewards.RewardSpec(), SCALES["1-5"]
    )
    # target 4: rewards 2.0, 1.0, -1.0, 1.5 (format +1 plus 1 - |err| / 2; failed format -1)
    assert record.rewards.tolist() == pytest.approx([2.0, 1.0, -1.0, 1.5])
    mean, std = 0.875, torch.tensor([2.0, 1.0, -1.0, 1.5]).std().item()
    assert record.advantages.tolist() == pytest.approx(
        [(r - mean) / (std + 1e-4) for r in [2.0, 1.0, -1.0, 1.5]], rel=1e-5
    )
    assert record.format_ok.tolist() == [True, True, False, True]
    assert math.isnan(record.predictions[2].item()) and record.predictions[0].item() == 4.0
    assert record.completion_mask.sum(-1).tolist() == [len(tiny_tokenizer(t)["input_ids"]) + 1 for t in SCRIPT]


@pytest.mark.parametrize("left_pad", [True, False])
def test_shared_prefix_matches_unshared_forward_and_gradients(tiny_tokenizer, tiny_policy, left_pad):
    from reczero.data.schema import SCALES

    perturb_lora(tiny_policy, scale=0.05)
    cfg = RolloutConfig(group_size=4)
    batch = _prompt_batch(tiny_tokenizer, 2 if left_pad else 1)
    texts = SCRIPT * batch["input_ids"].shape[0]
    gen = scripted_generation(tiny_tokenizer, texts, [True] * len(texts))
    record = record_from_generation(batch, gen, cfg, rewards.RewardSpec(), SCALES["1-5"])
    rows = slice(0, len(texts))
    results = []
    for fn in (completion_logprobs, shared_prefix_logprobs):
        tiny_policy.zero_grad()
        logp = fn(tiny_policy, record, rows, 0.9)
        (logp * record.completion_mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in tiny_policy.named_parameters() if p.requires_grad}
        results.append((logp.detach(), grads))
    (logp_a, grads_a), (logp_b, grads_b) = results
    mask = record.completion_mask
    torch.testing.assert_close(logp_a[mask], logp_b[mask], rtol=1e-5, atol=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)


class _ScriptedRollout(RolloutCallback):
    """The real record path (scoring, advantages) on scripted completions instead of sampled ones."""

    script = SCRIPT  # one prompt's group, repeated for every prompt of the batch, or all B * G texts

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        n = batch["input_ids"].shape[0] * self.cfg.group_size
        texts = self.script * (n // len(self.script))
        gen = scripted_generation(pl_module.tokenizer, texts, [True] * len(texts))
        pl_module.rollout = record_from_generation(batch, gen, self.cfg, self.spec, scale_of(batch))


class _ScriptedGRPO(GRPOModule):
    rollout_type = _ScriptedRollout

    def configure_callbacks(self):
        return [self.rollout_type(self.rollout_config, self.reward_spec)]


def _tiny_data(tmp_path, tokenizer, **kwargs) -> RatingDataModule:
    """The synthetic set, rendered with `tokenizer` (the tiny model's folder, as `fit` links it)."""
    return RatingDataModule(
        tokenizer=str(tokenizer),
        source=SourceConfig(format="synthetic", synthetic_users=30, synthetic_items=20, synthetic_ratings_per_user=8),
        samples=SampleConfig(user_history=3, item_history=3, min_history=2, max_samples={"validation": 4, "test": 4}),
        prompt=PromptConfig(max_prompt_tokens=1536),
        cache_dir=str(tmp_path / "cache"),
        **kwargs,
    )


def test_one_grpo_step_moves_lora_only(tmp_path, tiny_model_dir):
    module = _ScriptedGRPO(
        policy=PolicyConfig(model=str(tiny_model_dir), lora_r=4, lora_alpha=8),
        rollout=RolloutConfig(group_size=4),
        learning_rate=1e-2,
        micro_batch_size=4,
    )
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
        limit_val_batches=0, enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    data = _tiny_data(tmp_path, tiny_model_dir, batch_size=2)
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 1
    moved = {n for n, p in module.policy.named_parameters() if not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in module.policy.named_parameters() if p.requires_grad}
    assert moved and moved <= trainable, "only LoRA weights may change"
    assert any("lora_B" in n for n in moved)


def test_incompatible_settings_are_rejected_at_start():
    with pytest.raises(ValueError, match="group_size"):
        RolloutConfig(group_size=1)
    with pytest.raises(ValueError, match="temperature 0"):
        RolloutConfig(temperature=0.0)
    with pytest.raises(ValueError, match="micro_batch_size"):
        GRPOModule(micro_batch_size=0)


def test_fit_fast_dev_run_through_the_cli(tmp_path, tiny_model_dir, capsys):
    from reczero.cli import main

    out = tmp_path / "run"
    main(
        [
            "fit",
            "--config=configs/grpo.yaml",
            f"--model.init_args.policy.model={tiny_model_dir}",
            "--model.init_args.rollout.max_new_tokens=8",
            "--model.init_args.val_max_new_tokens=8",
            f"--model.init_args.adapter_dir={out / 'adapter'}",
            f"--model.init_args.rollout_log={out / 'logs' / 'rollouts.jsonl'}",
            f"--data.cache_dir={tmp_path / 'cache'}",
            "--data.prompt.max_prompt_tokens=1536",
            "--data.source.synthetic_users=30",
            "--data.source.synthetic_items=20",
            "--data.samples.min_history=2",
            f"--trainer.default_root_dir={out}",
            f"--trainer.logger.init_args.save_dir={out}",
            f"--trainer.callbacks.init_args.dirpath={out}",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "last.ckpt").exists()
    assert len((out / "logs" / "rollouts.jsonl").read_text().splitlines()) == 2, "one rollout line per step"
    table = capsys.readouterr().out
    assert re.search(r"\nvalidation +step 0 +step 2\n", table), "the before/after validation table ends the run"
    assert "\nMAE " in table and "\nformat pass rate " in table and "\nMAE of the user mean " in table
    events = list((out / "tb").glob("events.out.tfevents.*"))
    assert events, "TensorBoard event file expected"
    ckpt = torch.load(out / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert all("lora_" in k for k in ckpt["state_dict"]), "checkpoints hold the adapter only"


class _VariedRollout(_ScriptedRollout):
    script = SCRIPT + [GOOD.format(3), "x", GOOD.format(1), GOOD.format(4) + " trailing"]  # 2 prompts x 4


class _PlainSGD(_ScriptedGRPO):
    """SGD at lr 1 and no clipping: one step moves each weight by minus its gradient, so the update
    shows exactly how `training_step` weighted and summed its micro-batches."""

    rollout_type = _VariedRollout

    def configure_optimizers(self):
        opt = torch.optim.SGD([p for p in self.policy.parameters() if p.requires_grad], lr=1.0)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)}


@pytest.mark.parametrize("loss_type", ["token_mean", "sequence_mean", "dr_grpo"])
def test_training_step_micro_batches_add_up_to_the_full_batch_update(tmp_path, tiny_model_dir, loss_type):
    """`training_step` on one rollout of 8 completions: micro-batches of 8, 4 (shared prefix) and 2
    (unshared forward) give the same update, for every loss type."""
    updates = []
    for micro in (8, 4, 2):
        module = _PlainSGD(
            policy=PolicyConfig(model=str(tiny_model_dir), lora_r=4, lora_alpha=8),
            rollout=RolloutConfig(group_size=4),
            loss=grpo.GRPOLossConfig(loss_type=loss_type),
            micro_batch_size=micro,
            max_grad_norm=0.0,
        )
        module.configure_model()
        perturb_lora(module.policy, scale=0.05)  # seeded: every run starts from the same weights
        before = {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}
        trainer = L.Trainer(
            accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
            limit_val_batches=0, enable_progress_bar=False, default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(module, datamodule=_tiny_data(tmp_path, tiny_model_dir, batch_size=2))
        updates.append({n: p.detach() - before[n] for n, p in module.policy.named_parameters() if p.requires_grad})
    assert any(float(u.abs().max()) > 0 for u in updates[0].values()), "the step must move the LoRA weights"
    for other in updates[1:]:
        for name, full in updates[0].items():
            torch.testing.assert_close(other[name], full, rtol=1e-4, atol=1e-7, msg=name)


def test_lr_schedule_warmup_then_decay():
    from reczero.modules.base import lr_lambda

    assert [lr_lambda(s, 4, 20, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_lambda(4, 4, 20, "cosine") == pytest.approx(1.0)
    assert lr_lambda(12, 4, 20, "cosine") == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_lambda(20, 4, 20, "cosine") == pytest.approx(0.1)
    assert lr_lambda(12, 4, 20, "linear") == pytest.approx(1 - 0.9 * 0.5)


def test_prompt_budget_beyond_the_model_context_fails_at_start(tmp_path, tiny_model_dir):
    module = GRPOModule(
        policy=PolicyConfig(model=str(tiny_model_dir), lora_r=4),
        rollout=RolloutConfig(group_size=2, max_new_tokens=64),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    module.prompt = PromptConfig(max_prompt_tokens=2000)  # the tiny Llama's context is 2048
    with pytest.raises(
        ValueError, match=r"data.prompt.max_prompt_tokens \(2000\) \+ max new tokens \(256\).*context of 2048"
    ):
        trainer.fit(module, datamodule=_tiny_data(tmp_path, tiny_model_dir))


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path, tiny_model_dir):
    """A NaN advantage poisons the loss: the step is skipped with the optimizer untouched, and
    `max_bad_steps` such steps in a row stop the run with the sample ids named."""
    from reczero.modules.grpo_module import NonFiniteError

    class _Poisoned(_ScriptedRollout):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
            pl_module.rollout.advantages[:] = float("nan")

    class _PoisonedGRPO(_ScriptedGRPO):
        rollout_type = _Poisoned

    module = _PoisonedGRPO(
        policy=PolicyConfig(model=str(tiny_model_dir), lora_r=4), rollout=RolloutConfig(group_size=4), max_bad_steps=2
    )
    trainer = L.Trainer(
        accelerator="cpu", max_steps=5, logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
        limit_val_batches=0, enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    with pytest.raises(NonFiniteError, match=r"2 consecutive non-finite steps \(last samples \[\d+"):
        trainer.fit(module, datamodule=_tiny_data(tmp_path, tiny_model_dir, batch_size=1))
    assert all(torch.equal(p.detach(), before[n]) for n, p in module.policy.named_parameters())
    assert trainer.global_step == 0, "no optimizer step may run on a non-finite loss"
    assert not module.optimizers().optimizer.state, "the optimizer state stays untouched"
