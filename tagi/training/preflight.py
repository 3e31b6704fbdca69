"""Checks on a parsed `python -m tagi` config, run before any class is built or anything is written.

Each failure raises a `TagiError` that names the option, says what is wrong and how to fix it.
Checks that need the built model and data (teacher bank vs student, cluster coverage) live in the
stages' `prepare`, which the CLI calls before `trainer.fit` starts writing. Lightning-free.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tempfile
from pathlib import Path

import torch

from tagi.modeling.backbone import TINY, TINY_T5
from tagi.errors import ConfigurationError, InputError
from tagi.io import COMPLETE_NAME, consolidate_zero_folder, is_zero_folder

SYNTHETIC = "synthetic"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "t5-base", "google/t5-base-lm-adapt"
CKPT_ALIASES = {"last", "best", "hpc", "registry"}
EVAL_SUBCOMMANDS = ("validate", "test", "predict")


def check_config(config: dict) -> None:
    """`config`: one subcommand's config as a plain dict (trainer / model / data / ckpt_path)."""
    check_strategy(config.get("trainer") or {})
    check_logger(config.get("trainer") or {})
    model = (config.get("model") or {}).get("init_args") or {}
    data = (config.get("data") or {}).get("init_args") or {}
    check_backbone((model.get("backbone") or {}).get("name"))
    for key in ("data_dir", "eval_data_dir"):
        check_data_dir(f"data.init_args.{key}", data.get(key))
    check_splits(data)
    check_counts(data)
    check_writable("trainer.logger.init_args.save_dir", logger_args(config.get("trainer") or {}).get("save_dir"))
    check_writable("model.init_args.output_dir", model.get("output_dir"))
    if "source" in data:
        check_source(data["source"])
    check_model_values(model)
    if model.get("init_from"):
        check_checkpoint("model.init_args.init_from", model["init_from"], "the stage-2 (pretrain) checkpoint")
    ckpt_path = config.get("ckpt_path")
    if ckpt_path and ckpt_path not in CKPT_ALIASES and "://" not in str(ckpt_path):
        check_checkpoint("--ckpt_path", ckpt_path, "a checkpoint of this stage, or `last` to resume the latest")


def check_config_files(paths: list[str]) -> None:
    """A config file that names another with `config:` (a setting's parts/trainer.yaml) and also sets one of
    its blocks as a nested mapping: jsonargparse applies each block whole, so one of the two would be
    silently dropped. Its own values must be dotted keys (`trainer.max_steps: 300`)."""
    for path in map(Path, paths):
        keys = _yaml_mapping(path)
        for part in [keys["config"]] if isinstance(keys.get("config"), str) else keys.get("config") or []:
            shared = _yaml_mapping(path.parent / part)
            clashes = [key for key, value in keys.items() if isinstance(value, dict) and key in shared]
            if clashes:
                key = clashes[0]
                raise ConfigurationError(
                    f"{path}: its `{key}:` block and the `{key}:` block of {part} (named by its `config:` key) would not "
                    f"be merged: one replaces the other whole. Set this file's own values as dotted keys, e.g. "
                    f"`{key}.{next(iter(keys[key]), 'max_steps')}: ...`, as the shipped stage configs do")


def _yaml_mapping(path: Path) -> dict:
    return read_config_file(path) if path.is_file() else {}  # a missing part: jsonargparse names it itself


def check_config_arguments(argv: list[str]) -> None:
    """Every YAML file `--config` names, and every one those name in turn (`config: parts/trainer.yaml`,
    `backbone: parts/theta0.yaml`, a pipeline's stage files), read before jsonargparse reads them: it reports
    an empty one as "Unexpected config: " and a YAML error "in <unicode string>", neither naming the file."""
    values = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    values += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    pending, seen = [Path(value) for value in values if Path(value).is_file()], set()  # else inline YAML, or jsonargparse's "does not exist"
    while pending:
        path = pending.pop()
        if path.resolve() not in seen:
            seen.add(path.resolve())
            pending += [path.parent / name for name in yaml_strings(read_config_file(path)) if name.endswith((".yaml", ".yml"))
                        and (path.parent / name).is_file()]


