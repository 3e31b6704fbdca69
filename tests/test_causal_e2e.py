"""Every decoder-only stage and baseline through the CLI, with the shipped configs/smollm2-ni-v1 files: SmolLM2
replaced by a tiny random Llama (grouped-query attention) and a byte tokenizer with a chat template, a few steps
each, on the real NI v1 and wiki-c4 files of ../shared."""

import json
from pathlib import Path

import pytest
import torch

from helpers import ROOT, chdir_scratch
from tagi.errors import ConfigurationError
from tagi.training.cli import run_cli
from test_causal import LLAMA, chat_tokenizer

pytestmark = pytest.mark.e2e
SHARED = ROOT.parent / "shared" / "data"
CONFIGS = ROOT / "configs" / "smollm2-ni-v1"
if not (SHARED / "ni-v1").is_dir() or not (SHARED / "wiki-c4").is_dir():
    pytest.skip("needs ../shared/data/ni-v1 and ../shared/data/wiki-c4 (the shared data folder)", allow_module_level=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    yield from chdir_scratch(tmp_path_factory, "causal")


def tiny(workdir: Path, stage: str) -> list[str]:
    """What makes a shipped stage config run here in seconds: the tiny model and tokenizer, absolute data paths,
    short sequences, few examples and steps."""
    tokenizer = workdir / "tokenizer"
    if not tokenizer.is_dir():
        chat_tokenizer(tokenizer)
    spec = json.dumps({"name": "tiny-llama", "tiny_config": LLAMA, "seed": 0})
    args = [f"--model.init_args.backbone={spec}", f"--model.init_args.tokenizer={tokenizer}",
            f"--data.init_args.tokenizer={tokenizer}", f"--data.init_args.splits_dir={ROOT / 'configs/ni-v1/splits'}",
            "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1", "--data.init_args.max_test_instances_per_task=1"]
    if stage == "pretrain":
        return args + [f"--data.init_args.source={SHARED / 'wiki-c4'}", f"--data.init_args.eval_data_dir={SHARED / 'ni-v1'}",
                       "--data.init_args.max_documents=4", "--data.init_args.max_val_instances_per_task=1"]
    args += [f"--data.init_args.data_dir={SHARED / 'ni-v1'}", "--data.init_args.max_train_instances_per_task=4"]
    return args + (["--data.init_args.val_instances_per_task=1"] if stage == "teacher" else
                   ["--data.init_args.max_val_instances_per_task=1"])


def fit(workdir: Path, config: str, stage: str, *extra: str):
    return run_cli(["fit", "--config", str(CONFIGS / config), *tiny(workdir, stage), *extra])


def test_every_decoder_only_stage_and_baseline_runs_from_the_cli(workdir):
    fit(workdir, "teacher.yaml", "teacher")
    teachers = sorted(path.name for path in (workdir / "teachers/smollm2-ni-v1").iterdir())
    assert teachers == ["answer-generation", "classification", "incorrect-answer-generation", "question-generation",
                        "text-modification"]
    fit(workdir, "pretrain.yaml", "pretrain")
    pretrain = workdir / "checkpoints/smollm2-ni-v1/pretrain/checkpoints/last.ckpt"
    fit(workdir, "finetune.yaml", "finetune", f"--model.init_args.init_from={pretrain}")
    metrics = (workdir / "checkpoints/smollm2-ni-v1/finetune/metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/ce", "train/kl", "train/param", "val/rougeL"} <= set(metrics)  # distilled from the teachers
    for baseline in ("concat", "no-instruction", "tagi-ce-only"):
        fit(workdir, f"baselines/{baseline}.yaml", "finetune",
            *([f"--model.init_args.init_from={pretrain}"] if baseline == "tagi-ce-only" else []))
    run = workdir / "checkpoints/smollm2-ni-v1/baseline-concat/checkpoints/last.ckpt"
    concat = torch.load(run, map_location="cpu", weights_only=False)["state_dict"]
    assert concat["lora_A"].shape == (1, 4, 8, 64) and concat["lora_B"].shape == (1, 4, 64, 8)  # one LoRA, every q/v site
    assert torch.count_nonzero(concat["lora_B"][0, 1, 16:]) == 0  # v_proj writes 16 features: the rest stays unused

    finetuned = workdir / "checkpoints/smollm2-ni-v1/finetune/checkpoints/last.ckpt"
    run_cli(["test", "--config", str(CONFIGS / "finetune.yaml"), *tiny(workdir, "finetune"), f"--ckpt_path={finetuned}",
             f"--model.init_args.init_from={pretrain}", "--trainer.logger.init_args.name=finetune-test"])
    results = json.loads((workdir / "checkpoints/smollm2-ni-v1/finetune-test/results.json").read_text())
    assert results["overall"]["count"] == 12  # one instance of each of the 12 test tasks


def test_the_zero_shot_baseline_scores_a_pretrained_folder_without_a_checkpoint(workdir):
    from test_causal import tiny_llama

    tiny_llama().save_pretrained(workdir / "pretrained")  # stands for SmolLM2's folder
    args = [arg for arg in tiny(workdir, "finetune") if not arg.startswith("--model.init_args.backbone=")]
    run_cli(["test", "--config", str(CONFIGS / "baselines/zero-shot.yaml"), *args,
             f"--model.init_args.backbone.name={workdir / 'pretrained'}"])
    results = json.loads((workdir / "checkpoints/smollm2-ni-v1/baseline-zero-shot/results.json").read_text())
    assert results["checkpoint"] is None and results["overall"]["count"] == 12
    with pytest.raises(ConfigurationError, match="the zero-shot baseline"):  # a model built in code is not pretrained
        run_cli(["test", "--config", str(CONFIGS / "baselines/zero-shot.yaml"), *tiny(workdir, "finetune"),
                 "--trainer.logger.init_args.name=zero-shot-tiny"])
