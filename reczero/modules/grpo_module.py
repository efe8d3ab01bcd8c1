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
rows are processed in micro-batches of `micro_batch_size` (gradient accumulation), the gradient is
clipped to `max_grad_norm`, then the optimizer and the warmup schedule step. Exact at any scale:
  - every micro-batch on every rank divides by the loss denominator of the whole step (token count,
    sequence count or N * max_new_tokens, summed over the ranks: `grpo.loss_denominator`);
  - with beta 0 and one pass, rows of advantage 0 get no forward or backward (`grpo.signal_rows`;
    whole groups under the shared-prefix forward), yet their tokens still count in the denominator;
    a step with nothing to learn still steps the optimizer on zero gradients, as running it would;
  - under DDP the micro-batches accumulate locally and one all-reduce averages the gradients at the
    end (`distributed`), so a rank that skipped rows still takes part;
  - the non-finite check runs on the synced gradient and summed flags, so every rank skips alike; a
    non-finite step leaves the optimizer untouched and `max_bad_steps` in a row stop the run;
  - under fp16 mixed precision the norm and the clip act on the unscaled gradient, and an overflow is
    left to the loss scaler (it skips that update and lowers its scale).
Logits are computed for completion positions only.
"""

from __future__ import annotations

import dataclasses
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
from reczero.modules.distributed import all_sum, local_accumulation, manual_gradient_sync, sync_gradients
from reczero.modules.rollout_callback import RolloutCallback
from reczero.policy.adapters import REFERENCES, reference_mode, save_stacked_adapter
from reczero.policy.factory import PolicyConfig
from reczero.policy.forward import completion_logprobs, shared_prefix_logprobs
from reczero.policy.loading import training_policy
from reczero.rollout.record import RolloutConfig, RolloutRecord

log = logging.getLogger(__name__)

# per-token stats of `grpo.grpo_loss`, averaged over the step's counted tokens
TOKEN_STATS = ("clip_frac_low", "clip_frac_high", "clip_frac", "ratio_mean", "kl")


class NonFiniteError(RuntimeError):
    """Raised after too many consecutive non-finite steps."""


def _stopping_at(rollout: RolloutConfig, template: str) -> RolloutConfig:
    """`rollout` whose sampling stops where the reward template's answer ends (`answers.Template.stop_strings`):
    the default `</rate>` follows the template; stop strings set by hand must include the template's."""
    stops = rewards.get_template(template).stop_strings
    given = tuple(rollout.stop_strings or ())
    if set(stops) <= set(given):
        return rollout
    if given == tuple(RolloutConfig().stop_strings):
        return dataclasses.replace(rollout, stop_strings=stops)
    raise ValueError(
        f"rollout.stop_strings={list(given)} lack {list(stops)}, where answers of reward template {template!r} end"
    )


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
        skip_zero_advantage: with beta 0 and one pass, run no forward or backward for rows of advantage 0
            (their gradient is exactly 0; their tokens still count in the loss denominator). False runs
            them anyway, for checking that the two give the same update.
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
        skip_zero_advantage: bool = True,
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
        rollout = _stopping_at(rollout, reward.template)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.rollout_config = rollout
        self.loss_config = loss
        self.rollout: RolloutRecord | None = None
        self._bad_steps = 0
        self._overflow_steps = 0

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

    def make_policy(self) -> torch.nn.Module:
        return training_policy(self.policy_config, self.hparams.reference)

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
    def _shared_prefix(self) -> bool:
        return (
            self.hparams.shared_prefix
            and self.hparams.micro_batch_size % self.rollout_config.group_size == 0
            and not self.policy_config.gradient_checkpointing
        )

    def _logprobs_fn(self):
        return shared_prefix_logprobs if self._shared_prefix() else completion_logprobs

    def _skips_zero_rows(self) -> bool:
        """Rows of advantage 0 add exactly 0 with beta 0 and one pass; skipping them needs every rank's
        gradient to be synced once at the end of the step (one process, or DDP: `distributed`)."""
        exact = self.hparams.skip_zero_advantage and self.loss_config.beta == 0 and self.hparams.num_passes == 1
        return exact and (self.trainer.world_size == 1 or manual_gradient_sync(self.trainer))

    def training_step(self, batch: dict, batch_idx: int):
        record = self.rollout
        if record is None:
            raise RuntimeError("no rollout for this batch: GRPOModule needs its RolloutCallback (configure_callbacks)")
        record = record.to(self.device)
        start = time.perf_counter()
        cfg, world = self.loss_config, self.trainer.world_size
        truncated = record.truncated if cfg.mask_truncated else None  # [N]
        loss_mask = grpo.loss_mask(record.completion_mask, truncated)  # [N, C]: the tokens the loss counts
        n = record.input_ids.shape[0]
        rows = torch.arange(n, device=self.device)  # [N]
        if self._skips_zero_rows():
            rows = grpo.signal_rows(record.advantages, record.group_size, whole_groups=self._shared_prefix())  # [M]
        # one denominator for the whole step (every micro-batch, every rank); DDP averages the ranks'
        # gradients, so each rank divides by the global denominator / world size
        local = float(grpo.loss_denominator(loss_mask, cfg.loss_type, self.rollout_config.max_new_tokens))
        counts = [local, rows.numel(), n, float(loss_mask.sum())]
        denominator, kept, total_rows, tokens = all_sum(self.trainer, counts, self.device)
        denominator = max(denominator, 1.0) / world
        size = self.hparams.micro_batch_size
        chunks = [rows[i : i + size] for i in range(0, rows.numel(), size)]
        temperature, logprobs = self.rollout_config.temperature, self._logprobs_fn()

        ref_logp = old_logp = None
        with torch.no_grad():
            if cfg.beta > 0:
                with reference_mode(self.policy):
                    ref_logp = torch.cat([logprobs(self.policy, record, c, temperature) for c in chunks])
            if self.hparams.num_passes > 1:
                old_logp = torch.cat([logprobs(self.policy, record, c, temperature) for c in chunks])

        token_stats = [k for k in TOKEN_STATS if k != "kl" or cfg.beta > 0]
        sums = dict.fromkeys(("loss", "policy_loss", "computed_tokens", *token_stats), 0.0)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        for _ in range(self.hparams.num_passes):
            total_loss, at = 0.0, 0
            with local_accumulation(self.trainer):
                for chunk in chunks:
                    part = slice(at, at + chunk.numel())  # this chunk's rows of ref_logp / old_logp
                    at = part.stop
                    loss, stats = grpo.grpo_loss(
                        logprobs(self.policy, record, chunk, temperature),  # [m, C]
                        record.completion_mask[chunk],
                        record.advantages[chunk],
                        old_logp=None if old_logp is None else old_logp[part],
                        ref_logp=None if ref_logp is None else ref_logp[part],
                        cfg=cfg,
                        truncated=record.truncated[chunk],
                        denominator=denominator,
                    )
                    self.manual_backward(loss)
                    total_loss += float(loss.detach())
                    computed = float(stats["token_count"])
                    sums["loss"] += float(stats["loss"])
                    sums["policy_loss"] += float(stats["policy_loss"])
                    sums["computed_tokens"] += computed
                    for key in token_stats:
                        sums[key] += float(stats[key]) * computed
            sync_gradients(self.trainer, params)
            self._optimizer_step(params, total_loss, record)
        train_seconds = time.perf_counter() - start
        self._write_rollout_log(record)
        counts = {"train/token_count": tokens, "train/skipped_rows_frac": 1.0 - kept / max(total_rows, 1.0)}
        self._log_step(sums, counts, record, train_seconds)

    def _optimizer_step(self, params: list[torch.nn.Parameter], loss_value: float, record: RolloutRecord) -> None:
        """Clip and step on the true gradient, or skip a non-finite step; every rank decides alike.

        Under fp16 mixed precision (`16-mixed`) the gradients are the loss scaler's scaled ones: the
        norm and the clip threshold are divided and multiplied by the scale, so both act on the true
        gradient, and an overflow (inf gradients, finite loss) is the scaler's ordinary business: the
        optimizer step is called, the scaler skips it and lowers its scale. It is not a bad step.
        """
        opt, sched = self.optimizers(), self.lr_schedulers()
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        scale = float(scaler.get_scale()) if scaler is not None else 1.0
        norms = [torch.linalg.vector_norm(p.grad.float()) for p in params]
        grad_norm = float(torch.linalg.vector_norm(torch.stack(norms))) / scale if norms else 0.0
        bad_loss, bad_grad = all_sum(
            self.trainer, [not math.isfinite(loss_value), not math.isfinite(grad_norm)], self.device
        )
        if scaler is not None and bad_grad and not bad_loss:
            opt.step()  # the scaler finds the inf, skips the update and lowers its scale
            opt.zero_grad(set_to_none=True)
            sched.step()
            self._overflow_steps += 1
            self.log("train/overflow_steps", float(self._overflow_steps))
            return
        if bad_loss or bad_grad:
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
            clip = self.hparams.max_grad_norm * scale
            self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        self.log("train/grad_norm", grad_norm)

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

    def _log_step(
        self, sums: dict[str, float], counts: dict[str, float], record: RolloutRecord, train_seconds: float
    ) -> None:
        """Log the step, reduced over the ranks in two all-reduces: sums add up (the loss, the
        token-weighted clip / ratio / KL stats, the sampled MAE's parts; `counts` are already global),
        completion lengths take the min / max, the rest are per-rank values averaged."""
        r, world, passes = record.rewards, self.trainer.world_size, self.hparams.num_passes
        lengths = record.completion_mask.sum(-1).float()  # [N]
        valid = ~torch.isnan(record.predictions)  # [N]
        errors = (record.predictions[valid] - record.targets[valid]).abs()  # [n valid]
        means = {
            "train/reward": r.mean(),
            "train/reward_std": r.std() if r.numel() > 1 else torch.zeros(()),
            "train/format_rate": record.format_ok.float().mean(),
            "train/copy_rate": record.copied.float().mean(),
            "train/grounded_rate": record.grounded.float().mean(),
            "train/parse_rate": valid.float().mean(),
            "train/completion_len_mean": lengths.mean(),
            "train/truncated_frac": record.truncated.float().mean(),
            "train/zero_std_groups": grpo.zero_std_group_fraction(r, record.group_size),
            "train/generation_seconds": record.generation_seconds,
            "train/optimization_seconds": train_seconds,
            "train/step_seconds": record.generation_seconds + train_seconds,
            "train/generated_tokens_per_s": float(lengths.sum()) / max(record.generation_seconds, 1e-9),
            "train/trained_tokens_per_s": float(record.attention_mask.sum()) / max(train_seconds, 1e-9),
            "train/lr": self.optimizers().param_groups[0]["lr"],
        }
        for name, comp in record.components.items():
            means[f"train/reward_{name}"] = comp.mean()
            means[f"train/reward_{name}_std"] = comp.std() if comp.numel() > 1 else torch.zeros(())
        local = {
            **sums,
            **{k: float(v) for k, v in means.items()},
            "errors": float(errors.sum()),
            "valid": valid.sum(),
        }
        total = dict(zip(local, all_sum(self.trainer, [float(v) for v in local.values()], self.device)))
        longest, minus_shortest = all_sum(
            self.trainer, [float(lengths.max()), -float(lengths.min())], self.device, "max"
        )
        values = {k: total[k] / world for k in means}
        values.update(counts)
        values["train/loss"] = total["loss"] / world / passes  # each rank's loss is world x its share
        values["train/policy_loss"] = total["policy_loss"] / world / passes
        values["train/completion_len_min"], values["train/completion_len_max"] = -minus_shortest, longest
        if total["computed_tokens"] > 0:
            values.update({f"train/{k}": total[k] / total["computed_tokens"] for k in TOKEN_STATS if k in total})
        if total["valid"]:
            values["train/sampled_mae"] = total["errors"] / total["valid"]
        self.log_dict(values, sync_dist=False)  # already reduced over the ranks
        self.log("reward", values["train/reward"], prog_bar=True, logger=False)
        self.log("format", values["train/format_rate"], prog_bar=True, logger=False)
        every = self.hparams.log_completions_every_n_steps
        if every and self.global_step % every == 0:
            self._log_text("train/sample_completion", record.texts[0])
