"""Stage 0, θ0: the backbone itself trained in full, no hypernetwork; also the baselines that finetune
θ0 in full (instruction concatenated, or the input alone).

    input: concat   the instruction concatenated with every input (Tk-Instruct)
    input: plain    the input alone (the no-instruction baseline)

It reads `FinetuneDataModule` batches (they carry both forms) and validates by generation on the
validation tasks like every other stage. With `output_dir` set, the trained backbone is written
there with `save_pretrained` at the end of training, so later stages can load it by path as their
`backbone.name`: the offline settings have no pretrained T5 to download, and this is how they get
a θ0 that has learnt to read instructions at all (the method assumes a pretrained backbone; docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import torch

from tagi.io import BACKBONE_META, atomic_directory, weights_record
from tagi.modeling.families import family_of
from tagi.training.config import Backbone, Generation, Optimization
from tagi.training.stage import Stage

log = logging.getLogger(__name__)


class Theta0Module(Stage):
    stage = "theta0"

    def __init__(
        self,
        backbone: Backbone = Backbone(),
        tokenizer: str = "byt5",
        input: Literal["concat", "plain"] = "concat",
        output_dir: str | None = None,
        optimization: Optimization = Optimization(),
        generation: Generation = Generation(),
    ):
        super().__init__(backbone, tokenizer, optimization, generation)
        self.backbone = backbone.load(len(self.tokenizer))
        self.family = family_of(self.backbone)
        self.input = input
        self.output_dir = None if output_dir is None else Path(output_dir)

    def _inputs(self, batch: dict, rows: slice | torch.Tensor = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' prompt ids and mask: the concatenation, or the input alone."""
        if self.input == "concat":
            return batch["concat_input_ids"][rows], batch["concat_attention_mask"][rows]
        return batch["input_ids"][rows], batch["attention_mask"][rows]

    def training_step(self, batch: dict, batch_idx: int):
        loss = self.family.answer_logits(self.backbone, *self._inputs(batch), batch["labels"]).loss
        return self.training_loss({"ce": loss}, batch["labels"].shape[0])

    def generate_texts(self, batch: dict) -> list[str]:
        with torch.no_grad():
            return self.decode(self.family.generate(*self._inputs(batch), **self.generate_kwargs()))

    def option_logits(self, batch: dict, rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.family.answer_logits(self.backbone, *self._inputs(batch, rows), labels).logits

    def export(self, out_dir: Path) -> Path:
        """A standard `from_pretrained` folder with its tokenizer (+ what made it), written aside and renamed
        (`ExportArtifacts` calls it when the fit ends)."""
        with atomic_directory(out_dir) as tmp:
            self.backbone.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)  # AutoTokenizer on the folder must give the vocabulary θ0 was trained on
            meta = {**self.describe(), "global_step": self.global_step, **weights_record(tmp)}
            (tmp / BACKBONE_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        log.info("wrote the trained backbone to %s", out_dir)
        return out_dir

    def describe(self) -> dict:
        return {**super().describe(), "input": self.input}
