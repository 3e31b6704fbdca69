"""Each DataModule yields batches that obey the batch contract (ByT5 on the synthetic suite; the
real T5 vocabulary on NI v1 when ../shared is here)."""

import json
import logging
from pathlib import Path

import pytest
import torch

from tagi.data import templates
from tagi.data.modules import FinetuneDataModule, PretrainDataModule, TeacherDataModule
from tagi.data.synthetic import write_suite

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
NI_V1, T5_TOKENIZER = SHARED / "data" / "ni-v1", SHARED / "tokenizers" / "t5"
NI_V1_SPLITS = Path(__file__).resolve().parents[1] / "configs" / "ni-v1" / "splits"

HYPER = {"instruction_ids", "instruction_mask", "task_index"}
MODEL = {"input_ids", "attention_mask", "labels"}
FINETUNE = HYPER | MODEL | {"cluster_ids", "concat_input_ids", "concat_attention_mask"}
META = {"task_names", "categories", "instance_ids", "inputs", "references", "options"}


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    return write_suite(tmp_path_factory.mktemp("suite"), seed=0, num_instances=20)


def check_shapes(batch: dict, pad_id: int) -> None:
    B = batch["input_ids"].shape[0]
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == torch.long, key
        else:
            assert isinstance(value, list) and len(value) == B, key
    assert batch["attention_mask"].shape == batch["input_ids"].shape
    assert batch["labels"].shape[0] == B and (batch["labels"] != pad_id).any()
    assert ((batch["labels"] == -100) | (batch["labels"] >= 0)).all()
    if "task_index" in batch:
        assert batch["task_index"].shape == (B,)
        assert batch["instruction_mask"].shape == batch["instruction_ids"].shape
        assert int(batch["task_index"].max()) < batch["instruction_ids"].shape[0]
        assert len({tuple(r.tolist()) for r in batch["instruction_ids"]}) == batch["instruction_ids"].shape[0]
    if "concat_input_ids" in batch:
        assert batch["concat_input_ids"].shape == batch["concat_attention_mask"].shape
        assert batch["concat_input_ids"].shape[0] == B


def decode(tok, ids, mask) -> str:
    return tok.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)


def test_finetune_module(suite):
    dm = FinetuneDataModule(data_dir=suite, batch_size=6, tasks_per_batch=2, num_pos=2)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == FINETUNE
    check_shapes(batch, dm.tokenizer.pad_token_id)
    assert batch["instruction_ids"].shape[0] <= 2  # few tasks per batch → few instructions to encode
    assert len(dm.clusters) == 9 and sorted(dm.clusters.values()) == list(range(9))
    # Acronyms (validation) and Composition (test) have no train task, so no teacher
    assert set(dm.clusters) - set(dm.train_clusters) == {"Acronyms", "Composition"}
    assert len(dm.eval_tasks) == 10 and len(dm.val_tasks) == 10
    assert not {name for name, _ in dm.val_tasks} & {name for name, _ in dm.eval_tasks}  # validation never reads test
    assert dm.state_dict() == {"clusters": dm.clusters, "train_position": None}  # no trainer: no position yet

    val = list(dm.val_dataloader())
    assert [b["task_names"] for b in val] == [b["task_names"] for b in dm.val_dataloader()]  # deterministic
    names = [n for b in val for n in b["task_names"]]
    assert list(dict.fromkeys(names)) == [name for name, _ in dm.val_tasks]  # task by task, in order
    assert [n for b in dm.test_dataloader() for n in b["task_names"]][0] == dm.eval_tasks[0][0]
    first = val[0]
    assert set(first) == FINETUNE | META
    check_shapes(first, dm.tokenizer.pad_token_id)
    task = dm.datasets["val"].tasks[0]
    assert decode(dm.tokenizer, first["instruction_ids"][0], first["instruction_mask"][0]) == \
        templates.instruction_text(task, 2)
    assert decode(dm.tokenizer, first["concat_input_ids"][0], first["concat_attention_mask"][0]) == \
        templates.concat_input_text(task, task.instances[0].input, 2)  # ByT5 decodes exactly
    assert first["references"][0] == task.instances[0].outputs
    assert first["cluster_ids"][0] == dm.clusters[first["categories"][0]]


