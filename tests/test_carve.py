"""python -m tagi.data.carve --unseen-categories: validation tasks from categories that training never sees."""

import pytest

from tagi.data.carve import carve, main
from tagi.data.sni import read_task, task_names
from tagi.data.synthetic import write_suite


def categories(root, names) -> set[str]:
    return {read_task(root / "tasks" / f"{name}.json", max_instances=1).category for name in names}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_suite(tmp_path_factory.mktemp("carve") / "suite", num_instances=3)


def test_unseen_categories_move_whole_categories_and_only_them(suite):
    per_task, unseen = carve(suite, seed=0), carve(suite, seed=0, unseen_categories=2)
    assert categories(suite, per_task["val"]) <= categories(suite, per_task["train"])  # the default: seen categories
    held_out = categories(suite, unseen["val"])
    assert len(held_out) == 2 and not held_out & categories(suite, unseen["train"])
    assert sorted(unseen["train"] + unseen["val"]) == sorted(per_task["train"] + per_task["val"])
    assert unseen["test"] == per_task["test"]


def test_the_command_writes_the_same_lists_and_refuses_what_cannot_work(suite, tmp_path, capsys):
    main(["--data", str(suite), "--out", str(tmp_path / "splits"), "--unseen-categories", "1", "--seed", "3"])
    assert task_names(suite, subset="val", splits_dir=tmp_path / "splits") == carve(suite, seed=3, unseen_categories=1)["val"]
    seen = len(categories(suite, carve(suite)["train"] + carve(suite)["val"]))
    with pytest.raises(SystemExit):
        main(["--data", str(suite), "--out", str(tmp_path / "x"), "--unseen-categories", str(seen)])
    assert f"--unseen-categories: {seen}; it must be between 1 and {seen - 1}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", str(suite), "--out", str(tmp_path / "x"), "--unseen-categories", "1", "--per-category", "2"])
    assert "not allowed with argument" in capsys.readouterr().err
