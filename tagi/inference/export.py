"""`python -m tagi adapter`: a student checkpoint + an instruction → a standard PEFT adapter directory.

    python -m tagi adapter --ckpt checkpoints/demo/finetune/checkpoints/last.ckpt \\
        --instruction "Given a list of words, sort the words alphabetically." --out adapters/sort
    python -m tagi adapter --ckpt ... --instruction @definition.txt --positive-examples pos.jsonl --out ...

`--positive-examples`: JSON lines with "input" and "output" (the Def+kPos template of training).
The adapter holds the generated LoRA only; load it with
`PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(<base>), <out>)`, where <base> is
adapter_config.json's `base_model_name_or_path`: a path relative to <out>, or a hub id.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tagi.errors import InputError


def read_instruction(value: str) -> str:
    text = value
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise InputError(f"--instruction {value}: {path} {'is not a file' if path.exists() else 'does not exist'}; "
                             "give @ and the file holding the task's definition")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise InputError(f"--instruction {value}: {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not text.strip():
        raise InputError(f"--instruction {value!r}: the instruction is empty; an adapter is generated from the task's "
                         "definition, so give its text (or @file holding it)")
    return text.strip()


def read_examples(path: str | None) -> list[tuple[str, str]]:
    if path is None:
        return []
    file = Path(path)
    if not file.is_file():
        what = "is not a regular file" if file.exists() else "does not exist"
        raise InputError(f"--positive-examples: {file} {what}; give a JSON-lines file of {{\"input\", \"output\"}} rows")
    examples = []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise InputError(f"--positive-examples: {file} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            examples.append((str(row["input"]), str(row["output"])))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InputError(f"{file}:{number}: expected a JSON object with \"input\" and \"output\"") from None
    if not examples:
        raise InputError(f"--positive-examples: {file} holds no examples; give at least one JSON line, or leave the "
                         "option out for a definition-only instruction")
    return examples


def main(argv: list[str]) -> Path:
    parser = argparse.ArgumentParser(prog="python -m tagi adapter", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="student checkpoint (finetune stage)")
    parser.add_argument("--instruction", required=True, help="the task definition, or @file to read it from")
    parser.add_argument("--positive-examples", help="JSONL file of {\"input\", \"output\"} demonstrations")
    parser.add_argument("--out", required=True, help="adapter folder to write: a new one, or an earlier export (replaced atomically); anything else is refused")
    parser.add_argument("--with-backbone", action="store_true",
                        help="copy the backbone into <out>/backbone/, so the folder stands alone (else it names θ0's folder "
                             "by a path relative to <out>, or θ0's hub id)")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    from tagi.io import is_zero_folder
    from tagi.modeling.adapters import CONFIG_NAME
    from tagi.inference.student import Student, format_instruction  # heavy imports after --help
    from tagi.provenance import CheckpointError

    hf_logging.disable_progress_bar()  # transformers' "Writing model shards" bars: noise for a one-folder save

    try:
        if Path(args.ckpt).is_dir() and not is_zero_folder(args.ckpt):  # a DeepSpeed folder is read consolidated
            raise InputError(f"--ckpt {args.ckpt}: a folder; give the checkpoint file in it (such as "
                             "checkpoints/<run>/finetune/checkpoints/last.ckpt)")
        if not Path(args.ckpt).exists():
            raise InputError(f"--ckpt {args.ckpt}: no such checkpoint file")
        if not args.out.strip():
            raise InputError("--out is empty; give the adapter folder to write")
        definition, examples = read_instruction(args.instruction), read_examples(args.positive_examples)
        student = Student.from_checkpoint(args.ckpt)
        instruction = format_instruction(definition, examples, student.template)  # in the words it was trained on
        out = student.export_adapter(instruction, args.out, with_backbone=args.with_backbone)
    except (InputError, CheckpointError) as error:
        parser.exit(2, f"error: {error}\n")
    base = json.loads((out / CONFIG_NAME).read_text())["base_model_name_or_path"]
    where = f"relative to the adapter: {(out / base).resolve()}" if (out / base).is_dir() else "a hub id"
    print(f"wrote a PEFT adapter to {out}; its base_model_name_or_path: {base} ({where})")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
