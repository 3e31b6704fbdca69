"""Reader for task directories in the Super-NaturalInstructions layout.

    <root>/tasks/<task>.json                   Definition, Positive Examples, Instances, Categories, ...
    <root>/splits/<split>/train_tasks.txt       one task name per line (`x`, `./x`, `x.json`: tasks/x.json)
    <root>/splits/<split>/val_tasks.txt         validation tasks (optional file; SNI has none)
    <root>/splits/<split>/test_tasks.txt
    <root>/splits/<split>/excluded_tasks.txt    optional; these tasks are dropped from every list

`splits_dir` replaces `<root>/splits/<split>/` with a folder of the same three lists elsewhere:
that is how a read-only dataset (SNI, ../shared/data/ni-v1) gets validation tasks carved out of
its train list, by a list kept in this repository. The three lists must be disjoint.

The full SNI v2 checkout, `../shared/data/ni-v1` and the synthetic suite (`synthetic.py`) all read
through here. A task's cluster is its first category; `build_clusters` maps categories to ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Literal, get_args

from tagi.errors import TagiError

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("Definition", "Positive Examples", "Instances", "Categories")
OnError = Literal["raise", "skip"]  # a DataModule's `on_error`: the parser refuses anything else, naming both
ON_ERROR = get_args(OnError)
# A task file is read whole (JSON; SNI's hold thousands of instances). Past this many it is said: 10**6 small
# instances took 6 s and 1.5 GB here to use 100 of them.
LARGE_TASK = 100_000
SUBSETS = ("train", "val", "test")


class InvalidTaskError(TagiError, ValueError):
    """A task file (or a split file entry) that cannot be used; the message names file and field."""

    def __init__(self, path: Path | str, field: str, problem: str, fix: str = ""):
        self.path, self.field = str(path), field
        super().__init__(f"{path}: field '{field}': {problem}" + (f" -- {fix}" if fix else ""))


class SplitFileError(TagiError, FileNotFoundError):
    """A split's task list that does not exist (an unknown split name, or not an SNI-layout folder)."""


@dataclass(frozen=True)
class Instance:
    id: str
    input: str
    outputs: list[str]  # every acceptable reference; training uses outputs[0] (or each: `training_targets: all`)
    options: list[str] | None = None  # answer options of a multiple-choice instance (P3 style): rank classification


@dataclass(frozen=True)
class Demonstration:
    input: str
    output: str


@dataclass
class Task:
    name: str
    definition: str
    positive_examples: list[Demonstration]
    instances: list[Instance]
    categories: list[str]
    path: Path
    paraphrases: list[str] = field(default_factory=list)  # other wordings of the definition (optional field)
    instruction: str | None = None  # set by an instruction control: the whole instruction text, verbatim

    @property
    def category(self) -> str:
        """The task cluster (SNI's first category)."""
        return self.categories[0]


# ---------------------------------------------------------------------------------------- fields
def _text(value, path: Path, field: str) -> str:
    """SNI stores strings either bare or as a one-element list (Definition); accept both."""
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = value[0]
    if not isinstance(value, str):
        raise InvalidTaskError(path, field, f"expected a string, got {type(value).__name__}")
    return value


def _definition(raw: dict, path: Path) -> str:
    definition = _text(raw["Definition"], path, "Definition").strip()
    if not definition:
        raise InvalidTaskError(path, "Definition", "is empty", "write the task's instruction there")
    return definition


