"""What the SFT and the GRPO LightningModules share: the policy, the optimiser and schedule,
greedy-decoding validation with honest rating metrics, and adapter-only checkpoints.

The policy (a LoRA / QLoRA `PeftModel`) is built in `configure_model`, so Lightning strategies
(DDP, FSDP, DeepSpeed) wrap it as they need. Before its weights load, `policy.dtype: auto` becomes
one concrete dtype: rank 0 resolves it by the hardware rule (`policy.precision`) and every rank takes
that choice; the hyper-parameters and checkpoints record it, and a resume computes in the recorded
dtype. The module never touches the DataModule: the prompt settings both need arrive as one `PromptConfig` (`prompt`, the same object the DataModule renders
with), and each batch carries the rating scale of its targets.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar

from reczero import metrics, rewards
from reczero.data.batching import scale_of
from reczero.data.render import PromptConfig
from reczero.modules.checkpointing import capture_rng, restore_rng
from reczero.modules.console import StepProgressBar, ValidationTable
from reczero.modules.distributed import from_rank_zero, gather_per_rank, own_entry
from reczero.policy import precision
from reczero.policy.adapters import save_adapter
from reczero.policy.factory import PolicyConfig, build_policy, load_tokenizer, resolve_dtype
from reczero.rollout.decoding import DecodeConfig, decode_batch

log = logging.getLogger(__name__)

LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_lambda(step: int, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float = 0.1):
    """Multiplier on the base learning rate: linear warmup, then constant / cosine / linear decay."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0 - (1 - min_ratio) * progress


def as_config(value, cls):
    """Accept a config dataclass or its dict form (as stored in checkpoints)."""
    return cls(**value) if isinstance(value, dict) else value


