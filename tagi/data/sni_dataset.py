"""Tokenised SNI examples (Lightning-free): what the collator pads into the batch contract.

Tokenisation happens once, here; examples are assembled from pre-tokenised parts in
`__getitem__`. The Tk-Instruct concatenation is `prefix + prompt` in the prompt format (`prompts.py`:
`+ EOS`, or a chat template's user turn), with the task-level prefix (instruction) tokenised once per
task; when it is too long the *prefix* is cut, so the instance itself is never lost (like Tk-Instruct,
which drops demonstrations before the input).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from torch.utils.data import Dataset

from . import templates
from .prompts import PromptFormat
from .sni import Task, build_clusters, load_split, sample_rank, split_names
from .synthetic import VERSION as SUITE_VERSION, ensure_suite
from .tokenization import encode, fit_text

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
# What the student model reads besides its generated LoRA: the instance prompt of the template θ0 and
# the teachers were trained on, without the definition ("template"); the instance input alone
# ("bare"); or the whole Tk-Instruct concatenation ("concat": the official TAGI code's setup, where
# the student reads the definition too, so it is not instruction-free).
StudentInput = Literal["template", "bare", "concat"]
# Which references of a training instance are targets: its first one ("first"), or each distinct one as its own
# example ("all"; an instance of k references then weighs k in sampling). Tk-Instruct's collator draws one at
# random per use, so over training every reference is a target, as with "all". Evaluation scores against all.
TrainingTargets = Literal["first", "all"]


@dataclass(frozen=True)
class Lengths:
    """Maximum token counts, EOS included."""

    instruction: int = 1024  # hypernetwork input (Def / Def + kPos)
    input: int = 512  # model input (the instance input)
    target: int = 128
    concat: int = 1024  # Tk-Instruct concatenation (teacher / concat baseline)


def _fit(ids: list[int], max_len: int, eos: int, counts: Counter, field: str) -> list[int]:
    if len(ids) + 1 > max_len:
        counts[field] += 1
        ids = ids[:max_len - 1]
    return ids + [eos]


class SNIDataset(Dataset):
    """One example per (task, instance).

    `teacher=False` (finetune, eval): {instruction, input, labels, concat, cluster_id}
    `teacher=True`: {input = the concatenation, labels, cluster_id}
    `with_meta=True` adds {task_name, category, instance_id, input_text, references, options} for evaluation
    (`options`: token ids of each answer option of a multiple-choice instance, else None).
    """

    def __init__(self, tasks: list[Task], tokenizer, clusters: dict[str, int], num_pos: int = 2,
                 lengths: Lengths = Lengths(), teacher: bool = False, with_meta: bool = False,
                 student_input: StudentInput = "template", prompt_format: PromptFormat | None = None,
                 targets: TrainingTargets = "first", template: templates.TemplateKind = "tagi"):
        if student_input not in ("template", "bare", "concat"):
            raise ValueError(f"student_input must be 'template', 'bare' or 'concat', got {student_input!r}")
        if targets == "all" and with_meta:
            raise ValueError("targets='all' is for training sets: an evaluation example is an instance, scored against all its references")
        self.tasks, self.clusters, self.teacher, self.with_meta, self.targets = tasks, clusters, teacher, with_meta, targets
        self.student_input = student_input
        self.tokenizer = tokenizer
        eos, counts = tokenizer.eos_token_id, Counter()
        self.format = prompt_format or PromptFormat.of(tokenizer)
        instructions = encode(tokenizer, [templates.instruction_text(t, num_pos, template) for t in tasks])
        self.instructions = [_fit(ids, lengths.instruction, eos, counts, "instruction") for ids in instructions]
        # (task index, instance) per example, in task order, and the reference each is trained on
        self.rows, references = [], []
        for ti, task in enumerate(tasks):
            for inst in task.instances:
                for reference in dict.fromkeys(inst.outputs) if targets == "all" else inst.outputs[:1]:
                    self.rows.append((ti, inst))
                    references.append(reference)
        instructions = [templates.instruction_text(t, num_pos, template) for t in tasks]
        inputs, concat = student_prompts(tokenizer, self.format, [inst.input for _, inst in self.rows],
                                         [instructions[ti] for ti, _ in self.rows], lengths, template, student_input, counts)
        self.answer_end = self.format.answer_end
        # int32 arrays: at SNI's scale a concatenation per row as a list of ints would take gigabytes
        self.concats = [np.asarray(ids, dtype=np.int32) for ids in concat]
        self.inputs = None if student_input == "concat" else [np.asarray(ids, dtype=np.int32) for ids in inputs]
        self.labels = [_fit(ids, lengths.target, self.answer_end, counts, "target") for ids in encode(tokenizer, references)]
        _log_truncation(counts, len(tasks), len(self.rows), lengths)

    @property
    def task_of(self) -> list[int]:
        """Task index of every example (for `TaskBatchSampler`)."""
        return [ti for ti, _ in self.rows]

    def concat(self, i: int) -> list[int]:
        """The teacher's (and the concatenation baseline's) input: the instruction, then the student's instance."""
        return self.concats[i].tolist()

    def __len__(self) -> int:
        return len(self.rows)

    def _options(self, inst) -> list[list[int]] | None:
        """Token ids (+ the answer's end) of a multiple-choice instance's options, for rank classification."""
        if inst.options is None:
            return None
        return [ids + [self.answer_end] for ids in encode(self.tokenizer, inst.options)]

    def __getitem__(self, i: int) -> dict:
        ti, inst = self.rows[i]
        task = self.tasks[ti]
        ex = {"labels": self.labels[i], "cluster_id": self.clusters[task.category]}
        if self.teacher:
            ex["input"] = self.concat(i)
        else:
            concat = self.concat(i)
            ex.update(instruction=self.instructions[ti], concat=concat,
                      input=concat if self.inputs is None else self.inputs[i].tolist())
        if self.with_meta:
            ex.update(task_name=task.name, category=task.category, instance_id=inst.id,
                      input_text=inst.input, references=list(inst.outputs), options=self._options(inst))
        return ex


