"""Test-task quality of TAGI, its baselines and ablations, each seed rerunning the whole chain.

    python benchmarks/quality.py --setting demo --seeds 0 1 2 [--variants tagi concat ...] [--share-theta0]

Per seed, every stage a variant depends on is trained with that seed (θ0 when the setting has a
stage 0, unless --share-theta0 reuses the pipeline's; the teachers; the stage-2 checkpoint), under
runs/quality/<setting>/seed<N>/. Every variant is a config of the framework (finetune.yaml or
baselines/*.yaml, then the configs/ablations/*.yaml it names), trained the same number of steps, then tested on the test
tasks: with the real instructions and, for every variant that reads instructions, with each
instruction control. Finished runs and tests are reused on rerun and a killed run resumes from its
last checkpoint, so the command can be repeated until everything is there.

Writes docs/results/quality-<setting>.{json,md,png}: mean ± std over seeds, the last validation
score of every run (validation tasks; defaults are chosen there), the controls, and paired
differences (each method against instruction concatenation, each ablation against TAGI) with a
95% two-level bootstrap interval over seeds and test examples (`tagi.eval.results.paired_bootstrap`).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tagi.errors import Terminated  # noqa: E402
from tagi.io import atomic_write_text  # noqa: E402
from tagi.pipeline import (CONTROL_ROWS, HEADLINE, RECIPE, THETA0, control_args, fit_stage, recipe,  # noqa: E402
                           score_checkpoint)
from tagi.eval.reports import RESULTS_JSON  # noqa: E402
from tagi.eval.results import METRIC_NAMES, git_commit, paired_bootstrap, per_example, render_block  # noqa: E402

ABLATIONS = ROOT / "configs" / "ablations"  # one change each, applied after a stage config: --config <stage> --config <ablation>


@dataclass(frozen=True)
class Variant:
    config: str  # relative to configs/<setting>/
    label: str
    ablations: tuple[str, ...] = ()  # configs/ablations/<name>.yaml applied after `config`, in order
    needs: tuple[str, ...] = ()  # upstream stages: "teacher", "pretrain" (θ0 always)
    reads_instructions: bool = True
    pretrain_ablations: tuple[str, ...] | None = None  # its own stage 2 (another architecture), these applied to pretrain.yaml
    teacher_ablations: tuple[str, ...] = ()  # its own teachers, these applied to teacher.yaml
    pretrain_config: str = "pretrain.yaml"  # its stage 2's config, relative to configs/<setting>/ (HINT has its own)
    reference: str | None = None  # paired difference against this variant
    trains: bool = True  # False: the pretrained model as it is, tested without a checkpoint (one run for every seed)


TAGI = ("teacher", "pretrain")
HINT = dict(config="baselines/hint.yaml", needs=("pretrain",), pretrain_config="baselines/hint-pretrain.yaml")  # its own stage 2
VARIANTS: dict[str, Variant] = {
    "no-instruction": Variant("baselines/no-instruction.yaml", "θ0 finetuned on inputs alone", reads_instructions=False,
                              reference="concat"),
    "concat": Variant("baselines/concat.yaml", "θ0 finetuned, instruction concatenated (Tk-Instruct)"),
    # Called `hint` until HINT itself was built: TAGI's network (fusion, FiD, frozen θ0) trained with CE alone.
    "tagi-ce-only": Variant("baselines/tagi-ce-only.yaml", "TAGI's network, CE only (no KL, no parameter loss)",
                            needs=("pretrain",), reference="tagi"),
    # HINT: no encoder fusion, FiD, the underlying model trained with the hypernetwork, in its own stage 2 too.
    "hint": Variant(label="HINT: hypernetwork + underlying model trained, FiD, CE", reference="concat", **HINT),
    "tagi": Variant("finetune.yaml", "TAGI: CE + KL + parameter loss", needs=TAGI, reference="concat"),
    "tagi-no-kl": Variant("finetune.yaml", "TAGI without KL", ("no-kl",), TAGI, reference="tagi"),
    "tagi-no-param": Variant("finetune.yaml", "TAGI without parameter loss", ("no-param",), TAGI, reference="tagi"),
    "tagi-ab": Variant("finetune.yaml", "TAGI, `ab` parameter loss", ("param-ab",), TAGI, reference="tagi"),
    "tagi-hart": Variant("finetune.yaml", "TAGI, HART's autoregressive generator", ("hart",), TAGI,
                         pretrain_ablations=("hart",), reference="tagi"),
    "tagi-hart-cst": Variant("finetune.yaml", "TAGI, HART generator + consistency loss (λ 0.1)", ("hart", "consistency"), TAGI,
                             pretrain_ablations=("hart",), reference="tagi-hart"),
    "tagi-bare": Variant("finetune.yaml", "TAGI, student reads the bare input (no instance template)", ("bare-input",), TAGI,
                         reference="tagi"),
    # The official code's setup: the student also reads the definition, so it is not instruction-free.
    "tagi-concat-input": Variant("finetune.yaml", "TAGI, student also reads the instruction (official code's setup)",
                                 ("concat-input",), TAGI, reference="concat"),
    # Tuning candidates, compared on the validation tasks (`--out docs/results/tuning`).
    "tagi-lr3e-3": Variant("finetune.yaml", "TAGI, learning rate 3e-3", ("lr3e-3",), TAGI, reference="tagi"),
    "tagi-lr1e-2": Variant("finetune.yaml", "TAGI, learning rate 1e-2", ("lr1e-2",), TAGI, reference="tagi"),
    "tagi-ce-only-lr1e-3": Variant("baselines/tagi-ce-only.yaml", "TAGI CE only, learning rate 1e-3", ("lr1e-3",),
                                   ("pretrain",), reference="tagi-ce-only"),
    **{f"hint-lr{rate}": Variant(label=f"HINT, learning rate {rate}", ablations=(f"lr{rate}",), reference="hint", **HINT)
       for rate in ("1e-4", "3e-4", "3e-3")},
    "tagi-wd": Variant("finetune.yaml", "TAGI, weight decay 0.01", ("weight-decay",), TAGI, reference="tagi"),
    # The paper's choices that are options here (README, "Differences from the paper"), compared with the
    # default on the validation tasks: all references as targets, weight decay on weight matrices only (against
    # `tagi-wd`, which decays everything), HyperTuning's 4-way split with b drawn or fixed at 32 tokens,
    # Tk-Instruct's template in every stage (teachers included).
    "tagi-all-targets": Variant("finetune.yaml", "TAGI, every reference a training target", ("all-targets",), TAGI,
                                reference="tagi"),
    "tagi-wd-matrices": Variant("finetune.yaml", "TAGI, weight decay 0.01 on weight matrices only",
                                ("weight-decay", "decay-matrices"), TAGI, reference="tagi-wd"),
    "tagi-4way": Variant("finetune.yaml", "TAGI, stage 2 on the 4-way split", (), TAGI, pretrain_ablations=("four-way",),
                         reference="tagi"),
    "tagi-4way-b32": Variant("finetune.yaml", "TAGI, stage 2 on the 4-way split, b fixed at 32 tokens", (), TAGI,
                             pretrain_ablations=("four-way", "b32"), reference="tagi-4way"),
    "tagi-tk-template": Variant("finetune.yaml", "TAGI, Tk-Instruct's template in every stage", ("tk-template",), TAGI,
                                pretrain_ablations=("tk-template",), teacher_ablations=("tk-template",), reference="tagi"),
    "tagi-h256": Variant("finetune.yaml", "TAGI, generator hidden 256", ("hidden256",), TAGI, pretrain_ablations=("hidden256",),
                         reference="tagi"),
    "tagi-ln": Variant("finetune.yaml", "TAGI, backbone layer norms trained (official code)", ("layer-norms",), TAGI,
                       pretrain_ablations=("layer-norms",), reference="tagi"),
    "tagi-no-pretrain": Variant("finetune.yaml", "TAGI without stage 2", ("no-pretrain",), ("teacher",), reference="tagi"),
    # The instruction reaches the model only through the generated LoRA; its stage 2 is pretrained with the same
    # architecture (same seed, same steps).
    "tagi-no-fusion": Variant("finetune.yaml", "TAGI without fusion and FiD (LoRA only)", ("no-fusion",), TAGI,
                              pretrain_ablations=("no-fusion",), reference="tagi"),
    # Decoder-only settings: the instruct model reading the instruction in its prompt, nothing trained.
    "zero-shot": Variant("baselines/zero-shot.yaml", "zero-shot: the instruct model, instruction in its prompt, nothing trained",
                         trains=False),
}
BASELINES = ["no-instruction", "concat", "hint", "tagi-ce-only", "tagi"]
# a hypernetwork should at least beat ignoring the instruction; TAGI against the baseline it builds on
EXTRA_PAIRS = [("hint", "no-instruction"), ("tagi-ce-only", "no-instruction"), ("tagi", "no-instruction"),
               ("tagi", "hint"), ("tagi", "zero-shot")]
# The metric a setting's table leads with (and its intervals and controls use). Exact match where a model
# that copies its input cannot score (the demo suite) or where the table was first written with it (ni-v1);
# ROUGE-L on NI's free-text answers from a pretrained instruct model, which are right in other words more
# often than word for word.
HEADLINES = {"smollm2-ni-v1": "rougeL"}


def headline(setting: str) -> str:
    return HEADLINES.get(setting, HEADLINE)


RETRAIN = "delete the folder to retrain it with the current one"
SHARED_THETA0 = ("retrain it with the current one (`python -m tagi pipeline --config configs/{setting}/pipeline.yaml "
                 "--force=true`), or leave out --share-theta0 to train a θ0 per seed")


def check_recipe(run: Path, wanted: dict, fix: str = RETRAIN) -> None:
    """A run folder is reused (or resumed) only for the recipe it was trained with: a folder left by
    other configs or overrides is an error naming what differs, not a silently reused result."""
    path = run / RECIPE
    if not path.is_file():
        if (run / "checkpoints").is_dir():
            print(f"warning: {run} has no {RECIPE} (trained by hand, or before recipes were recorded); reused as it is",
                  file=sys.stderr)
        return
    saved = read_recipe(path)
    if saved != wanted:
        changed = sorted({*saved["configs"].items()} ^ {*wanted["configs"].items()})
        args = sorted(set(saved["args"]) ^ set(wanted["args"]))
        raise SystemExit(f"error: {run} was trained from another recipe (configs that differ: {[c for c, _ in changed]}; "
                         f"overrides that differ: {args}); {fix}")


def read_recipe(path: Path) -> dict:
    """A run's recorded recipe; a damaged one (an edit, a copy cut short) is one error line, not a traceback."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        saved = error
    if not isinstance(saved, dict) or not isinstance(saved.get("configs"), dict) or not isinstance(saved.get("args"), list):
        why = saved if isinstance(saved, Exception) else "no configs and args"
        raise SystemExit(f"error: {path}: not a recipe this script wrote ({why}); delete the run folder {path.parent} to "
                         "retrain it, or write the recipe back")
    return saved


