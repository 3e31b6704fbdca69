"""The teacher stage trains each cluster's LoRA on its own (TAGI §3.2.2): its own optimizer state, step budget,
data stream and dropout stream, so a cluster's teacher does not depend on which other clusters the run has."""

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import config
from tagi.data.sampler import ClusterStepSampler
from tagi.training.cli import run_cli
from tagi.training.config import Backbone

# Dropout on: the teacher's dropout stream must be the cluster's own too.
SPEC = {"name": "tiny", "tiny_config": {"d_model": 32, "num_layers": 2, "num_heads": 2, "dropout_rate": 0.1}, "seed": 0}
BACKBONE = f"--model.init_args.backbone={json.dumps(SPEC)}"
STEPS = 3
RUN = [f"--trainer.max_steps={STEPS}", "--trainer.accumulate_grad_batches=2", "--trainer.enable_progress_bar=false",
       "--trainer.limit_val_batches=1", "--data.init_args.batch_size=4", "--data.init_args.val_instances_per_task=1",
       "--data.init_args.max_test_instances_per_task=2", "--model.init_args.optimization.weight_decay=0.1"]


def fit_teachers(name: str, clusters: list[str], *extra: str):
    return run_cli(["fit", "--config", config("teacher"), BACKBONE, *RUN, f"--data.init_args.only_clusters={json.dumps(clusters)}",
                    f"--trainer.logger.init_args.name={name}", f"--model.init_args.output_dir=teachers/{name}", *extra])


def test_a_clusters_teacher_is_bitwise_the_same_whether_or_not_other_clusters_are_in_the_run(tmp_path, monkeypatch):
    """'Deletion' alone, and between 'Counting' and 'Selection' (trained before and after it, sharing the optimizer)."""
    monkeypatch.chdir(tmp_path)
    alone = fit_teachers("alone", ["Deletion"])
    shared = fit_teachers("shared", ["Counting", "Deletion", "Selection"])
    assert alone.trainer.global_step == STEPS and shared.trainer.global_step == 3 * STEPS  # max_steps is per cluster
    assert sorted(path.name for path in (tmp_path / "teachers/shared").iterdir()) == ["counting", "deletion", "selection"]
    one = load_file(tmp_path / "teachers/alone/deletion/adapter_model.safetensors")
    other = load_file(tmp_path / "teachers/shared/deletion/adapter_model.safetensors")
    assert one.keys() == other.keys() and all(torch.equal(one[key], other[key]) for key in one)
    lora_B = [key for key in one if "lora_B" in key]
    assert lora_B and any(one[key].abs().sum() > 0 for key in lora_B)  # it trained (B starts at 0)
    meta = json.loads((tmp_path / "teachers/shared/deletion/meta.json").read_text())
    assert meta["steps"] == STEPS and meta["global_step"] == 3 * STEPS


