"""`GRPOModule`: RecZero's reinforcement learning on a LoRA / QLoRA policy.

Algorithm (defaults = the paper's run; every choice is an argument):
  - G = `rollout.group_size` sampled completions per prompt, temperature 1.0, rule-based reward
    (format +1 / -1, rating 1 - |error| / 2), advantage (r - mean_group) / (std_group + 1e-4);
  - clipped surrogate, eps 0.2 on both sides (`loss.eps_high` for DAPO's clip-higher);
  - KL to the reference off (beta 0): no reference forward at all. With beta > 0 the reference is the
    same model with the adapter disabled (never a second copy), k3 estimator, clamped. Starting from
    a saved adapter (RecOne: `policy.adapter_path` = the SFT adapter), `reference` picks what
    "adapter disabled" means: "base" (that adapter trains on, the reference is the base model) or
    "sft" (it is merged into the base weights and a fresh LoRA trains on top: the reference is SFT);
  - one optimisation pass per rollout: ratio is 1, so no old-policy forward is run. With
    `num_passes > 1` the rollout-time log-probs are computed once and reused;
  - token-mean loss ("token_mean"; "sequence_mean" and "dr_grpo" available).

Optimisation is manual, because one rollout can feed several optimizer steps: the rollout's N = B * G
rows are processed in micro-batches of `micro_batch_size` (gradient accumulation with exact loss
normalisation across micro-batches), the gradient is clipped to `max_grad_norm`, then the optimizer
and the warmup schedule step. A non-finite loss or gradient skips the step (optimizer untouched) and
`max_bad_steps` of them in a row stop the run. Logits are computed for completion positions only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch

from reczero import grpo, rewards
from reczero.data.render import PromptConfig
from reczero.modules.base import PolicyModule, as_config
from reczero.modules.rollout_callback import RolloutCallback
from reczero.policy.adapters import REFERENCES, merged_base, reference_mode, save_stacked_adapter, stacked_config
from reczero.policy.factory import PolicyConfig, build_policy
from reczero.policy.forward import completion_logprobs, shared_prefix_logprobs
from reczero.rollout.record import RolloutConfig, RolloutRecord

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Raised after too many consecutive non-finite steps."""


