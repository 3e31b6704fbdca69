"""The one place that turns a task into text.

    instruction_text(task, k)       → hypernetwork input:  `Def` (k = 0) or `Def + kPos`
    concat_prompt_text(x)           → the instance prompt: the student's input by default
                                      (`student_input: template`, the format θ0 and the teachers know)
    concat_input_text(task, x, k)   → Tk-Instruct-style input for teachers and the concat baseline:
                                      instruction_text(task, k) + "\n\n" + the instance prompt

    Definition: <definition>

    Positive Example 1 -
    Input: <input>
    Output: <output>

    Now complete the following example -
    Input: <x>
    Output:
"""

from __future__ import annotations

import re

from .sni import Task

_DEF_PREFIX = re.compile(r"^\s*definition\s*:\s*", re.IGNORECASE)  # NI v1 already starts with it


def definition_text(task: Task) -> str:
    return "Definition: " + _DEF_PREFIX.sub("", task.definition)


def instruction_text(task: Task, num_pos: int = 2) -> str:
    """`Def` when num_pos == 0, else `Def + kPos` with the task's first k positive examples; an
    instruction control's text verbatim when one is set (`tagi.data.controls`)."""
    if task.instruction is not None:
        return task.instruction
    parts = [definition_text(task)]
    for i, ex in enumerate(task.positive_examples[:num_pos], start=1):
        parts.append(f"Positive Example {i} -\nInput: {ex.input}\nOutput: {ex.output}")
    return "\n\n".join(parts)


def concat_prompt_text(instance_input: str) -> str:
    """The instance part of the Tk-Instruct input (kept whole when the concatenation is truncated)."""
    return f"Now complete the following example -\nInput: {instance_input}\nOutput: "


def concat_prefix_text(task: Task, num_pos: int = 2) -> str:
    text = instruction_text(task, num_pos)
    return text + "\n\n" if text else ""  # an empty instruction leaves the instance prompt alone


def student_input_text(instance_input: str, form: str = "template", instruction: str = "") -> str:
    """What the student reads (`sni_dataset.StudentInput`), for serving one input: the instance prompt
    ("template"), the input alone ("bare"), or `instruction` + the prompt ("concat"), token for token
    what `SNIDataset` builds in training."""
    if form == "bare":
        return instance_input
    prefix = instruction + "\n\n" if form == "concat" and instruction else ""
    return prefix + concat_prompt_text(instance_input)


def concat_input_text(task: Task, instance_input: str, num_pos: int = 2) -> str:
    """Tk-Instruct-style: definition + k positive examples + the input."""
    return concat_prefix_text(task, num_pos) + concat_prompt_text(instance_input)