def test_the_sampler_gives_each_cluster_its_own_stream_in_single_cluster_blocks():
    cluster_of = [0, 1, 2, 1, 0, 2, 1, 1, 0, 2, 2, 1]  # dataset order
    names = {0: "a", 1: "b", 2: "c"}
    full = list(ClusterStepSampler(cluster_of, [(c, names[c]) for c in (0, 1, 2)], 5, 2, seed=3))
    assert len(full) == 15
    blocks = [full[i:i + 5] for i in range(0, 15, 5)]
    for cluster, block in zip((0, 1, 2), blocks):
        assert all(cluster_of[i] == cluster for batch in block for i in batch)
    # 'b' alone, with its examples at other dataset positions: the same examples in the same order
    only_b = [i for i, c in enumerate(cluster_of) if c == 1]
    alone = list(ClusterStepSampler([1] * len(only_b), [(1, "b")], 5, 2, seed=3))
    assert [[only_b[i] for i in batch] for batch in alone] == blocks[1]
    # resumed at this rank's batch 7: the rest of the run
    resumed = ClusterStepSampler(cluster_of, [(c, names[c]) for c in (0, 1, 2)], 5, 2, seed=3)
    resumed.resume(0, 7)
    assert list(resumed) == full[7:]
    # two ranks: each cluster's block is 2 × 5 batches; at every step both ranks are on the same cluster
    ranks = [list(ClusterStepSampler(cluster_of, [(c, names[c]) for c in (0, 1, 2)], 5, 2, seed=3, num_replicas=2, rank=r))
             for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 15
    assert all(cluster_of[x[0]] == cluster_of[y[0]] for x, y in zip(*ranks))


def test_deepspeed_is_refused_and_ddp_told_about_unused_clusters():
    """ZeRO updates one flat buffer of every weight (stale momentum for absent clusters); DDP must not wait for
    the gradients of clusters absent from the step."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    from tagi.errors import ConfigurationError
    from tagi.training.teacher import TeacherModule

    module = TeacherModule(backbone=Backbone(**SPEC))
    module._trainer = SimpleNamespace(strategy=object.__new__(DeepSpeedStrategy))  # its type is all that is read
    with pytest.raises(ConfigurationError, match="trainer.strategy: the teacher stage does not run under DeepSpeed"):
        module._check_strategy()
    module._trainer = SimpleNamespace(strategy=DDPStrategy())
    module._check_strategy()
    assert module._trainer.strategy._ddp_kwargs["find_unused_parameters"] is True


def test_a_run_resumed_mid_cluster_writes_the_teachers_of_an_uninterrupted_run(tmp_path, monkeypatch):
    """Resumed from step 4 (cluster 'Deletion', its second step of 3): the cluster, its step, its batches, its
    Adam state and its schedule all continue where they stopped."""
    monkeypatch.chdir(tmp_path)
    every4 = tmp_path / "every4.yaml"
    every4.write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                      "      init_args: {save_last: true, every_n_train_steps: 4, save_top_k: -1}\n")
    clusters = ["Counting", "Deletion", "Selection"]
    fit_teachers("whole", clusters, "--config", str(every4))
    step4 = tmp_path / "checkpoints/demo/whole/checkpoints/epoch=0-step=4.ckpt"
    resumed = fit_teachers("resumed", clusters, "--config", str(every4), f"--ckpt_path={step4}")
    assert resumed.trainer.global_step == 3 * STEPS
    for cluster in ("counting", "deletion", "selection"):
        whole = load_file(tmp_path / f"teachers/whole/{cluster}/adapter_model.safetensors")
        again = load_file(tmp_path / f"teachers/resumed/{cluster}/adapter_model.safetensors")
        assert all(torch.equal(whole[key], again[key]) for key in whole), cluster


THETA0 = {"name": "tiny", "tiny_config": {"d_model": 32, "num_layers": 2, "num_heads": 2}, "seed": 0}
OTHER = {**THETA0, "seed": 1}  # same shape and tokenizer, other weights: a stand-in for Tk-Instruct


def finetune_module(teachers: str, *extra: str):
    cli = run_cli(["--config", config("finetune"), f"--model.init_args.backbone={json.dumps(THETA0)}",
                   "--model.init_args.init_from=null", f"--model.init_args.teachers={teachers}",
                   "--data.init_args.batch_size=4", *extra], run=False)
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")
    return cli


def test_teachers_on_another_backbone_are_recorded_and_finetune_runs_them_on_it(tmp_path, monkeypatch):
    from tagi.errors import ConfigurationError
    from tagi.modeling.adapters import cluster_folders, load_adapter
    from tagi.modeling.lora import LoRAWeights, apply_lora

    monkeypatch.chdir(tmp_path)
    run_cli(["fit", "--config", config("teacher"), f"--model.init_args.backbone={json.dumps(THETA0)}",
             f"--model.init_args.teacher_backbone={json.dumps(OTHER)}", "--trainer.max_steps=2",
             "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=1", "--data.init_args.batch_size=4",
             "--data.init_args.val_instances_per_task=1", "--data.init_args.max_test_instances_per_task=2",
             "--model.init_args.output_dir=teachers/other"])
    meta = json.loads((tmp_path / "teachers/other/case/meta.json").read_text())
    assert meta["backbone"]["seed"] == 1 and meta["teacher_backbone"] is True

    # θ0 as the teachers' backbone (the option unset): refused, naming the option
    cli = finetune_module("teachers/other")
    with pytest.raises(ConfigurationError, match="set model.init_args.teacher_backbone to theirs"):
        cli.model.prepare(cli.datamodule)
    # another model than the teachers': refused, naming the option
    cli = finetune_module("teachers/other", f"--model.init_args.teacher_backbone={json.dumps({**THETA0, 'seed': 2})}")
    with pytest.raises(ConfigurationError, match="≠ model.init_args.teacher_backbone"):
        cli.model.prepare(cli.datamodule)

    cli = finetune_module("teachers/other", f"--model.init_args.teacher_backbone={json.dumps(OTHER)}")
    module = cli.model
    module.prepare(cli.datamodule)
    teacher = module.frozen["teacher"]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not any(key.startswith("frozen") for key in module.state_dict())  # never saved in checkpoints
    batch = next(iter(cli.datamodule.train_dataloader()))
    got = module.teacher_logits(batch)
    # by hand: the seed-1 model + the row's teacher LoRA, read back from its PEFT folder
    reference = Backbone(**OTHER).load(len(module.tokenizer)).eval()
    sites = module.model.site_names
    names = {index: name for name, index in cli.datamodule.clusters.items()}
    folders = cluster_folders(list(cli.datamodule.clusters))
    rows = [load_adapter(tmp_path / "teachers/other" / folders[names[int(c)]], sites) for c in batch["cluster_ids"]]
    lora = LoRAWeights(torch.cat([r.A for r in rows]), torch.cat([r.B for r in rows]), rows[0].scale, rows[0].shapes)
    with torch.no_grad(), apply_lora([reference.get_submodule(name) for name in sites], lora):
        expected = reference(input_ids=batch["concat_input_ids"], attention_mask=batch["concat_attention_mask"],
                             labels=batch["labels"]).logits
    assert torch.allclose(got, expected, atol=1e-6)
    module.frozen.clear()  # θ0's forward instead: another distribution
    assert not torch.allclose(module.teacher_logits(batch), expected, atol=1e-3)