@pytest.mark.parametrize("form", ["template", "bare", "concat"])
def test_student_input_forms(suite, form):
    """The student reads the instance prompt θ0 knows (default), the bare input, or the whole concatenation."""
    dm = FinetuneDataModule(data_dir=suite, batch_size=4, num_pos=2, student_input=form)
    dm.setup("fit")
    first = next(iter(dm.val_dataloader()))
    task, x = dm.datasets["val"].tasks[0], dm.datasets["val"].tasks[0].instances[0].input
    student = decode(dm.tokenizer, first["input_ids"][0], first["attention_mask"][0])
    expected = {"template": templates.concat_prompt_text(x), "bare": x,
                "concat": templates.concat_input_text(task, x, 2)}[form]
    assert student == expected
    assert student == templates.student_input_text(x, form, templates.instruction_text(task, 2))  # serving agrees


def test_finetune_plain_shuffle_and_generated_suite(tmp_path):
    dm = FinetuneDataModule(data_dir="synthetic", cache_dir=str(tmp_path), batch_size=4, num_pos=0,
                            max_train_instances_per_task=3, max_test_instances_per_task=2, max_val_instances_per_task=1)
    dm.prepare_data()
    dm.setup("fit")
    assert (tmp_path / "synthetic-v3-seed0" / "synthetic.json").is_file()
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == FINETUNE and batch["input_ids"].shape[0] == 4
    assert len(dm.datasets["train"]) == 93 * 3 and len(dm.datasets["val"]) == 10 and len(dm.datasets["test"]) == 20
    text = decode(dm.tokenizer, batch["instruction_ids"][0], batch["instruction_mask"][0])
    assert text.startswith("Definition: Given a list of words,") and "Positive Example" not in text  # `Def`


def test_teacher_module(suite):
    dm = TeacherDataModule(data_dir=suite, batch_size=5, val_instances_per_task=4)
    dm.setup("fit")
    loader = dm.cluster_loader(batches_per_cluster=2)  # the teacher module gives its per-cluster budget when fitting
    assert len(loader) == 2 * len(dm.train_clusters)
    batch = next(iter(loader))
    assert set(batch) == MODEL | {"cluster_ids"}
    check_shapes(batch, dm.tokenizer.pad_token_id)
    assert len(set(batch["cluster_ids"].tolist())) == 1
    text = decode(dm.tokenizer, batch["input_ids"][0], batch["attention_mask"][0])
    assert text.startswith("Definition: ") and "Now complete the following example" in text
    assert sum(len(v) for v in dm.cluster_tasks.values()) == 93 and sorted(dm.cluster_tasks) == dm.train_clusters
    assert len(dm.datasets["train"]) == 93 * 16 and len(dm.datasets["val"]) == 93 * 4
    train_ids = {inst.id for t in dm.datasets["train"].tasks for inst in t.instances}
    assert not train_ids & {inst.id for t in dm.datasets["val"].tasks for inst in t.instances}
    val = next(iter(dm.val_dataloader()))
    assert set(val) == MODEL | {"cluster_ids"} | META and val["task_names"][0] == dm.val_tasks[0][0]
    assert set(next(iter(dm.test_dataloader()))) == MODEL | {"cluster_ids"} | META

    only = TeacherDataModule(data_dir=suite, batch_size=4, only_clusters=["Case"])
    only.setup("fit")
    assert list(only.cluster_tasks) == ["Case"] and only.clusters == dm.clusters


