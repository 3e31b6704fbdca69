"""The dependency rules of docs/ARCHITECTURE.md, checked on the code itself."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tagi"
LIGHTNING_FREE = ["tagi.modeling", "tagi.eval", "tagi.inference", "tagi.io", "tagi.errors", "tagi.provenance",
                  "tagi.cli", "tagi.data", "tagi.fetch"]
LIGHTNING_USERS = {"tagi.data.modules"}  # the LightningDataModules: the one Lightning import outside training/


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_tagi_modules(path: Path) -> set[str]:
    """Every tagi module `path` imports, at the top or inside a function (a late import is still a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module_name(path).split(".")
                package = package if path.name == "__init__.py" else package[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in MODULES}
    return found


GRAPH = {name: imported_tagi_modules(path) for name, path in MODULES.items()}


@pytest.mark.parametrize("package", LIGHTNING_FREE)
def test_method_eval_and_inference_never_load_lightning(package):
    """Each module imported alone, in a fresh interpreter: `tagi adapter` and `Student` run without Lightning."""
    members = [name for name in MODULES if (name == package or name.startswith(package + ".")) and name not in LIGHTNING_USERS]
    code = ("import importlib, sys\n"
            f"for name in {members!r}: importlib.import_module(name)\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
            "assert not loaded, loaded[:5]\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_import_cycle():
    """Depth-first search over the import graph; a back edge is a cycle (printed as the path)."""
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for child in sorted(GRAPH[name]):
            if child == name or child.startswith(name + "."):
                continue  # a package importing its own submodules (its __init__) is not a cycle
            assert state.get(child) != "open", " → ".join([*path, name, child])
            if child not in state:
                visit(child, [*path, name])
        state[name] = "done"

    for name in GRAPH:
        if name not in state:
            visit(name, [])


def test_only_the_command_line_imports_training():
    allowed = {"tagi.cli", "tagi.pipeline"}
    outside = {name: sorted(d for d in deps if d.startswith("tagi.training")) for name, deps in GRAPH.items()
               if not name.startswith("tagi.training") and name not in allowed}
    assert not {name: deps for name, deps in outside.items() if deps}


# Calls that write files (or ask something else to): the file, folder, PEFT, checkpoint and logger writers.
FILE_WRITERS = {"write_results", "PredictionWriter", "atomic_write_text", "atomic_directory", "save_pretrained",
                "save_adapter", "save_file", "write_text", "write_bytes", "open", "save", "dump", "mkdir", "touch",
                "copy", "copyfile", "copytree", "replace", "rename", "unlink", "rmtree", "save_checkpoint",
                "log_hyperparams", "export"}


def writing_functions(path: Path) -> dict[str, set[str]]:
    """Every function of a module (methods and nested ones included) that calls a file writer → those calls."""
    found = {}
    for function in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            calls = {call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
                     for call in ast.walk(function) if isinstance(call, ast.Call)}
            if calls & FILE_WRITERS:
                found[function.name] = calls & FILE_WRITERS
    return found


def test_no_artifact_is_written_from_a_stage_hook():
    """The stages compute; the callbacks in training/callbacks.py write results, predictions, metrics.csv
    and the completion marker. The one writer in a stage file is its `export` (θ0's and the teachers'
    folder formats), which only the `ExportArtifacts` callback calls: no hook or step writes, or calls it."""
    for stage in ("stage", "theta0", "teacher", "pretrain", "finetune"):
        writers = writing_functions(PACKAGE / "training" / f"{stage}.py")
        assert set(writers) <= {"export"}, f"training/{stage}.py writes outside export: {writers}"
    # The walk sees the writes that are there: the two exports, and the callbacks.
    assert writing_functions(PACKAGE / "training" / "theta0.py")["export"] >= {"atomic_directory", "save_pretrained", "write_text"}
    assert writing_functions(PACKAGE / "training" / "teacher.py")["export"] == {"save_adapter"}
    assert writing_functions(PACKAGE / "training" / "callbacks.py")


def test_every_stage_is_one_subclass_of_the_flat_base():
    """One level of inheritance: a stage file holds that stage's own steps; what they share is `Stage`
    or a composed object (`Evaluation`, `StudentRunner`), not an intermediate class."""
    from tagi.training.finetune import FinetuneModule
    from tagi.training.pretrain import PretrainModule
    from tagi.training.stage import Stage
    from tagi.training.teacher import TeacherModule
    from tagi.training.theta0 import Theta0Module

    for module in (Theta0Module, TeacherModule, PretrainModule, FinetuneModule):
        assert module.__bases__ == (Stage,), f"{module.__name__} derives from {module.__bases__}"


def test_every_name_the_benchmarks_import_from_tagi_exists():
    """Benchmarks import lazily, inside the functions a child process runs, so a moved name would only
    fail minutes into a measurement: check each `from tagi... import name` statically."""
    import importlib

    missing = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tagi":
                module = importlib.import_module(node.module)
                missing += [f"{path.name}:{node.lineno} {node.module}.{alias.name}" for alias in node.names
                            if not hasattr(module, alias.name) and f"{node.module}.{alias.name}" not in MODULES]
    assert not missing, missing
