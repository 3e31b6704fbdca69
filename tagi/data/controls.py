"""Instruction controls: evaluate a model with its tasks' instructions replaced, to show it reads them.

    real         the task's own instruction
    paraphrase   the same definition in other words (the task file's `Paraphrases`, never trained on)
    other_task   the instruction (definition and demonstrations) of another task of the same list
    empty        no instruction at all
    random       random letters and spaces, as many characters as the real instruction

A model that reads instructions scores real ≈ paraphrase ≫ other_task / empty / random. Applied to
evaluation data only; every model that reads an instruction (hypernetwork or concatenation) sees
the same replacement. Lightning-free.
"""

from __future__ import annotations

import dataclasses
import random
import string
from typing import Literal, get_args

from tagi.errors import ConfigurationError

from .sni import Task
from .templates import instruction_text

Control = Literal["real", "paraphrase", "other_task", "empty", "random"]
CONTROLS: tuple[str, ...] = get_args(Control)
_RANDOM_ALPHABET = string.ascii_lowercase + " " * 5  # about one space per word-sized run, like text


def apply_control(tasks: list[Task], control: str, num_pos: int, seed: int = 0) -> list[Task]:
    """`tasks` with their instructions replaced as `control` says (the list's order is kept)."""
    if control not in CONTROLS:
        raise ConfigurationError(f"data.init_args.instruction_control: {control!r} is not one of {', '.join(CONTROLS)}")
    if control == "real":
        return tasks
    if control == "paraphrase":
        return [_paraphrased(task) for task in tasks]
    if control == "other_task":
        return [_with_instruction_of(task, _other(tasks, i)) for i, task in enumerate(tasks)]
    if control == "empty":
        return [dataclasses.replace(task, instruction="") for task in tasks]
    return [dataclasses.replace(task, instruction=_random_text(task, num_pos, seed)) for task in tasks]


def _paraphrased(task: Task) -> Task:
    if not task.paraphrases:
        raise ConfigurationError(
            f"data.init_args.instruction_control: paraphrase, but {task.path} has no `Paraphrases` field: "
            "this control needs task files that carry other wordings of their definition (the synthetic "
            "suite does; SNI files do not), use another control for this data")
    return dataclasses.replace(task, definition=task.paraphrases[0])


def _other(tasks: list[Task], i: int) -> Task:
    """The next task in the list (cyclically) whose definition differs from task i's."""
    for step in range(1, len(tasks)):
        other = tasks[(i + step) % len(tasks)]
        if other.definition != tasks[i].definition:
            return other
    raise ConfigurationError("data.init_args.instruction_control: other_task needs at least two evaluation "
                             "tasks with different definitions")


def _with_instruction_of(task: Task, other: Task) -> Task:
    return dataclasses.replace(task, definition=other.definition, positive_examples=other.positive_examples)


def _random_text(task: Task, num_pos: int, seed: int) -> str:
    rng = random.Random(f"tagi-control:{seed}:{task.name}")  # str seeds hash stably
    return "".join(rng.choice(_RANDOM_ALPHABET) for _ in range(len(instruction_text(task, num_pos))))