@pytest.mark.parametrize("four_way", [False, True])
def test_pretrain_module(suite, tmp_path, four_way):
    docs = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"document {i} " + "lorem ipsum dolor " * 20}) for i in range(8)]
    docs.write_text("\n".join(lines) + "\n")
    dm = PretrainDataModule(source=str(docs), four_way=four_way, batch_size=4, max_instruction_length=40,
                            max_input_length=30, max_target_length=20, num_train_segments=10, eval_data_dir=suite,
                            max_val_instances_per_task=2)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 2]
    assert set(batches[0]) == HYPER | MODEL
    check_shapes(batches[0], dm.tokenizer.pad_token_id)
    assert batches[0]["instruction_ids"].shape[1] <= 40 and batches[0]["labels"].shape[1] <= 20
    val = next(iter(dm.val_dataloader()))
    assert set(val) == FINETUNE | META and len(dm.datasets["val"]) == 10 * 2 and len(dm.eval_tasks) == 10
    finetune = FinetuneDataModule(data_dir=suite)
    finetune.setup("fit")
    assert dm.clusters == finetune.clusters  # one cluster map across stages

    c4_only = PretrainDataModule(source=str(docs), batch_size=4, max_instruction_length=40, max_input_length=30,
                                 max_target_length=20, val_documents=2, num_val_segments=3)
    c4_only.setup("fit")
    assert set(next(iter(c4_only.val_dataloader()))) == HYPER | MODEL
    with pytest.raises(ValueError, match="eval_data_dir"):
        c4_only.test_dataloader()


def test_truncation_is_counted_and_keeps_the_instance(suite, caplog):
    dm = FinetuneDataModule(data_dir=suite, batch_size=4, max_instruction_length=30, max_concat_length=80,
                            max_target_length=4)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert "instruction 93/93 tasks (max 30)" in caplog.text and "concat 1860/1860 examples (max 80)" in caplog.text
    assert "target" in caplog.text
    batch = next(iter(dm.test_dataloader()))
    assert batch["instruction_ids"].shape[1] == 30 and batch["concat_input_ids"].shape[1] <= 80
    assert (batch["labels"][:, -1] == dm.tokenizer.eos_token_id).any()  # EOS kept after truncation
    text = decode(dm.tokenizer, batch["concat_input_ids"][0], batch["concat_attention_mask"][0])
    x = dm.datasets["test"].tasks[0].instances[0].input
    assert text.endswith(f"Now complete the following example -\nInput: {x}\nOutput: ")


@pytest.mark.skipif(not (NI_V1.is_dir() and T5_TOKENIZER.is_dir()), reason=f"shared data not found under {SHARED}")
def test_ni_v1_finetune_module_with_t5_vocab(caplog):
    dm = FinetuneDataModule(data_dir=str(NI_V1), tokenizer=str(T5_TOKENIZER), batch_size=4, tasks_per_batch=2,
                            splits_dir=str(NI_V1_SPLITS), max_train_instances_per_task=4, max_test_instances_per_task=3, max_instruction_length=512,
                            max_input_length=256, max_concat_length=768)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert len(dm.datasets["train"]) == 37 * 4 and len(dm.eval_tasks) == 12 and len(dm.clusters) == 6
    val_names = [line for line in (NI_V1_SPLITS / "val_tasks.txt").read_text().splitlines() if not line.startswith("#")]
    assert [name for name, _ in dm.val_tasks] == val_names and len(val_names) == 6
    shared_train = (NI_V1 / "splits/default/train_tasks.txt").read_text().split()
    assert set(val_names) <= set(shared_train)  # carved out of the shared train list
    assert not set(val_names) & {name for name, _ in dm.eval_tasks}
    assert not set(val_names) & {t.name for t in dm.datasets["train"].tasks}
    assert "truncated to the configured lengths" in caplog.text  # NI v1 passages exceed 256 tokens
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == FINETUNE
    check_shapes(batch, dm.tokenizer.pad_token_id)
    text = decode(dm.tokenizer, batch["instruction_ids"][0], batch["instruction_mask"][0])
    assert text.startswith("Definition:") and "Positive Example 1 -" in text


def test_state_dict_records_clusters_and_refuses_a_mismatch(suite):
    dm = FinetuneDataModule(data_dir=suite)
    dm.setup("fit")
    dm.load_state_dict(dm.state_dict())  # same data: fine
    with pytest.raises(ValueError, match="the checkpoint.s clusters"):
        dm.load_state_dict({"clusters": {"Other": 0}})


