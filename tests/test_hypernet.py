"""The shared generator: site layout, size independent of depth, init, and HART's autoregressive states."""

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from tagi.modeling.families import T5Family
from tagi.modeling.hypernet import LoRAGenerator
from tagi.modeling.model import TAGIModel
from tagi.modeling.backbone import load_backbone


def tiny(num_layers=2):
    return load_backbone("tiny", dict(d_model=32, num_heads=2, num_layers=num_layers))


def instruction(rows=3, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(rows, length, 32, generator=g)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[-1, 4:] = 0
    return states, mask


def test_site_layout_reads_t5_module_names():
    model = tiny(2)
    layout = T5Family(model).site_layout(T5Family(model).site_names())
    # encoder: 2 blocks × (q, v); decoder: 2 blocks × (self q, v, cross q, v)
    assert layout.stack == (0, 0, 0, 0, 1, 1, 2, 2, 1, 1, 2, 2)
    assert layout.layer == (0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1)
    assert layout.kind == (0, 1) * 6
    assert layout.step == (0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3) and layout.num_steps == 4
    with pytest.raises(ValueError, match="encoder.block.0.layer.0.DenseReluDense.wi"):
        T5Family(model).site_layout(["encoder.block.0.layer.0.DenseReluDense.wi"])


@pytest.mark.parametrize("kind", ["mlp", "hart"])
def test_generator_size_does_not_grow_with_the_site_count(kind):
    """Only the (layer) embedding rows, and HART's step positions, depend on depth: no per-site heads."""
    def count(layers):
        model = tiny(layers)
        names = T5Family(model).site_names()
        generator = LoRAGenerator(T5Family(model).site_layout(names), 32, [(32, 32)] * len(names), rank=4, kind=kind, width=32,
                                  hidden_dim=16, site_embed_dim=8)
        return sum(p.numel() for p in generator.parameters())

    per_extra_layer = 8 + (32 * 2 if kind == "hart" else 0)  # one layer-embedding row (+ 2 HART positions)
    assert count(6) - count(2) == 4 * per_extra_layer


def t5_base_shape_model(**architecture) -> TAGIModel:
    config = T5Config(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
                      vocab_size=32128, feed_forward_proj="gated-gelu")
    with torch.device("meta"):  # shapes only: no memory, no time
        return TAGIModel(T5ForConditionalGeneration(config), lora_rank=32, lora_alpha=32.0, **architecture)


def test_t5_base_shape_fits_the_budget_with_the_shipped_architecture():
    """configs/sni-t5-base/parts/architecture.yaml: ≤ 10M trainable weights at t5-base shape."""
    import yaml

    from helpers import ROOT

    shipped = yaml.safe_load((ROOT / "configs/sni-t5-base/parts/architecture.yaml").read_text())
    shipped.pop("lora_rank"), shipped.pop("lora_alpha")
    parts = t5_base_shape_model(**shipped).trainable_by_part()
    assert parts["backbone"] == 0 and sum(parts.values()) <= 10_000_000, parts
    assert all(parts[name] > 0 for name in ("pooler", "generator", "fusion"))


@pytest.mark.parametrize("kind", ["mlp", "hart"])
def test_fresh_delta_is_small_and_both_heads_get_gradients(kind):
    torch.manual_seed(0)
    model = TAGIModel(tiny(), lora_rank=4, generator=kind, generator_width=32, generator_hidden_dim=16, site_embed_dim=8)
    ids = torch.randint(3, 300, (2, 6))
    mask = torch.ones_like(ids)
    task = model.encode_task(ids, mask)
    delta = task.lora.scale * task.lora.B @ task.lora.A  # (N, S, out, in)
    weights = torch.stack([site.weight for site in model.sites()])  # (S, out, in)
    assert delta.norm() < 1e-2 * weights.norm() * len(task)  # starts near the backbone
    inputs = torch.randint(3, 300, (2, 5))
    model(task, inputs, torch.ones_like(inputs), labels=inputs, task_index=torch.tensor([0, 1])).loss.backward()
    for head in (model.hypernet.head_A, model.hypernet.head_B):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    reader = model.hypernet.reader()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reader.parameters() if p.requires_grad)


def test_sites_get_different_lora_from_one_instruction():
    model = TAGIModel(tiny(), lora_rank=4, generator_width=32, generator_hidden_dim=16, site_embed_dim=8)
    A = model.hypernet(*instruction()).A  # (N, S, r, in)
    for i in range(A.shape[1]):
        for j in range(i):
            assert not torch.allclose(A[:, i], A[:, j])
    assert not torch.allclose(A[0], A[1])  # and different instructions, different LoRA


