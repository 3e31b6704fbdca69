"""A stage checkpoint holds what the stage trained, not θ0 again: the frozen backbone weights are left out on save
and put back from the stage's own θ0 on load, so Lightning's strict load still catches any other missing tensor."""

import pytest
import torch

from tagi.provenance import CheckpointError, Provenance
from tagi.training.config import Architecture, Backbone
from tagi.training.theta0 import Theta0Module

SPEC = {"name": "tiny-llama", "tiny_config": {"hidden_size": 32, "num_hidden_layers": 2}, "seed": 0}


def saved(module) -> dict:
    checkpoint = {"state_dict": module.state_dict(), "global_step": 3}
    module.on_save_checkpoint(checkpoint)
    return checkpoint


def test_a_lora_baselines_checkpoint_holds_its_lora_and_loads_strictly_into_a_fresh_module():
    module = Theta0Module(backbone=Backbone(**SPEC), tokenizer="byt5", input="plain", lora_rank=2)
    with torch.no_grad():
        module.lora_B.normal_()  # trained: B is no longer peft's zeros
    checkpoint = saved(module)
    assert set(checkpoint["state_dict"]) == {"lora_A", "lora_B"}
    assert module.theta0_weights() and all(key.startswith("backbone.") for key in module.theta0_weights())
    fresh = Theta0Module(backbone=Backbone(**SPEC), tokenizer="byt5", input="plain", lora_rank=2)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)  # what Lightning does after the hook
    for key, value in module.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    # a tensor the stage trained is still required: the hook fills θ0's frozen weights only
    checkpoint = saved(module)
    del checkpoint["state_dict"]["lora_B"]
    fresh.on_load_checkpoint(checkpoint)
    with pytest.raises(RuntimeError, match="lora_B"):
        fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    # the CLI's check before a run says the same, and lets θ0's absence pass
    record = Provenance.of({"tagi": fresh.describe()}, "last.ckpt", "--ckpt_path")
    with pytest.raises(CheckpointError, match=r"1 tensors missing \(e.g. lora_B\)"):
        record.verify_weights(checkpoint["state_dict"], fresh.state_dict(), {}, reloaded=fresh.theta0_weights())
    record.verify_weights(saved(module)["state_dict"], fresh.state_dict(), {}, reloaded=fresh.theta0_weights())


def test_a_trained_theta0_and_a_checkpoint_from_before_keep_every_weight():
    """Stage 0 trains the whole backbone: nothing is left out. A checkpoint written with θ0's weights in it loads
    them as they are (the hook adds nothing)."""
    whole = Theta0Module(backbone=Backbone(**SPEC), tokenizer="byt5", input="plain")
    assert whole.theta0_weights() == set()
    assert saved(whole)["state_dict"].keys() == whole.state_dict().keys()
    module = Theta0Module(backbone=Backbone(**SPEC), tokenizer="byt5", input="plain", lora_rank=2)
    before = {"state_dict": {key: torch.zeros_like(value) for key, value in module.state_dict().items()}}
    module.on_load_checkpoint(before)
    assert all(not value.any() for value in before["state_dict"].values())


T5 = {"name": "tiny", "tiny_config": {"d_model": 32, "num_layers": 2, "num_heads": 2}, "seed": 0}
SMALL = dict(lora_rank=2, generator_width=16, generator_hidden_dim=16, site_embed_dim=8)


def pretrain_checkpoint(tmp_path, **architecture):
    """A stage-2 checkpoint file as the stage saves it (θ0's frozen weights left out), its hypernetwork trained."""
    from tagi.training.pretrain import PretrainModule

    module = PretrainModule(backbone=Backbone(**T5), architecture=Architecture(**SMALL, **architecture))
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5)
    path = tmp_path / "pretrain.ckpt"
    torch.save(saved(module), path)
    return module, path


@pytest.mark.parametrize("trains", [{"train_layer_norms": True}, {"freeze_backbone": False, "fusion": False}])
def test_a_finetune_that_trains_more_of_the_backbone_warm_starts_from_a_checkpoint_without_theta0(tmp_path, trains):
    """The finetune run trains backbone weights stage 2 froze (and so left out of its file): they start at θ0."""
    from tagi.training.finetune import FinetuneModule

    pretrain, path = pretrain_checkpoint(tmp_path, **{k: v for k, v in trains.items() if k == "fusion"})
    finetune = FinetuneModule(backbone=Backbone(**T5), architecture=Architecture(**SMALL, **trains))
    theta0 = {key: value.clone() for key, value in finetune.model.backbone.state_dict().items()}
    finetune._warm_start(str(path))
    for key, value in finetune.model.state_dict().items():
        expected = theta0[key.removeprefix("backbone.")] if key.startswith("backbone.") else pretrain.model.state_dict()[key]
        assert torch.equal(value, expected), key


def test_a_finetune_that_freezes_the_layer_norms_stage_two_trained_is_refused(tmp_path):
    from tagi.errors import ConfigurationError
    from tagi.training.finetune import FinetuneModule

    _, path = pretrain_checkpoint(tmp_path, train_layer_norms=True)
    finetune = FinetuneModule(backbone=Backbone(**T5), architecture=Architecture(**SMALL))
    with pytest.raises(ConfigurationError, match="trained the backbone's layer norms .* this run freezes them"):
        finetune._warm_start(str(path))


def test_a_deepspeed_folder_without_frozen_weights_loads_and_a_missing_trained_weight_is_refused():
    # DeepSpeed's `custom_load_fn` for our strategy: θ0's frozen weights may be absent (excluded on save), nothing else.
    from tagi.training.strategies import _load_module_states

    module = Theta0Module(backbone=Backbone(**SPEC), tokenizer="byt5", input="plain", lora_rank=2)
    trained = {key: value for key, value in module.state_dict().items() if key in ("lora_A", "lora_B")}
    _load_module_states(trained, module)
    with pytest.raises(RuntimeError, match=r"missing \['lora_B'\]"):
        _load_module_states({"lora_A": trained["lora_A"]}, module)
    with pytest.raises(RuntimeError, match="unexpected"):
        _load_module_states({**trained, "extra": torch.zeros(1)}, module)


@pytest.mark.parametrize("name, stage", [("deepspeed", 2), ("deepspeed_stage_2", 2), ("deepspeed_stage_1", 1)])
def test_lightnings_deepspeed_names_give_the_strategy_that_saves_atomically_without_theta0(name, stage):
    from lightning.pytorch.strategies import StrategyRegistry

    from tagi.training.strategies import DeepSpeedStrategy

    strategy = StrategyRegistry.get(name)
    assert type(strategy) is DeepSpeedStrategy and strategy.config["zero_optimization"]["stage"] == stage
    assert strategy.exclude_frozen_parameters
