"""configs/sni-t5-base/ against TAGI's published recipe (Liao et al. 2024: Table 6, §A.2), value by value.

Each value below is the paper's, for the stage whose Table 6 column it comes from ("LoRA Tuning" → teacher,
"Pretraining" → pretrain, "Finetuning, SNI, Base (250M)" → finetune). The shipped config's resolved value
either equals it, or README.md's "Differences from the paper" table names it (`stage/name`) in its `check`
column. A named value that equals the paper again is a stale row, and every override a row offers
(`stage: `--key=value``) must still parse on that stage and, for a value listed here, give the paper's.
Parsing only: nothing is built or trained.
"""

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from helpers import ROOT, resolved
from tagi.training.config import Optimization
from tagi.training.optim import make_optimizer

README = ROOT / "README.md"
SETTING = ROOT / "configs" / "sni-t5-base"
SECTION = "## Differences from the paper"
CHECK = re.compile(r"`((?:teacher|pretrain|finetune)/\w+)`")
OVERRIDE = re.compile(r"(teacher|pretrain|finetune): `--([\w.]+)=([^`]*)`")
PRECISION = {"bf16-mixed": "bf16", "bf16-true": "bf16", "bf16": "bf16", "32-true": "float32", "32": "float32"}


def optimizer_name(config: dict) -> str:
    """The class of the optimizer tagi.training.optim builds from the stage's `optimization` block."""
    optimization = Optimization(**{**config["model"]["init_args"].get("optimization", {}), "fused": False})
    return type(make_optimizer([torch.nn.Parameter(torch.zeros(1))], optimization)).__name__.lower()


def document_tokens(config: dict) -> int:
    """Document tokens one C4 segment covers: the pieces' limits (each less its EOS), capped by max_sequence_length."""
    data = config["data"]["init_args"]
    limits = sum(data[f"max_{part}_length"] - 1 for part in ("instruction", "input", "target"))
    return min(limits, data.get("max_sequence_length") or limits)


def at(key: str) -> Callable[[dict], Any]:
    def read(config: dict) -> Any:
        value = config
        for part in key.split("."):
            value = value[part]
        return value
    return read


@dataclass(frozen=True)
class Value:
    stage: str
    name: str
    paper: Any
    source: str
    key: str | None = None  # the config key that sets it, when one does
    read: Callable[[dict], Any] | None = None  # how to read it when no single key does

    @property
    def check(self) -> str:
        return f"{self.stage}/{self.name}"

    def effective(self, config: dict) -> Any:
        value = (self.read or at(self.key))(config)
        return PRECISION.get(str(value), value) if self.name == "precision" else value


def common(stage: str, column: str, optimizer: str, lr: float, steps: int, warmup: float, accumulation: int,
           precision: str) -> list[Value]:
    table = f"Table 6, {column}"
    no_warmup = f"{table}: '-' (read as no warm-up)"
    return [
        Value(stage, "optimizer", optimizer, table, read=optimizer_name),
        Value(stage, "learning_rate", lr, table, "model.init_args.optimization.learning_rate"),
        Value(stage, "max_steps", steps, table, "trainer.max_steps"),
        Value(stage, "warmup_ratio", warmup, table if warmup else no_warmup, "model.init_args.optimization.warmup_ratio"),
        Value(stage, "batch_size", 8, table, "data.init_args.batch_size"),
        Value(stage, "accumulate_grad_batches", accumulation, table, "trainer.accumulate_grad_batches"),
        Value(stage, "precision", precision, table, "trainer.precision"),
        Value(stage, "max_test_instances_per_task", 100, "§A.2", "data.init_args.max_test_instances_per_task"),
    ]