class PolicyModule(L.LightningModule):
    """Base class; subclasses implement `training_step`."""

    def __init__(
        self,
        policy: PolicyConfig,
        prompt: PromptConfig,
        reward: rewards.RewardSpec,
        learning_rate: float,
        weight_decay: float,
        warmup_steps: int,
        lr_schedule: str,
        val_max_new_tokens: int,
        adapter_dir: str | None,
    ):
        super().__init__()
        policy, reward = as_config(policy, PolicyConfig), as_config(reward, rewards.RewardSpec)
        if val_max_new_tokens < 1:
            raise ValueError(f"val_max_new_tokens must be >= 1, got {val_max_new_tokens}")
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.policy_config = policy
        self._dtype_auto = policy.dtype == "auto"  # resolved in `configure_model`; the checkpoint's wins on resume
        self.prompt = as_config(prompt, PromptConfig)
        self.prompt.check_scored_by(reward)  # the prompt asks for the tags the reward checks
        self.reward_spec = reward
        self.policy = None
        self.tokenizer = None
        self.scale = None  # of the last validation batch: the validation metrics clip fallbacks to it
        self.last_val_metrics: dict[str, float] = {}
        self.strict_loading = False  # checkpoints hold the adapter only, not the frozen base weights
        # per validation sample: prediction (NaN: none), target, fallback, format_ok, reward, copied, grounded
        self._val_rows: list[tuple[float, float, float, bool, float, bool, bool]] = []
        self._val_ids: list[int] = []  # the sample id of each row

    # -- building -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.policy_config)

    def configure_callbacks(self) -> list[L.Callback]:
        """The step-counting progress bar (where the trainer shows one) and the before/after validation table."""
        callbacks: list[L.Callback] = [ValidationTable()]
        if isinstance(self.trainer.progress_bar_callback, RichProgressBar):
            callbacks.append(StepProgressBar())
        return callbacks

    def configure_model(self) -> None:
        if self.policy is None:
            self.settle_dtype()
            self.policy = self.make_policy()
        self.check_context_length()

    def make_policy(self) -> torch.nn.Module:
        """The policy `configure_model` builds from `policy_config`."""
        return build_policy(self.policy_config)

    def settle_dtype(self) -> None:
        """`policy.dtype: auto` made concrete before any weight loads: rank 0 applies the hardware rule and
        every rank takes its choice, so no two ranks compute in different dtypes."""
        if self.policy_config.dtype == "auto":
            self._set_policy_dtype(from_rank_zero(lambda: precision.dtype_name(resolve_dtype("auto"))))

    def _set_policy_dtype(self, name: str) -> None:
        """`policy.dtype` = `name`, in the hyper-parameters too: the checkpoints' (`hparams`) and the ones
        Lightning sends the logger after `configure_model` (`hparams_initial`, kept by Lightning as
        `_hparams_initial`; `save_hyperparameters` outside `__init__` would inspect the wrong frames)."""
        self.policy_config = dataclasses.replace(self.policy_config, dtype=name)
        self.hparams["policy"] = self.policy_config
        if isinstance(getattr(self, "_hparams_initial", None), dict):
            self._hparams_initial["policy"] = copy.deepcopy(self.policy_config)

    def max_new_tokens(self) -> int:
        """The longest completion this module generates (subclasses add their rollout length)."""
        return self.hparams.val_max_new_tokens

    def check_context_length(self) -> None:
        """Fail at start-up, not mid-run, when prompt budget + completion cannot fit the model's context."""
        context = getattr(getattr(self.policy, "config", None), "max_position_embeddings", None)
        budget = self.prompt.max_prompt_tokens
        if context and budget and budget + self.max_new_tokens() > context:
            raise ValueError(
                f"data.prompt.max_prompt_tokens ({budget}) + max new tokens ({self.max_new_tokens()}) = "
                f"{budget + self.max_new_tokens()} exceeds the model's context of {context} tokens "
                f"({self.policy_config.model}); lower data.prompt.max_prompt_tokens or the max_new_tokens settings"
            )

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the policy has no trainable parameters: check policy.lora_r and target_modules")
        opt = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        total = self.total_optimizer_steps()
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda step: lr_lambda(step, self.hparams.warmup_steps, total, self.hparams.lr_schedule),
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def total_optimizer_steps(self) -> int:
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        return max(1, int(trainer.estimated_stepping_batches))

    # -- validation: greedy decoding, honest metrics ----------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Greedy decoding of the batch's prompts, scored as in training (`rollout.decoding.decode_batch`)."""
        cfg = DecodeConfig(mode="greedy", max_new_tokens=self.hparams.val_max_new_tokens)
        was_training = self.policy.training
        self.policy.eval()
        try:
            decoded = decode_batch(
                self.policy, self.tokenizer, batch, cfg, self.reward_spec, self.prompt.response_prefix
            )
        finally:
            self.policy.train(was_training)
        self.scale = scale_of(batch)
        for d, target, fallback in zip(decoded, batch["target"].tolist(), batch["fallback"].tolist()):
            pred = math.nan if d.prediction is None else d.prediction
            self._val_rows.append((pred, target, fallback, d.format_ok[0], d.rewards[0], d.copied[0], d.grounded[0]))
        self._val_ids.extend(batch["sample_id"].tolist())
        self._last_val_text = decoded[0].completions[0] if decoded else ""

    def on_validation_epoch_start(self) -> None:
        self._val_rows, self._val_ids = [], []
        self._val_start = time.perf_counter()

    def _gathered_val_rows(self) -> torch.Tensor:
        """This validation's rows from every rank [n, 7], each sample once: the distributed sampler pads the
        ranks to equal length by repeating samples, and a repeat must not count twice."""
        rows = torch.tensor(self._val_rows, dtype=torch.float32, device=self.device).reshape(-1, 7)  # [n, 7]
        ids = torch.tensor(self._val_ids, dtype=torch.long, device=self.device)  # [n]
        self._val_rows, self._val_ids = [], []
        if self.trainer.world_size > 1:
            rows, ids = self.all_gather(rows).reshape(-1, 7), self.all_gather(ids).reshape(-1)  # [W * n, ...]
        first = {}
        for index, sample in enumerate(ids.tolist()):
            first.setdefault(sample, index)
        return rows[[first[sample] for sample in sorted(first)]]  # [unique, 7], in sample order

    def on_validation_epoch_end(self) -> None:
        rows = self._gathered_val_rows()
        if rows.shape[0] == 0:
            return
        preds = [None if math.isnan(p) else p for p in rows[:, 0].tolist()]
        m = metrics.rating_metrics(preds, rows[:, 1].tolist(), rows[:, 2].tolist(), self.scale)
        values = {
            "val/mae": m.mae,
            "val/rmse": m.rmse,
            "val/parse_rate": m.parse_rate,
            "val/exact_rate": m.exact_rate,
            "val/within_1": m.within_1,
            "val/format_rate": rows[:, 3].mean().item(),
            "val/reward": rows[:, 4].mean().item(),
            "val/copy_rate": rows[:, 5].mean().item(),
            "val/grounded_rate": rows[:, 6].mean().item(),
            # the stated fallback (the user's average) as a predictor on the same samples: what "learned" beats
            "val/user_mean_mae": (rows[:, 2] - rows[:, 1]).abs().mean().item(),
            "val/samples": float(m.count),
            "val/seconds": time.perf_counter() - self._val_start,
        }
        if self.trainer.sanity_checking:
            # Lightning drops self.log() during the sanity check; configs run the whole validation set
            # there (num_sanity_val_steps: -1), which makes it the "before training" measurement
            if self.logger is not None and self.global_rank == 0:
                self.logger.log_metrics(values, step=self.global_step)
        else:
            self.log_dict(values, rank_zero_only=True, sync_dist=False)
        self.last_val_metrics = values
        self._log_text("val/sample_completion", getattr(self, "_last_val_text", ""))

    def _log_text(self, tag: str, text: str) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if self.global_rank == 0 and hasattr(experiment, "add_text") and text:
            experiment.add_text(tag, "```\n" + text + "\n```", self.global_step)

    # -- checkpoints: adapter only ----------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        # plain dicts, so checkpoints load with torch.load(weights_only=True) (no pickled classes)
        checkpoint["hyper_parameters"] = {
            k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in self.hparams.items()
        }
        # every rank draws its own random numbers, and only rank 0 writes the file: one state per rank
        checkpoint["reczero_rng"] = gather_per_rank(self._trainer, capture_rng())
        checkpoint["reczero_hyper_parameters"] = {
            "policy_model": self.policy_config.model,
            "policy_dtype": self.policy_config.dtype,  # what `auto` resolved to: a resume keeps it
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.keep_recorded_dtype(checkpoint)
        state = checkpoint.get("reczero_rng")
        if isinstance(state, list):
            state = own_entry(state, self._trainer, "random number generator states")
        if state is not None:  # a dict: a checkpoint from before the per-rank states
            restore_rng(state)
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        missing = trainable - set(checkpoint.get("state_dict", {}))
        if trainable and missing:
            raise ValueError(
                f"checkpoint lacks {len(missing)} adapter weights (e.g. {sorted(missing)[:2]}): it was written for a "
                "different LoRA configuration (rank / target modules) than this run's model.policy"
            )

    def keep_recorded_dtype(self, checkpoint: dict) -> None:
        """Resume in the dtype the checkpoint's run computed in. Under `policy.dtype: auto` the policy is
        rebuilt in it where this machine's rule chose otherwise (Lightning restores checkpoints between
        `configure_model` and wrapping the model, so nothing else holds the old weights yet); a dtype
        this machine cannot compute in stops the run. A dtype given explicitly is kept, with a warning."""
        recorded = (checkpoint.get("reczero_hyper_parameters") or {}).get("policy_dtype")
        current = self.policy_config.dtype  # "auto" only for a policy injected before `configure_model`
        if recorded in (None, "auto") or current in ("auto", recorded) or self.policy is None:
            return
        if not self._dtype_auto:
            log.warning(
                "the checkpoint's run computed in %s; this run computes in %s (policy.dtype): not an exact resume",
                recorded,
                current,
            )
            return
        hint = f"set --model.init_args.policy.dtype={current} to resume in {current} anyway (not an exact resume)"
        try:
            slow = precision.check_runnable(recorded)
        except ValueError as err:
            raise ValueError(f"the checkpoint's run computed in {recorded}, but {err}; {hint}") from None
        trainer = self._trainer
        if trainer is not None and trainer.strategy.restore_checkpoint_after_setup:
            raise ValueError(
                f"the checkpoint's run computed in {recorded} and this machine's rule gives {current}; "
                f"{type(trainer.strategy).__name__} restores after wrapping the model, so set "
                f"--model.init_args.policy.dtype={recorded} to resume exactly, or {hint}"
            )
        log.info("resuming in the checkpoint's dtype %s (this machine's rule gives %s)", recorded, current)
        if slow:
            log.warning("%s", slow)
        self.policy = None
        gc.collect()
        self._set_policy_dtype(recorded)
        if trainer is None:
            self.configure_model()
            return
        strategy = trainer.strategy  # the contexts Lightning builds the model in
        with (
            strategy.tensor_init_context(),
            strategy.model_sharded_context(),
            trainer.precision_plugin.module_init_context(),
        ):
            self.configure_model()

    def on_train_end(self) -> None:
        if self.hparams.adapter_dir and self.global_rank == 0:
            path = Path(self.hparams.adapter_dir)
            save_adapter(self.policy, path)
            self.tokenizer.save_pretrained(path)
            log.info("saved the LoRA adapter to %s", path)