class Ledger:
    """Seconds spent per run and test folder, and the commits that made it, kept beside the runs: a run resumed
    over several sessions adds its parts (the total CPU time reported), and a reused one keeps the time it took
    and the commit it was made at (a table made of runs from several commits says so)."""

    def __init__(self, path: Path, commit: str = "unknown"):
        self.path, self.commits_path, self.commit = path, path.with_name("commits.json"), commit
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
        self.commits: dict[str, list[str]] = json.loads(self.commits_path.read_text()) if self.commits_path.is_file() else {}
        self.used: set[str] = set()  # the runs and tests this table is made of (the file holds every run of the setting)

    def add(self, key: str, seconds: float | None) -> None:
        self.used.add(key)
        if seconds is None:
            return
        self.seconds[key] = round(self.seconds.get(key, 0.0) + seconds, 1)
        atomic_write_text(self.path, json.dumps(self.seconds, indent=1, sort_keys=True) + "\n")
        made_at = self.commits.setdefault(key, [])  # a run resumed at a later commit has both
        if self.commit not in made_at:
            made_at.append(self.commit)
            atomic_write_text(self.commits_path, json.dumps(self.commits, indent=1, sort_keys=True) + "\n")

    def fit(self, folder: Path, stage: str, configs: list[str], extra: list[str]) -> dict:
        wanted = recipe(configs, extra)
        check_recipe(folder / stage, wanted)
        done = fit_stage(stage, configs, folder, extra, force=False)  # it writes the recipe of a run it trained
        self.add(str(folder / stage), done.get("seconds"))
        return done

    def total(self) -> float:
        return round(sum(self.seconds.get(key, 0.0) for key in self.used), 1)

    def made_at(self) -> dict[str, int]:
        """How many of this table's runs and tests each commit made ("+"-joined for a run resumed across
        commits; "not recorded" for one made before this ledger kept commits)."""
        def short(commit: str) -> str:
            return commit[:10] + ("-dirty" if commit.endswith("-dirty") else "")

        counts = Counter("+".join(map(short, self.commits.get(key, []))) or "not recorded" for key in self.used)
        return dict(sorted(counts.items()))