def test_hart_states_are_autoregressive_and_shared_within_a_layer():
    torch.manual_seed(0)
    generator = TAGIModel(tiny(), lora_rank=4, generator="hart", generator_width=32, generator_hidden_dim=16,
                          site_embed_dim=8).hypernet
    states, mask = instruction()
    before = generator.context(states, mask)  # (N, T, P)
    assert before.shape == (3, 4, 32)
    with torch.no_grad():
        generator.layer_states.position.weight[2].add_(torch.randn(32))  # perturb step 3's input only
    after = generator.context(states, mask)
    assert torch.equal(before[:, :2], after[:, :2])  # earlier steps never see later ones
    assert not torch.allclose(before[:, 2:], after[:, 2:])  # step 3 and, through it, step 4 change
    padded = states.clone()
    padded[-1, 4:] = 100.0  # masked positions of the instruction do not matter
    torch.testing.assert_close(generator.context(padded, mask), generator.context(states, mask))


def test_hart_consistency_needs_the_hart_generator():
    """HART's loss is defined on its per-layer states; asked of the MLP generator it is a config error."""
    from tagi.errors import ConfigurationError
    from tagi.training import Architecture, Backbone, Distillation, FinetuneModule

    tiny_backbone = Backbone(tiny_config=dict(d_model=32, num_heads=2))
    with pytest.raises(ConfigurationError, match="generator: hart"):
        FinetuneModule(backbone=tiny_backbone, distillation=Distillation(consistency_weight=0.1))
    module = FinetuneModule(backbone=tiny_backbone, architecture=Architecture(generator="hart", generator_width=32),
                            distillation=Distillation(consistency_weight=0.1))
    assert module.consistency_mean.shape == (4, 32)  # (T backbone layers, P): the states the loss compares


def test_trained_layer_norms_leave_the_teachers_on_theta0():
    """Only the norms join the trainable weights, and `theta0_backbone` (the teachers' forward) keeps θ0's."""
    torch.manual_seed(0)
    model = TAGIModel(tiny(), lora_rank=4, generator_width=32, generator_hidden_dim=16, site_embed_dim=8,
                      train_layer_norms=True)
    norms = [p for n, p in model.backbone.named_parameters() if "layer_norm" in n]
    assert model.trainable_by_part()["backbone"] == sum(p.numel() for p in norms) > 0
    ids = torch.randint(3, 300, (2, 6))
    mask = torch.ones_like(ids)
    before = model.theta0_backbone(input_ids=ids, attention_mask=mask, labels=ids).logits
    task = model.encode_task(ids, mask)
    model(task, ids, mask, labels=ids).loss.backward()
    assert all(p.grad is not None for p in norms)
    assert all(p.grad is None for n, p in model.backbone.named_parameters() if "layer_norm" not in n)
    with torch.no_grad():
        for p in norms:
            p.mul_(1.3)  # as if trained
    after = model.theta0_backbone(input_ids=ids, attention_mask=mask, labels=ids).logits
    trained = model.backbone(input_ids=ids, attention_mask=mask, labels=ids).logits
    assert torch.equal(before, after) and not torch.allclose(trained, before)


def test_the_teacher_forward_runs_without_dropout():
    """The KL target: θ0 + a cluster's LoRA on the same batch gives the same logits twice, although the module
    trains (a pretrained T5 keeps dropout 0.1 and stays in train mode), and the backbone's mode is restored."""
    from tagi.modeling.lora import LoRAWeights
    from tagi.training import Backbone, Distillation, FinetuneModule

    torch.manual_seed(0)
    backbone = Backbone(tiny_config=dict(d_model=32, num_heads=2, dropout_rate=0.1))
    module = FinetuneModule(backbone=backbone, distillation=Distillation(kl_weight=1.0, param_weight=0.0)).train()
    sites = module.model.sites()
    module.teacher_bank = LoRAWeights(torch.randn(2, len(sites), 8, 32) * 0.1, torch.randn(2, len(sites), 32, 8) * 0.1, 2.0)
    ids = torch.randint(3, 300, (3, 10))
    batch = dict(concat_input_ids=ids, concat_attention_mask=torch.ones_like(ids), labels=torch.randint(3, 300, (3, 5)),
                 cluster_ids=torch.tensor([0, 1, 1]))
    first, second = module.teacher_logits(batch), module.teacher_logits(batch)
    assert torch.equal(first, second)
    assert module.model.backbone.training and all(m.training for m in module.model.backbone.modules())
    student = module.model.backbone(input_ids=ids, attention_mask=batch["concat_attention_mask"], labels=batch["labels"])
    again = module.model.backbone(input_ids=ids, attention_mask=batch["concat_attention_mask"], labels=batch["labels"])
    assert not torch.equal(student.logits, again.logits)  # the student's own forward keeps its dropout
