"""Inference cost of one task of n examples: TAGI against feeding the instruction with every input.

    TAGI      = hypernetwork path once (instruction encoder + generator)  +  n × model(input, target)
    baseline  = n × model(instruction ⊕ input, target)                     (Tk-Instruct concatenation)

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (matmuls and attention, the terms that
dominate); wall time from `time.perf_counter` around the same calls, no_grad, after one warm-up.
Both score the reference target with teacher forcing (one decoder pass over the target), so the
two sides do the same decoder work and the comparison does not depend on what a model generates.
Lightning-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from tagi.data.collate import group_rows
from tagi.modeling.model import TAGIModel


@dataclass
class Cost:
    flops: int
    seconds: float


@dataclass
class TaskCost:
    """One task: TAGI's one-off instruction cost, its per-input cost, and the concatenation baseline."""

    examples: int
    tagi_instruction: Cost
    tagi_inputs: Cost
    baseline: Cost
    tagi_inputs_batched: Cost | None = None  # the same inputs with per-row LoRA (merge=False), if measured

    @property
    def tagi(self) -> Cost:
        return Cost(self.tagi_instruction.flops + self.tagi_inputs.flops, self.tagi_instruction.seconds + self.tagi_inputs.seconds)

    def ratios(self) -> dict[str, float]:
        ratios = {"flops": self.tagi.flops / self.baseline.flops, "seconds": self.tagi.seconds / self.baseline.seconds}
        if self.tagi_inputs_batched is not None:
            batched = self.tagi_instruction.seconds + self.tagi_inputs_batched.seconds
            ratios["flops_batched"] = (self.tagi_instruction.flops + self.tagi_inputs_batched.flops) / self.baseline.flops
            ratios["seconds_batched"] = batched / self.baseline.seconds
        return ratios

    def as_dict(self) -> dict:
        return {**asdict(self), "tagi": asdict(self.tagi), "ratio_tagi_over_baseline": self.ratios()}


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch counts its CUDA attention kernels but not the CPU one behind `scaled_dot_product_attention`, which
# transformers' T5 and Llama and our fusion layers call: attention's FLOPs, the part that grows with the
# instruction, went uncounted (on a tiny T5, 1.0e8 counted against 2.3e8 with attention written out). This
# gives the CPU kernel torch's own formula for the others, the same count as the two matmuls written out.
CPU_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def measure(fn: Callable[[], object], repeats: int = 1) -> Cost:
    """FLOPs of one call (attention included, `CPU_ATTENTION_FLOPS`), and its best wall time over `repeats`
    timed calls (after the counted call, which warms up)."""
    with torch.no_grad():
        counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
        with counter:
            fn()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
    return Cost(int(counter.get_total_flops()), best)


def task_cost(
    model: TAGIModel,
    instruction: tuple[Tensor, Tensor],  # (1, L) ids, mask
    inputs: tuple[Tensor, Tensor],  # (n, T) ids, mask
    concat: tuple[Tensor, Tensor],  # (n, L+T) ids, mask
    labels: Tensor,  # (n, Y)
    batch_size: int = 32,
    repeats: int = 1,
    batched: bool = False,
) -> TaskCost:
    """Cost of serving one task's n examples both ways on the same backbone: TAGI with the LoRA merged
    into the weights, and with `batched` also the per-row LoRA path a mixed-task batch takes."""
    task = model.encode_task(*instruction)

    def tagi_inputs(merge: bool = True):
        for rows in _batches(labels.shape[0], batch_size):
            # batched: every row indexes its task, as in a mixed-task batch (per-row LoRA, no shared caches)
            task_index = None if merge else torch.zeros(rows.stop - rows.start, dtype=torch.long)
            model(task, inputs[0][rows], inputs[1][rows], labels=labels[rows], merge=merge, task_index=task_index)

    def baseline():
        for rows in _batches(labels.shape[0], batch_size):
            model.family.answer_logits(model.backbone, concat[0][rows], concat[1][rows], labels[rows])

    return TaskCost(
        examples=labels.shape[0],
        tagi_instruction=measure(lambda: model.encode_task(*instruction), repeats),
        tagi_inputs=measure(tagi_inputs, repeats),
        baseline=measure(baseline, repeats),
        tagi_inputs_batched=measure(lambda: tagi_inputs(merge=False), repeats) if batched else None,
    )


def _batches(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


class CostTally:
    """Sums `TaskCost`s of `model` over a test set; a task split across batches pays its instruction once."""

    def __init__(self, model: TAGIModel):
        self.model = model
        self.examples = 0
        self.totals = {"tagi_instruction": Cost(0, 0.0), "tagi_inputs": Cost(0, 0.0), "baseline": Cost(0, 0.0)}
        self.tasks: set[str] = set()

    def add(self, task_name: str, cost: TaskCost) -> None:
        parts = {"tagi_inputs": cost.tagi_inputs, "baseline": cost.baseline}
        if task_name not in self.tasks:
            parts["tagi_instruction"] = cost.tagi_instruction
            self.tasks.add(task_name)
        for key, part in parts.items():
            total = self.totals[key]
            self.totals[key] = Cost(total.flops + part.flops, total.seconds + part.seconds)
        self.examples += cost.examples

    def add_batch(self, batch: dict) -> None:
        """Every task of a test batch (a `FinetuneDataModule` batch, which carries the concatenated inputs):
        its instruction once + its inputs, against its inputs with the instruction concatenated."""
        for task_row, rows in group_rows(batch["task_index"]):
            keep = batch["instruction_mask"][task_row].bool()  # (L,) the instruction without padding
            instruction = batch["instruction_ids"][task_row][keep][None], batch["instruction_mask"][task_row][keep][None]
            cost = task_cost(self.model, instruction, (batch["input_ids"][rows], batch["attention_mask"][rows]),
                             (batch["concat_input_ids"][rows], batch["concat_attention_mask"][rows]), batch["labels"][rows],
                             batch_size=len(rows))
            self.add(batch["task_names"][int(rows[0])], cost)

    def summary(self) -> dict:
        instruction, inputs, baseline = (self.totals[key] for key in ("tagi_instruction", "tagi_inputs", "baseline"))
        tagi = Cost(instruction.flops + inputs.flops, instruction.seconds + inputs.seconds)
        return {
            "tasks": len(self.tasks), "examples": self.examples,
            "tagi": asdict(tagi), "tagi_instruction": asdict(instruction), "tagi_inputs": asdict(inputs), "baseline": asdict(baseline),
            "ratio_tagi_over_baseline": {"flops": tagi.flops / max(baseline.flops, 1), "seconds": tagi.seconds / max(baseline.seconds, 1e-12)},
        }

    def markdown(self) -> str:
        s = self.summary()
        ratio = s["ratio_tagi_over_baseline"]
        return ("\n## Inference cost (teacher-forced scoring of the references, same backbone)\n\n"
                "| | GFLOPs | seconds |\n|---|---:|---:|\n"
                f"| TAGI: instructions once ({s['tasks']} tasks) | {s['tagi_instruction']['flops'] / 1e9:.3f} | {s['tagi_instruction']['seconds']:.2f} |\n"
                f"| TAGI: {s['examples']} inputs | {s['tagi_inputs']['flops'] / 1e9:.3f} | {s['tagi_inputs']['seconds']:.2f} |\n"
                f"| instruction concatenated to every input | {s['baseline']['flops'] / 1e9:.3f} | {s['baseline']['seconds']:.2f} |\n"
                f"| **ratio TAGI / concatenation** | **{ratio['flops']:.3f}** | **{ratio['seconds']:.3f}** |\n")