def changed_since(commits: list[str], root: Path = ROOT,
                  paths: tuple[str, ...] = ("tagi", "configs", "benchmarks/quality.py")) -> dict[str, int]:
    """For each earlier commit a table's runs were made at: how many files under `paths` differ from the
    checkout now (0: the runs are what the current code would make, up to nondeterminism)."""
    import subprocess

    out = {}
    for commit in commits:
        sha = commit.removesuffix("-dirty")
        diff = subprocess.run(["git", "diff", "--name-only", sha, "--", *paths], cwd=root, capture_output=True, text=True)
        if diff.returncode == 0:
            out[commit] = len(diff.stdout.split())
    return out


@dataclass
class Chain:
    """One seed's upstream artifacts, trained on first use."""

    setting: str
    seed: int
    folder: Path
    theta0: Path
    ledger: Ledger
    shared_theta0: bool = False
    built: dict[str, str] = field(default_factory=dict)

    def config(self, name: str, ablations: tuple[str, ...] = ()) -> list[str]:
        """configs/<setting>/<name>, then each ablation file."""
        return [str(ROOT / "configs" / self.setting / name), *(str(ABLATIONS / f"{a}.yaml") for a in ablations)]

    def seed_args(self) -> list[str]:
        return [f"--seed_everything={self.seed}", f"--data.init_args.seed={self.seed}"]

    def base_args(self) -> list[str]:
        theta0 = self.ensure_theta0()
        return [*self.seed_args(), *([] if theta0 is None else [f"--model.init_args.backbone.name={theta0}"])]

    def ensure_theta0(self) -> Path | None:
        """θ0's folder; None where the setting has no stage 0 (θ0 is the pretrained model its configs name)."""
        if not (ROOT / "configs" / self.setting / "theta0.yaml").is_file():
            return None
        if self.shared_theta0:  # the pipeline's: reused as it is, but only if its stage config is the current one
            if "theta0" not in self.built:
                wanted = recipe(self.config("theta0.yaml"), [f"--model.init_args.output_dir={self.theta0}"])
                check_recipe(self.theta0.parent, wanted, SHARED_THETA0.format(setting=self.setting))
                self.built["theta0"] = str(self.theta0)
            return self.theta0
        if "theta0" not in self.built:  # a finished θ0 too goes through the ledger: reused only for this recipe
            self.ledger.fit(self.folder, "theta0", self.config("theta0.yaml"),
                            [*self.seed_args(), f"--model.init_args.backbone.seed={self.seed}",
                             f"--model.init_args.output_dir={self.theta0}"])
            self.built["theta0"] = str(self.theta0)
        return self.theta0

    def teachers(self, ablations: tuple[str, ...] = ()) -> str:
        key = "-".join(("teacher", *ablations))  # teacher, teacher-tk-template
        if key not in self.built:
            out = self.folder / key.replace("teacher", "teachers", 1)
            self.ledger.fit(self.folder, key, self.config("teacher.yaml", ablations),
                            [*self.base_args(), f"--model.init_args.output_dir={out}"])
            self.built[key] = str(out)
        return self.built[key]

    def pretrain(self, ablations: tuple[str, ...] | None = None, config: str = "pretrain.yaml") -> str:
        key = "-".join((Path(config).stem, *(ablations or ())))  # pretrain, pretrain-hart, hint-pretrain
        if key not in self.built:
            done = self.ledger.fit(self.folder, key, self.config(config, ablations or ()), self.base_args())
            self.built[key] = done["last_checkpoint"]
        return self.built[key]