PAPER = [
    *common("teacher", "LoRA Tuning", "adamw", 1e-4, 10000, 0.0, 2, "bf16"),
    Value("teacher", "max_concat_length", 1024, "Table 6, LoRA Tuning: max input", "data.init_args.max_concat_length"),
    Value("teacher", "max_target_length", 128, "Table 6, LoRA Tuning: max output", "data.init_args.max_target_length"),
    Value("teacher", "lora_rank", 32, "Table 6: LoRA rank", "model.init_args.lora_rank"),
    Value("teacher", "max_train_instances_per_task", 100, "§A.2", "data.init_args.max_train_instances_per_task"),
    Value("teacher", "template", "tk-instruct", "§3.2.4: Tk-Instruct's input", "data.init_args.template"),

    *common("pretrain", "Pretraining", "adafactor", 1e-3, 50000, 0.0, 1, "float32"),
    Value("pretrain", "sequence_length", 1024, "Table 6, Pretraining: max input; §A.2, §A.4", read=document_tokens),
    Value("pretrain", "max_input_length", 1024, "Table 6, Pretraining: max input", "data.init_args.max_input_length"),
    Value("pretrain", "lora_rank", 32, "Table 6: LoRA rank", "model.init_args.architecture.lora_rank"),

    *common("finetune", "Finetuning SNI Base", "adamw", 1e-4, 20000, 0.02, 2, "bf16"),
    Value("finetune", "max_input_length", 1024, "Table 6, Finetuning SNI Base: max input", "data.init_args.max_input_length"),
    Value("finetune", "max_target_length", 128, "Table 6, Finetuning SNI Base: max output", "data.init_args.max_target_length"),
    Value("finetune", "max_new_tokens", 128, "Table 6, Finetuning SNI Base: max output", "model.init_args.generation.max_new_tokens"),
    Value("finetune", "lora_rank", 32, "Table 6: LoRA rank", "model.init_args.architecture.lora_rank"),
    Value("finetune", "max_train_instances_per_task", 100, "§A.2", "data.init_args.max_train_instances_per_task"),
    Value("finetune", "template", "tk-instruct", "§3.2.4: Tk-Instruct's input", "data.init_args.template"),
]


def config(stage: str, overrides: tuple[str, ...] = ()) -> dict:
    return resolved((str(SETTING / f"{stage}.yaml"),), overrides)


def rows() -> list[list[str]]:
    """The cells of every row of README.md's differences table."""
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no '{SECTION}' section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    first = section[section.index("\n|"):] if "\n|" in section else ""  # the first table (sni-t5-base's); others follow
    lines = list(itertools.takewhile(lambda line: line.startswith("|"), first.strip("\n").splitlines()))
    assert len(lines) > 2, "the differences section has no table"
    header, cells = lines[0], [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    width = len(header.strip("|").split("|"))
    assert all(len(row) == width for row in cells), "a row of the differences table has a stray '|'"
    return cells


def documented() -> set[str]:
    return {check for row in rows() for check in CHECK.findall(row[0])}


def flat_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= flat_keys(value, f"{prefix}{key}.")
    return keys


def test_the_paper_values_are_distinct_and_cover_every_stage():
    assert len({v.check for v in PAPER}) == len(PAPER)
    assert {v.stage for v in PAPER} == {"teacher", "pretrain", "finetune"}


@pytest.mark.parametrize("value", PAPER, ids=[v.check for v in PAPER])
def test_a_value_differs_from_the_paper_only_with_a_row_that_says_so(value):
    here = value.effective(config(value.stage))
    if here != value.paper:
        assert value.check in documented(), (
            f"configs/sni-t5-base/{value.stage}.yaml: {value.name} is {here!r}, the paper's is {value.paper!r} "
            f"({value.source}). Restore it, or add `{value.check}` to a row of README.md's '{SECTION}' table")
    else:
        assert value.check not in documented(), (
            f"configs/sni-t5-base/{value.stage}.yaml: {value.name} equals the paper's {value.paper!r} again; "
            f"take `{value.check}` (and what its row says about it) out of README.md's '{SECTION}' table")


def test_every_check_named_in_the_table_is_a_paper_value():
    assert documented() <= {v.check for v in PAPER}, sorted(documented() - {v.check for v in PAPER})


@pytest.mark.parametrize("row", range(len(rows())), ids=[f"row{i + 1}" for i in range(len(rows()))])
def test_a_rows_overrides_exist_and_restore_the_paper(row):
    cells = rows()[row]
    assert cells[-1], "a row says what restores the paper's choice, or 'none yet'"
    offered: dict[str, list[tuple[str, str]]] = {}
    for stage, key, value in OVERRIDE.findall(cells[-1]):
        offered.setdefault(stage, []).append((key, value))
    for stage, pairs in offered.items():
        missing = {key for key, _ in pairs} - flat_keys(config(stage))
        assert not missing, f"configs/sni-t5-base/{stage}.yaml has no {sorted(missing)}: the row names a key that is gone"
        restored = config(stage, tuple(f"--{key}={value}" for key, value in pairs))
        for value in (v for v in PAPER if v.stage == stage and v.key in {key for key, _ in pairs}):
            assert value.effective(restored) == value.paper, f"{value.check}: the row's override gives {value.effective(restored)!r}"