def student_prompts(tokenizer, prompt_format: PromptFormat, inputs: list[str], instructions: list[str], lengths: Lengths,
                    template: templates.TemplateKind = "tagi", student_input: StudentInput = "template",
                    counts: Counter | None = None) -> tuple[list[list[int]], list[list[int]]]:
    """The student's input and the teacher's (the concatenation's) ids for instances `inputs`, each after its
    instruction (`templates.instruction_text`; "" for none), in the prompt format. One rule for training, testing
    and `Student.generate`, so a student is served what it trained on.

    The instance's input is cut at its end so its prompt fits `lengths.input` with the template's "Output:"
    cue kept, and the teacher reads that same instance prompt after the instruction, whose end is cut to fit
    `lengths.concat`: the two differ by the instruction alone, which the KL between them relies on (and the
    concatenation baseline reads no more of an input than the student). Cuts are counted in `counts`
    ("input", "concat"). `student_input` "bare": the input alone, cut at its end; "concat": the teacher's."""
    counts = Counter() if counts is None else counts
    render = lambda _, text: templates.concat_prompt_text(text, template)  # noqa: E731
    kept, prompt_ids, cut = fit_text(tokenizer, render, inputs, prompt_format.content_budget(lengths.input))
    prompts = [render(None, text) for text in kept]
    # the instruction's end is cut, never the blank line between it and the instance
    _, concat_ids, concat_cut = fit_text(tokenizer, lambda i, instruction: templates.prefix_text(instruction) + prompts[i],
                                         instructions, prompt_format.content_budget(lengths.concat))
    counts["concat"] += sum(concat_cut)
    concat = [prompt_format.wrap(ids) for ids in concat_ids]
    if student_input == "bare":
        return [prompt_format.fit(ids, lengths.input, counts, "input") for ids in encode(tokenizer, inputs)], concat
    counts["input"] += sum(cut)
    return (concat if student_input == "concat" else [prompt_format.wrap(ids) for ids in prompt_ids]), concat


