"""Serving a student: per-task cache, generation, and `tagi adapter`'s PEFT export."""

import json
import re

import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer, ByT5Tokenizer, T5ForConditionalGeneration

from tagi.errors import InputError
from tagi.model import TAGIModel, load_backbone
from tagi.student import Student, format_instruction

INSTRUCTION = format_instruction("Reverse the words.", [("a b", "b a")])


@pytest.fixture(params=["mlp", "hart"])
def student(request) -> Student:
    """A student of each generator family: caching, serving and export must not depend on it."""
    torch.manual_seed(0)
    backbone = load_backbone("tiny", dict(d_model=32, num_heads=2))
    model = TAGIModel(backbone, lora_rank=4, lora_alpha=8.0, generator=request.param, generator_width=32,
                      generator_hidden_dim=16, site_embed_dim=8, b_init_std=0.05)
    return Student(model, ByT5Tokenizer(), {"name": "tiny", "tiny_config": {"d_model": 32, "num_heads": 2}, "seed": 0})


def test_instruction_template_matches_training():
    assert INSTRUCTION == "Definition: Reverse the words.\n\nPositive Example 1 -\nInput: a b\nOutput: b a"


def test_cache_returns_the_same_encoding_and_skips_the_hypernetwork(student):
    calls = []
    student.model.hypernet.register_forward_hook(lambda *_: calls.append(1))
    first = student.encode(INSTRUCTION)
    outputs = student.generate(INSTRUCTION, ["cow fox", "ape"], max_new_tokens=4)
    assert student.encode(INSTRUCTION) is first and len(calls) == 1  # hypernetwork ran once for 3 calls
    assert (student.cache.misses, student.cache.hits) == (1, 2) and len(outputs) == 2
    student.encode("Sort the words.")
    assert len(calls) == 2 and len(student.cache) == 2


def test_long_instruction_is_truncated_and_counted(student, caplog):
    student.max_instruction_length = 16
    task = student.encode("x" * 100)
    assert task.instruction.shape[1] == 16 and student.truncated_instructions == 1
    assert "truncated to 16" in caplog.text


def test_exported_adapter_reproduces_the_student_without_fusion_and_fid(student, tmp_path):
    out = student.export_adapter(INSTRUCTION, tmp_path / "reverse")
    config = json.loads((out / "adapter_config.json").read_text())
    base = T5ForConditionalGeneration.from_pretrained(config["base_model_name_or_path"]).eval()  # offline folder
    assert config["base_model_name_or_path"] == str((tmp_path / "reverse-backbone").resolve())
    assert json.loads((out / "meta.json").read_text())["instruction"] == INSTRUCTION

    batch = student.tokenizer(["cow fox", "ape"], return_tensors="pt", padding=True)
    decoder_input_ids = torch.tensor([[0, 99, 104], [0, 101, 1]])
    with torch.no_grad():
        plain = base(**batch, decoder_input_ids=decoder_input_ids).logits
        peft = PeftModel.from_pretrained(base, str(out)).eval()
        exported = peft(**batch, decoder_input_ids=decoder_input_ids).logits
        ours = student.model(student.encode(INSTRUCTION), batch["input_ids"], batch["attention_mask"],
                             decoder_input_ids=decoder_input_ids, lora_only=True).logits
        full = student.model(student.encode(INSTRUCTION), batch["input_ids"], batch["attention_mask"],
                             decoder_input_ids=decoder_input_ids).logits
    assert (exported - plain).abs().max() > 1e-3  # the adapter changes the model
    assert torch.allclose(exported, ours, atol=1e-5)
    assert (full - ours).abs().max() > 1e-4  # fusion + FiD are what the adapter leaves out


def test_a_student_with_trained_layer_norms_exports_its_own_backbone(tmp_path):
    """The trained norms are part of the student: the adapter's base is a copy with them, not θ0's folder."""
    torch.manual_seed(0)
    load_backbone("tiny", dict(d_model=32, num_heads=2)).save_pretrained(tmp_path / "theta0")
    model = TAGIModel(load_backbone(str(tmp_path / "theta0")), lora_rank=4, lora_alpha=8.0, generator_hidden_dim=16,
                      site_embed_dim=8, b_init_std=0.05, train_layer_norms=True)
    with torch.no_grad():
        model.backbone.encoder.final_layer_norm.weight.mul_(1.5)  # as if trained
    student = Student(model, ByT5Tokenizer(), {"name": str(tmp_path / "theta0"), "tiny_config": None, "seed": 0})
    out = student.export_adapter(INSTRUCTION, tmp_path / "reverse")
    base_path = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base_path == str((tmp_path / "reverse-backbone").resolve())
    batch = student.tokenizer(["cow fox"], return_tensors="pt")
    decoder_input_ids = torch.tensor([[0, 99, 104]])
    with torch.no_grad():
        peft = PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(base_path).eval(), str(out)).eval()
        exported = peft(**batch, decoder_input_ids=decoder_input_ids).logits
        ours = student.model(student.encode(INSTRUCTION), batch["input_ids"], batch["attention_mask"],
                             decoder_input_ids=decoder_input_ids, lora_only=True).logits
    assert torch.allclose(exported, ours, atol=1e-5)


def test_export_replaces_its_own_output_and_nothing_else(student, tmp_path):
    out = tmp_path / "reverse"
    student.export_adapter(INSTRUCTION, out)
    student.export_adapter("Sort the words.", out)  # an earlier export: replaced
    assert json.loads((out / "meta.json").read_text())["instruction"] == "Sort the words."

    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "notes.txt").write_text("mine")
    (notes / "sub" / "data.csv").write_text("a,b\n")
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    for target, message in [(notes, "the folder holds notes.txt, sub, which this command did not write"),
                            (a_file, "a file is there, not a folder")]:
        before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
        with pytest.raises(InputError, match=re.escape(f"--out {target}: {message}")):
            student.export_adapter(INSTRUCTION, target)
        assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before  # nothing written
    assert (notes / "notes.txt").read_text() == "mine" and a_file.read_text() == "mine"

    # The backbone copy beside the adapter is checked before either folder is written.
    (tmp_path / "fresh-backbone").mkdir()
    (tmp_path / "fresh-backbone" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="fresh-backbone: the folder holds notes.txt"):
        student.export_adapter(INSTRUCTION, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_exported_adapter_carries_the_tokenizer(student, tmp_path):
    """Plain transformers must tokenize as the student does, from the adapter or its backbone folder."""
    out = student.export_adapter(INSTRUCTION, tmp_path / "reverse")
    for folder in (out, tmp_path / "reverse-backbone"):
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        assert tokenizer("cow fox").input_ids == student.tokenizer("cow fox").input_ids
