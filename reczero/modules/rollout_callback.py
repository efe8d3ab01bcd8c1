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
from reczero.modules.distributed import gather_per_rank, own_entry
from reczero.rollout.record import RolloutConfig, build_rollout


class RolloutCallback(L.Callback):
    """Samples the rollout of each training batch before `training_step` sees it.

    The sampling generator's state of every rank is part of the checkpoint, so a resumed run samples
    exactly what the uninterrupted run would have, on every rank.
    """

    def __init__(self, cfg: RolloutConfig, spec: rewards.RewardSpec):
        self.cfg, self.spec = cfg, spec
        self.generator: torch.Generator | None = None
        self._pending_state: torch.Tensor | list | None = None
        self._trainer: L.Trainer | None = None

    @property
    def state_key(self) -> str:
        return "RolloutCallback"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def _generator(self, device: torch.device, rank: int) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.cfg.seed + 1_000_003 * rank)
            state, self._pending_state = self._pending_state, None
            if isinstance(state, list):  # one state per rank
                state = own_entry(state, self._trainer, "rollout generator states")
            if state is not None:
                gen.set_state(state)
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
        """Every rank's generator state (each samples with its own; only rank 0 writes the checkpoint)."""
        state = self.generator.get_state() if self.generator is not None else None
        return {"generator": gather_per_rank(self._trainer, state)}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("generator") is not None:
            self._pending_state = state_dict["generator"]
            self.generator = None
