"""SNI-layout reader and templates: the real NI v1 tasks (when ../shared is here) and every bad input."""

import json
import logging
from pathlib import Path

import pytest

from tagi.data import templates
from tagi.data.sni import (InvalidTaskError, SplitOverlapError, build_clusters, load_clusters, load_split, read_task,
                           save_clusters, split_names, task_names)

NI_V1 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ni-v1"
needs_ni_v1 = pytest.mark.skipif(not NI_V1.is_dir(), reason=f"shared NI v1 data not found at {NI_V1}")


def good_task(**overrides) -> dict:
    task = {"Definition": ["Say the word twice."], "Categories": ["Repetition"],
            "Positive Examples": [{"input": "cat", "output": "cat cat", "explanation": ""},
                                  {"input": "dog", "output": "dog dog", "explanation": ""}],
            "Negative Examples": [],
            "Instances": [{"id": f"t-{i}", "input": w, "output": [f"{w} {w}"]} for i, w in enumerate(["ox", "emu"])]}
    task.update(overrides)
    return task


def make_root(tmp_path: Path, tasks: dict[str, dict | str], train: list[str], test: list[str] = (),
              excluded: list[str] | None = None) -> Path:
    (tmp_path / "tasks").mkdir()
    split = tmp_path / "splits" / "default"
    split.mkdir(parents=True)
    for name, body in tasks.items():
        text = body if isinstance(body, str) else json.dumps(body)
        (tmp_path / "tasks" / f"{name}.json").write_text(text)
    (split / "train_tasks.txt").write_text("\n".join(train) + "\n")
    (split / "test_tasks.txt").write_text("\n".join(test) + "\n")
    if excluded is not None:
        (split / "excluded_tasks.txt").write_text("\n".join(excluded) + "\n")
    return tmp_path


# ------------------------------------------------------------------------------------------ NI v1
@needs_ni_v1
def test_ni_v1_splits_and_clusters():
    train = load_split(NI_V1, "default", "train", max_instances=3)
    test = load_split(NI_V1, "default", "test", max_instances=100)
    assert (len(train), len(test)) == (43, 12)
    clusters = build_clusters(train + test)
    assert len(clusters) == 6 and sorted(clusters.values()) == list(range(6))
    assert list(clusters) == sorted(clusters)  # ids in sorted-name order: stable
    assert all(len(t.instances) <= 100 for t in test) and all(len(t.instances) == 3 for t in train)
    assert test[0].name == "task002_quoref_answer_generation" and test[0].category == "Answer Generation"


@needs_ni_v1
def test_ni_v1_formatted_inputs_on_a_real_task():
    task = read_task(NI_V1 / "tasks" / "task002_quoref_answer_generation.json", max_instances=100)
    assert len(task.instances) == 100 and len(task.positive_examples) == 2
    definition = templates.instruction_text(task, num_pos=0)
    # NI v1 definitions already start with "Definition:"; the template must not double it
    assert definition.startswith("Definition: In this task, you're expected to write answers")
    assert definition.count("Definition:") == 1 and "Positive Example" not in definition
    two_pos = templates.instruction_text(task, num_pos=2)
    ex1, ex2 = task.positive_examples
    assert two_pos.startswith(definition + "\n\nPositive Example 1 -\nInput: Passage: The premiere")
    assert f"\nOutput: {ex1.output}\n\nPositive Example 2 -\nInput: {ex2.input}\nOutput: {ex2.output}" in two_pos
    assert ex1.output == "Émile Paladilhe."
    x = task.instances[0]
    concat = templates.concat_input_text(task, x.input, num_pos=2)
    assert concat == two_pos + f"\n\nNow complete the following example -\nInput: {x.input}\nOutput: "
    assert templates.student_input_text(x.input, "bare") == x.input
    assert templates.student_input_text(x.input, "template") == templates.concat_prompt_text(x.input)
    assert templates.student_input_text(x.input, "concat", two_pos) == concat  # serving builds what training read
    assert templates.instruction_text(task, num_pos=5) == two_pos  # only 2 exist: use what there is


