"""A trained student for inference: instruction text → (cached) task encoding → outputs or a PEFT adapter.

    student = Student.from_checkpoint("checkpoints/demo/finetune/checkpoints/last.ckpt")
    student.generate("Given a list of words, sort the words alphabetically.", ["cow ape"])
    student.export_adapter("Given a list of words, ...", "adapters/sort")

The hypernetwork runs once per distinct instruction: encodings are cached (LRU) by the
instruction's token ids, i.e. by its text under the student's tokenizer, and a call for one task
runs the backbone with the LoRA merged into its weights. Lightning-free.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from tagi.modeling.adapters import CONFIG_NAME as ADAPTER_CONFIG, AdapterError, read_meta, write_adapter
from tagi.inference.runner import StudentRunner
from tagi.data.sni import Demonstration, Task
from tagi.data.collate import pad
from tagi.data.prompts import PromptFormat
from tagi.data.sni_dataset import Lengths, student_prompts
from tagi.data.templates import TemplateKind, instruction_text, student_input_text
from tagi.data.tokenization import encode, load_tokenizer, pad_id
from tagi.errors import InputError
from tagi.io import atomic_directory, folder_lock, read_checkpoint
from tagi.provenance import STUDENT_STAGES, Provenance
from tagi.modeling.model import TAGIModel, TaskEncoding
from tagi.modeling.backbone import TINY, load_backbone

log = logging.getLogger(__name__)

BACKBONE_FOLDER = "backbone"  # inside an exported adapter that carries its own backbone
EXPORT_MARK = "tagi adapter"  # meta.json's "written_by": a folder this export may replace


def format_instruction(definition: str, positive_examples: Sequence[tuple[str, str]] = (), template: TemplateKind = "tagi") -> str:
    """The hypernetwork's input for a definition and k positive examples, in the training template's words."""
    task = Task("instruction", definition, [Demonstration(x, y) for x, y in positive_examples], [], ["user"], Path("."))
    return instruction_text(task, len(positive_examples), template)


class Student:
    def __init__(self, model: TAGIModel, tokenizer, backbone: dict, max_instruction_length: int = 1024, cache_size: int = 1024,
                 student_input: str = "template", prompt_format: str = "plain", template: TemplateKind = "tagi",
                 max_input_length: int = 512, max_concat_length: int = 1024):
        self.model = model.eval()
        self.student_input = student_input  # the input format it was trained on (`sni_dataset.StudentInput`)
        self.prompt_kind = prompt_format
        self.prompt_format = PromptFormat.of(tokenizer, prompt_format)  # how its prompts were wrapped (`prompts.py`)
        self.template = template  # the words around the input it was trained on (`templates.py`)
        self.tokenizer = tokenizer
        self.backbone = backbone  # the Backbone spec the model was trained on (name, tiny_config, seed)
        self.max_instruction_length = max_instruction_length
        # the input's budget (its end cut, the template's cue kept) and the concatenation's, as in training
        self.lengths = Lengths(max_instruction_length, max_input_length, concat=max_concat_length)
        self.runner = StudentRunner(model, tokenizer, cache_size)  # what the stages' evaluation generates with too
        self.cache = self.runner.cache
        self.truncated_instructions = 0
        self.source: dict | None = None  # the checkpoint it was loaded from: path, stage, step (recorded in meta.json)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> "Student":
        checkpoint = read_checkpoint(path, "--ckpt")
        provenance = Provenance.of(checkpoint, path, "--ckpt").located(path).verify(
            STUDENT_STAGES, hint="Give a finetune-stage checkpoint such as checkpoints/<run>/finetune/checkpoints/last.ckpt.")
        described = provenance.record
        tokenizer = load_tokenizer(described["tokenizer"])
        spec = described["backbone"]
        tiny = {"vocab_size": len(tokenizer), **(spec.get("tiny_config") or {})}
        model = TAGIModel(load_backbone(spec["name"], tiny, spec.get("seed", 0)), **described["architecture"])
        provenance.verify_hub_weights()  # again: loading a hub id online may have downloaded newer weights
        state = {key.removeprefix("model."): value for key, value in checkpoint["state_dict"].items() if key.startswith("model.")}
        model.load_trained_state(state)
        # What it read in training, from the data module's own record: its input format (checkpoints from before
        # `student_input` existed read bare inputs) and its instruction length (longer ones are truncated to it)
        trained = checkpoint.get("datamodule_hyper_parameters", {})
        kwargs.setdefault("student_input", trained.get("student_input", "bare"))
        kwargs.setdefault("max_instruction_length", trained.get("max_instruction_length", 1024))
        kwargs.setdefault("prompt_format", trained.get("prompt_format", "plain"))
        kwargs.setdefault("template", trained.get("template", "tagi"))
        for key in ("max_input_length", "max_concat_length"):
            if key in trained:
                kwargs.setdefault(key, trained[key])
        student = cls(model, tokenizer, spec, **kwargs)
        student.source = {"checkpoint": str(Path(path).resolve()), "stage": described["stage"], "global_step": checkpoint.get("global_step")}
        if described["stage"] != "finetune":  # accepted (it is a student), but not what a user of its adapters expects
            log.warning("--ckpt %s is a %s-stage checkpoint: its hypernetwork was never finetuned on tasks; meta.json of "
                        "an adapter from it records that (student.stage)", path, described["stage"])
        return student

    # -- per task, once

    @torch.no_grad()
    def encode(self, instruction: str) -> TaskEncoding:
        """The task's generated LoRA and encoded instruction; the hypernetwork runs on a cache miss only."""
        ids = encode(self.tokenizer, [instruction])[0]
        if len(ids) + 1 > self.max_instruction_length:
            self.truncated_instructions += 1
            log.warning("instruction of %d tokens truncated to %d (the student's max_instruction_length)", len(ids) + 1,
                        self.max_instruction_length)
            ids = ids[: self.max_instruction_length - 1]
        ids = torch.tensor(ids + [self.tokenizer.eos_token_id])
        return self.runner.encode(ids, torch.ones_like(ids))

    # -- per input

    @torch.no_grad()
    def generate(self, instruction: str, inputs: Sequence[str], max_new_tokens: int = 64, num_beams: int = 1,
                 batch_size: int = 32, lora_only: bool = False) -> list[str]:
        task = self.encode(instruction)
        outputs = []
        for start in range(0, len(inputs), batch_size):
            # What training read: the same cut and the prompt format's tokens (`tokenizer(texts)` adds EOS for
            # T5's tokenizer, not for every one)
            batch = list(inputs[start : start + batch_size])
            read = instruction if self.student_input == "concat" else ""  # only "concat" reads it
            prompts, _ = student_prompts(self.tokenizer, self.prompt_format, batch, [read] * len(batch), self.lengths,
                                         self.template, self.student_input)
            ids, mask = pad(prompts, pad_id(self.tokenizer))
            outputs += self.runner.generate_task(task, ids, mask, lora_only,
                                                 max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                                                 eos_token_id=self.prompt_format.answer_end)
        return outputs

    # -- export

    def export_adapter(self, instruction: str, out_dir: str | Path, with_backbone: bool = False) -> Path:
        """A standard PEFT adapter directory for the backbone: the generated LoRA only (no fusion, no FiD),
        with the student's tokenizer, so plain transformers + peft can use it.

        Its adapter_config.json names the backbone by a path relative to the adapter folder, or
        by hub id: θ0's folder, or `backbone/` inside the adapter, a copy of the
        student's backbone and tokenizer written when θ0 was built in code ("tiny", "tiny-llama"), when the student
        trained the layer norms or the whole backbone, or when asked (`with_backbone`: a folder that stands alone). An
        existing folder is replaced only if it holds nothing but an earlier export's files.
        """
        out = Path(out_dir)
        copy = with_backbone or self._needs_backbone_copy()
        meta = {"written_by": EXPORT_MARK, "instruction": instruction, "backbone": self.backbone,
                "input_template": student_input_text("{input}", self.student_input, instruction, self.template),  # what it reads
                "template": self.template,  # tk-instruct: a "." follows the input unless it ends in punctuation
                # plain: the template's tokens + EOS; chat: the template is a user turn of the tokenizer's chat template
                "prompt_format": self.prompt_kind,
                # the prompt's length in training and in `Student.generate`: a longer input's end was cut, the cue kept
                "max_prompt_tokens": self.lengths.concat if self.student_input == "concat" else self.lengths.input,
                # the token its answers end with (a server's stop token): EOS, or the chat template's end of turn
                "answer_end": self.tokenizer.convert_ids_to_tokens(self.prompt_format.answer_end),
                "note": "backbone + this LoRA only; the student's instruction fusion and FiD are not part of a PEFT adapter"}
        if self.source is not None:
            meta["student"] = self.source
        truncated = self.truncated_instructions
        lora = self.encode(instruction).lora
        if self.truncated_instructions > truncated:  # meta.json's instruction is the whole text; the LoRA saw its start
            meta["instruction_truncated_to_tokens"] = self.max_instruction_length
        # One export into `out` at a time: two at once both passed the check of what is there and both said they
        # wrote it, while the second replaced the first.
        with folder_lock(out, "--out"):
            earlier = _earlier_export(out)
            with atomic_directory(out, own_only="--out", also_own={BACKBONE_FOLDER} if earlier else ()) as staging:
                base = BACKBONE_FOLDER if copy else self._named_backbone(out)
                write_adapter(staging, lora, self.model.site_names, self.model.lora_alpha, base, meta,
                              self.model.family.peft_task_type)
                self.tokenizer.save_pretrained(staging)
                if copy:
                    self.model.backbone.save_pretrained(staging / BACKBONE_FOLDER)
                    self.tokenizer.save_pretrained(staging / BACKBONE_FOLDER)
        return out

    def _needs_backbone_copy(self) -> bool:
        """θ0 built in code has no folder to name; with trained layer norms, or a trained backbone (HINT), the base is no
        longer θ0."""
        trained = any(parameter.requires_grad for parameter in self.model.backbone.parameters())
        return self.backbone["name"] in TINY or bool(self.model.theta0_norms) or trained

    def _named_backbone(self, out: Path) -> str:
        local = Path(self.backbone["name"])
        if not local.exists():
            return self.backbone["name"]  # a hub id stays a hub id
        try:  # relative, so the adapter and θ0 can move together (a project folder copied elsewhere)
            return os.path.relpath(local.resolve(), out.resolve())
        except ValueError:  # no relative path between them (another drive on Windows)
            return str(local.resolve())



def _earlier_export(out: Path) -> bool:
    """Whether `out` is empty, absent or an earlier export (the only folders an export replaces): a teacher
    adapter holds the same file names, so its meta.json must say who wrote it. A folder holding
    anything else is refused here, naming what is there."""
    if not out.is_dir() or not any(out.iterdir()):
        return False
    try:
        meta = read_meta(out)
    except (AdapterError, ValueError):  # no meta.json, or not JSON: not ours
        meta = {}
    # "input_template": exports written before the mark existed
    if isinstance(meta, dict) and (meta.get("written_by") == EXPORT_MARK or "input_template" in meta):
        return True
    if (out / ADAPTER_CONFIG).is_file():
        raise InputError(f"--out {out}: the folder holds an adapter this command did not write (a teacher's, or "
                         "another tool's: its meta.json does not say `tagi adapter`); give a new or empty folder "
                         "(nothing was written)")
    return False  # atomic_directory names the files found