def variant_args(chain: Chain, variant: Variant) -> list[str]:
    args = chain.base_args()
    if "pretrain" in variant.needs:
        args.append(f"--model.init_args.init_from={chain.pretrain(variant.pretrain_ablations, variant.pretrain_config)}")
    if "teacher" in variant.needs:
        args.append(f"--model.init_args.teachers={chain.teachers(variant.teacher_ablations)}")
    return args


def test_once(chain: Chain, config: list[str], checkpoint: str | None, args: list[str], name: str,
              folder: Path | None = None) -> Path:
    """Test `checkpoint` into <folder>/name unless that test of this checkpoint is there already (written after
    it: a run retrained into its folder, after its recipe changed, has a checkpoint of the same name). No
    checkpoint: the pretrained model itself, reused while the test's recipe is the same."""
    folder = folder or chain.folder
    results, wanted = folder / name / RESULTS_JSON, recipe(config, args)
    if checkpoint is None:
        done = results.is_file() and (folder / name / RECIPE).is_file() and read_recipe(folder / name / RECIPE) == wanted
    else:
        done = (results.is_file() and json.loads(results.read_text())["checkpoint"] == checkpoint
                and results.stat().st_mtime_ns > Path(checkpoint).stat().st_mtime_ns)
    seconds = None
    if not done:
        start = time.perf_counter()
        score_checkpoint(config, folder, checkpoint, args, name)
        seconds = time.perf_counter() - start
        atomic_write_text(folder / name / RECIPE, json.dumps(wanted, indent=1, sort_keys=True) + "\n")
    chain.ledger.add(str(folder / name), seconds)
    return folder / name