# ---------------------------------------------------------------------------------------- caps etc.
def test_caps_first_n_or_seeded_sample(tmp_path):
    body = good_task(Instances=[{"id": str(i), "input": str(i), "output": ["x"]} for i in range(50)])
    root = make_root(tmp_path, {"a": body}, ["a"])
    first = load_split(root, max_instances=5)[0]
    assert [i.id for i in first.instances] == ["0", "1", "2", "3", "4"]
    sampled = [i.id for i in load_split(root, max_instances=5, sample_seed=1)[0].instances]
    assert sampled == [i.id for i in load_split(root, max_instances=5, sample_seed=1)[0].instances]
    assert sampled != ["0", "1", "2", "3", "4"] and sampled == sorted(sampled, key=int)


def test_the_teachers_train_on_the_students_capped_sample(tmp_path):
    """TAGI §A.2: 100 instances per training task, for teachers and student alike. The teachers read the cap
    plus the instances they hold out for validation; what they train on is the student's sample, whatever
    the cap and the task's size (random.sample's prefixes would not promise that)."""
    from tagi.data.sni_dataset import holdout_instances

    body = good_task(Instances=[{"id": f"id-{i}", "input": str(i), "output": ["x"]} for i in range(300)])
    root = make_root(tmp_path, {"a": body}, ["a"])
    for cap, held in ((100, 5), (7, 2), (295, 5)):
        student = load_split(root, max_instances=cap, sample_seed=3)[0]
        teacher_train, teacher_val = holdout_instances(load_split(root, max_instances=cap + held, sample_seed=3), held, 3)
        assert [i.id for i in teacher_train[0].instances] == [i.id for i in student.instances]
        assert len(teacher_val[0].instances) == held and not {i.id for i in teacher_val[0].instances} & {i.id for i in student.instances}
    unsampled_train, unsampled_val = holdout_instances(load_split(root), 5)  # no cap: the file's last ones, as before
    assert [i.id for i in unsampled_val[0].instances] == [f"id-{i}" for i in range(295, 300)]


def test_excluded_tasks_are_dropped(tmp_path, caplog):
    root = make_root(tmp_path, {"a": good_task(), "b": good_task()}, ["a", "b"], excluded=["b"])
    with caplog.at_level(logging.WARNING):
        assert [t.name for t in load_split(root)] == ["a"]
    assert "excluded_tasks.txt" in caplog.text
    assert task_names(root, subset="train") == ["a"]


def test_clusters_round_trip(tmp_path):
    clusters = {"b": 1, "a": 0}
    save_clusters(tmp_path / "clusters.json", clusters)
    assert load_clusters(tmp_path / "clusters.json") == clusters


