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

`kind` "tk-instruct" writes the same words as Tk-Instruct's collator (`src/ni_collator.py`) does: a "." after the
definition, each example's input and output and the instance's input where they do not end in punctuation, and
" Positive Example i -" and " Output:" of the examples with a leading space. "tagi" (the default) writes neither.
"""

from __future__ import annotations

import re
import string
from typing import Literal

from .sni import Demonstration, Task

TemplateKind = Literal["tagi", "tk-instruct"]

_DEF_PREFIX = re.compile(r"^\s*definition\s*:\s*", re.IGNORECASE)  # NI v1 already starts with it


def _sentence(field: str, kind: TemplateKind) -> str:
    """Tk-Instruct's collator ends a field with "." unless its last character is punctuation."""
    return field if kind == "tagi" or field[-1] in string.punctuation else field + "."


def definition_text(task: Task, kind: TemplateKind = "tagi") -> str:
    definition = _DEF_PREFIX.sub("", task.definition)
    return _sentence("Definition: " + (definition if kind == "tagi" else definition.strip()), kind)


def _example_text(i: int, example: Demonstration, kind: TemplateKind) -> str:
    if kind == "tagi":
        return f"Positive Example {i} -\nInput: {example.input}\nOutput: {example.output}"
    return (f" Positive Example {i} -\n{_sentence(f'Input: {example.input.strip()}', kind)}\n"
            f"{_sentence(f' Output: {example.output.strip()}', kind)}")


def instruction_text(task: Task, num_pos: int = 2, kind: TemplateKind = "tagi") -> str:
    """`Def` when num_pos == 0, else `Def + kPos` with the task's first k positive examples; an
    instruction control's text verbatim when one is set (`tagi.data.controls`)."""
    if task.instruction is not None:
        return task.instruction
    parts = [definition_text(task, kind)]
    parts += [_example_text(i, example, kind) for i, example in enumerate(task.positive_examples[:num_pos], start=1)]
    return "\n\n".join(parts)


def concat_prompt_text(instance_input: str, kind: TemplateKind = "tagi") -> str:
    """The instance part of the Tk-Instruct input (kept whole when the concatenation is truncated)."""
    line = f"Input: {instance_input}" if kind == "tagi" else _sentence(f"Input: {instance_input.strip()}", kind)
    return f"Now complete the following example -\n{line}\nOutput: "


def prefix_text(instruction: str) -> str:
    """What precedes the instance prompt in a concatenation: the instruction and a blank line; nothing for
    an empty instruction (it leaves the instance prompt alone)."""
    return instruction + "\n\n" if instruction else ""


def concat_prefix_text(task: Task, num_pos: int = 2, kind: TemplateKind = "tagi") -> str:
    return prefix_text(instruction_text(task, num_pos, kind))


def student_input_text(instance_input: str, form: str = "template", instruction: str = "", kind: TemplateKind = "tagi") -> str:
    """What the student reads (`sni_dataset.StudentInput`), for serving one input: the instance prompt
    ("template"), the input alone ("bare"), or `instruction` + the prompt ("concat"): the text `SNIDataset`
    tokenises whole in training, before an input too long is cut (`sni_dataset.student_prompts`)."""
    if form == "bare":
        return instance_input
    return (prefix_text(instruction) if form == "concat" else "") + concat_prompt_text(instance_input, kind)


def concat_input_text(task: Task, instance_input: str, num_pos: int = 2, kind: TemplateKind = "tagi") -> str:
    """Tk-Instruct-style: definition + k positive examples + the input."""
    return concat_prefix_text(task, num_pos, kind) + concat_prompt_text(instance_input, kind)
