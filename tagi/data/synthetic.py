"""The embedded task suite: synthetic instruction tasks in the SNI layout, written deterministically.

Every task maps a short list of animal words ("cow fox ape") to an output; all tasks draw inputs
from the same distribution, so one input is valid for every task and has a different answer in
most of them: only the definition says which operation to apply. No instance's answer is its
input, so a model that copies its input scores 0 exact match (the headline metric; ROUGE-L still
rewards reusing the input's words). Families (= SNI categories = clusters): Word Order, Selection,
Case, Deletion, Spelling, Filtering, Counting (with train tasks), Acronyms (validation only) and
Composition (test only). Train / validation / test are disjoint task sets; each of validation and
test holds out:

    unseen combinations   a seen operation with a seen argument, never together in training
                          (positions: pick, upper_at, capitalize_at, drop_at, mirror_at x first,
                          second, last; letters: keep, drop, count, upper_with x a, e, i, o, u)
    unseen phrasings      a trained operation, worded in a phrasing no train task uses
    an unseen category    no train task, so no teacher (as SNI's test categories)

Each operation has five phrasings: three for train tasks (a train cell is one task per phrasing),
one for the unseen-phrasing tasks, and one that is never a definition: the held-out paraphrase
that the instruction controls substitute. Definitions are "Given a list of words, <phrase>."
Sizes suit a tiny T5 on CPU: 3-4 words per input, definitions <= 110 bytes.

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
from functools import partial
from pathlib import Path

VERSION = 3  # part of the cache directory name: a new suite never reuses an old cache
WORDS = ("ant ape bat bee bird bull cat cod cow crab deer dog duck eel elk emu fish fly fox frog goat gnu "
         "gull hen hog ibis jay kiwi lion mink mole moth mule owl pig puma ram rat seal slug swan toad wolf yak").split()
LETTERS = ("a", "e", "i", "o", "u")  # every letter is in at least 7 of the words
MIN_WORDS, MAX_WORDS = 3, 4
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
              "write the words from last to first", "list the words in backward order",
              "turn the word order around", "print the words in reverse sequence"))


def sort() -> Op:
    return Op("sort", sorted, ("sort the words alphabetically", "put the words in alphabetical order",
              "order the words from a to z", "arrange the words in dictionary order", "alphabetize the words"))


def rotate() -> Op:
    return Op("rotate", lambda w: w[1:] + w[:1], ("move the first word to the end",
              "put the first word after all the others", "rotate the words one step to the left",
              "take the first word off the front and append it at the back",
              "shift every word one place left, the first wrapping around to the end"))


def swap_ends() -> Op:
    return Op("swap_ends", lambda w: w[-1:] + w[1:-1] + w[:1], ("swap the first and the last word",
              "exchange the first word with the last word", "let the first and last words trade places",
              "switch the positions of the first and last words", "interchange the opening word and the closing word"))


def upper() -> Op:
    return Op("upper", lambda w: [x.upper() for x in w], ("write every word in capital letters",
              "convert all letters to upper case", "uppercase the whole text", "make every letter a capital",
              "print the text in all caps"))


def capitalize() -> Op:
    return Op("capitalize", lambda w: [x.capitalize() for x in w], ("capitalize the first letter of "
              "each word", "start every word with a capital letter", "write each word in title case",
              "make the initial letter of every word a capital", "give each word an upper case first letter"))


def upper_at(pos: str) -> Op:
    def fn(w: Words) -> Words:
        i = POSITIONS[pos] % len(w)
        return [x.upper() if j == i else x for j, x in enumerate(w)]
    return Op(f"upper_{pos}", fn, (f"write the {pos} word in capital letters",
              f"uppercase only the {pos} word", f"convert the {pos} word to upper case",
              f"make the {pos} word all capitals", f"print the {pos} word in all caps"))


def pick(pos: str) -> Op:
    return Op(f"pick_{pos}", lambda w: [w[POSITIONS[pos]]], (f"return the {pos} word",
              f"output only the {pos} word", f"give just the {pos} word", f"keep nothing but the {pos} word",
              f"answer with the {pos} word alone"))


def _at(pos: str, change: Callable[[str], str]) -> Callable[[Words], Words]:
    def fn(w: Words) -> Words:
        i = POSITIONS[pos] % len(w)
        return [change(x) if j == i else x for j, x in enumerate(w)]
    return fn


def capitalize_at(pos: str) -> Op:
    return Op(f"capitalize_{pos}", _at(pos, str.capitalize), (f"capitalize the first letter of the {pos} word",
              f"start the {pos} word with a capital letter", f"write the {pos} word in title case",
              f"make the initial letter of the {pos} word a capital", f"give the {pos} word an upper case first letter"))


def mirror_at(pos: str) -> Op:
    return Op(f"mirror_{pos}", _at(pos, lambda x: x[::-1]), (f"spell the {pos} word backwards",
              f"reverse the letters inside the {pos} word", f"write the {pos} word mirrored",
              f"write the {pos} word with its letters in reverse", f"flip the letters of the {pos} word"))


def upper_with(letter: str) -> Op:
    return Op(f"upper_{letter}", lambda w: [x.upper() if letter in x else x for x in w], (
        f"write the words that contain the letter {letter} in capital letters",
        f"uppercase only the words with the letter {letter}", f"convert the words that include {letter} to upper case",
        f"make every word containing {letter} all capitals", f"print the words that have {letter} in them in all caps"))


def drop_at(pos: str) -> Op:
    def fn(w: Words) -> Words:
        i = POSITIONS[pos] % len(w)
        return _nonempty([x for j, x in enumerate(w) if j != i])
    return Op(f"drop_{pos}", fn, (f"delete the {pos} word", f"remove the {pos} word",
              f"output all words except the {pos} one", f"leave out the {pos} word",
              f"erase the {pos} word and keep the rest"))


def initials() -> Op:
    return Op("initials", lambda w: ["".join(x[0] for x in w)], ("write the first letter of each word",
              "join the initial letters of the words", "form an acronym from the words",
              "take the first character of every word and join them",
              "spell the word made of the words' first letters"))


def finals() -> Op:
    return Op("finals", lambda w: ["".join(x[-1] for x in w)], ("write the last letter of each word",
              "join the final letters of the words", "collect the last letter of every word",
              "take the last character of every word and join them",
              "spell the word made of the words' final letters"))


def mirror() -> Op:
    return Op("mirror", lambda w: [x[::-1] for x in w], ("spell each word backwards",
              "reverse the letters inside each word", "write every word mirrored",
              "write each word with its letters in reverse", "flip the letters of every word"))


def keep(letter: str) -> Op:
    return Op(f"keep_{letter}", lambda w: _nonempty([x for x in w if letter in x]), (
        f"keep only the words that contain the letter {letter}",
        f"remove every word without the letter {letter}", f"output the words that include {letter}",
        f"select the words containing {letter}", f"filter the list down to words with {letter} in them"))


def drop(letter: str) -> Op:
    return Op(f"drop_{letter}", lambda w: _nonempty([x for x in w if letter not in x]), (
        f"delete every word that contains the letter {letter}",
        f"keep only the words without the letter {letter}",
        f"output the words that do not include {letter}", f"throw away the words that contain {letter}",
        f"filter out any word that has {letter} in it"))


def count_words() -> Op:
    return Op("count", _count, ("count the words", "say how many words there are",
              "give the number of words", "tell how many words are in the list", "report the word count"))


def count_with(letter: str) -> Op:
    return Op(f"count_{letter}", lambda w: _count([x for x in w if letter in x]), (
        f"count the words that contain the letter {letter}", f"say how many words include {letter}",
        f"give the number of words with the letter {letter}", f"tell how many words contain {letter}",
        f"report how many words have {letter} in them"))


# -------------------------------------------------------------------------------------- the suite
TRAIN_PHRASINGS = (0, 1, 2)  # a train cell appears once in each of these
UNSEEN_PHRASING = 3  # only held-out tasks of trained operations use it
PARAPHRASE = 4  # never a task's definition: the held-out paraphrase of the instruction controls
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TaskSpec:
    category: str
    ops: tuple[Op, ...]  # applied left to right
    phrasing: int  # which paraphrase of each op's wording
    split: str = "train"

    @property
    def slug(self) -> str:
        return "_then_".join(op.slug for op in self.ops) + f"_p{self.phrasing}"

    def definition(self, phrasing: int | None = None) -> str:
        p = self.phrasing if phrasing is None else phrasing
        phrases = [op.phrasings[p] for op in self.ops]
        body = phrases[0] if len(phrases) == 1 else f"first {phrases[0]}, then {phrases[1]}"
        return f"Given a list of words, {body}."

    def paraphrase(self) -> str:
        """The same task in words no task of the suite uses (instruction controls)."""
        return self.definition(PARAPHRASE)

    def outputs(self, words: Words) -> list[str]:
        for op in self.ops:
            words = op.fn(words)
        out = " ".join(words)
        # Counting answers also accept the number word (a second reference, as in SNI).
        return [out, NUMBER_WORDS[int(out)]] if out.isdigit() else [out]


def _train_cell(category: str, *ops: Op) -> list[TaskSpec]:
    return [TaskSpec(category, ops, p) for p in TRAIN_PHRASINGS]


def _held_out(split: str, category: str, *ops: Op, phrasing: int) -> list[TaskSpec]:
    return [TaskSpec(category, ops, phrasing, split)]


def suite() -> list[TaskSpec]:
    """93 train, 10 validation and 10 test tasks in 9 categories (order fixes the task numbering).

    Two dense grids carry most tasks, so that an operation and an argument are each seen in
    training with several partners: positions {pick, upper_at, capitalize_at, drop_at, mirror_at}
    x {first, second, last} and letters {keep, drop, count, upper_with} x {a, e, i, o, u}. A train
    cell appears in each train phrasing, so a model must read what the words of a definition mean
    rather than memorise one string per operation. Validation and test hold out the same three
    kinds, disjointly: unseen cells of the grids, a trained operation in an unseen phrasing, and a
    whole category with no train task (as in SNI, where no teacher exists for it): Acronyms for
    validation, Composition (two trained operations in sequence) for test.
    """
    val, test = partial(_held_out, "val"), partial(_held_out, "test")
    held_positions = {("pick", "second"): test, ("mirror_at", "last"): test,
                      ("drop_at", "first"): val, ("capitalize_at", "second"): val}
    held_letters = {("keep", "i"): test, ("drop", "u"): test, ("count_with", "o"): test, ("upper_with", "e"): test,
                    ("keep", "u"): val, ("drop", "e"): val, ("count_with", "a"): val, ("upper_with", "i"): val}
    position_ops = {"pick": ("Selection", pick), "upper_at": ("Case", upper_at), "capitalize_at": ("Case", capitalize_at),
                    "drop_at": ("Deletion", drop_at), "mirror_at": ("Spelling", mirror_at)}
    letter_ops = {"keep": ("Filtering", keep), "drop": ("Filtering", drop), "count_with": ("Counting", count_with),
                  "upper_with": ("Case", upper_with)}
    cells = [*(_train_cell("Word Order", op()) for op in (reverse, sort, rotate, swap_ends)),
             *(_train_cell(category, op()) for category, op in (("Case", upper), ("Case", capitalize),
                                                                ("Spelling", mirror), ("Counting", count_words)))]
    for n, (grid, args, held) in enumerate(((position_ops, POSITIONS, held_positions), (letter_ops, LETTERS, held_letters))):
        for name, (category, make) in grid.items():
            for arg in args:
                split = held.get((name, arg))
                cells.append(_train_cell(category, make(arg)) if split is None else
                             split(category, make(arg), phrasing=len(cells) % len(TRAIN_PHRASINGS)))
    cells += [
        test("Word Order", rotate(), phrasing=UNSEEN_PHRASING), test("Case", upper(), phrasing=UNSEEN_PHRASING),
        val("Word Order", swap_ends(), phrasing=UNSEEN_PHRASING), val("Spelling", mirror(), phrasing=UNSEEN_PHRASING),
        # whole categories without a train task
        test("Composition", reverse(), upper(), phrasing=0), test("Composition", sort(), pick("first"), phrasing=1),
        val("Acronyms", initials(), phrasing=0), val("Acronyms", finals(), phrasing=1),
    ]
    return [spec for specs in cells for spec in specs]


def task_name(i: int, spec: TaskSpec) -> str:
    return f"task{i:03d}_{spec.category.lower().replace(' ', '_')}_{spec.slug}"


def _random_words(rng: random.Random) -> Words:
    return rng.sample(WORDS, rng.randint(MIN_WORDS, MAX_WORDS))


def _distinct_inputs(spec: TaskSpec, rng: random.Random, n: int) -> list[tuple[str, Words]]:
    """`n` different inputs whose answer is not the input itself: copying the input never scores."""
    inputs: dict[str, Words] = {}
    while len(inputs) < n:
        words = _random_words(rng)
        text = " ".join(words)
        if spec.outputs(list(words))[0] != text:
            inputs.setdefault(text, words)
    return list(inputs.items())


def task_json(name: str, spec: TaskSpec, rng: random.Random, num_instances: int,
              num_pos: int = 2) -> dict:
    """One SNI-format task; positive examples are drawn apart from the instances (no leakage).

    `Paraphrases` is this suite's addition to the SNI schema: definitions of the same task in
    other words, for the instruction controls (`tagi.data.controls`); SNI readers ignore it.
    """
    items = _distinct_inputs(spec, rng, num_pos + num_instances)
    pos = [{"input": x, "output": spec.outputs(w)[0], "explanation": ""} for x, w in items[:num_pos]]
    instances = [{"id": f"{name}-{i}", "input": x, "output": spec.outputs(w)}
                 for i, (x, w) in enumerate(items[num_pos:])]
    return {"Categories": [spec.category], "Contributors": [], "Definition": [spec.definition()],
            "Domains": ["Synthetic"], "Input_language": ["English"], "Instances": instances,
            "Instruction_language": ["English"], "Negative Examples": [], "Output_language": ["English"],
            "Paraphrases": [spec.paraphrase()], "Positive Examples": pos, "Reasoning": [],
            "Source": ["tagi-synthetic"], "URL": []}


def _seeded_task_json(name: str, spec: TaskSpec, seed: int, num_instances: int) -> dict:
    rng = random.Random(f"tagi-synthetic:{seed}:{name}")  # str seeds are hashed stably (sha512)
    return task_json(name, spec, rng, num_instances)


def _dump(path: Path, obj) -> None:
    # sorted keys, fixed indent, "\n" line ends, no timestamps: same seed → byte-identical files
    text = json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    path.write_bytes(text.encode("utf-8"))


def write_suite(out_dir: Path | str, seed: int = 0, num_instances: int = 100) -> Path:
    """Write the suite in SNI layout under `out_dir` (tasks/, splits/default/{train,val,test}_tasks.txt, synthetic.json)."""
    out = Path(out_dir)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    (out / "splits" / "default").mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {split: [] for split in SPLITS}
    for i, spec in enumerate(suite(), start=1):
        name = task_name(i, spec)
        _dump(out / "tasks" / f"{name}.json", _seeded_task_json(name, spec, seed, num_instances))
        names[spec.split].append(name)
    for subset, listed in names.items():
        (out / "splits" / "default" / f"{subset}_tasks.txt").write_bytes(("\n".join(listed) + "\n").encode())
    _dump(out / "synthetic.json", {"generator": "tagi.data.synthetic", "version": VERSION, "seed": seed,
                                   "num_instances": num_instances,
                                   **{f"num_{split}": len(listed) for split, listed in names.items()}})
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
        if spec.split != "train":
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