def yaml_strings(tree) -> list[str]:
    """Every string value in a loaded YAML tree (where a config names other files)."""
    if isinstance(tree, str):
        return [tree]
    values = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list) else []
    return [string for value in values for string in yaml_strings(value)]


def read_config_file(path: Path) -> dict:
    """A config file's mapping; a file that is not one (not UTF-8, not YAML, empty, a list) is an `InputError`."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); re-save it as UTF-8") from None
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InputError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', None) or error} (nothing was written)") from None
    if not isinstance(loaded, dict):
        what = "is empty (or only comments)" if loaded is None else f"holds a {type(loaded).__name__}"
        raise InputError(f"{path}: the file {what}; a config file holds options as `key: value` lines, such as "
                         "configs/demo/pretrain.yaml (nothing was written)")
    return loaded


def check_checkpoint(option: str, value: str, what: str) -> None:
    """A checkpoint file, or the folder DeepSpeed writes for one (it holds a `latest` file)."""
    path = Path(value)
    if path.is_dir() and not (path / "latest").is_file():
        raise InputError(f"{option}: {value} is a folder but not a DeepSpeed checkpoint (no `latest` file in it); "
                         f"point it at {what}")
    if not path.is_dir():
        check_file(option, value, what)


def check_model_values(model: dict) -> None:
    """Values no run can use: a LoRA rank or alpha ≤ 0 (a division by zero later), a learning rate ≤ 0
    or a negative weight decay (AdamW refuses them after everything is built)."""
    values = {f"model.init_args.{key}": model.get(key) for key in ("lora_rank", "lora_alpha")}
    architecture = model.get("architecture") if isinstance(model.get("architecture"), dict) else {}
    values |= {f"model.init_args.architecture.{key}": architecture.get(key) for key in ("lora_rank", "lora_alpha")}
    optimization = model.get("optimization") if isinstance(model.get("optimization"), dict) else {}
    values["model.init_args.optimization.learning_rate"] = optimization.get("learning_rate")
    for option, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            raise InputError(f"{option}: {value}; it must be positive")
    decay = optimization.get("weight_decay")
    if isinstance(decay, (int, float)) and decay < 0:
        raise InputError(f"model.init_args.optimization.weight_decay: {decay}; it must be 0 or more")


def check_lora_rank(model: dict) -> None:
    """A fit's LoRA rank above the width of the q/v projections it adapts: B·A has rank at most min(in, out), so
    the rest only adds weights and compute. (Checked for fit only: a checkpoint trained so still evaluates.)"""
    architecture = model.get("architecture") if isinstance(model.get("architecture"), dict) else {}
    ranks = {"model.init_args.lora_rank": model.get("lora_rank"), "model.init_args.architecture.lora_rank": architecture.get("lora_rank")}
    shape = _projection_shape(model.get("backbone") if isinstance(model.get("backbone"), dict) else {})
    for option, rank in ranks.items():
        if shape is not None and isinstance(rank, int) and rank > min(shape):
            raise ConfigurationError(
                f"{option}: {rank} is above the width of θ0's q/v projections ({shape[0]} → {shape[1]}): a LoRA update "
                f"has rank at most {min(shape)}, so a larger one only adds weights and compute. Give at most {min(shape)} "
                "(the teachers' rank and the hypernetwork's must be equal; nothing was written)")


def _projection_shape(backbone: dict) -> tuple[int, int] | None:
    """(in, narrowest out) of θ0's q/v projections, from its config (None: a hub id, not read here). A T5's are
    d_model → num_heads · d_kv; a Llama's v_proj writes num_key_value_heads · head_dim (grouped-query attention)."""
    name = backbone.get("name") or TINY_T5
    if name in TINY:
        config = TINY[name][0](**(backbone.get("tiny_config") or {})).to_dict()
    elif (Path(name) / "config.json").is_file():
        try:
            config = json.loads((Path(name) / "config.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # loading the backbone reports it, naming the file
    else:
        return None
    if all(isinstance(config.get(key), int) for key in ("d_model", "num_heads", "d_kv")):
        return config["d_model"], config["num_heads"] * config["d_kv"]
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if not (isinstance(hidden, int) and isinstance(heads, int)):
        return None
    head_dim = config.get("head_dim") or hidden // heads
    return hidden, min(heads, config.get("num_key_value_heads") or heads) * head_dim


COUNTS = {"batch_size": 1, "eval_batch_size": 1, "tasks_per_batch": 1, "num_pos": 0,
          "num_workers": 0, "max_instruction_length": 1, "max_input_length": 1, "max_target_length": 1,
          "max_val_instances_per_task": 1, "max_test_instances_per_task": 1}  # least value (None: no cap)


def check_counts(data: dict) -> None:
    for key, least in COUNTS.items():
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < least:
            raise InputError(f"data.init_args.{key}: {value}; it must be at least {least}")


# Why strategies that shard the weights themselves (ZeRO-3, FSDP) are refused
SHARDED_WEIGHTS = ("each rank keeps only a shard of each weight outside the module's own forward, and this model reads "
                   "and changes the q/v weights outside it (a task's LoRA merged for inference, the instruction's per-task "
                   "values, the gradient-share diagnostic's extra backward).")
CPU_DEEPSPEED = "CPUDeepSpeedStrategy"  # tagi.training.strategies: DeepSpeed without CUDA, for tests and CPU users


def check_strategy(trainer: dict) -> None:
    strategy, accelerator = str(trainer.get("strategy", "auto")), str(trainer.get("accelerator", "auto"))
    if isinstance(trainer.get("strategy"), str) and "." in strategy:
        raise ConfigurationError(
            f"trainer.strategy: {strategy!r} is read as a strategy's registered name, not a class; give a name "
            "(auto, ddp, deepspeed_stage_2, deepspeed_cpu, ...) or the class as "
            f"--trainer.strategy.class_path={strategy}")
    if zero_stage(trainer.get("strategy")) == 3:
        raise ConfigurationError(f"trainer.strategy: DeepSpeed ZeRO stage 3 is not supported: {SHARDED_WEIGHTS} Use stage 2 "
                                 "(sharded optimizer state and gradients): --trainer.strategy.stage=2")
    chosen = trainer.get("strategy")
    label = str(chosen.get("class_path")) if isinstance(chosen, dict) else strategy
    if "fsdp" in label.lower() or "ModelParallelStrategy" in label:
        raise ConfigurationError(f"trainer.strategy: {label} shards the weights and is not supported: {SHARDED_WEIGHTS} "
                                 "Use --trainer.strategy=ddp (a whole model per process), or DeepSpeed ZeRO stage 2 for "
                                 "sharded optimizer state and gradients (--trainer.strategy=deepspeed_stage_2 on GPUs).")
    if torch.cuda.is_available():
        return
    if "deepspeed" in strategy.lower() and CPU_DEEPSPEED not in strategy and not strategy.startswith("deepspeed_cpu"):
        raise ConfigurationError(
            f"trainer.strategy: Lightning's DeepSpeed ({strategy}) runs only on CUDA GPUs and this machine has none. "
            "On CPU use --trainer.strategy=auto (one process), --trainer.strategy=ddp with "
            "--trainer.accelerator=cpu --trainer.devices=N (gloo), or DeepSpeed on CPU processes: "
            "--trainer.strategy=deepspeed_cpu --trainer.accelerator=cpu --trainer.devices=N.")
    if accelerator in ("gpu", "cuda"):
        raise ConfigurationError(
            f"trainer.accelerator: {accelerator!r} but this machine has no CUDA GPU; use --trainer.accelerator=cpu "
            "(and --trainer.precision=32-true: bf16 mixed precision is a GPU setting).")


def check_logger(trainer: dict) -> None:
    """The logger's folder is the run folder. Without one, Lightning writes last.ckpt, config.yaml,
    complete.json and test results into the current folder: no lock, no finished-run check, and the
    next run replaces them."""
    if trainer.get("logger") is False:
        raise ConfigurationError(
            "trainer.logger: false leaves the run without a run folder: its checkpoints, config.yaml, complete.json "
            "and results would land in the current folder, where the next run replaces them. Keep the config's "
            "logger, and choose the folder with --trainer.logger.init_args.save_dir and .name (nothing was written)")


def check_backbone(name: str | None) -> None:
    """A local folder must exist; anything else must look like a hub id."""
    if name is None or name in TINY or Path(name).is_dir():
        return
    if Path(name).exists() or not HUB_ID.match(name) or name.startswith((".", "/", "~")) or _offline_and_uncached(name):
        raise InputError(
            f"model.init_args.backbone.name: {name} is not a folder with a saved model (config.json + weights). "
            "Give the folder stage 0 wrote (checkpoints/<run>/theta0/model; run the pipeline's theta0 stage first), "
            "a Hugging Face hub id such as google/t5-base-lm-adapt (with HF_HUB_OFFLINE set, one already in the local "
            "cache), or `tiny`.")


def _offline_and_uncached(hub_id: str) -> bool:
    """With HF_HUB_OFFLINE set, a hub id loads only from the local cache."""
    if os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false"):
        return False
    from huggingface_hub import try_to_load_from_cache

    return not isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def check_data_dir(option: str, value: str | None) -> None:
    if value in (None, SYNTHETIC):
        return
    root = Path(value)
    if not root.is_dir():
        raise InputError(f"{option}: {value} is not a directory. Give a folder in the Super-NaturalInstructions "
                         "layout (splits/<split>/{train,test}_tasks.txt and tasks/<name>.json), or `synthetic`.")
    if not (root / "splits").is_dir() or not (root / "tasks").is_dir():
        raise InputError(f"{option}: {value} has no splits/ and tasks/ folders; it must be in the "
                         "Super-NaturalInstructions layout (splits/<split>/{train,test}_tasks.txt, tasks/<name>.json).")


def check_splits(data: dict) -> None:
    """`splits_dir` must be a folder, and the train / validation / test lists must be disjoint."""
    from tagi.data.sni import split_names  # the reader's own check, run before anything is built

    splits_dir = data.get("splits_dir")
    if splits_dir is not None and not Path(splits_dir).is_dir():
        raise InputError(f"data.init_args.splits_dir: {splits_dir} is not a directory. Give a folder with "
                         "train_tasks.txt, val_tasks.txt and test_tasks.txt (configs/ni-v1/splits is an example); "
                         "`python -m tagi.data.carve --data <SNI-layout folder> --out <folder>` writes one, with "
                         "one train task per category moved to validation.")
    for key, split_key in (("data_dir", "split"), ("eval_data_dir", "eval_split")):
        root = data.get(key)
        if root not in (None, SYNTHETIC) or splits_dir is not None:
            try:
                split_names(root or ".", data.get(split_key) or "default", splits_dir)
            except FileNotFoundError as e:
                raise InputError(f"data.init_args.{'splits_dir' if splits_dir else split_key}: {e}") from e


def check_source(source: str) -> None:
    """The pretraining corpus: `synthetic`, `hf:<repo>/<config>`, or local JSONL/text files."""
    if source == SYNTHETIC or source.startswith("hf:"):
        return
    if not (Path(source).exists() or glob.glob(source)):
        raise InputError(f"data.init_args.source: {source} matches no file or folder. Give C4-style JSONL "
                         "(a file, folder or glob of .jsonl/.json/.txt[.gz]), hf:allenai/c4/en, or `synthetic`.")


def check_file(option: str, value: str, what: str) -> None:
    if not Path(value).is_file():
        raise InputError(f"{option}: {value} is not a file; point it at {what}.")


def logger_args(trainer: dict) -> dict:
    """The (first) configured logger's init_args; {} without one."""
    logger = trainer.get("logger")
    logger = logger[0] if isinstance(logger, list) and logger else logger
    return (logger.get("init_args") or {}) if isinstance(logger, dict) else {}


def logger_dir(trainer: dict) -> Path | None:
    """The folder the configured logger writes to (save_dir/name/version), where the config fixes it."""
    args = logger_args(trainer)
    if args.get("save_dir") is None or args.get("version") is None:
        return None  # no logger, or Lightning numbers a fresh version_N folder
    name, version = args.get("name", "lightning_logs"), args["version"]
    root = Path(args["save_dir"]) / name if name else Path(args["save_dir"])
    return root / (f"version_{version}" if isinstance(version, int) else str(version))


def is_training_run(folder: Path) -> bool:
    return (folder / COMPLETE_NAME).is_file() or (folder / "checkpoints").is_dir()


def scores_pretrained_backbone(model: dict) -> bool:
    """A `Theta0Module` that trains nothing of its own on a pretrained backbone: its untrained state is the pretrained
    model itself, which `test` may score without a checkpoint (the zero-shot baseline of a decoder-only setting)."""
    init = model.get("init_args") or {}
    backbone = init.get("backbone") if isinstance(init.get("backbone"), dict) else {}
    return (str(model.get("class_path", "")).endswith("Theta0Module") and init.get("lora_rank") is None
            and (backbone.get("name") or TINY_T5) not in TINY)


def eval_checkpoint(subcommand: str, config: dict) -> str | None:
    """The checkpoint `validate` / `test` / `predict` evaluates: required (a model is never scored
    untrained), and `last` resolved to the training run's file, which must exist."""
    path, run = config.get("ckpt_path"), logger_dir(config.get("trainer") or {})
    example = (run / "checkpoints" / "last.ckpt") if run else "checkpoints/<run>/<stage>/checkpoints/last.ckpt"
    if not path and scores_pretrained_backbone(config.get("model") or {}):
        return None  # zero-shot: θ0 as it was pretrained
    if not path:
        raise ConfigurationError(f"--ckpt_path: `{subcommand}` needs the checkpoint to evaluate (without one it would "
                                 f"score a model that was never trained); give e.g. --ckpt_path {example}. Only a "
                                 "Theta0Module on a pretrained backbone (a folder or hub id, no lora_rank) is scored "
                                 "without one: the zero-shot baseline")
    if path == "last":
        return last_checkpoint(run, "give the checkpoint file to evaluate (e.g. the training run's checkpoints/last.ckpt)")
    if path in CKPT_ALIASES:
        raise ConfigurationError(f"--ckpt_path {path}: `{subcommand}` resolves only `last`; give the checkpoint file")
    return str(path)


def check_fit_target(config: dict) -> None:
    """A fresh fit must not replace a finished run or an artifact that later stages read (θ0, the teachers,
    a pretrain run's last.ckpt); `--overwrite=true` allows it, `--ckpt_path` continues the run, except a
    finished one whose artifact later stages read: continued, it would change under them. (A killed run's
    folder may be restarted: that is what a user does after fixing the cause.)"""
    trainer = config.get("trainer") or {}
    for key in ("max_steps", "max_epochs"):
        if trainer.get(key) == 0:
            raise ConfigurationError(f"trainer.{key}: 0 trains nothing (the stage would be marked finished with no "
                                     "checkpoint); give a positive number, or leave it unset")
    run, out = logger_dir(trainer), output_dir(config)
    finished = run is not None and (run / COMPLETE_NAME).is_file()
    exported = bool(out) and Path(out).is_dir() and any(Path(out).iterdir())
    handed_on = _handed_on(run, out, exported) if finished else None
    if config.get("overwrite"):
        return
    if _continues(config.get("ckpt_path"), run):
        if exported:  # a finished pretrain run: `check_continued_pretrain`, once the checkpoint's stage is known
            _refuse_continuing(run, handed_on, exported)
        return
    choose = "give another --trainer.logger.init_args.name, or --overwrite=true to replace it (nothing was written)"
    if finished:
        resume = f"--ckpt_path last --overwrite=true ({handed_on})" if handed_on else "--ckpt_path last"
        raise ConfigurationError(f"trainer.logger: {run} holds a finished run ({COMPLETE_NAME}); this fit would replace "
                                 f"its checkpoints and metrics.csv; continue it with {resume}, or {choose}")
    if exported:
        raise ConfigurationError(f"model.init_args.output_dir: {out} already holds an exported artifact that later "
                                 "stages read; give another output_dir, or --overwrite=true to replace it (nothing was written)")


def check_continued_pretrain(config: dict, stage: str) -> None:
    """`--ckpt_path` continuing a finished pretrain run replaces the last.ckpt finetune runs warm-started from.
    Called once the checkpoint is known to be this stage's (the CLI's `_check_ckpt_path`): a finetune config
    pointed at a pretrain run's folder is told that, not this."""
    run = logger_dir(config.get("trainer") or {})
    if stage != "pretrain" or config.get("overwrite") or not _continues(config.get("ckpt_path"), run) \
            or not (run / COMPLETE_NAME).is_file():
        return
    handed_on = _handed_on(run, None, exported=False)
    if handed_on:
        _refuse_continuing(run, handed_on, exported=False)


def _refuse_continuing(run: Path, handed_on: str, exported: bool) -> None:
    raise ConfigurationError(f"--ckpt_path: {run} holds a finished run; {handed_on}; add --overwrite=true to "
                             f"continue it anyway, or {_elsewhere(run, exported)} (nothing was written)")


def _elsewhere(run: Path, exported: bool) -> str:
    if exported:
        return "train a new run into another output_dir"
    return (f"continue it as a new run, which leaves this one as it is: another --trainer.logger.init_args.name and "
            f"--ckpt_path {run / 'checkpoints' / 'last.ckpt'}")


def _handed_on(run: Path, out: str | None, exported: bool) -> str | None:
    """Why continuing this finished run would change what later stages were trained on (None: it would not).
    θ0 and the teachers export output_dir at the end; a pretrain run exports nothing, but its last.ckpt is
    what finetune warm-starts from (`init_from`; the pipeline hands it on), and a continued run replaces it."""
    if exported:
        return _REEXPORT.format(out=out)
    try:
        stage = json.loads((run / COMPLETE_NAME).read_text(encoding="utf-8")).get("stage")
    except (OSError, ValueError, AttributeError):
        stage = None  # a damaged marker is the pipeline's to report; here it only loses this check
    if stage == "pretrain":
        return _REPLACES_INIT.format(last=run / "checkpoints" / "last.ckpt")
    return None


# Continuing a finished θ0 or teacher run trains on and exports again, in place: what later stages were trained on changes.
_REEXPORT = ("continuing it exports model.init_args.output_dir {out} again when it ends, and the stages trained on "
             "the current one would no longer match it (on θ0 they are refused)")
# A finetune run records the path it warm-started from, not a copy: continued, the pretrain run rewrites that file.
_REPLACES_INIT = ("continuing it replaces {last}, which finetune runs warm-start from (model.init_args.init_from), so "
                  "a finetune trained on the current one would no longer match the file its record names")


def output_dir(config: dict) -> str | None:
    """Where the stage exports what later stages read (θ0, the teachers); None for the other stages."""
    return ((config.get("model") or {}).get("init_args") or {}).get("output_dir")


def _continues(ckpt_path: str | None, run: Path | None) -> bool:
    """Does the fit resume this run folder's own checkpoint (and so may replace what the run wrote)?"""
    if not ckpt_path or run is None:
        return False
    return Path(ckpt_path).resolve().is_relative_to(run.resolve())


def fit_checkpoint(config: dict) -> str | None:
    """The checkpoint a fit resumes from. `last` is the run folder's checkpoints/last.ckpt and must exist:
    Lightning alone warns and trains from scratch, over the artifacts of the run it was asked to continue."""
    path = config.get("ckpt_path")
    if path != "last":
        return path
    return last_checkpoint(logger_dir(config.get("trainer") or {}), "drop --ckpt_path to start the run, or give the "
                           "checkpoint file to resume from (nothing was written)")


def last_checkpoint(run: Path | None, fix: str) -> str:
    """`--ckpt_path last` of every subcommand: the run folder's checkpoints/last.ckpt (a file, or DeepSpeed's
    folder), which must exist; `fix` says what to do instead."""
    last = run / "checkpoints" / "last.ckpt" if run is not None else None
    if last is None or not last.exists():
        raise InputError(f"--ckpt_path last: there is no {last or 'fixed logger folder to look in'}; {fix}")
    return str(last)


def zero_stage(strategy) -> int | None:
    """The ZeRO stage a DeepSpeed strategy setting asks for: `deepspeed_stage_3`, `init_args: {stage: 3}`, or
    `init_args: {config: {zero_optimization: {stage: 3}}}`; None for other strategies."""
    if isinstance(strategy, str):
        found = re.search(r"deepspeed(_cpu)?_stage_(\d)", strategy)
        return int(found.group(2)) if found else (2 if strategy in ("deepspeed", "deepspeed_cpu") else None)
    if not isinstance(strategy, dict) or "deepspeed" not in str(strategy.get("class_path", "")).lower():
        return None
    args = strategy.get("init_args") or {}
    config = args.get("config") if isinstance(args.get("config"), dict) else {}
    return (config.get("zero_optimization") or {}).get("stage", args.get("stage", 2))


def uses_deepspeed(trainer: dict) -> bool:
    return "deepspeed" in str(trainer.get("strategy", "auto")).lower()


def checkpoint_for_strategy(subcommand: str, config: dict) -> str | None:
    """`--ckpt_path` as this run's strategy reads it. DeepSpeed resumes and evaluates only its own folders
    and no other strategy reads them: an evaluation by another strategy reads the folder's float32
    consolidation; a resume across the two is refused (the optimizer state is laid out differently)."""
    path, deepspeed = config.get("ckpt_path"), uses_deepspeed(config.get("trainer") or {})
    if not path or path in CKPT_ALIASES or "://" in str(path) or is_zero_folder(path) == deepspeed:
        return path
    if subcommand in EVAL_SUBCOMMANDS and not deepspeed:
        return str(consolidate_zero_folder(path, "--ckpt_path"))
    if deepspeed:
        raise ConfigurationError(
            f"--ckpt_path {path}: a single-file checkpoint, but trainer.strategy is DeepSpeed, which reads only the "
            "checkpoint folders it writes; run this with the strategy that wrote it (e.g. --trainer.strategy=auto)")
    raise ConfigurationError(
        f"--ckpt_path {path}: a DeepSpeed checkpoint folder, which only DeepSpeed resumes (its optimizer state is "
        "sharded); resume with the DeepSpeed strategy that wrote it (trainer.strategy), or warm-start elsewhere "
        "from its weights")


def check_writable(option: str, path: str | None) -> None:
    """The folder (or the nearest existing one above it) accepts new files: probed with a temporary
    folder that is removed at once, so a run never fails on its first write after building everything."""
    if path is None:
        return
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option}: {path}: {existing} is a file, not a folder")
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as error:
        raise InputError(f"{option}: {path} cannot be written ({error.strerror} in {existing}); give a folder you can write") from None