def test_pretrain_loader_resumes_mid_pass(tmp_path):
    """A restored train position makes the next pass over the C4 stream skip what was trained on."""
    docs = tmp_path / "docs.jsonl"
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    docs.write_text("".join(json.dumps({"text": " ".join(words[i:] + words[:i]) * 4}) + "\n" for i in range(12)))

    def module():
        dm = PretrainDataModule(source=str(docs), batch_size=2, max_instruction_length=40, max_input_length=30,
                                max_target_length=20, val_documents=2, num_val_segments=3)
        dm.setup("fit")
        return dm

    fresh = [batch["input_ids"].tolist() for batch in module().train_dataloader()]
    resumed = module()
    resumed.load_state_dict({"clusters": {}, "train_position": {"epoch": 0, "position": 3}})
    loader = resumed.train_dataloader()
    assert [batch["input_ids"].tolist() for batch in loader] == fresh[3:]
    assert [batch["input_ids"].tolist() for batch in loader] == fresh  # the next pass is whole again


def test_validation_tasks_are_disjoint_from_train_and_test_or_start_up_fails(suite, tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    lists = {subset: (suite / "splits/default" / f"{subset}_tasks.txt").read_text().split()
             for subset in ("train", "val", "test")}
    for subset, names in lists.items():
        (splits / f"{subset}_tasks.txt").write_text("\n".join(names) + "\n")
    dm = FinetuneDataModule(data_dir=suite, splits_dir=str(splits))
    dm.setup("fit")
    assert [n for n, _ in dm.val_tasks] == lists["val"] and [n for n, _ in dm.eval_tasks] == lists["test"]
    for other in ("train", "test"):  # a validation task that is also a train or a test task
        (splits / f"{other}_tasks.txt").write_text("\n".join(lists[other] + lists["val"][:1]) + "\n")
        with pytest.raises(ValueError, match=rf"val_tasks.txt.*{lists['val'][0]}.*in both lists|"
                                             rf"{other}_tasks.txt.*val_tasks.txt.*{lists['val'][0]}"):
            FinetuneDataModule(data_dir=suite, splits_dir=str(splits)).setup("fit")
        (splits / f"{other}_tasks.txt").write_text("\n".join(lists[other]) + "\n")
    (splits / "val_tasks.txt").unlink()
    with pytest.raises(ValueError, match="no validation tasks.*val_tasks.txt"):
        FinetuneDataModule(data_dir=suite, splits_dir=str(splits)).setup("fit")


@pytest.mark.parametrize("control", ["paraphrase", "other_task", "empty", "random"])
def test_instruction_controls_replace_the_evaluation_instructions_only(suite, control):
    real = FinetuneDataModule(data_dir=suite, num_pos=0)
    real.setup("fit")
    dm = FinetuneDataModule(data_dir=suite, num_pos=0, instruction_control=control)
    dm.setup("fit")
    assert dm.datasets["train"].instructions == real.datasets["train"].instructions  # training is untouched
    for split in ("val", "test"):
        tasks, ds, ref = dm.datasets[split].tasks, dm.datasets[split], real.datasets[split]
        assert [t.name for t in tasks] == [t.name for t in ref.tasks] and ds.labels == ref.labels
        texts = [templates.instruction_text(t, 0) for t in tasks]
        originals = [templates.instruction_text(t, 0) for t in ref.tasks]
        assert all(a != b for a, b in zip(texts, originals))
        if control == "paraphrase":
            assert texts == ["Definition: " + t.paraphrases[0] for t in ref.tasks]
        elif control == "other_task":
            assert sorted(texts) == sorted(originals)  # each task gets another task's instruction
        elif control == "empty":
            assert set(texts) == {""}
            assert all(ids == [dm.tokenizer.eos_token_id] for ids in ds.instructions)
            assert dm.tokenizer.decode(ds.concat(0), skip_special_tokens=True).startswith("Now complete")
        else:
            assert [len(t) for t in texts] == [len(t) for t in originals] and all(" " in t for t in texts)


def test_paraphrase_control_needs_paraphrases(suite, tmp_path):
    import shutil

    copy = tmp_path / "suite"
    shutil.copytree(suite, copy)
    task = copy / "tasks" / (copy / "splits/default/test_tasks.txt").read_text().split()[0]
    raw = json.loads(task.with_suffix(".json").read_text())
    del raw["Paraphrases"]
    task.with_suffix(".json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="no `Paraphrases` field"):
        FinetuneDataModule(data_dir=copy, instruction_control="paraphrase").setup("fit")


def test_every_reference_is_a_training_target_when_asked(tmp_path):
    """`training_targets: all` trains on each distinct reference of an instance (Tk-Instruct draws one at random per
    use); "first" on the first; evaluation sets keep one example per instance, scored against every reference."""
    from tagi.data.sni import Instance, Task
    from tagi.data.sni_dataset import SNIDataset
    from tagi.data.tokenization import load_tokenizer

    tok = load_tokenizer("synthetic")
    instances = [Instance("a", "two plus two", ["four", "4", "four"]), Instance("b", "one plus one", ["two"])]
    task = Task("t", "Add the numbers.", [], instances, ["arithmetic"], tmp_path / "t.json")
    answers = {}
    for targets in ("first", "all"):
        data = SNIDataset([task], tok, {"arithmetic": 0}, num_pos=0, targets=targets)
        answers[targets] = [(data[i]["input"], tok.decode(data[i]["labels"], skip_special_tokens=True)) for i in range(len(data))]
    first_input, second_input = answers["first"][0][0], answers["first"][1][0]
    assert answers["first"] == [(first_input, "four"), (second_input, "two")]
    assert answers["all"] == [(first_input, "four"), (first_input, "4"), (second_input, "two")]  # the repeat dropped
    assert data.task_of == [0, 0, 0]
    with pytest.raises(ValueError, match="targets='all' is for training sets"):
        SNIDataset([task], tok, {"arithmetic": 0}, num_pos=0, targets="all", with_meta=True)
    module = FinetuneDataModule(data_dir=str(write_suite(tmp_path / "suite", seed=0, num_instances=4)), tokenizer="synthetic",
                                training_targets="all", max_test_instances_per_task=2)
    module.setup()
    assert {name: data.targets for name, data in module.datasets.items()} == {"train": "all", "val": "first", "test": "first"}
    teachers = TeacherDataModule(data_dir=str(tmp_path / "suite"), tokenizer="synthetic", training_targets="all",
                                 max_test_instances_per_task=2, val_instances_per_task=1)
    teachers.setup()
    assert {name: data.targets for name, data in teachers.datasets.items()} == {"train": "all", "val": "first", "test": "first"}


def long_input_task(words: int) -> "Task":
    from tagi.data.sni import Demonstration, Instance, Task

    x = " ".join(f"word{i}" for i in range(words))
    return Task("t", "Answer yes or no.", [Demonstration("a b", "yes")], [Instance("1", x, ["yes"])], ["QA"], Path("."))


def test_an_input_too_long_is_cut_the_same_for_student_and_teacher_with_the_cue_kept(tmp_path):
    """The student's prompt and the teacher's concatenation hold the same instance prompt, cut at the input's end
    so "Output: " (and the chat turn's end) stays; the teacher's instruction takes what is left. Before, the student
    lost the cue and the end of its input while the teacher (and the concatenation baseline) read both."""
    from tests.test_causal import chat_tokenizer
    from tagi.data.prompts import PromptFormat
    from tagi.data.sni_dataset import Lengths, SNIDataset

    tokenizer = chat_tokenizer(tmp_path / "tok")
    form = PromptFormat.of(tokenizer, "chat")
    dataset = SNIDataset([long_input_task(80)], tokenizer, {"QA": 0}, lengths=Lengths(256, 160, 16, 320),
                         prompt_format=form)
    example = dataset[0]
    student, teacher = example["input"], example["concat"]
    assert len(student) <= 160 and len(teacher) <= 320
    assert student[-len(form.tail):] == list(form.tail) and teacher[-len(form.tail):] == list(form.tail)
    content = student[len(form.head):-len(form.tail)]
    assert tokenizer.decode(content).startswith("Now complete the following example -\nInput: word0 word1")
    assert tokenizer.decode(content).endswith("\nOutput: ")  # the cue, after the cut input
    assert teacher[-len(form.tail) - len(content):] == student[len(form.head):]  # the same instance, after the instruction
    assert tokenizer.decode(teacher[len(form.head):]).startswith("Definition: Answer yes or no.")


def test_a_concatenation_is_its_texts_own_tokenisation():
    """The instruction and the instance prompt are tokenised as one text, as `tokenizer(text)` does for a user
    serving the concatenation baseline; tokenised apart and joined, the demo vocabulary starts the instance
    with "▁Now" where the whole text has "Now"."""
    from tagi.data.sni_dataset import Lengths, SNIDataset
    from tagi.data.tokenization import encode, load_tokenizer

    tokenizer = load_tokenizer("synthetic")
    task = long_input_task(3)
    dataset = SNIDataset([task], tokenizer, {"QA": 0}, lengths=Lengths(64, 24, 16, 64))
    whole = templates.concat_input_text(task, task.instances[0].input)
    assert dataset[0]["concat"] == encode(tokenizer, [whole])[0] + [tokenizer.eos_token_id]


@pytest.mark.parametrize("form", ["template", "bare", "concat"])
def test_the_student_is_served_the_input_it_was_trained_and_tested_on(tmp_path, form):
    """Student.generate cuts a long input as SNIDataset does (its max_input_length, the cue kept), whatever it reads."""
    from tests.test_causal import SPEC, chat_tokenizer, tiny_model
    from tagi.data.prompts import PromptFormat
    from tagi.data.sni_dataset import Lengths, SNIDataset
    from tagi.inference.student import Student, format_instruction

    tokenizer = chat_tokenizer(tmp_path / "tok")
    task = long_input_task(80)
    dataset = SNIDataset([task], tokenizer, {"QA": 0}, lengths=Lengths(256, 160, 16, 320),
                         prompt_format=PromptFormat.of(tokenizer, "chat"), student_input=form)
    student = Student(tiny_model(), tokenizer, SPEC, prompt_format="chat", max_input_length=160, max_concat_length=320,
                      student_input=form)
    served = []
    student.runner.generate_task = lambda task, ids, mask, *args, **kwargs: served.append(ids[0][mask[0].bool()].tolist()) or [""]
    student.generate(format_instruction(task.definition, [("a b", "yes")]), [task.instances[0].input])
    assert served == [dataset[0]["input"]]


def byte_level_tokenizer():
    """A byte-level BPE (GPT-2 / SmolLM2's kind) built in memory: a CJK character spans several tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    model = Tokenizer(models.BPE())
    model.pre_tokenizer, model.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<eos>"], show_progress=False)
    model.train_from_iterator(["Now complete the following example -\nInput: x\nOutput: ", "Definition: say it"] * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=model, eos_token="<eos>")


def test_a_cut_keeps_the_cue_the_separator_and_whole_characters():
    """Three edges of cutting (a review's reproductions): a budget that only the template with an empty input fits
    still ends with the cue; a cut instruction keeps the blank line before the instance; a cut inside a character
    of a byte-level vocabulary leaves no U+FFFD in the text either prompt reads."""
    from tagi.data.sni_dataset import Lengths, student_prompts
    from tagi.data.tokenization import encode, load_tokenizer

    tokenizer = load_tokenizer("synthetic")
    form = PromptFormat_plain(tokenizer)
    template_only = len(encode(tokenizer, [templates.concat_prompt_text("", "tk-instruct")])[0]) + form.overhead
    inputs = ["cow fox ape emu", "The quick brown fox jumps"] * 3
    student, concat = student_prompts(tokenizer, form, inputs, ["Definition: say the words twice, in order."] * 6,
                                      Lengths(64, template_only, 16, template_only + 6), "tk-instruct")
    for ids in student:
        assert tokenizer.decode(ids, skip_special_tokens=True).rstrip().endswith("Output:") and len(ids) <= template_only
    for ids in concat:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        assert "\n\nNow complete" in text or text.startswith("Now complete")  # never "...twiceNow complete"
    byte_level = byte_level_tokenizer()
    student, concat = student_prompts(byte_level, PromptFormat_plain(byte_level), ["日本語のテキストです。" * 4],
                                      ["Definition: say it"], Lengths(64, 40, 16, 60))
    for ids in student + concat:
        assert "\ufffd" not in byte_level.decode(ids) and byte_level.decode(ids).endswith("Output: <eos>")


def PromptFormat_plain(tokenizer):
    from tagi.data.prompts import PromptFormat

    return PromptFormat.of(tokenizer, "plain")
