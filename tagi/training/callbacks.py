"""Callbacks the CLI installs on every Trainer."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Lightning's bar, led by the optimizer step out of max_steps: a run set by max_steps has
    max_epochs −1, for which Lightning's own bar reads "Epoch 6/-2"."""

    def _get_train_description(self, current_epoch: int) -> str:
        if not self.trainer.max_steps or self.trainer.max_steps < 0:
            return super()._get_train_description(current_epoch)
        description = f"step {self.trainer.global_step}/{self.trainer.max_steps}"
        return f"{description:{len(self.validation_description)}}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description=self._get_train_description(trainer.current_epoch))
