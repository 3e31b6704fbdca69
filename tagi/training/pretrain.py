"""Stage 2: pretrain the hypernetwork (+ fusion, + backbone if configured) on C4-style segments.

A document is split into consecutive pieces a, b, c: `a` → hypernetwork, `b` → model input, and
the model is trained with cross-entropy to produce `c` (HINT's 3-way split; the 4-way variant feeds
`[a; d]` to the hypernetwork). The data module does the splitting; this stage just sees the batch.
"""

from __future__ import annotations

from dataclasses import asdict

from tagi.inference.runner import StudentRunner
from tagi.modeling.model import TAGIModel
from tagi.training.config import Architecture, Backbone, Generation, Optimization
from tagi.training.stage import Stage


class PretrainModule(Stage):
    stage = "pretrain"

    def __init__(
        self,
        backbone: Backbone = Backbone(),
        architecture: Architecture = Architecture(),
        tokenizer: str = "byt5",
        optimization: Optimization = Optimization(),
        generation: Generation = Generation(),
        adapter_only: bool = False,
    ):
        """`adapter_only`: evaluation ablation, the student reduced to backbone + generated LoRA (what `tagi adapter`
        exports). Evaluating with other instructions is the data's `instruction_control`."""
        super().__init__(backbone, tokenizer, optimization, generation)
        self.architecture, self.adapter_only = architecture, adapter_only
        self.model = TAGIModel(backbone.load(len(self.tokenizer)), **asdict(architecture))
        self.student = StudentRunner(self.model, self.tokenizer)

    def training_step(self, batch: dict, batch_idx: int):
        _, outputs = self.student.outputs(batch)
        return self.training_loss({"ce": outputs.loss}, batch["input_ids"].shape[0])

    def describe(self) -> dict:
        return {**super().describe(), "architecture": asdict(self.architecture)}
