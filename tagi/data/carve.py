"""Carve validation tasks out of a read-only dataset's train list, into a split folder of your own.

    python -m tagi.data.carve --data data/natural-instructions --out configs/sni-t5-base/splits \
        [--split default] [--per-category 1 | --unseen-categories K] [--seed 0]

Writes `{train,val,test}_tasks.txt` to `--out`: the test list unchanged, and val taken from train
(a seeded choice, so the same command writes the same lists), in one of two ways:
- `--per-category N` (the default, N = 1): N tasks of every category that has train tasks move to
  val. Validation tasks are unseen tasks of seen categories, and every category keeps its teacher.
- `--unseen-categories K`: every train task of K categories moves to val, so validation, like SNI's
  test split, holds categories that training never sees (TAGI §3.1: three non-overlapping groups).
Give the folder to the data modules as `splits_dir`. Lightning-free.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from .sni import read_task, split_names


def carve(root: Path | str, split: str = "default", per_category: int = 1, seed: int = 0,
          unseen_categories: int = 0) -> dict[str, list[str]]:
    """{train, val, test} names: `per_category` train tasks of each category moved to val, or, with
    `unseen_categories` > 0, every train task of that many categories (and `per_category` is not used)."""
    names = split_names(root, split)
    by_category: dict[str, list[str]] = {}
    for name in names["train"]:
        by_category.setdefault(read_task(Path(root) / "tasks" / f"{name}.json", max_instances=1).category, []).append(name)
    rng = random.Random(f"tagi-carve:{seed}")
    if unseen_categories:
        val = _whole_categories(by_category, unseen_categories, rng)
    else:
        val = {name for category in sorted(by_category) for name in rng.sample(by_category[category], min(per_category, len(by_category[category])))}
    return {"train": [n for n in names["train"] if n not in val], "val": [n for n in names["train"] if n in val],
            "test": names["test"]}


def _whole_categories(by_category: dict[str, list[str]], count: int, rng: random.Random) -> set[str]:
    """Every task of `count` categories (a seeded choice); at least one category must stay in training."""
    if not 0 < count < len(by_category):
        raise ValueError(f"unseen_categories: {count}; it must be between 1 and {len(by_category) - 1} "
                         f"(the train list has {len(by_category)} categories, and training keeps at least one)")
    return {name for category in rng.sample(sorted(by_category), count) for name in by_category[category]}


def write_lists(out: Path | str, lists: dict[str, list[str]], source: str) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for subset, names in lists.items():
        header = f"# {subset} tasks, written by `python -m tagi.data.carve` from {source}\n"
        (out / f"{subset}_tasks.txt").write_text(header + "".join(f"{n}\n" for n in names))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder in the SNI layout (tasks/, splits/)")
    parser.add_argument("--out", required=True, help="where to write train/val/test_tasks.txt")
    parser.add_argument("--split", default="default")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--per-category", type=int, default=1, help="tasks of every train category moved to val (default)")
    how.add_argument("--unseen-categories", type=int, default=0,
                     help="instead: every train task of this many categories moved to val (unseen in training)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        lists = carve(args.data, args.split, args.per_category, args.seed, args.unseen_categories)
    except ValueError as error:
        parser.error(str(error).replace("unseen_categories", "--unseen-categories", 1))  # the option as typed
    write_lists(args.out, lists, f"{args.data}/splits/{args.split}")
    print(f"wrote {', '.join(f'{len(v)} {k}' for k, v in lists.items())} task names to {args.out}")


if __name__ == "__main__":
    main()
