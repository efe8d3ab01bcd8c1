"""GRPO steps on fixed, scripted rollouts, on one process or on several CPU processes (DDP on gloo).

`tests/test_scale.py` runs this script with 1 and with 2 processes and compares what each step did:
the gradient that reached the optimizer, the logged counts, whether the step was skipped, and the
validation sample count. It is a script because Lightning's DDP launcher starts the other ranks by
running the script it was started from again.

The global rollout of every step is the same 4 prompts x G=4 scripted completions; with W processes
rank r trains on prompts r*4/W .. (r+1)*4/W - 1. Rank 0's prompts have long completions and rank 1's
short ones, so per-rank means differ from the global mean. Before every step the LoRA weights are
reset to their starting values, so each step's gradient can be compared on its own.

    python tests/ddp_step.py OUT_DIR MODEL_DIR DEVICES
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).parent)]  # this checkout's reczero
from tiny import perturb_lora, prompt_batch, scripted_generation, synthetic_data  # noqa: E402

from reczero import grpo  # noqa: E402
from reczero.data.batching import scale_of  # noqa: E402
from reczero.data.render import PromptConfig  # noqa: E402
from reczero.modules.grpo_module import GRPOModule  # noqa: E402
from reczero.modules.rollout_callback import RolloutCallback  # noqa: E402
from reczero.policy import precision  # noqa: E402
from reczero.policy.factory import PolicyConfig  # noqa: E402
from reczero.rollout.record import RolloutConfig, record_from_generation  # noqa: E402

PROMPTS = ["a short prompt", "a somewhat longer prompt about films", "rate this film", "one more prompt here"]
TARGETS = [4.0, 3.0, 5.0, 2.0]
GROUP = 4
GOOD = "<analyze user>{}</analyze user><analyze item>a drama</analyze item><match>fits</match><rate>{}</rate>"
# step -> (loss type, mask_truncated, beta, what the rollout looks like)
SCENARIOS = [
    ("token_mean", False, 0.0, "spread"),
    ("sequence_mean", True, 0.0, "truncated"),
    ("dr_grpo", False, 0.0, "spread"),
    ("token_mean", False, 0.1, "spread"),
    ("token_mean", False, 0.0, "rank1_zero"),  # prompts 2 and 3: every completion alike, advantage 0
    ("token_mean", False, 0.0, "nan"),  # a NaN advantage in prompt 3 only: every rank must skip
    ("sequence_mean", False, 0.0, "all_zero"),  # nothing to learn anywhere: a zero-gradient step
]
OPTIMIZER_STEPS = len(SCENARIOS) - 1  # the NaN step is skipped


def scripted(prompt: int, kind: str) -> tuple[list[str], list[bool]]:
    """One prompt's G completions and their finished flags."""
    words = "likes drama and long films " * (6 if prompt < 2 else 1)
    texts = [GOOD.format(words, 4), GOOD.format(words, 2), "no tags at all", GOOD.format(words, 5)]
    if kind == "all_zero" or (kind == "rank1_zero" and prompt >= 2):
        texts = [GOOD.format(words, 3)] * GROUP
    finished = [True] * GROUP
    if kind == "truncated":
        finished = {0: [False, False, True, True], 2: [False] * GROUP}.get(prompt, finished)
    return texts, finished


class ScriptedRollout(RolloutCallback):
    """This rank's share of the step's global scripted rollout, scored by the real record path."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        loss_type, mask_truncated, beta, kind = SCENARIOS[batch_idx]
        pl_module.loss_config = grpo.GRPOLossConfig(loss_type=loss_type, mask_truncated=mask_truncated, beta=beta)
        share = len(PROMPTS) // trainer.world_size
        mine = range(trainer.global_rank * share, (trainer.global_rank + 1) * share)
        texts, finished = [], []
        for p in mine:
            t, f = scripted(p, kind)
            texts, finished = texts + t, finished + f
        tokenizer = pl_module.tokenizer
        local = prompt_batch(tokenizer, [PROMPTS[p] for p in mine], [TARGETS[p] for p in mine])
        gen = scripted_generation(tokenizer, texts, finished)
        record = record_from_generation(local, gen, self.cfg, self.spec, scale_of(batch))
        if kind == "nan" and 3 in mine:
            record.advantages[(mine.index(3)) * GROUP] = float("nan")
        pl_module.rollout = record


class Scripted(GRPOModule):
    def configure_callbacks(self):
        return [ScriptedRollout(self.rollout_config, self.reward_spec)]


class Capture(L.Callback):
    """Resets the LoRA before each step; records each step's synced gradient, logged counts and skip."""

    def __init__(self):
        self.start: dict[str, torch.Tensor] = {}
        self.steps: dict[int, dict] = {}

    def on_train_start(self, trainer, pl_module):
        self.start = {n: p.detach().clone() for n, p in pl_module.policy.named_parameters() if p.requires_grad}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with torch.no_grad():
            for n, p in pl_module.policy.named_parameters():
                if n in self.start:
                    p.copy_(self.start[n])
        self.steps[batch_idx] = {"grads": None}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        step = self.steps[max(self.steps)]
        step["grads"] = {n: p.grad.detach().clone() for n, p in pl_module.policy.named_parameters() if n in self.start}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        keys = ("token_count", "completion_len_min", "completion_len_max", "skipped_rows_frac", "loss")
        metrics = trainer.callback_metrics
        self.steps[batch_idx]["logged"] = {k: float(metrics[f"train/{k}"]) for k in keys if f"train/{k}" in metrics}
        self.steps[batch_idx]["bad_steps"] = pl_module._bad_steps


def main(out: Path, model_dir: str, devices: int) -> None:
    L.seed_everything(0)
    prompt = PromptConfig(max_prompt_tokens=1536)
    module = Scripted(
        policy=PolicyConfig(model=model_dir, lora_r=4, lora_alpha=8),
        prompt=prompt,
        rollout=RolloutConfig(group_size=GROUP, max_new_tokens=64),
        learning_rate=1e-3,
        max_grad_norm=0.0,
        micro_batch_size=GROUP,  # several micro-batches per rank, shared-prefix forward on
        val_max_new_tokens=4,
        max_bad_steps=2,
    )
    module.configure_model()
    # tests/test_scale.py compares gradients at float32's noise floor: the tests' pin must reach this process
    assert os.environ.get(precision.PIN_VARIABLE) == "float32", f"{precision.PIN_VARIABLE} is not float32 here"
    dtypes = {p.dtype for p in module.policy.parameters()}
    assert module.policy_config.dtype == "float32" and dtypes == {torch.float32}, f"runs in {dtypes}"
    perturb_lora(module.policy, scale=0.05)  # the policy differs from the KL reference
    data = synthetic_data(model_dir, prompt, out / "cache", users=30, validation=5, eval_batch_size=2)
    capture = Capture()
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=OPTIMIZER_STEPS,
        logger=False, enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[capture], default_root_dir=out,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    trainer.limit_val_batches = 1.0
    trainer.validate(module, datamodule=data, verbose=False)
    result = {
        "steps": capture.steps,
        "global_step": trainer.global_step,
        "val_samples": module.last_val_metrics["val/samples"],
        "dtype": module.policy_config.dtype,
        "optimizer_state_steps": [float(s["step"]) for s in module.optimizers().optimizer.state.values()],
    }
    torch.save(result, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
