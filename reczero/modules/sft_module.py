"""`SFTModule`: RecOne's cold start, supervised fine-tuning on reasoning traces before the GRPO stage.

Method (method.md, RecOne): about 1,000 four-tag traces (`reczero coldstart` builds them; format in
`reczero.data.traces`) teach the policy the Think-before-Recommendation format and a sensible reasoning
style; GRPO then starts from the saved adapter (`policy.adapter_path` in configs/recone.yaml).

Training:
  - completion-only loss: token-mean cross-entropy over the completion tokens of the batch (the
    prompt is masked with labels -100 by `sft_collate`; the EOS token after `</rate>` counts, so
    the model learns to stop). Logits are computed from the first completion position on only;
  - automatic optimisation: gradient accumulation (`trainer.accumulate_grad_batches`) and clipping
    (`trainer.gradient_clip_val`) come from the Trainer; AdamW + warmup + decay from `PolicyModule`;
  - batches come from the DataModule given `data.traces` (it matches them to train samples):
    length-bucketed, resumable mid-epoch from a checkpoint, sharded under DDP;
  - validation: the inherited greedy-decoding MAE / RMSE / parse rate on the validation split, plus
    `val/trace_loss` on the traces the DataModule holds out (`data.heldout_traces`; its second
    validation loader).
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from reczero import rewards
from reczero.data.render import PromptConfig
from reczero.modules.base import PolicyModule, as_config
from reczero.policy.factory import PolicyConfig

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
        policy: the model, LoRA / 4-bit settings (shared with the GRPO module).
        prompt: the DataModule's prompt settings (`reczero fit` links `data.prompt` here): the response
            prefix is scored with each validation completion, the budget checked against the context.
        reward: the template and format rules; used to score validation decoding.
        learning_rate: AdamW learning rate (LoRA: ~1e-4 to 5e-4).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warmup optimizer steps.
        lr_schedule: "constant", "cosine" or "linear" decay after warmup (to 10%).
        val_max_new_tokens: greedy decoding length for validation.
        adapter_dir: where the final LoRA adapter is saved (peft format): GRPO's `policy.adapter_path`.
    """

    def __init__(
        self,
        policy: PolicyConfig = PolicyConfig(),
        prompt: PromptConfig = PromptConfig(),
        reward: rewards.RewardSpec = rewards.RewardSpec(),
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: str = "cosine",
        val_max_new_tokens: int = 256,
        adapter_dir: str | None = None,
    ):
        policy, reward = as_config(policy, PolicyConfig), as_config(reward, rewards.RewardSpec)
        super().__init__(
            policy, prompt, reward, learning_rate, weight_decay, warmup_steps, lr_schedule, val_max_new_tokens,
            adapter_dir,
        )  # fmt: skip
        self.save_hyperparameters()
        self._step_start: float | None = None
        self._step_tokens = 0
        self._trace_loss = (0.0, 0)  # held-out traces this validation: (summed token loss, tokens)

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
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if "labels" not in batch:  # the validation prompts
            super().validation_step(batch, batch_idx, dataloader_idx)
            return
        loss, n = policy_completion_loss(self.policy, batch)  # the DataModule's held-out traces
        total, count = self._trace_loss
        self._trace_loss = (total + float(loss) * int(n), count + int(n))

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._trace_loss = (0.0, 0)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        total, count = self._trace_loss
        if count:
            self.log("val/trace_loss", total / count, rank_zero_only=True, sync_dist=False, add_dataloader_idx=False)
