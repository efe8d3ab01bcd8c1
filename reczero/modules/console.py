"""What a training run prints: a progress bar that counts steps, and the before/after validation table.

`PolicyModule.configure_callbacks` adds both. Lightning's rich progress bar describes a run by epochs
("Epoch 0/N"); a run bounded by `trainer.max_steps` has no epoch count (max_epochs is -1), so it read
"Epoch 0/-2": `StepProgressBar` names the optimizer step instead. `ValidationTable` keeps the first and
the latest validation metrics and prints them side by side when `fit` ends, so a user sees what the
run did without opening TensorBoard.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_only

# (metric key, label) in the order the table shows them; keys a run did not log are left out
TABLE_ROWS = (
    ("val/reward", "reward"),
    ("val/format_rate", "format pass rate"),
    ("val/parse_rate", "parse rate"),
    ("val/mae", "MAE"),
    ("val/user_mean_mae", "MAE of the user mean"),
    ("val/rmse", "RMSE"),
    ("val/copy_rate", "copy rate"),
    ("val/grounded_rate", "grounded rate"),
    ("val/trace_loss", "held-out trace loss"),
)


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, described by step when `max_steps` bounds the run."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            text = f"Step {trainer.global_step}/{trainer.max_steps}"
        else:
            text = (
                f"Epoch {current_epoch}/{trainer.max_epochs - 1}" if trainer.max_epochs else f"Epoch {current_epoch}"
            )
        return f"{text:{len(self.validation_description)}}" if len(self.validation_description) > len(text) else text

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None:  # the step count moved on
            description = self._get_train_description(trainer.current_epoch)
            self.progress.update(self.train_progress_bar_id, description=description)


class ValidationTable(L.Callback):
    """Prints the first and the latest validation metrics side by side at the end of `fit`."""

    def __init__(self) -> None:
        self.first: tuple[int, dict[str, float]] | None = None
        self.last: tuple[int, dict[str, float]] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values = dict(getattr(pl_module, "last_val_metrics", {}) or {})
        if not values:
            return
        entry = (trainer.global_step, values)
        if self.first is None:
            self.first = entry
        self.last = entry

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        table = format_table(self.first, self.last)
        if table:
            print(table, flush=True)


def format_table(first: tuple[int, dict] | None, last: tuple[int, dict] | None) -> str:
    """`validation  step A  step B` then one row per metric; empty when nothing was validated."""
    if first is None or last is None:
        return ""
    columns = [first] if first[0] == last[0] else [first, last]
    header = ["validation"] + [f"step {step}" for step, _ in columns]
    rows = [
        [label] + [f"{values[key]:.3f}" if key in values else "-" for _, values in columns]
        for key, label in TABLE_ROWS
        if any(key in values for _, values in columns)
    ]
    if not rows:
        return ""
    width = max(len(r[0]) for r in [header, *rows])
    lines = [header[0].ljust(width) + "".join(h.rjust(10) for h in header[1:])]
    lines += [r[0].ljust(width) + "".join(v.rjust(10) for v in r[1:]) for r in rows]
    return "\n".join(lines)
