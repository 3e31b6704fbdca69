"""The embedded task suite: synthetic instruction tasks in the SNI layout, written deterministically.

Every task maps a short list of animal words ("cow fox ape") to an output; all tasks draw inputs
from the same distribution, so only the definition says which operation to apply. Families
(= SNI categories = clusters): Word Order, Case, Selection, Spelling, Filtering, Counting,
Composition. Held-out test tasks are unseen *combinations* of seen parts:

    position ops {pick, upper_at, drop_at} x {first, second, last}   3 of 9 cells held out
    letter ops   {keep, drop, count_with}  x {a, e, o}               3 of 9 cells held out
    compositions {reverse, sort, mirror}   x {upper, initials, pick first}   3 of 9 held out

so each held-out task's operation and argument both appear in training, never together. Each
operation has three paraphrased phrasings; a train cell is a task per phrasing (84 train tasks),
a held-out cell one task (9 test tasks); definitions are "Given a list of words, <phrase>."
Sizes suit a tiny T5 on CPU: inputs <= 24 bytes, definitions <= 120 bytes.

    python -m tagi.data.synthetic --out DIR [--seed N] [--num-instances N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

VERSION = 2  # part of the cache directory name: a new suite never reuses an old cache
WORDS = ("ant ape bat bee cat cod cow crab deer dog duck eel elk emu fish fly fox frog goat gnu "
         "hen hog jay lion mole moth owl pig ram rat seal slug swan toad wolf yak").split()
MIN_WORDS, MAX_WORDS = 3, 5
POSITIONS = {"first": 0, "second": 1, "last": -1}
NUMBER_WORDS = "zero one two three four five six".split()

Words = list[str]


# ------------------------------------------------------------------------------------ operations
@dataclass(frozen=True)
class Op:
    slug: str
    fn: Callable[[Words], Words]  # word list → word list; the last op's result is joined by spaces
    phrasings: tuple[str, ...]


def _nonempty(words: Words) -> Words:
    return words or ["none"]


def _count(words: Words) -> Words:
    return [str(len(words))]


def reverse() -> Op:
    return Op("reverse", lambda w: w[::-1], ("reverse the order of the words",
              "write the words from last to first", "list the words in backward order"))


def sort() -> Op:
    return Op("sort", sorted, ("sort the words alphabetically", "put the words in alphabetical order",
              "order the words from a to z"))


def rotate() -> Op:
    return Op("rotate", lambda w: w[1:] + w[:1], ("move the first word to the end",
              "put the first word after all the others", "rotate the words one step to the left"))


def swap_ends() -> Op:
    return Op("swap_ends", lambda w: w[-1:] + w[1:-1] + w[:1], ("swap the first and the last word",
              "exchange the first word with the last word", "let the first and last words trade places"))


def upper() -> Op:
    return Op("upper", lambda w: [x.upper() for x in w], ("write every word in capital letters",
              "convert all letters to upper case", "uppercase the whole text"))


def capitalize() -> Op:
    return Op("capitalize", lambda w: [x.capitalize() for x in w], ("capitalize the first letter of "
              "each word", "start every word with a capital letter", "write each word in title case"))


def upper_at(pos: str) -> Op:
    def fn(w: Words) -> Words:
        i = POSITIONS[pos] % len(w)
        return [x.upper() if j == i else x for j, x in enumerate(w)]
    return Op(f"upper_{pos}", fn, (f"write the {pos} word in capital letters",
              f"uppercase only the {pos} word", f"convert the {pos} word to upper case"))


def pick(pos: str) -> Op:
    return Op(f"pick_{pos}", lambda w: [w[POSITIONS[pos]]], (f"return the {pos} word",
              f"output only the {pos} word", f"give just the {pos} word"))


def drop_at(pos: str) -> Op:
    def fn(w: Words) -> Words:
        i = POSITIONS[pos] % len(w)
        return _nonempty([x for j, x in enumerate(w) if j != i])
    return Op(f"drop_{pos}", fn, (f"delete the {pos} word", f"remove the {pos} word",
              f"output all words except the {pos} one"))


def initials() -> Op:
    return Op("initials", lambda w: ["".join(x[0] for x in w)], ("write the first letter of each word",
              "join the initial letters of the words", "form an acronym from the words"))


def finals() -> Op:
    return Op("finals", lambda w: ["".join(x[-1] for x in w)], ("write the last letter of each word",
              "join the final letters of the words", "collect the last letter of every word"))


def mirror() -> Op:
    return Op("mirror", lambda w: [x[::-1] for x in w], ("spell each word backwards",
              "reverse the letters inside each word", "write every word mirrored"))


def keep(letter: str) -> Op:
    return Op(f"keep_{letter}", lambda w: _nonempty([x for x in w if letter in x]), (
        f"keep only the words that contain the letter {letter}",
        f"remove every word without the letter {letter}", f"output the words that include {letter}"))


def drop(letter: str) -> Op:
    return Op(f"drop_{letter}", lambda w: _nonempty([x for x in w if letter not in x]), (
        f"delete every word that contains the letter {letter}",
        f"keep only the words without the letter {letter}",
        f"output the words that do not include {letter}"))


def count_words() -> Op:
    return Op("count", _count, ("count the words", "say how many words there are",
              "give the number of words"))


def count_with(letter: str) -> Op:
    return Op(f"count_{letter}", lambda w: _count([x for x in w if letter in x]), (
        f"count the words that contain the letter {letter}", f"say how many words include {letter}",
        f"give the number of words with the letter {letter}"))


# -------------------------------------------------------------------------------------- the suite
@dataclass(frozen=True)
class TaskSpec:
    category: str
    ops: tuple[Op, ...]  # applied left to right
    phrasing: int  # which paraphrase of each op's wording
    test: bool = False

    @property
    def slug(self) -> str:
        return "_then_".join(op.slug for op in self.ops) + f"_p{self.phrasing}"

    def definition(self) -> str:
        phrases = [op.phrasings[self.phrasing % len(op.phrasings)] for op in self.ops]
        body = phrases[0] if len(phrases) == 1 else f"first {phrases[0]}, then {phrases[1]}"
        return f"Given a list of words, {body}."

    def outputs(self, words: Words) -> list[str]:
        for op in self.ops:
            words = op.fn(words)
        out = " ".join(words)
        # Counting answers also accept the number word (a second reference, as in SNI).
        return [out, NUMBER_WORDS[int(out)]] if out.isdigit() else [out]


def suite() -> list[TaskSpec]:
    """84 train + 9 held-out test tasks in 7 categories (order fixes the task numbering).

    A train cell (operation, argument) appears once per phrasing, so a model must read what the
    words of a definition mean rather than memorise 1 string per operation; a held-out cell
    appears in one phrasing only, and never in training.
    """
    def cell(category: str, *ops: Op, held_out_phrasing: int | None = None) -> list[TaskSpec]:
        if held_out_phrasing is not None:
            return [TaskSpec(category, ops, held_out_phrasing, test=True)]
        return [TaskSpec(category, ops, p) for p in range(len(ops[0].phrasings))]

    cells = [
        *(cell("Word Order", op()) for op in (reverse, sort, rotate, swap_ends)),
        cell("Case", upper()), cell("Case", capitalize()),
        cell("Case", upper_at("first")), cell("Case", upper_at("second")), cell("Case", upper_at("last"), held_out_phrasing=2),
        cell("Selection", pick("first")), cell("Selection", pick("last")), cell("Selection", pick("second"), held_out_phrasing=1),
        *(cell("Spelling", op()) for op in (initials, finals, mirror)),
        cell("Filtering", keep("a")), cell("Filtering", keep("e")), cell("Filtering", keep("o"), held_out_phrasing=2),
        cell("Filtering", drop("e")), cell("Filtering", drop("o")), cell("Filtering", drop("a"), held_out_phrasing=1),
        cell("Filtering", drop_at("second")), cell("Filtering", drop_at("last")),
        cell("Filtering", drop_at("first"), held_out_phrasing=2),
        cell("Counting", count_words()), cell("Counting", count_with("a")), cell("Counting", count_with("o")),
        cell("Counting", count_with("e"), held_out_phrasing=2),
        cell("Composition", reverse(), upper()), cell("Composition", reverse(), pick("first")),
        cell("Composition", sort(), upper()), cell("Composition", sort(), initials()),
        cell("Composition", mirror(), initials()), cell("Composition", mirror(), pick("first")),
        cell("Composition", reverse(), initials(), held_out_phrasing=1),
        cell("Composition", sort(), pick("first"), held_out_phrasing=0),
        cell("Composition", mirror(), upper(), held_out_phrasing=2),
    ]
    return [spec for specs in cells for spec in specs]


def task_name(i: int, spec: TaskSpec) -> str:
    return f"task{i:03d}_{spec.category.lower().replace(' ', '_')}_{spec.slug}"


def _random_words(rng: random.Random) -> Words:
    return rng.sample(WORDS, rng.randint(MIN_WORDS, MAX_WORDS))


def task_json(name: str, spec: TaskSpec, rng: random.Random, num_instances: int,
              num_pos: int = 2) -> dict:
    """One SNI-format task; positive examples are drawn apart from the instances (no leakage)."""
    inputs: dict[str, Words] = {}
    while len(inputs) < num_pos + num_instances:
        words = _random_words(rng)
        inputs.setdefault(" ".join(words), words)
    items = list(inputs.items())
    pos = [{"input": x, "output": spec.outputs(w)[0], "explanation": ""} for x, w in items[:num_pos]]
    instances = [{"id": f"{name}-{i}", "input": x, "output": spec.outputs(w)}
                 for i, (x, w) in enumerate(items[num_pos:])]
    return {"Categories": [spec.category], "Contributors": [], "Definition": [spec.definition()],
            "Domains": ["Synthetic"], "Input_language": ["English"], "Instances": instances,
            "Instruction_language": ["English"], "Negative Examples": [], "Output_language": ["English"],
            "Positive Examples": pos, "Reasoning": [], "Source": ["tagi-synthetic"], "URL": []}


def _seeded_task_json(name: str, spec: TaskSpec, seed: int, num_instances: int) -> dict:
    rng = random.Random(f"tagi-synthetic:{seed}:{name}")  # str seeds are hashed stably (sha512)
    return task_json(name, spec, rng, num_instances)


def _dump(path: Path, obj) -> None:
    # sorted keys, fixed indent, "\n" line ends, no timestamps: same seed → byte-identical files
    text = json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    path.write_bytes(text.encode("utf-8"))


def write_suite(out_dir: Path | str, seed: int = 0, num_instances: int = 100) -> Path:
    """Write the suite in SNI layout under `out_dir` (tasks/, splits/default/, synthetic.json)."""
    out = Path(out_dir)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    (out / "splits" / "default").mkdir(parents=True, exist_ok=True)
    names = {"train": [], "test": []}
    for i, spec in enumerate(suite(), start=1):
        name = task_name(i, spec)
        _dump(out / "tasks" / f"{name}.json", _seeded_task_json(name, spec, seed, num_instances))
        names["test" if spec.test else "train"].append(name)
    for subset, listed in names.items():
        (out / "splits" / "default" / f"{subset}_tasks.txt").write_bytes(("\n".join(listed) + "\n").encode())
    _dump(out / "synthetic.json", {"generator": "tagi.data.synthetic", "version": VERSION, "seed": seed,
                                   "num_instances": num_instances, "num_train": len(names["train"]),
                                   "num_test": len(names["test"])})
    return out


def ensure_suite(out_dir: Path | str, seed: int = 0, num_instances: int = 100) -> Path:
    """Generate the suite into `out_dir` unless a complete one is there (written aside, then renamed)."""
    out = Path(out_dir)
    if (out / "synthetic.json").is_file():
        return out
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_suite(tmp, seed, num_instances)
    try:
        tmp.rename(out)  # atomic: a crash never leaves a half-written suite at `out`
    except OSError:
        if not (out / "synthetic.json").is_file():  # not a concurrent writer that won the race
            raise
        shutil.rmtree(tmp)
    return out


def train_texts(seed: int = 0, num_instances: int = 100) -> list[str]:
    """Every definition, input and output of the TRAIN tasks, as written to disk (tokenizer corpus)."""
    texts = []
    for i, spec in enumerate(suite(), start=1):
        if spec.test:
            continue
        task = _seeded_task_json(task_name(i, spec), spec, seed, num_instances)
        texts += task["Definition"]
        for example in task["Positive Examples"] + task["Instances"]:
            texts += [example["input"], *([example["output"]] if isinstance(example["output"], str) else example["output"])]
    return texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the embedded synthetic task suite (SNI layout).")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-instances", type=int, default=100, help="instances per task")
    args = parser.parse_args(argv)
    out = write_suite(args.out, args.seed, args.num_instances)
    print(f"wrote {len(suite())} tasks to {out}")


if __name__ == "__main__":
    main()


def ensure_corpus(suite_dir: Path | str, out_file: Path | str, docs_per_task: int = 10) -> Path:
    """C4-schema JSONL text from the suite's TRAIN tasks, so the demo's pretraining needs no data.

    Each document is a definition followed by worked examples ("bat cow -> cow bat. ..."); held-out
    tasks never appear. Written aside, then renamed, like the suite itself.
    """
    from .sni import load_split  # local import: sni imports nothing from here, keep it that way

    out = Path(out_file)
    if out.is_file():
        return out
    lines = []
    for task in load_split(suite_dir, subset="train"):
        for start in range(0, min(len(task.instances), 10 * docs_per_task), 10):
            pairs = " ".join(f"{i.input} -> {i.outputs[0]}." for i in task.instances[start : start + 10])
            lines.append(json.dumps({"text": f"{task.definition} {pairs}", "url": task.name}, sort_keys=True))
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(out)
    return out
