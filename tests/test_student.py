"""Serving a student: per-task cache, generation, and `tagi adapter`'s PEFT export."""

import json
import re
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer, ByT5Tokenizer, T5ForConditionalGeneration

from tagi.errors import InputError
from tagi.modeling.model import TAGIModel
from tagi.modeling.backbone import load_backbone
from tagi.inference.student import Student, format_instruction

INSTRUCTION = format_instruction("Reverse the words.", [("a b", "b a")])


@pytest.fixture(params=["mlp", "hart"])
def student(request) -> Student:
    """A student of each generator family: caching, serving and export must not depend on it."""
    return tiny_student(request.param)


def tiny_student(generator: str = "mlp") -> Student:
    torch.manual_seed(0)
    backbone = load_backbone("tiny", dict(d_model=32, num_heads=2))
    model = TAGIModel(backbone, lora_rank=4, lora_alpha=8.0, generator=generator, generator_width=32,
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
    assert config["base_model_name_or_path"] == "backbone"  # θ0 built in code: a copy inside the adapter
    base = T5ForConditionalGeneration.from_pretrained(out / "backbone").eval()
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
    assert torch.allclose(exported, ours, atol=1e-4)  # float32 rounding between two code paths (logits ~10)
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
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "backbone"
    batch = student.tokenizer(["cow fox"], return_tensors="pt")
    decoder_input_ids = torch.tensor([[0, 99, 104]])
    with torch.no_grad():
        peft = PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(out / "backbone").eval(), str(out)).eval()
        exported = peft(**batch, decoder_input_ids=decoder_input_ids).logits
        ours = student.model(student.encode(INSTRUCTION), batch["input_ids"], batch["attention_mask"],
                             decoder_input_ids=decoder_input_ids, lora_only=True).logits
    assert torch.allclose(exported, ours, atol=1e-4)  # float32 rounding between two code paths (logits ~10)


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



def test_exported_adapter_carries_the_tokenizer(student, tmp_path):
    """Plain transformers must tokenize as the student does, from the adapter or its backbone folder."""
    out = student.export_adapter(INSTRUCTION, tmp_path / "reverse")
    for folder in (out, out / "backbone"):
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        assert tokenizer("cow fox").input_ids == student.tokenizer("cow fox").input_ids


def _base_as_readme_loads_it(adapter):
    """The README's rule: `base_model_name_or_path` is relative to the adapter folder, or a hub id."""
    name = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    return adapter / name if (adapter / name).is_dir() else name


def _adapter_logits(adapter):
    base = T5ForConditionalGeneration.from_pretrained(_base_as_readme_loads_it(adapter)).eval()
    batch = ByT5Tokenizer()(["cow fox"], return_tensors="pt")
    with torch.no_grad():
        return PeftModel.from_pretrained(base, str(adapter)).eval()(**batch, decoder_input_ids=torch.tensor([[0, 99]])).logits


def test_adapters_survive_moving_with_theta0_or_alone_with_their_backbone(tmp_path):
    project = tmp_path / "project"
    torch.manual_seed(0)
    load_backbone("tiny", dict(d_model=32, num_heads=2)).save_pretrained(project / "checkpoints" / "theta0")
    model = TAGIModel(load_backbone(str(project / "checkpoints" / "theta0")), lora_rank=4, lora_alpha=8.0,
                      generator_hidden_dim=16, site_embed_dim=8, b_init_std=0.05)
    student = Student(model, ByT5Tokenizer(), {"name": str(project / "checkpoints" / "theta0"), "tiny_config": None, "seed": 0})
    named = student.export_adapter(INSTRUCTION, project / "adapters" / "named")
    alone = student.export_adapter(INSTRUCTION, project / "adapters" / "alone", with_backbone=True)
    assert json.loads((named / "adapter_config.json").read_text())["base_model_name_or_path"] == "../../checkpoints/theta0"
    assert not (named / "backbone").exists() and (alone / "backbone" / "config.json").is_file()
    expected = _adapter_logits(named)

    moved = tmp_path / "elsewhere" / "project"
    moved.parent.mkdir()
    project.rename(moved)  # the whole project: the relative path to θ0 still holds
    assert torch.allclose(_adapter_logits(moved / "adapters" / "named"), expected)
    (moved / "adapters" / "alone").rename(tmp_path / "alone")  # on its own, away from θ0
    assert torch.allclose(_adapter_logits(tmp_path / "alone"), expected)

    student.export_adapter(INSTRUCTION, tmp_path / "alone")  # an earlier export's backbone copy is its own
    assert not (tmp_path / "alone" / "backbone").exists()
    (tmp_path / "mine" / "backbone").mkdir(parents=True)  # a user's folder of that name is not
    with pytest.raises(InputError, match="mine: the folder holds backbone, which this command did not write"):
        student.export_adapter(INSTRUCTION, tmp_path / "mine")
    assert (tmp_path / "mine" / "backbone").is_dir()