def run_variant(chain: Chain, name: str, controls: list[str]) -> dict:
    """Train (or reuse) one variant for one seed; test it with the real instructions and each control."""
    variant = VARIANTS[name]
    config, args = chain.config(variant.config, variant.ablations), variant_args(chain, variant)
    if variant.trains:
        checkpoint, folder = chain.ledger.fit(chain.folder, name, config, args)["last_checkpoint"], chain.folder
    else:  # nothing trained: one test for every seed, beside the seeds' folders
        checkpoint, folder, args = None, chain.folder.parent, [arg for arg in args if arg not in chain.seed_args()]
    tests = {"real": test_once(chain, config, checkpoint, args, f"{name}-test", folder)}
    for control in controls if variant.reads_instructions else []:
        tests[control] = test_once(chain, config, checkpoint, [*args, *control_args(control)], f"{name}-test-{control}", folder)
    overall = {c: json.loads((path / RESULTS_JSON).read_text())["overall"] for c, path in tests.items()}
    return {"test": {m: overall["real"][m] for m in ("rougeL", "exact_match")},
            "controls": {c: s[headline(chain.setting)] for c, s in overall.items()},
            # a variant that trains nothing has no validation run (it is chosen by nothing)
            "validation": last_validation(chain.folder / name / "metrics.csv") if variant.trains else None,
            "predictions": str(tests["real"] / "predictions.jsonl")}