class GRPOModule(PolicyModule):
    """RecZero: GRPO on the shared policy.

    Args:
        policy: the model, LoRA / 4-bit settings (shared with the SFT module).
        prompt: the DataModule's prompt settings (`reczero fit` links `data.prompt` here): the response
            prefix is scored with each completion, the budget checked against the model's context.
        rollout: sampling and grouping (group size, temperature, top-p, max new tokens, seed).
        reward: the rule-based reward (template, graded or exact rating reward, format shaping).
        loss: GRPO loss settings (beta, clip eps, loss type, truncated masking).
        learning_rate: AdamW learning rate (LoRA wants ~10x the full fine-tuning rate).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warmup optimizer steps.
        lr_schedule: "constant", "cosine" or "linear" decay after warmup (to 10%).
        max_grad_norm: gradient clipping norm (0 disables).
        micro_batch_size: completions per forward/backward (gradient accumulation inside a rollout).
        shared_prefix: run each group's prompt once per forward/backward instead of G times (exact; used
            when micro_batch_size is a multiple of the group size and gradient checkpointing is off).
        num_passes: optimisation passes over each rollout (1 = paper; >1 reuses it PPO-style).
        max_bad_steps: consecutive non-finite steps tolerated before the run stops.
        val_max_new_tokens: greedy decoding length for validation.
        log_completions_every_n_steps: write a sample completion to TensorBoard this often (0: never).
        adapter_dir: where the final LoRA adapter is saved (peft format), if set.
        rollout_log: append one JSON line per rollout (step, sample ids, rewards, predictions) to this
            file (rank r > 0 writes `<file>.rank<r>`): an audit trail of what was trained on.
        reference: with `policy.adapter_path` (RecOne's SFT adapter): "base" trains that adapter further
            (KL reference = the base model); "sft" merges it into the base weights and trains a fresh
            LoRA (`policy.lora_r` / `lora_alpha`, the saved adapter's targets) on top, so the KL
            reference is the SFT policy. Same starting policy either way; only matters with beta > 0.
            With "sft", `adapter_dir` receives both stacked into one adapter of the plain base
            (`save_stacked_adapter`); Lightning checkpoints hold the fresh LoRA, so resuming (and
            `reczero evaluate --ckpt`) needs the same `adapter_path`, merged the same way.
    """

    def __init__(
        self,
        policy: PolicyConfig = PolicyConfig(),
        prompt: PromptConfig = PromptConfig(),
        rollout: RolloutConfig = RolloutConfig(),
        reward: rewards.RewardSpec = rewards.RewardSpec(),
        loss: grpo.GRPOLossConfig = grpo.GRPOLossConfig(),
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: str = "constant",
        max_grad_norm: float = 1.0,
        micro_batch_size: int = 8,
        shared_prefix: bool = True,
        num_passes: int = 1,
        max_bad_steps: int = 3,
        val_max_new_tokens: int = 256,
        log_completions_every_n_steps: int = 10,
        adapter_dir: str | None = None,
        rollout_log: str | None = None,
        reference: str = "base",
    ):
        policy, rollout = as_config(policy, PolicyConfig), as_config(rollout, RolloutConfig)
        reward, loss = as_config(reward, rewards.RewardSpec), as_config(loss, grpo.GRPOLossConfig)
        super().__init__(
            policy, prompt, reward, learning_rate, weight_decay, warmup_steps, lr_schedule, val_max_new_tokens,
            adapter_dir,
        )  # fmt: skip
        if micro_batch_size < 1 or num_passes < 1 or max_bad_steps < 1:
            raise ValueError("micro_batch_size, num_passes and max_bad_steps must all be >= 1")
        if loss.beta > 0 and not policy.lora_r:
            raise ValueError("loss.beta > 0 needs a LoRA adapter: the reference is the policy with it disabled")
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
        if reference == "sft" and not policy.adapter_path:
            raise ValueError('reference="sft" needs policy.adapter_path (the SFT adapter to merge)')
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.rollout_config = rollout
        self.loss_config = loss
        self.rollout: RolloutRecord | None = None
        self._bad_steps = 0

    def on_fit_start(self) -> None:
        if self.hparams.shared_prefix and self._logprobs_fn() is completion_logprobs:
            log.warning(
                "shared_prefix is off for this run: it needs micro_batch_size (%d) to be a multiple of "
                "rollout.group_size (%d) and policy.gradient_checkpointing off",
                self.hparams.micro_batch_size,
                self.rollout_config.group_size,
            )

    def max_new_tokens(self) -> int:
        return max(self.hparams.val_max_new_tokens, self.rollout_config.max_new_tokens)

    def configure_callbacks(self):
        return [*super().configure_callbacks(), RolloutCallback(self.rollout_config, self.reward_spec)]

    def configure_model(self) -> None:
        if self.policy is None and self.hparams.reference == "sft":
            base = merged_base(self.policy_config)
            self.policy = build_policy(stacked_config(self.policy_config), base_model=base)
        super().configure_model()

    def on_train_end(self) -> None:
        if self.hparams.reference == "sft" and self.hparams.adapter_dir and self.global_rank == 0:
            path = save_stacked_adapter(self.policy, self.policy_config.adapter_path, self.hparams.adapter_dir)
            self.tokenizer.save_pretrained(path)
            log.info("saved the SFT + GRPO adapters, stacked into one, to %s", path)
            return
        super().on_train_end()

    def total_optimizer_steps(self) -> int:
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            return self.trainer.max_steps
        return max(1, int(self.trainer.estimated_stepping_batches) * self.hparams.num_passes)

    # -- the step -------------------------------------------------------------------------------
    def _logprobs_fn(self):
        shared = (
            self.hparams.shared_prefix
            and self.hparams.micro_batch_size % self.rollout_config.group_size == 0
            and not self.policy_config.gradient_checkpointing
        )
        return shared_prefix_logprobs if shared else completion_logprobs

    def _chunks(self, n: int) -> list[slice]:
        size = self.hparams.micro_batch_size
        return [slice(i, min(n, i + size)) for i in range(0, n, size)]

    def _loss_mask(self, record: RolloutRecord) -> torch.Tensor:
        mask = record.completion_mask  # [N, C]
        if self.loss_config.mask_truncated:
            mask = mask & ~record.truncated[:, None]
        return mask

    def _chunk_weight(self, record: RolloutRecord, rows: slice, mask: torch.Tensor) -> float:
        """Share of the whole-rollout loss a micro-batch carries, so accumulation equals one big batch."""
        if self.loss_config.loss_type == "token_mean":
            return float(mask[rows].sum()) / max(1.0, float(mask.sum()))
        n = record.completion_mask.shape[0]
        return (rows.stop - rows.start) / n

    def training_step(self, batch: dict, batch_idx: int):
        record = self.rollout
        if record is None:
            raise RuntimeError("no rollout for this batch: GRPOModule needs its RolloutCallback (configure_callbacks)")
        record = record.to(self.device)
        opt = self.optimizers()
        sched = self.lr_schedulers()
        temperature = self.rollout_config.temperature
        loss_mask = self._loss_mask(record)
        chunks = self._chunks(record.input_ids.shape[0])
        width = record.completion_mask.shape[1]
        start = time.perf_counter()
        logprobs = self._logprobs_fn()

        ref_logp = old_logp = None
        if self.loss_config.beta > 0:
            with torch.no_grad(), reference_mode(self.policy):
                ref_logp = torch.cat([logprobs(self.policy, record, c, temperature) for c in chunks])
        if self.hparams.num_passes > 1:
            with torch.no_grad():
                old_logp = torch.cat([logprobs(self.policy, record, c, temperature) for c in chunks])

        stats_sum: dict[str, float] = {}
        for _ in range(self.hparams.num_passes):
            total_loss = 0.0
            for rows in chunks:
                logp = logprobs(self.policy, record, rows, temperature)  # [n, C]
                loss, stats = grpo.grpo_loss(
                    logp,
                    loss_mask[rows],
                    record.advantages[rows],
                    old_logp=None if old_logp is None else old_logp[rows],
                    ref_logp=None if ref_logp is None else ref_logp[rows],
                    cfg=self.loss_config,
                    max_completion_length=width,
                )
                weight = self._chunk_weight(record, rows, loss_mask)
                self.manual_backward(loss * weight)
                total_loss += float(loss.detach()) * weight
                for key, value in stats.items():
                    stats_sum[key] = stats_sum.get(key, 0.0) + float(value) * weight
            self._optimizer_step(opt, sched, total_loss, record)
        train_seconds = time.perf_counter() - start
        self._write_rollout_log(record)
        passes = self.hparams.num_passes
        self._log_step({k: v / passes for k, v in stats_sum.items()}, record, train_seconds)

    def _optimizer_step(self, opt, sched, loss_value: float, record: RolloutRecord) -> None:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        grads = [p.grad for p in params if p.grad is not None]
        grad_norm = (
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else None
        )
        finite = math.isfinite(loss_value) and (grad_norm is None or bool(torch.isfinite(grad_norm)))
        if not finite:
            self._bad_steps += 1
            opt.zero_grad(set_to_none=True)
            ids = record.sample_ids.tolist()
            log.warning("non-finite loss or gradient at step %d (samples %s): step skipped", self.global_step, ids)
            self.log("train/skipped_steps", float(self._bad_steps))
            if self._bad_steps >= self.hparams.max_bad_steps:
                raise NonFiniteError(
                    f"{self._bad_steps} consecutive non-finite steps (last samples {ids}); lower learning_rate, "
                    "check the data, or raise max_bad_steps"
                )
            return
        self._bad_steps = 0
        if self.hparams.max_grad_norm > 0:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if grad_norm is not None:
            self.log("train/grad_norm", float(grad_norm))

    def _write_rollout_log(self, record: RolloutRecord) -> None:
        if not self.hparams.rollout_log:
            return
        path = self.hparams.rollout_log + (f".rank{self.global_rank}" if self.global_rank else "")
        preds = [None if math.isnan(p) else p for p in record.predictions.tolist()]
        line = {
            "step": self.global_step,
            "epoch": self.current_epoch,
            "sample_ids": record.sample_ids.tolist(),
            "rewards": [round(r, 6) for r in record.rewards.tolist()],
            "predictions": preds,
            "completions_sha1": hashlib.sha1("\x00".join(record.texts).encode()).hexdigest(),
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(json.dumps(line) + "\n")

    def _log_step(self, stats: dict[str, float], record: RolloutRecord, train_seconds: float) -> None:
        r = record.rewards
        lengths = record.completion_mask.sum(-1).float()  # [N]
        valid = ~torch.isnan(record.predictions)
        sampled_mae = (record.predictions[valid] - record.targets[valid]).abs().mean() if valid.any() else None
        gen_tokens = float(lengths.sum())
        values = {
            "train/reward": r.mean(),
            "train/reward_std": r.std() if r.numel() > 1 else torch.zeros(()),
            "train/format_rate": record.format_ok.float().mean(),
            "train/copy_rate": record.copied.float().mean(),
            "train/grounded_rate": record.grounded.float().mean(),
            "train/parse_rate": valid.float().mean(),
            "train/completion_len_mean": lengths.mean(),
            "train/completion_len_min": lengths.min(),
            "train/completion_len_max": lengths.max(),
            "train/truncated_frac": record.truncated.float().mean(),
            "train/zero_std_groups": grpo.zero_std_group_fraction(r, record.group_size),
            "train/generation_seconds": record.generation_seconds,
            "train/optimization_seconds": train_seconds,
            "train/step_seconds": record.generation_seconds + train_seconds,
            "train/generated_tokens_per_s": gen_tokens / max(record.generation_seconds, 1e-9),
            "train/trained_tokens_per_s": float(record.attention_mask.sum()) / max(train_seconds, 1e-9),
            "train/lr": self.optimizers().param_groups[0]["lr"],
        }
        for name, comp in record.components.items():
            values[f"train/reward_{name}"] = comp.mean()
            values[f"train/reward_{name}_std"] = comp.std() if comp.numel() > 1 else torch.zeros(())
        if sampled_mae is not None:
            values["train/sampled_mae"] = sampled_mae
        for key, value in stats.items():
            values[f"train/{key}"] = value
        values = {k: float(v) for k, v in values.items()}
        self.log_dict(values, prog_bar=False, sync_dist=self.trainer.world_size > 1)
        self.log("reward", values["train/reward"], prog_bar=True, logger=False)
        self.log("format", values["train/format_rate"], prog_bar=True, logger=False)
        every = self.hparams.log_completions_every_n_steps
        if every and self.global_step % every == 0:
            self._log_text("train/sample_completion", record.texts[0])
