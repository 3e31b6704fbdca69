"""Stage 0, θ0: the backbone itself trained in full, no hypernetwork; also the baselines that finetune
θ0 (instruction concatenated, or the input alone), in full or, with `lora_rank`, as one multi-task LoRA
on the frozen backbone (the decoder-only settings, where θ0 is a pretrained model and has no stage 0).

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

from contextlib import nullcontext

import torch
from torch import nn

from tagi.io import BACKBONE_META, atomic_directory, weights_record
from tagi.errors import ConfigurationError
from tagi.modeling.families import family_of
from tagi.modeling.lora import LoRAWeights, apply_lora, peft_init, site_shapes
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
        lora_rank: int | None = None,
        lora_alpha: float = 16.0,
    ):
        """`lora_rank`: train one LoRA (q/v, peft's layout) on the frozen backbone instead of the whole backbone."""
        super().__init__(backbone, tokenizer, optimization, generation)
        self.backbone = backbone.load(len(self.tokenizer))
        self.family = family_of(self.backbone)
        self.input = input
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.lora_rank, self.lora_alpha = lora_rank, lora_alpha
        if lora_rank is not None and output_dir is not None:
            raise ConfigurationError("model.init_args.output_dir: a θ0 is a whole backbone; with lora_rank this module "
                                     "trains a baseline LoRA, which later stages cannot use as θ0 (leave output_dir unset)")
        if lora_rank is not None:
            self.backbone.requires_grad_(False)
            A, B = peft_init(self._sites(), 1, lora_rank)
            self.lora_A, self.lora_B = nn.Parameter(A), nn.Parameter(B)  # (1, S, r, in), (1, S, out, r)

    def _sites(self) -> list[nn.Linear]:
        return [self.backbone.get_submodule(name) for name in self.family.site_names()]

    def adapted(self):
        """The backbone with the baseline's LoRA for the `with` block (nothing in full finetuning)."""
        if self.lora_rank is None:
            return nullcontext()
        lora = LoRAWeights(self.lora_A, self.lora_B, self.lora_alpha / self.lora_rank, site_shapes(self._sites()))
        return apply_lora(self._sites(), lora)

    def _inputs(self, batch: dict, rows: slice | torch.Tensor = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' prompt ids and mask: the concatenation, or the input alone."""
        if self.input == "concat":
            return batch["concat_input_ids"][rows], batch["concat_attention_mask"][rows]
        return batch["input_ids"][rows], batch["attention_mask"][rows]

    def training_step(self, batch: dict, batch_idx: int):
        with self.adapted():
            loss = self.family.answer_logits(self.backbone, *self._inputs(batch), batch["labels"]).loss
        return self.training_loss({"ce": loss}, batch["labels"].shape[0])

    def generate_texts(self, batch: dict) -> list[str]:
        with torch.no_grad(), self.adapted():
            return self.decode(self.family.generate(*self._inputs(batch), **self.generate_kwargs()))

    def option_logits(self, batch: dict, rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with self.adapted():
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
        lora = {} if self.lora_rank is None else {"lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha}
        return {**super().describe(), "input": self.input, **lora}