def last_validation(metrics_csv: Path) -> dict[str, float]:
    """The run's last logged validation scores (on the validation tasks)."""
    last = {}
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get(f"val/{HEADLINE}"):
                last = {m: float(row[f"val/{m}"]) for m in ("rougeL", "exact_match")}
    return last


def summary(raw: dict[str, dict[int, dict]], setting: str, seconds: float, commit: str | None = None) -> dict:
    """The docs/results/quality-<setting>.json document (schema: tagi.eval.results)."""
    variants, validation = {}, {}
    for name, runs in raw.items():
        per_seed = {str(seed): run["test"] for seed, run in runs.items()}
        variants[name] = {"label": VARIANTS[name].label, "per_seed": per_seed, **_mean_std(list(per_seed.values()))}
        if VARIANTS[name].reads_instructions:
            controls = [run["controls"] for run in runs.values()]
            variants[name]["controls"] = {c: round(statistics.mean(r[c] for r in controls), 2) for c in controls[0]}
        if all(run["validation"] for run in runs.values()):
            validation[name] = {"mean": _mean_std([run["validation"] for run in runs.values()])["mean"]}
    data = {"setting": setting, "commit": commit or git_commit(), "metric": headline(setting), "split": "test",
            "seconds": seconds, "variants": variants, "validation": validation, "paired": paired(raw, headline(setting))}
    return {**data, "checks": checks(data)}


def checks(data: dict) -> dict[str, str]:
    """Generated sentences on what the suite must show: ignoring the instruction is not enough."""
    variants, validation = data["variants"], data["validation"]
    if not {"no-instruction", "concat"} <= variants.keys() & validation.keys():
        return {}
    ratio = {split: _ratio(scores["no-instruction"]["mean"][HEADLINE], scores["concat"]["mean"][HEADLINE])
             for split, scores in (("validation", validation), ("test", variants))}
    return {"no-instruction / concat, mean exact match": ", ".join(f"{split} {r}" for split, r in ratio.items())
            + " (the suite asks for at most 0.33)"}


def _ratio(part: float, whole: float) -> str:
    return f"{part / whole:.2f}" if whole > 0 else "undefined (concat scores 0)"


def _mean_std(scores: list[dict[str, float]]) -> dict:
    metrics = ("rougeL", "exact_match")
    return {"mean": {m: round(statistics.mean(s[m] for s in scores), 2) for m in metrics},
            "std": {m: round(statistics.stdev(s[m] for s in scores), 2) if len(scores) > 1 else 0.0 for m in metrics}}


