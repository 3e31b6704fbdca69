"""Stage 2: pretrain the hypernetwork (+ fusion, + backbone if configured) on C4-style segments.

A document is split into consecutive pieces a, b, c: `a` → hypernetwork, `b` → model input, and
the model is trained with cross-entropy to produce `c` (HINT's 3-way split; the 4-way variant feeds
`[a; d]` to the hypernetwork). The data module does the splitting; this stage just sees the batch.
"""

from __future__ import annotations

from tagi.training.config import Architecture, Backbone, Generation, Optimization
from tagi.training.hyper import HyperStage


class PretrainModule(HyperStage):
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
        super().__init__(backbone, architecture, tokenizer, optimization, generation, adapter_only)

    def training_step(self, batch: dict, batch_idx: int):
        _, outputs = self.student_outputs(batch)
        return self.training_loss({"ce": outputs.loss}, batch["input_ids"].shape[0])
