"""The HINT baseline (configs/demo/baselines/hint*.yaml): its own stage 2 and its finetuning both train the underlying
model with the hypernetwork, with FiD and no encoder fusion; TAGI's finetuning refuses its stage 2; its adapter carries
the trained backbone."""

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import FAST, TINY, TINY_SPEC, chdir_scratch, config, fit, stages_in
from tagi.__main__ import main as tagi_main
from tagi.data.tokenization import load_tokenizer
from tagi.errors import ConfigurationError
from tagi.modeling.backbone import load_backbone
from tagi.provenance import PROVENANCE_KEY
from tagi.training.cli import run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    yield from chdir_scratch(tmp_path_factory, "hint")


@pytest.fixture(scope="module")
def stages(workdir, trained_stages):
    return stages_in(trained_stages, workdir)


def backbone_of(checkpoint) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return {key.removeprefix("model.backbone."): value for key, value in state.items() if key.startswith("model.backbone.")}


def test_hint_trains_the_underlying_model_in_both_stages_and_exports_it(workdir, stages):
    run_cli(["fit", "--config", config("baselines/hint-pretrain"), TINY, *FAST])
    pretrained = workdir / "checkpoints/demo/pretrain-hint/checkpoints/last.ckpt"
    fit("baselines/hint", f"--model.init_args.init_from={pretrained}")
    finetuned = workdir / "checkpoints/demo/baseline-hint/checkpoints/last.ckpt"

    tokenizer = load_tokenizer("synthetic")
    theta0 = load_backbone("tiny", {**TINY_SPEC["tiny_config"], "vocab_size": len(tokenizer)}, TINY_SPEC["seed"]).state_dict()
    after_pretrain, after_finetune = backbone_of(pretrained), backbone_of(finetuned)
    query = "encoder.block.0.layer.0.SelfAttention.q.weight"
    assert not torch.equal(after_pretrain[query], theta0[query])  # stage 2 trained it
    assert not torch.equal(after_finetune[query], after_pretrain[query])  # and finetuning went on from there
    state = torch.load(finetuned, map_location="cpu", weights_only=False)
    assert not any(".fusion." in key for key in state["state_dict"])  # no encoder fusion
    architecture = state[PROVENANCE_KEY]["architecture"]  # what produced it (`tagi.provenance`)
    assert architecture["fid"] and not architecture["fusion"] and not architecture["freeze_backbone"]

    # Its adapter's base is the trained backbone, written beside it, not θ0
    tagi_main(["adapter", "--ckpt", str(finetuned), "--instruction", "Sort the words.", "--out", "adapters/hint"])
    base = json.loads((workdir / "adapters/hint/adapter_config.json").read_text())["base_model_name_or_path"]
    exported = load_file(workdir / "adapters/hint" / base / "model.safetensors")
    assert torch.equal(exported[query], after_finetune[query])


def test_a_stage_two_that_trained_the_backbone_warm_starts_only_a_run_that_trains_it_without_teachers(workdir, stages):
    pretrained = workdir / "checkpoints/demo/pretrain-hint/checkpoints/last.ckpt"
    if not pretrained.is_file():
        run_cli(["fit", "--config", config("baselines/hint-pretrain"), TINY, *FAST])
    teachers = f"--model.init_args.teachers={stages['teachers']}"
    no_fusion = "--model.init_args.architecture.fusion=false"
    with pytest.raises(ConfigurationError, match="trained the backbone .* the teachers' KL and parameter loss need the frozen θ0"):
        fit("finetune", f"--model.init_args.init_from={pretrained}", teachers, no_fusion,
            "--model.init_args.architecture.freeze_backbone=false", "--trainer.logger.init_args.name=refused-a")
    with pytest.raises(ConfigurationError, match="this run freezes it"):
        fit("baselines/hint", f"--model.init_args.init_from={pretrained}", "--model.init_args.architecture.freeze_backbone=true",
            "--trainer.logger.init_args.name=refused-b")
    assert not (workdir / "checkpoints/demo/refused-a").exists() and not (workdir / "checkpoints/demo/refused-b").exists()