def _log_truncation(counts: Counter, num_tasks: int, num_rows: int, lengths: Lengths) -> None:
    if not any(counts.values()):
        return
    parts = [f"instruction {counts['instruction']}/{num_tasks} tasks (max {lengths.instruction})"]
    parts += [f"{f} {counts[f]}/{num_rows} examples (max {getattr(lengths, f)})"
              for f in ("input", "target", "concat")]
    log.warning("truncated to the configured lengths: %s", ", ".join(parts))


# ----------------------------------------------------------------------------------- task loading
def resolve_data_dir(data_dir: str | None, synthetic_seed: int = 0, cache_dir: str = "runs/data") -> Path:
    """A directory in SNI layout; None / "synthetic" → the embedded suite's cache directory."""
    if data_dir in (None, SYNTHETIC):
        return Path(cache_dir) / f"synthetic-v{SUITE_VERSION}-seed{synthetic_seed}"
    return Path(data_dir)


def prepare_data_dir(data_dir: str | None, synthetic_seed: int = 0, cache_dir: str = "runs/data") -> Path:
    """Like `resolve_data_dir`, and writes the synthetic suite when it is the one asked for."""
    path = resolve_data_dir(data_dir, synthetic_seed, cache_dir)
    if data_dir in (None, SYNTHETIC):
        ensure_suite(path, synthetic_seed)
    return path


@dataclass
class TaskSets:
    """The three disjoint task sets of a setting, and the category → cluster id map over all of them."""

    train: list[Task]
    val: list[Task]
    test: list[Task]
    clusters: dict[str, int]


def load_tasks(root: Path, split: str, max_train: int | None, max_eval: int | None, on_error: str,
               seed: int, splits_dir: str | None = None) -> TaskSets:
    """Train (caps are a seeded sample), validation and test tasks (first `max_eval` instances each).

    No validation tasks is an empty list: the data modules that validate on them say how to add some.
    """
    names = split_names(root, split, splits_dir)  # raises on a task listed twice
    def read(subset: str, cap: int | None, sample_seed: int | None = None) -> list[Task]:
        if not names[subset]:
            return []
        return load_split(root, split, subset, cap, on_error, sample_seed, splits_dir, names[subset])
    train, val, test = read("train", max_train, seed), read("val", max_eval), read("test", max_eval)
    return TaskSets(train, val, test, build_clusters(train + val + test))


def cap_instances(tasks: list[Task], max_instances: int | None) -> list[Task]:
    """The first `max_instances` instances of each task (a subset for cheaper validation)."""
    if max_instances is None:
        return tasks
    return [dataclasses.replace(t, instances=t.instances[:max_instances]) for t in tasks]


def holdout_instances(tasks: list[Task], n: int, sample_seed: int | None = None) -> tuple[list[Task], list[Task]]:
    """Split each task's instances: `n` (at most all but one) are held out for validation: the last in file
    order, or, for tasks read as a seeded sample, the last in its order (`sni.sample_rank`), so that what is
    left is the sample a run capped `n` lower reads."""
    train, val = [], []
    for t in tasks:
        k = min(n, len(t.instances) - 1)
        order = list(range(len(t.instances)))
        if sample_seed is not None:
            order.sort(key=lambda i: sample_rank(sample_seed, t.name, t.instances[i].id))
        held = set(order[len(order) - k:])
        train.append(dataclasses.replace(t, instances=[x for i, x in enumerate(t.instances) if i not in held]))
        if k > 0:
            val.append(dataclasses.replace(t, instances=[x for i, x in enumerate(t.instances) if i in held]))
    return train, val
