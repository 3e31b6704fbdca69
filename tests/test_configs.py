"""Every shipped config parses: each setting's pipeline YAML, every stage config it names (with the
parts applied before it), and every baseline, through the same parsers `tagi` uses, without building
any model. A misspelt key, a wrong type or a class path that moved fails here, not in a user's run."""

import ast
from pathlib import Path

import pytest
from jsonargparse import ArgumentParser, ActionConfigFile

from helpers import ParseOnly, resolved
from tagi.pipeline import STAGES, _relative_to, run_pipeline
from tagi.training.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SETTINGS = sorted(path.parent.name for path in CONFIGS.glob("*/pipeline.yaml"))


def pipeline_stages(setting: str) -> dict[str, list[str]]:
    parser = ArgumentParser()
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(run_pipeline)
    options = parser.parse_args(["--config", str(CONFIGS / setting / "pipeline.yaml")]).as_dict()
    stages = {stage: _relative_to(CONFIGS / setting, options[stage]) for stage in STAGES if options.get(stage)}
    return {stage: [config] if isinstance(config, str) else config for stage, config in stages.items()}


def shipped_stage_configs() -> list[tuple[str, list[str]]]:
    """(name, config files in order) for every stage of every pipeline and every baseline."""
    cases = []
    for setting in SETTINGS:
        stages = pipeline_stages(setting)
        cases += [(f"{setting}/{stage}", files) for stage, files in stages.items()]
        parts = stages["finetune"][:-1]  # what a pipeline applies before a stage config (none of the shipped ones)
        cases += [(f"{setting}/baselines/{path.stem}", [*parts, str(path)])
                  for path in sorted((CONFIGS / setting / "baselines").glob("*.yaml"))]
    return cases


CASES = shipped_stage_configs()


@pytest.mark.parametrize("files", [files for _, files in CASES], ids=[name for name, _ in CASES])
def test_every_stage_config_parses(files):
    config = run_cli(["fit"] + [arg for path in files for arg in ("--config", path)], cli_class=ParseOnly).config["fit"]
    model, data = config.model, config.data
    assert model.class_path.startswith("tagi.training.") and data.class_path.startswith("tagi.data.modules.")
    assert model.init_args.tokenizer == data.init_args.tokenizer  # linked: set once, in data


def ablation_cases() -> list[tuple[str, list[str]]]:
    """benchmarks/quality.py's variants that apply configs/ablations/*.yaml, on each setting's stage configs."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import quality

    cases = []
    for setting in SETTINGS:
        for name, variant in quality.VARIANTS.items():
            for stage, ablations in ((variant.config, variant.ablations), ("pretrain.yaml", variant.pretrain_ablations or ()),
                                     ("teacher.yaml", variant.teacher_ablations)):
                if ablations and (CONFIGS / setting / stage).is_file():  # sni-t5-base ships no baselines
                    files = [str(CONFIGS / setting / stage), *(str(quality.ABLATIONS / f"{a}.yaml") for a in ablations)]
                    if all(files != known for _, known in cases):  # variants that share an ablation: parsed once
                        cases.append((f"{setting}/{name}/{Path(stage).stem}", files))
    return cases


ABLATION_CASES = ablation_cases()


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_stage_reads_the_instance_within_the_students_budget(setting):
    """The input's budget (`max_input_length`) is the instance prompt's share of every concatenation too: the
    teachers, θ0 and the baselines must give it the student's value, or they train on another cut of the input."""
    def budget(files: list[str]) -> int:
        return resolved(tuple(files))["data"]["init_args"]["max_input_length"]

    student = budget(pipeline_stages(setting)["finetune"])
    stages = {name: files for name, files in CASES if name.startswith(f"{setting}/") and not name.endswith("pretrain")}
    assert {name: budget(files) for name, files in stages.items()} == {name: student for name in stages}


def test_every_ablation_parses_and_changes_what_it_says():
    """Each ablation parses on every stage a variant applies it to; one that changed nothing in any setting
    would report the base run under another name."""
    changed = {Path(files[-1]).stem for _, files in ABLATION_CASES if resolved(tuple(files)) != resolved(tuple(files[:-1]))}
    used = {Path(files[-1]).stem for _, files in ABLATION_CASES}
    assert used == {path.stem for path in (CONFIGS / "ablations").glob("*.yaml")}  # every file is used by a variant
    assert changed == used, f"no-ops in every setting: {sorted(used - changed)}"


