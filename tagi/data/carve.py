"""Carve validation tasks out of a read-only dataset's train list, into a split folder of your own.

    python -m tagi.data.carve --data data/natural-instructions --out configs/sni-t5-base/splits \
        [--split default] [--per-category 1] [--seed 0]

Writes `{train,val,test}_tasks.txt` to `--out`: the test list unchanged, `--per-category` tasks of
every category that has train tasks moved from train to val (a seeded choice, so the same command
writes the same lists). Give the folder to the data modules as `splits_dir`. Lightning-free.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from .sni import read_task, split_names


def carve(root: Path | str, split: str = "default", per_category: int = 1, seed: int = 0) -> dict[str, list[str]]:
    """{train, val, test} names: `per_category` train tasks of each category moved to val."""
    names = split_names(root, split)
    by_category: dict[str, list[str]] = {}
    for name in names["train"]:
        by_category.setdefault(read_task(Path(root) / "tasks" / f"{name}.json", max_instances=1).category, []).append(name)
    rng = random.Random(f"tagi-carve:{seed}")
    val = {name for category in sorted(by_category) for name in rng.sample(by_category[category], min(per_category, len(by_category[category])))}
    return {"train": [n for n in names["train"] if n not in val], "val": [n for n in names["train"] if n in val],
            "test": names["test"]}


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
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    lists = carve(args.data, args.split, args.per_category, args.seed)
    write_lists(args.out, lists, f"{args.data}/splits/{args.split}")
    print(f"wrote {', '.join(f'{len(v)} {k}' for k, v in lists.items())} task names to {args.out}")


if __name__ == "__main__":
    main()
