"""Batched per-example LoRA against peft, row independence, merging, and state cleanup."""

import copy

import pytest
import torch
from peft import PeftModel

from tagi.modeling.adapters import load_adapter, save_adapter
from tagi.modeling.families import T5Family
from tagi.modeling.lora import LoRAWeights, apply_lora, merged_lora
from tagi.modeling.backbone import load_backbone

KINDS = {
    "encoder_self": lambda name: name.startswith("encoder.") and ".SelfAttention." in name,
    "decoder_self": lambda name: name.startswith("decoder.") and ".SelfAttention." in name,
    "decoder_cross": lambda name: ".EncDecAttention." in name,
}


def t5_sites(model) -> list:
    """The q/v linears a T5's generated LoRA writes, in model order."""
    return [model.get_submodule(name) for name in T5Family(model).site_names()]


def random_lora(backbone, rows=1, rank=4, alpha=8.0, seed=0, keep=lambda name: True) -> LoRAWeights:
    generator = torch.Generator().manual_seed(seed)
    names = T5Family(backbone).site_names()
    site = t5_sites(backbone)[0]
    A = torch.randn(rows, len(names), rank, site.in_features, generator=generator) * 0.3
    B = torch.randn(rows, len(names), site.out_features, rank, generator=generator) * 0.3
    mask = torch.tensor([keep(name) for name in names], dtype=A.dtype)[None, :, None, None]
    return LoRAWeights(A * mask, B * mask, alpha / rank)


def logits(model, batch):
    return model(**batch).logits


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny", dict(d_model=32, num_heads=2)).eval()


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 300, (3, 11), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0
    decoder_input_ids = torch.randint(3, 300, (3, 7), generator=generator)
    return dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)


def test_sites_are_the_peft_q_v_modules(backbone):
    names = T5Family(backbone).site_names()
    layers = backbone.config.num_layers
    assert len(names) == 2 * (layers + 2 * layers)  # q and v of enc-self, dec-self, dec-cross
    assert names[0] == "encoder.block.0.layer.0.SelfAttention.q"
    assert names[1] == "encoder.block.0.layer.0.SelfAttention.v"
    assert "decoder.block.1.layer.1.EncDecAttention.v" in names


@pytest.mark.parametrize("kind", [*KINDS, "all"])
def test_matches_peft_on_each_attention_kind(backbone, batch, kind, tmp_path):
    keep = KINDS.get(kind, lambda name: True)
    lora = random_lora(backbone, keep=keep)
    save_adapter(tmp_path / "adapter", lora, T5Family(backbone).site_names(), alpha=8.0)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(backbone), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        expected = logits(peft_model, batch)
        with apply_lora(t5_sites(backbone), lora):
            ours = logits(backbone, batch)
        bare = logits(backbone, batch)
    assert (ours - expected).abs().max() <= 1e-5
    assert (ours - bare).abs().max() > 1e-3  # the LoRA really changed something on this kind


def test_rows_with_different_loras_match_rows_run_alone(backbone, batch):
    backbone = copy.deepcopy(backbone).double()  # float64: reassociation noise far below the tolerance
    lora = random_lora(backbone, rows=3, seed=3)
    lora = LoRAWeights(lora.A.double(), lora.B.double(), lora.scale)
    sites = t5_sites(backbone)
    with torch.no_grad(), apply_lora(sites, lora):
        together = logits(backbone, batch)
    for row in range(3):
        one = {key: value[row : row + 1] for key, value in batch.items()}
        with torch.no_grad(), apply_lora(sites, lora.select(torch.tensor([row]))):
            alone = logits(backbone, one)
        assert (together[row : row + 1] - alone).abs().max() <= 1e-9
    assert (together[0] - together[2]).abs().max() > 1e-3


def test_hooks_are_removed_after_an_exception(backbone, batch):
    sites = t5_sites(backbone)
    lora = random_lora(backbone)
    with torch.no_grad():
        bare = logits(backbone, batch)
        with pytest.raises(RuntimeError, match="boom"):
            with apply_lora(sites, lora):
                raise RuntimeError("boom")
        assert all(not site._forward_hooks for site in sites)
        assert torch.equal(logits(backbone, batch), bare)


def test_merge_matches_hooks_and_unmerges_bit_exactly(backbone, batch):
    backbone = copy.deepcopy(backbone).double()
    sites = t5_sites(backbone)
    before = [site.weight.detach().clone() for site in sites]
    lora = random_lora(backbone, seed=5)
    lora = LoRAWeights(lora.A.double(), lora.B.double(), lora.scale)
    with torch.no_grad():
        with apply_lora(sites, lora):
            hooked = logits(backbone, batch)
        with pytest.raises(RuntimeError, match="boom"):
            with merged_lora(sites, lora):
                merged = logits(backbone, batch)
                raise RuntimeError("boom")
    assert (hooked - merged).abs().max() <= 1e-9
    assert all(torch.equal(site.weight, weight) for site, weight in zip(sites, before))


def test_merge_refuses_mixed_batches_and_training(backbone):
    sites = t5_sites(backbone)
    with pytest.raises(ValueError, match="one task"):
        with torch.no_grad(), merged_lora(sites, random_lora(backbone, rows=2)):
            pass
    lora = random_lora(backbone)
    lora.A.requires_grad_(True)
    with pytest.raises(RuntimeError, match="inference"):
        with merged_lora(sites, lora):
            pass


def test_adapter_round_trip(backbone, tmp_path):
    names = T5Family(backbone).site_names()
    lora = random_lora(backbone, seed=7)
    save_adapter(tmp_path / "a", lora, names, alpha=8.0, meta={"task": "x"})
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "meta.json"
    ]
    back = load_adapter(tmp_path / "a", names)
    assert torch.equal(back.A, lora.A) and torch.equal(back.B, lora.B) and back.scale == lora.scale
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".tmp")]