def test_every_yaml_under_configs_is_parsed_or_referenced():
    parsed = {Path(path).resolve() for _, files in [*CASES, *ABLATION_CASES] for path in files}
    parsed |= {(CONFIGS / setting / "pipeline.yaml").resolve() for setting in SETTINGS}
    referenced = set()
    for path in parsed:
        for line in path.read_text(encoding="utf-8").splitlines():
            value = line.split("#")[0].split(":", 1)[-1].strip()
            if value.startswith("parts/") and value.endswith(".yaml"):
                referenced.add((path.parent / value).resolve())
    shipped = {path.resolve() for path in CONFIGS.rglob("*.yaml")}
    assert shipped - parsed - referenced == set()


@pytest.mark.parametrize("files", [files for _, files in CASES], ids=[name for name, _ in CASES])
def test_every_stage_config_takes_its_trainer_from_the_settings_part(files):
    """One sharing rule: every stage and baseline file names its setting's parts/trainer.yaml (`config:`), itself or
    through the stage file it builds on (HINT's baselines/hint.yaml names tagi-ce-only.yaml), and sets only its own
    trainer values, as dotted keys; a nested `trainer:` block would silently replace the part."""
    import yaml

    stage_file = Path(files[-1])
    chain = [(stage_file, yaml.safe_load(stage_file.read_text(encoding="utf-8")))]  # the file, then what it names, in turn
    while chain[-1][0].parent.name != "parts":
        named = (chain[-1][0].parent / chain[-1][1].get("config", "<missing>")).resolve()
        chain.append((named, yaml.safe_load(named.read_text(encoding="utf-8"))))
    part = chain[-1][0]
    assert part == (CONFIGS / stage_file.relative_to(CONFIGS).parts[0] / "parts" / "trainer.yaml").resolve()
    for _, keys in chain[:-1]:
        own = [i for i, k in enumerate(keys) if k.startswith("trainer.")]
        assert "trainer" not in keys and list(keys).index("config") < min(own, default=len(keys))
    shared = chain[-1][1]["trainer"]
    trainer = run_cli(["fit", "--config", str(stage_file)], cli_class=ParseOnly).config["fit"].trainer
    for key in ("accelerator", "log_every_n_steps", "num_sanity_val_steps"):
        assert trainer[key] == shared[key], key  # the part reached the run
    assert [c.class_path for c in trainer.callbacks] == [c["class_path"] for c in shared["callbacks"]]
    assert trainer.logger.init_args.save_dir == shared["logger"]["init_args"]["save_dir"]
    # the nearest file that sets it; a test-only baseline (zero-shot) trains no step
    assert trainer.max_steps == next((keys["trainer.max_steps"] for _, keys in chain if "trainer.max_steps" in keys), -1)


def test_a_nested_block_beside_a_named_part_is_refused(tmp_path):
    """jsonargparse applies a block whole: a `trainer:` block in a file that also names parts/trainer.yaml would
    drop one of them without a word. The shipped files pass; a user's file that does it gets the fix."""
    from tagi.errors import ConfigurationError
    from tagi.training.preflight import check_config_files

    check_config_files([files[-1] for _, files in CASES])
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "trainer.yaml").write_text("trainer:\n  accelerator: cpu\n  log_every_n_steps: 10\n")
    mine = tmp_path / "mine.yaml"
    mine.write_text("config: parts/trainer.yaml\ntrainer:\n  max_steps: 50\n")
    with pytest.raises(ConfigurationError, match=r"mine.yaml: its `trainer:` block and the `trainer:` block of "
                                                 r"parts/trainer.yaml .*`trainer.max_steps: ...`"):
        check_config_files([str(mine)])
    mine.write_text("config: parts/trainer.yaml\ntrainer.max_steps: 50\n")
    check_config_files([str(mine)])  # dotted keys add to the part


def test_every_config_field_says_what_it_is(capsys):
    """Each YAML block's dataclass (training/config.py) documents every field, and `--model.help <Class>`
    prints those docstrings under the options."""
    tree = ast.parse((ROOT / "tagi/training/config.py").read_text(encoding="utf-8"))
    documented, undocumented = {}, []
    for block in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        for field, after in zip(block.body, [*block.body[1:], None]):
            if not isinstance(field, ast.AnnAssign):
                continue
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                documented[f"{block.name}.{field.target.id}"] = after.value.value
            else:
                undocumented.append(f"{block.name}.{field.target.id}")
    assert not undocumented, undocumented

    with pytest.raises(SystemExit):
        run_cli(["fit", "--model.help", "FinetuneModule"])
    shown = " ".join(capsys.readouterr().out.split())
    for name in ("Optimization.learning_rate", "Distillation.kl_weight", "Architecture.lora_rank"):
        assert " ".join(documented[name].split()) in shown, name