def paired(raw: dict[str, dict[int, dict]], metric: str) -> dict:
    pairs = [(name, VARIANTS[name].reference) for name in raw if VARIANTS[name].reference in raw] + \
            [pair for pair in EXTRA_PAIRS if pair[0] in raw and pair[1] in raw]
    scores = {name: {str(seed): per_example(run["predictions"]) for seed, run in runs.items()} for name, runs in raw.items()}
    out = {}
    for name, reference in pairs:
        seeds = sorted(set(scores[name]) & set(scores[reference]))
        out[f"{name} - {reference}"] = paired_bootstrap({s: scores[name][s] for s in seeds},
                                                        {s: scores[reference][s] for s in seeds}, metric)
    return out


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(data["variants"])
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.6))
    metric = data["metric"]
    means = [data["variants"][n]["mean"][metric] for n in names]
    stds = [data["variants"][n]["std"][metric] for n in names]
    ax.bar(names, means, yerr=stds, capsize=4, color="#4c72b0")
    ax.set_ylabel(f"test {METRIC_NAMES[metric][1]} (%)")
    seeds = len(next(iter(data["variants"].values()))["per_seed"])
    ax.set_title(f"{data['setting']}: test tasks, mean ± std over {seeds} whole-chain seed(s)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def unshipped(setting: str, name: str) -> list[str]:
    """The config files variant `name` needs that configs/<setting>/ lacks."""
    variant = VARIANTS[name]
    needed = [variant.config, *([variant.pretrain_config] if "pretrain" in variant.needs else [])]
    return [config for config in needed if not (ROOT / "configs" / setting / config).is_file()]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help=f"default: those of {' '.join(BASELINES)} whose configs the setting ships")
    parser.add_argument("--controls", nargs="*", default=list(CONTROL_ROWS), choices=list(CONTROL_ROWS),
                        help="instruction controls to test every instruction-reading variant with (NI/SNI: no paraphrase)")
    parser.add_argument("--share-theta0", action="store_true",
                        help="reuse the pipeline's θ0 (checkpoints/<setting>/theta0/model) instead of training one per seed")
    parser.add_argument("--runs-dir", default="runs/quality")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    args = parser.parse_args(argv)
    args.variants = args.variants or [name for name in BASELINES if not unshipped(args.setting, name)]
    for name in args.variants:
        if unshipped(args.setting, name):
            shipped = [other for other in VARIANTS if not unshipped(args.setting, other)]
            parser.error(f"--variants {name}: configs/{args.setting}/ has no {', '.join(unshipped(args.setting, name))} "
                         f"(this setting's variants: {' '.join(shipped) or 'none'})")
    raw = {name: {} for name in args.variants}
    commit = git_commit()  # what the runs of this invocation train with; runs reused from earlier ones are not re-checked
    ledger = Ledger(Path(args.runs_dir) / args.setting / "seconds.json", commit)
    for seed in args.seeds:
        folder = Path(args.runs_dir) / args.setting / f"seed{seed}"
        theta0 = Path("checkpoints") / args.setting / THETA0 if args.share_theta0 else folder / THETA0
        chain = Chain(args.setting, seed, folder, theta0, ledger, args.share_theta0)
        for name in args.variants:
            raw[name][seed] = run_variant(chain, name, args.controls)
    data = {**summary(raw, args.setting, ledger.total(), commit), "made_at": ledger.made_at()}
    stale = {c: n for c, n in changed_since([c for key in ledger.used for c in ledger.commits.get(key, [])
                                            if c != commit]).items() if n}
    for old, count in stale.items():
        print(f"warning: some runs of this table were made at {old[:10]}; {count} file(s) of tagi/, configs/ or this "
              f"script differ since (`git diff --stat {old.removesuffix('-dirty')[:10]} -- tagi configs`); delete a run's "
              "folder to remake it with the current code", file=sys.stderr)
    if git_commit() != commit:
        print(f"warning: the checkout changed during the run ({commit} → {git_commit()}); the results name {commit}",
              file=sys.stderr)
    out = Path(args.out)
    atomic_write_text(out / f"quality-{args.setting}.json", json.dumps(data, indent=2) + "\n")
    text = render_block(f"quality-{args.setting}", data)
    atomic_write_text(out / f"quality-{args.setting}.md", text + "\n")
    plot(data, out / f"quality-{args.setting}.png")
    print(text)
    return data


def run(argv: list[str] | None = None) -> int:
    """`main`, with a run stopped by SIGTERM or Ctrl-C said as this script's own: how to resume it, and the
    exit status a shell expects (143, 130), not a traceback that names `tagi pipeline`."""
    try:
        main(argv)
    except Terminated as stopped:
        print(f"stopped: {stopped.stopped}; rerun the same quality.py command: finished runs and tests are reused "
              "and a stopped run resumes from its last checkpoint", file=sys.stderr)
        return stopped.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(run())