def _paraphrases(raw: dict, path: Path) -> list[str]:
    """`Paraphrases` (this project's optional addition to the schema): other wordings of the definition."""
    value = raw.get("Paraphrases", [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InvalidTaskError(path, "Paraphrases", "expected a list of non-empty strings")
    return [v.strip() for v in value]


def _demonstrations(raw: dict, path: Path) -> list[Demonstration]:
    examples = raw["Positive Examples"]
    if not isinstance(examples, list):
        raise InvalidTaskError(path, "Positive Examples", "expected a list of {input, output}")
    out = []
    for i, ex in enumerate(examples):
        field = f"Positive Examples[{i}]"
        if not isinstance(ex, dict) or "input" not in ex or "output" not in ex:
            raise InvalidTaskError(path, field, "needs 'input' and 'output'")
        out.append(Demonstration(_text(ex["input"], path, field + ".input").strip(),
                                 _text(ex["output"], path, field + ".output").strip()))
    return out


def _instance(ex, i: int, task_name: str, path: Path) -> Instance:
    field = f"Instances[{i}]"
    if not isinstance(ex, dict):
        raise InvalidTaskError(path, field, "expected an object with 'input' and 'output'")
    for key in ("input", "output"):
        if key not in ex:
            raise InvalidTaskError(path, f"{field}.{key}", "is missing")
    outputs = ex["output"] if isinstance(ex["output"], list) else [ex["output"]]
    if not outputs or not all(isinstance(o, str) for o in outputs):
        raise InvalidTaskError(path, f"{field}.output", "expected a non-empty list of strings")
    text = _text(ex["input"], path, f"{field}.input")
    options = ex.get("options")
    if options is not None and (not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options)):
        raise InvalidTaskError(path, f"{field}.options", "expected a list of at least two answer strings")
    return Instance(str(ex.get("id", f"{task_name}-{i}")), text.strip(), [o.strip() for o in outputs],
                    None if options is None else [o.strip() for o in options])


def _check_ids(instances: list[Instance], path: Path) -> None:
    """predictions.jsonl names each instance by its id: two with one id could not be told apart."""
    first: dict[str, int] = {}
    for i, instance in enumerate(instances):
        if instance.id in first:
            raise InvalidTaskError(path, f"Instances[{i}].id", f"{instance.id!r} is also the id of Instances[{first[instance.id]}]",
                                   "give each instance an id of its own")
        first[instance.id] = i


def _say_empty_references(instances: list[Instance], path: Path) -> None:
    """An empty reference is kept (an empty answer may be right; ni-v1's task044 has one, likely a data error),
    but not silently: an empty prediction matches it exactly."""
    empty = [i for i, instance in enumerate(instances) if "" in instance.outputs]
    if empty:
        log.warning("%s: %d instance(s) with an empty reference, first Instances[%d]: an empty answer matches it exactly; "
                    "kept as written", path, len(empty), empty[0])


def _categories(raw: dict, path: Path) -> list[str]:
    cats = raw["Categories"]
    if isinstance(cats, str):
        cats = [cats]
    if not isinstance(cats, list) or not cats or not all(isinstance(c, str) and c for c in cats):
        raise InvalidTaskError(path, "Categories", "expected a non-empty list of names",
                               "the first category is the task's cluster")
    return cats


def sample_rank(sample_seed: int, task: str, instance_id: str) -> bytes:
    """An instance's place in its task's seeded sampling order (lowest first). A rank per id rather than
    `random.sample` over indices: the first k of the order are a subset of the first k + n, so the teachers,
    which read n more instances to hold out for validation, train on exactly the student's sample."""
    return hashlib.blake2b(f"{sample_seed}:{task}:{instance_id}".encode(), digest_size=8).digest()


def _cap(instances: list, max_instances: int | None, sample_seed: int | None, name: str) -> list:
    """First `max_instances` (SNI test convention) or a seeded sample in file order (train convention)."""
    if max_instances is None or len(instances) <= max_instances:
        return instances
    if sample_seed is None:
        return instances[:max_instances]
    keep = set(sorted(range(len(instances)), key=lambda i: sample_rank(sample_seed, name, instances[i].id))[:max_instances])
    return [instance for i, instance in enumerate(instances) if i in keep]


# ------------------------------------------------------------------------------------------ tasks
def read_task(path: Path | str, max_instances: int | None = None,
              sample_seed: int | None = None) -> Task:
    """Parse one `tasks/<name>.json`; raises `InvalidTaskError` naming the file and field."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InvalidTaskError(path, "<json>", f"malformed JSON at line {e.lineno} column {e.colno}: "
                               f"{e.msg}") from e
    except FileNotFoundError as e:
        raise InvalidTaskError(path, "<file>", "task file does not exist") from e
    except UnicodeDecodeError as e:
        raise InvalidTaskError(path, "<file>", f"not UTF-8 text ({e.reason} at byte {e.start})",
                               "re-save it as UTF-8") from None
    if not isinstance(raw, dict):
        raise InvalidTaskError(path, "<json>", "top level must be an object")
    for field in REQUIRED_FIELDS:
        if field not in raw:
            raise InvalidTaskError(path, field, "required field is missing")
    if not isinstance(raw["Instances"], list) or not raw["Instances"]:
        raise InvalidTaskError(path, "Instances", "task has no instances", "add at least one")
    name = path.stem
    instances = [_instance(ex, i, name, path) for i, ex in enumerate(raw["Instances"])]
    _check_ids(instances, path)
    _say_empty_references(instances, path)
    used = _cap(instances, max_instances, sample_seed, name)
    if len(instances) > LARGE_TASK:
        log.warning("%s: %d instances (%.0f MB) read whole into memory, %d of them used: a task file this large slows "
                    "every data setup and holds its memory; a copy with fewer instances reads faster", path,
                    len(instances), path.stat().st_size / 1e6, len(used))
    return Task(name=name, definition=_definition(raw, path), positive_examples=_demonstrations(raw, path),
                instances=used, categories=_categories(raw, path), path=path, paraphrases=_paraphrases(raw, path))


def _read_names(path: Path) -> list[str]:
    names = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InvalidTaskError(path, "<file>", f"not UTF-8 text ({e.reason} at byte {e.start})", "re-save it as UTF-8") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(_task_name(path, number, line))
    return list(dict.fromkeys(names))  # drop duplicates, keep order


def _task_name(path: Path, number: int, entry: str) -> str:
    """A list entry as the name the reader uses: the file `<root>/tasks/<name>.json` is read, so `./x`,
    `x.json` and `x` are one task (compared as one when the lists are checked for overlap). A path is
    refused: `../x` or `/x` would read a file outside the data folder, `sub/x` one under a name the
    overlap check never sees."""
    name = posixpath.normpath(entry).removesuffix(".json")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise InvalidTaskError(path, f"line {number}", f"{entry!r} is not a task name but a path",
                               "list tasks by their file name in <data_dir>/tasks/ without .json, e.g. "
                               f"{posixpath.basename(name)!r}; a list cannot name a task outside that folder")
    return name


class SplitOverlapError(TagiError, ValueError):
    """A task listed in two of the train / validation / test lists."""


def split_dir(root: Path | str, split: str = "default", splits_dir: str | Path | None = None) -> Path:
    """The folder holding `{train,val,test}_tasks.txt`: `splits_dir` if given, else `<root>/splits/<split>`."""
    return Path(splits_dir) if splits_dir is not None else Path(root) / "splits" / split


def task_names(root: Path | str, split: str = "default", subset: str = "train",
               splits_dir: str | Path | None = None) -> list[str]:
    """Task names listed in `<subset>_tasks.txt` of the split folder, minus `excluded_tasks.txt`.

    A missing `val_tasks.txt` means no validation tasks (SNI ships none); other lists are required.
    """
    folder = split_dir(root, split, splits_dir)
    path = folder / f"{subset}_tasks.txt"
    if not path.is_file():
        if subset == "val":
            return []
        have = sorted(p.name for p in folder.parent.glob("*")) if folder.parent.is_dir() else []
        raise SplitFileError(f"{path}: split file not found (splits present under {folder.parent}: "
                                f"{have or 'none'}); is {root} a Super-NaturalInstructions-layout directory?")
    names = _read_names(path)
    excluded_path = folder / "excluded_tasks.txt"
    if excluded_path.is_file():
        excluded = set(_read_names(excluded_path))
        dropped = [n for n in names if n in excluded]
        if dropped:
            log.warning("%s: dropping %d task(s) listed in %s", path, len(dropped), excluded_path)
        names = [n for n in names if n not in excluded]
    return names


def split_names(root: Path | str, split: str = "default", splits_dir: str | Path | None = None) -> dict[str, list[str]]:
    """{train, val, test} → task names; raises `SplitOverlapError` naming a shared task and both lists."""
    names = {subset: task_names(root, split, subset, splits_dir) for subset in SUBSETS}
    folder = split_dir(root, split, splits_dir)
    for a, b in combinations(SUBSETS, 2):
        shared = [name for name in names[a] if name in set(names[b])]
        if shared:
            raise SplitOverlapError(
                f"{folder / f'{a}_tasks.txt'} and {folder / f'{b}_tasks.txt'}: task {shared[0]!r}"
                f"{f' (and {len(shared) - 1} more)' if len(shared) > 1 else ''} is in both lists; train, "
                "validation and test tasks must be disjoint (a validation task is carved out of the train "
                "list, not added to it): remove it from one of them")
    return names


def load_split(root: Path | str, split: str = "default", subset: str = "train",
               max_instances: int | None = None, on_error: str = "raise",
               sample_seed: int | None = None, splits_dir: str | Path | None = None,
               names: list[str] | None = None) -> list[Task]:
    """Read every task of `<subset>_tasks.txt` (or of `names`), in list order.

    `on_error="skip"` logs a warning (file and field) and leaves the task out instead of raising.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    root = Path(root)
    split_file = split_dir(root, split, splits_dir) / f"{subset}_tasks.txt"
    tasks = []
    for name in task_names(root, split, subset, splits_dir) if names is None else names:
        path = root / "tasks" / f"{name}.json"
        try:
            if not path.is_file():
                raise InvalidTaskError(path, "<file>", f"task listed in {split_file} but the file is absent")
            tasks.append(read_task(path, max_instances, sample_seed))
        except InvalidTaskError as e:
            if on_error == "raise":
                raise
            log.warning("skipping task (on_error='skip'): %s", e)
    if not tasks:
        raise InvalidTaskError(split_file, "<tasks>", "no usable task in this split")
    return tasks


# --------------------------------------------------------------------------------------- clusters
def build_clusters(tasks: list[Task]) -> dict[str, int]:
    """Category name → cluster id, ids in sorted-name order (stable across runs and machines)."""
    return {name: i for i, name in enumerate(sorted({t.category for t in tasks}))}


def save_clusters(path: Path | str, clusters: dict[str, int]) -> None:
    Path(path).write_text(json.dumps(clusters, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def load_clusters(path: Path | str) -> dict[str, int]:
    return {str(k): int(v) for k, v in json.loads(Path(path).read_text(encoding="utf-8")).items()}