def write_student_checkpoint(project: Path, stage: str = "finetune", **trained) -> tuple[Path, dict]:
    """A `stage` checkpoint of a student on a θ0 folder, in `project` (the current folder) as the stages lay
    them out; `trained`: what its data module recorded. Its path and its provenance record."""
    from tagi.provenance import backbone_record

    theta0 = Path("checkpoints/r/theta0/model")
    torch.manual_seed(0)
    load_backbone("tiny", dict(d_model=32, num_heads=2)).save_pretrained(project / theta0)
    architecture = dict(lora_rank=4, lora_alpha=8.0, generator_hidden_dim=16, site_embed_dim=8)
    model = TAGIModel(load_backbone(str(project / theta0)), **architecture)
    record = {"stage": stage, "tokenizer": "byt5", "architecture": architecture,
              "backbone": backbone_record({"name": str(theta0), "tiny_config": None, "seed": 0})}
    checkpoint = project / f"checkpoints/r/{stage}/checkpoints/last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"model.{key}": value for key, value in model.state_dict().items()}, "tagi": record,
                "datamodule_hyper_parameters": trained, "global_step": 7}, checkpoint)
    return checkpoint, record


def test_a_student_finds_its_theta0_from_another_folder_or_says_it_is_gone(tmp_path, monkeypatch, capsys):
    """A stage records θ0's folder as given, relative to where it ran: `tagi adapter` run from another folder, or
    with θ0 deleted, took that path for a hub id and ended in a 44-line traceback about repo ids."""
    import shutil

    from tagi.__main__ import main as tagi_main

    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    checkpoint, record = write_student_checkpoint(project)

    monkeypatch.chdir(tmp_path)  # not the folder the stages ran in
    adapter = ["adapter", "--ckpt", str(checkpoint), "--instruction", "Sort the words."]
    tagi_main([*adapter, "--out", "adapter"])
    assert json.loads(Path("adapter/adapter_config.json").read_text())["base_model_name_or_path"] == "../project/checkpoints/r/theta0/model"
    shutil.rmtree(project / "checkpoints/r/theta0/model")
    with pytest.raises(SystemExit) as exit_info:
        tagi_main([*adapter, "--out", "adapter-2"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and not Path("adapter-2").exists()
    assert (f"--ckpt {checkpoint} was trained on the θ0 folder checkpoints/r/theta0/model (weights "
            f"{record['backbone']['weights']}), which is not there") in err


def test_an_adapter_reads_its_instruction_as_the_student_was_trained_to(tmp_path, monkeypatch, caplog):
    """A student trained on instructions of at most 16 tokens read up to 1024 in `tagi adapter`, with no word;
    its own limit now applies (as in training), with a warning, and meta.json says the LoRA saw only the start."""
    monkeypatch.chdir(tmp_path)
    checkpoint, _ = write_student_checkpoint(tmp_path, max_instruction_length=16, student_input="template")
    student = Student.from_checkpoint(checkpoint)
    assert student.max_instruction_length == 16
    long, short = "Sort the words of every line by their length, shortest first.", "Sort."
    meta = json.loads((student.export_adapter(long, tmp_path / "long") / "meta.json").read_text())
    assert meta["instruction"] == long and meta["instruction_truncated_to_tokens"] == 16
    assert "truncated to 16 (the student's max_instruction_length)" in caplog.text
    assert "instruction_truncated_to_tokens" not in json.loads((student.export_adapter(short, tmp_path / "short") / "meta.json").read_text())


def test_an_adapter_records_the_checkpoint_it_came_from_and_a_stage_two_one_is_said(tmp_path, monkeypatch, caplog):
    """`tagi adapter --ckpt` of a pretrain (stage 2) checkpoint, whose hypernetwork never saw a task, wrote an
    adapter indistinguishable from a finetuned student's."""
    monkeypatch.chdir(tmp_path)
    checkpoint, _ = write_student_checkpoint(tmp_path, stage="pretrain")
    meta = json.loads((Student.from_checkpoint(checkpoint).export_adapter("Sort.", tmp_path / "adapter") / "meta.json").read_text())
    assert meta["student"] == {"checkpoint": str(checkpoint), "stage": "pretrain", "global_step": 7}
    assert f"--ckpt {checkpoint} is a pretrain-stage checkpoint: its hypernetwork was never finetuned on tasks" in caplog.text


def test_two_exports_into_one_folder_at_once_are_not_both_reported_written(tmp_path):
    """Two `tagi adapter --out adapters/x` at once both passed the check of what was there, both said they wrote
    the adapter, and the second replaced the first. The second is now refused while the first writes."""
    import subprocess
    import sys
    import time

    from tagi.errors import ConfigurationError

    script = f"""
import sys, time
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from tagi.inference import student as module
from test_student import INSTRUCTION, tiny_student
real = module.write_adapter
def slow_write(*args, **kwargs):
    Path({str(tmp_path / "started")!r}).touch()
    time.sleep(4)  # the first export, still writing
    real(*args, **kwargs)
module.write_adapter = slow_write
tiny_student().export_adapter(INSTRUCTION, {str(tmp_path / "adapter")!r})
"""
    first = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "started").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(ConfigurationError, match=r"--out .*adapter: another run is writing into it"):
        tiny_student().export_adapter(INSTRUCTION, tmp_path / "adapter")
    assert first.wait() == 0, first.stderr.read()[-2000:]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_a_student_trained_on_tk_instructs_words_reads_and_exports_them(tmp_path, monkeypatch):
    """`data.init_args.template: tk-instruct` in training: `tagi adapter` writes the instruction, and the student reads
    its input, in those words (the checkpoint's data module record says which)."""
    from tagi.__main__ import main as tagi_main

    monkeypatch.chdir(tmp_path)
    checkpoint, _ = write_student_checkpoint(tmp_path, student_input="template", template="tk-instruct",
                                             max_input_length=48, max_concat_length=96)
    student = Student.from_checkpoint(checkpoint)
    assert student.template == "tk-instruct"
    Path("pos.jsonl").write_text('{"input": "cow ape", "output": "ape cow"}\n')
    tagi_main(["adapter", "--ckpt", str(checkpoint), "--instruction", "Sort the words", "--positive-examples", "pos.jsonl",
               "--out", "adapter"])
    meta = json.loads(Path("adapter/meta.json").read_text())
    assert meta["instruction"] == "Definition: Sort the words.\n\n Positive Example 1 -\nInput: cow ape.\n Output: ape cow."
    assert meta["template"] == "tk-instruct"
    assert meta["input_template"] == "Now complete the following example -\nInput: {input}\nOutput: "
    assert meta["max_prompt_tokens"] == 48  # the student's budget (not the concatenation's), as trained
    assert meta["answer_end"] == "</s>"  # a plain prompt's answer ends with EOS
    # a checkpoint from before the option: our words
    older, _ = write_student_checkpoint(tmp_path / "older", student_input="template")
    assert Student.from_checkpoint(older).template == "tagi"
