"""`RolloutCallback`: the Lightning glue that samples each training batch's rollout before `training_step`.

Before every training batch it switches the policy to eval mode, builds the `RolloutRecord` of the
batch (`rollout.record.build_rollout`: G sampled completions per prompt, scored, with group
advantages), switches back to train mode and hands the record to the module (`pl_module.rollout`).
"""

from __future__ import annotations

import lightning as L
import torch

from reczero import rewards
from reczero.data.batching import scale_of
from reczero.rollout.record import RolloutConfig, build_rollout


class RolloutCallback(L.Callback):
    """Samples the rollout of each training batch before `training_step` sees it.

    The sampling generator's state is part of the checkpoint, so a resumed run samples exactly what
    the uninterrupted run would have.
    """

    def __init__(self, cfg: RolloutConfig, spec: rewards.RewardSpec):
        self.cfg, self.spec = cfg, spec
        self.generator: torch.Generator | None = None
        self._pending_state: torch.Tensor | None = None

    @property
    def state_key(self) -> str:
        return "RolloutCallback"

    def _generator(self, device: torch.device, rank: int) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.cfg.seed + 1_000_003 * rank)
            if self._pending_state is not None:
                gen.set_state(self._pending_state)
                self._pending_state = None
            self.generator = gen
        return self.generator

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if "labels" in batch:
            raise ValueError("GRPO trains on prompts, but these are SFT batches: unset data.traces for GRPO")
        model = pl_module.policy
        was_training = model.training
        model.eval()
        try:
            record = build_rollout(
                model,
                pl_module.tokenizer,
                batch,
                self.cfg,
                self.spec,
                scale_of(batch),
                self._generator(batch["input_ids"].device, trainer.global_rank),
                pl_module.prompt.response_prefix,
            )
        finally:
            model.train(was_training)
        pl_module.rollout = record

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state() if self.generator is not None else None}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("generator") is not None:
            self._pending_state = state_dict["generator"]
            self.generator = None