# -------------------------------------------------------------------------------------- bad input
BAD_CASES = {
    "malformed_json": ('{"Definition": ["x"], ', "<json>", "malformed JSON"),
    "missing_definition": ({k: v for k, v in good_task().items() if k != "Definition"}, "Definition", "missing"),
    "missing_instances": ({k: v for k, v in good_task().items() if k != "Instances"}, "Instances", "missing"),
    "no_instances": (good_task(Instances=[]), "Instances", "no instances"),
    "empty_definition": (good_task(Definition=["   "]), "Definition", "empty"),
    "instance_without_output": (good_task(Instances=[{"id": "1", "input": "x"}]), "Instances[0].output", "missing"),
    "empty_categories": (good_task(Categories=[]), "Categories", "non-empty"),
    "bad_positive_example": (good_task(**{"Positive Examples": [{"input": "x"}]}), "Positive Examples[0]", "output"),
    "one_option": (good_task(Instances=[{"id": "1", "input": "x", "output": ["a"], "options": ["a"]}]),
                   "Instances[0].options", "at least two"),
    # predictions.jsonl could not tell the two apart; it was accepted without a word
    "duplicate_ids": (good_task(Instances=[{"id": "t-0", "input": w, "output": [w]} for w in ("ox", "emu")]),
                      "Instances[1].id", "'t-0' is also the id of Instances[0]"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_task_raises_naming_file_and_field(tmp_path, case):
    body, field, problem = BAD_CASES[case]
    root = make_root(tmp_path, {"good": good_task(), "bad": body}, ["good", "bad"])
    with pytest.raises(InvalidTaskError) as info:
        load_split(root)
    message = str(info.value)
    assert str(root / "tasks" / "bad.json") in message and f"field '{field}'" in message and problem in message
    assert info.value.field == field


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_task_is_skipped_with_a_warning_when_configured(tmp_path, caplog, case):
    body, field, _ = BAD_CASES[case]
    root = make_root(tmp_path, {"good": good_task(), "bad": body}, ["good", "bad"])
    with caplog.at_level(logging.WARNING):
        tasks = load_split(root, on_error="skip")
    assert [t.name for t in tasks] == ["good"]
    assert "bad.json" in caplog.text and field in caplog.text


def test_an_empty_reference_is_kept_and_said(tmp_path, caplog):
    """An empty prediction matches it exactly: it was scored without a word (ni-v1's task044 has one)."""
    body = good_task(Instances=[{"id": "a", "input": "ox", "output": ["ox ox"]}, {"id": "b", "input": "emu", "output": ["  "]}])
    root = make_root(tmp_path, {"good": body}, ["good"])
    with caplog.at_level(logging.WARNING):
        task = read_task(root / "tasks" / "good.json")
    assert [instance.outputs for instance in task.instances] == [["ox ox"], [""]]
    assert "good.json: 1 instance(s) with an empty reference, first Instances[1]" in caplog.text


def test_a_task_of_many_instances_is_said_with_the_count(tmp_path, caplog, monkeypatch):
    """A task of 10**6 instances was read whole (6 s, 1.5 GB) to use 100 of them, without a word."""
    from tagi.data import sni

    monkeypatch.setattr(sni, "LARGE_TASK", 3)  # the real threshold, 100,000, as a file of 4 instances
    body = good_task(Instances=[{"id": str(i), "input": f"w{i}", "output": [f"w{i} w{i}"]} for i in range(4)])
    root = make_root(tmp_path, {"big": body}, ["big"])
    with caplog.at_level(logging.WARNING):
        assert len(read_task(root / "tasks" / "big.json", max_instances=2).instances) == 2
    assert "big.json: 4 instances (0 MB) read whole into memory, 2 of them used" in caplog.text


def test_task_listed_but_absent(tmp_path, caplog):
    root = make_root(tmp_path, {"good": good_task()}, ["good", "ghost"])
    with pytest.raises(InvalidTaskError, match=r"ghost\.json.*listed in .*train_tasks\.txt"):
        load_split(root)
    with caplog.at_level(logging.WARNING):
        assert [t.name for t in load_split(root, on_error="skip")] == ["good"]
    assert "ghost.json" in caplog.text


def test_one_task_spelled_two_ways_is_one_task_in_the_overlap_check(tmp_path):
    """`./x` in the train list and `x` in the test list read the same file: the test task would be trained on."""
    root = make_root(tmp_path, {"a": good_task(), "x": good_task()}, ["a", "./x"], ["x.json"])
    assert task_names(root, subset="train") == ["a", "x"] and task_names(root, subset="test") == ["x"]
    with pytest.raises(SplitOverlapError, match=r"train_tasks.txt and .*test_tasks.txt: task 'x' .*in both lists"):
        split_names(root)


@pytest.mark.parametrize("entry", ["../../other/tasks/x", "/elsewhere/tasks/x.json", "tasks/x", ".."])
def test_a_list_entry_that_is_a_path_is_refused_naming_the_list_and_the_entry(tmp_path, entry):
    """`../../other/tasks/x` was read from outside the data folder."""
    root = make_root(tmp_path, {"a": good_task()}, ["a", entry])
    with pytest.raises(InvalidTaskError) as info:
        split_names(root)
    message = str(info.value)
    assert str(root / "splits/default/train_tasks.txt") in message and "line 2" in message
    assert repr(entry) in message and "not a task name" in message


def test_missing_split_file_and_bad_on_error(tmp_path):
    root = make_root(tmp_path, {"good": good_task()}, ["good"])
    with pytest.raises(FileNotFoundError, match="nosuch/train_tasks.txt"):
        load_split(root, split="nosuch")
    with pytest.raises(ValueError, match="on_error"):
        load_split(root, on_error="ignore")


def test_carve_moves_one_train_task_per_category_to_validation(tmp_path):
    from tagi.data.carve import carve, main
    from tagi.data.synthetic import write_suite

    root = write_suite(tmp_path / "suite", num_instances=3)
    lists = carve(root, per_category=1, seed=0)
    train = load_split(root, subset="train")
    assert len(lists["val"]) == len({t.category for t in train}) and lists["test"] == task_names(root, subset="test")
    assert sorted(lists["train"] + lists["val"]) == sorted(t.name for t in train)
    main(["--data", str(root), "--out", str(tmp_path / "splits")])
    assert task_names(root, subset="val", splits_dir=tmp_path / "splits") == lists["val"]  # same seed: same lists


def test_the_tk_instruct_template_writes_what_its_collator_writes(tmp_path):
    """`template: tk-instruct`: the words of Tk-Instruct's `ni_collator.py` (a "." after a field that does not end in
    punctuation, a space before " Positive Example i -" and " Output:"), written out here by hand from it."""
    from tagi.data.sni import Demonstration, Instance, Task

    task = Task("t", "Definition: Reverse the words ", [Demonstration("a b", "b a"), Demonstration("x y.", "y x!")],
                [Instance("0", " c d ", ["d c"])], ["Word Order"], tmp_path / "t.json")
    collator = ("Definition: Reverse the words.\n\n"
                " Positive Example 1 -\nInput: a b.\n Output: b a.\n\n"
                " Positive Example 2 -\nInput: x y.\n Output: y x!\n\n"
                "Now complete the following example -\nInput: c d.\nOutput: ")
    assert templates.concat_input_text(task, " c d ", 2, "tk-instruct") == collator
    assert templates.instruction_text(task, 2, "tk-instruct") == collator.split("\n\nNow complete")[0]
    assert templates.student_input_text("c d", "template", kind="tk-instruct") == "Now complete the following example -\nInput: c d.\nOutput: "
    # ours: the same words without the periods and spaces
    assert templates.concat_input_text(task, "c d", 2) == (
        "Definition: Reverse the words \n\nPositive Example 1 -\nInput: a b\nOutput: b a\n\n"
        "Positive Example 2 -\nInput: x y.\nOutput: y x!\n\nNow complete the following example -\nInput: c d\nOutput: ")


def test_the_data_modules_write_the_configured_template(tmp_path):
    from tagi.data.modules import FinetuneDataModule, TeacherDataModule
    from tagi.data.synthetic import write_suite

    suite = str(write_suite(tmp_path / "suite", seed=0, num_instances=4))
    for module in (FinetuneDataModule(data_dir=suite, tokenizer="synthetic", template="tk-instruct", max_test_instances_per_task=2),
                   TeacherDataModule(data_dir=suite, tokenizer="synthetic", template="tk-instruct", val_instances_per_task=1,
                                     max_test_instances_per_task=2)):
        module.setup()
        for name, data in module.datasets.items():
            text = module.tokenizer.decode(data[0]["input"] if module.__class__ is TeacherDataModule else data[0]["concat"])
            assert " Positive Example 1 -" in text and "\n Output: " in text, (type(module).__name__, name)
