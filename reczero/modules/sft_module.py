"""`SFTModule`: RecOne's cold start, supervised fine-tuning on reasoning traces before the GRPO stage.

Method (method.md, RecOne): about 1,000 four-tag traces (`reczero coldstart` builds them; format in
`reczero.recone.traces`) teach the policy the Think-before-Recommendation format and a sensible reasoning
style; GRPO then starts from the saved adapter (`policy.adapter_path` in configs/recone.yaml).

Training:
  - completion-only loss: token-mean cross-entropy over the completion tokens of the batch (the
    prompt is masked with labels -100 by `sft_collate`; the EOS token after `</rate>` counts, so
    the model learns to stop). Logits are computed from the first completion position on only;
  - automatic optimisation: gradient accumulation (`trainer.accumulate_grad_batches`) and clipping
    (`trainer.gradient_clip_val`) come from the Trainer; AdamW + warmup + decay from `PolicyModule`;
  - batches come from `RatingDataModule.sft_dataloader` (the module hands it the matched traces in
    `setup`): length-bucketed, resumable mid-epoch from a checkpoint, sharded under DDP;
  - validation: the inherited greedy-decoding MAE / RMSE / parse rate on the validation split, plus
    `val/trace_loss` on `heldout_traces` traces kept out of training (0: none).
"""

from __future__ import annotations

import logging
import random
import time

import torch
import torch.nn.functional as F

from reczero import rewards
from reczero.modules.base import PolicyModule, as_config
from reczero.policy.factory import PolicyConfig
from reczero.recone.traces import ON_BAD, load_traces, match_traces

log = logging.getLogger(__name__)


def completion_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(token-mean cross-entropy, number of counted tokens) of next-token prediction on `labels`.

    logits: [B, K, V] for the LAST K positions of the sequence (K <= L; K = L for all of them);
    labels: [B, L], -100 where a token does not count (prompt, padding). Position t predicts label t+1.
    """
    width = labels.shape[1] - logits.shape[1] + 1  # first label predicted by logits[:, 0]
    targets = labels[:, width:]  # [B, K - 1]
    logits = logits[:, :-1, :]  # [B, K - 1, V]
    count = (targets != -100).sum()
    total = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    return total / count.clamp(min=1), count


def policy_completion_loss(policy, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`completion_loss` of `policy` on an SFT batch, projecting to the vocabulary only from the first
    completion token of the batch on (prompts are most of each sequence; their logits are not needed)."""
    labels = batch["labels"]  # [B, L]
    counted = labels != -100  # [B, L]
    first = int(counted.float().argmax(dim=1)[counted.any(dim=1)].min()) if counted.any() else 1
    first = max(first, 1)  # label 0 has no position before it
    keep = labels.shape[1] - first + 1  # positions first - 1 .. L - 1
    out = policy(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, logits_to_keep=keep
    )
    return completion_loss(out.logits, labels)  # logits [B, keep, V]


class SFTModule(PolicyModule):
    """RecOne's SFT cold start on the shared policy (LoRA / QLoRA through `policy`).

    Args:
        traces: the trace JSONL file (see `reczero.recone.traces`), matched to train-split samples.
        policy: the model, LoRA / 4-bit settings (shared with the GRPO module).
        reward: the template and format rules; used to validate traces and score validation decoding.
        on_bad_trace: "error" stops at the first invalid or unmatched trace (naming file, line and reason);
            "skip" drops and counts them.
        heldout_traces: traces kept out of training (a seeded draw) for `val/trace_loss`; 0 disables it.
        bucket: length-bucketed batches (less padding); off = plain shuffled batches.
        learning_rate: AdamW learning rate (LoRA: ~1e-4 to 5e-4).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warmup optimizer steps.
        lr_schedule: "constant", "cosine" or "linear" decay after warmup (to 10%).
        val_max_new_tokens: greedy decoding length for validation.
        adapter_dir: where the final LoRA adapter is saved (peft format): GRPO's `policy.adapter_path`.
        seed: seed of the held-out draw.
    """

    def __init__(
        self,
        traces: str,
        policy: PolicyConfig = PolicyConfig(),
        reward: rewards.RewardSpec = rewards.RewardSpec(),
        on_bad_trace: str = "error",
        heldout_traces: int = 0,
        bucket: bool = True,
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: str = "cosine",
        val_max_new_tokens: int = 256,
        adapter_dir: str | None = None,
        seed: int = 0,
    ):
        policy, reward = as_config(policy, PolicyConfig), as_config(reward, rewards.RewardSpec)
        super().__init__(
            policy, reward, learning_rate, weight_decay, warmup_steps, lr_schedule, val_max_new_tokens, adapter_dir
        )
        if on_bad_trace not in ON_BAD:
            raise ValueError(f"on_bad_trace must be one of {ON_BAD}, got {on_bad_trace!r}")
        if heldout_traces < 0:
            raise ValueError(f"heldout_traces must be >= 0, got {heldout_traces}")
        self.save_hyperparameters()
        self._heldout: dict[int, str] = {}
        self._heldout_loader = None
        self._step_start: float | None = None
        self._step_tokens = 0

    # -- data -----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is None or stage not in ("fit", "validate") or dm.sft_completions is not None:
            return
        hp = self.hparams
        traces, bad = load_traces(hp.traces, self.scale, hp.on_bad_trace, self.reward_spec.template)
        completions, unmatched = match_traces(traces, dm, hp.on_bad_trace)
        if bad or unmatched:
            log.warning("skipped %d invalid and %d unmatched traces of %s", bad, unmatched, hp.traces)
        if len(completions) <= hp.heldout_traces:
            raise ValueError(
                f"{len(completions)} usable traces in {hp.traces}, not enough to hold out {hp.heldout_traces}"
            )
        held = set(random.Random(hp.seed).sample(sorted(completions), hp.heldout_traces))
        self._heldout = {p: c for p, c in completions.items() if p in held}
        dm.sft_completions = {p: c for p, c in completions.items() if p not in held}
        log.info("SFT on %d traces (%d held out) from %s", len(dm.sft_completions), len(held), hp.traces)

    # -- the step -------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        now = time.perf_counter()
        if self._step_start is not None:  # the previous step, forward + backward + optimizer
            self.log("train/tokens_per_s", self._step_tokens / max(now - self._step_start, 1e-9))
        self._step_start, self._step_tokens = now, int(batch["attention_mask"].sum())
        loss, count = policy_completion_loss(self.policy, batch)
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log("train/completion_tokens", count.float())
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    # -- validation: the inherited decoding metrics, plus the held-out trace loss ----------------
    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self._heldout:
            return
        if self._heldout_loader is None:
            dm = self.trainer.datamodule
            self._heldout_loader = dm.sft_dataloader(self._heldout, dm.eval_batch_size, shuffle=False)
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in self._heldout_loader:
                batch = {k: v.to(self.device) for k, v in batch.items()}
                loss, n = policy_completion_loss(self.policy, batch)
                total, count = total + float(loss) * int(n), count + int(n)
        self.log("val/trace_loss", total / max(count, 1), rank_zero_only=True, sync_dist=False)
