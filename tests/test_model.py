"""TAGIModel: equivalences with the backbone and peft, gradients, generate paths, per-task reuse."""

import copy

import pytest
import torch
from peft import PeftModel

from tagi.modeling.adapters import save_adapter
from tagi.modeling.lora import LoRAWeights
from tagi.modeling.model import TAGIModel
from tagi.modeling.backbone import load_backbone


def make_model(**kwargs) -> TAGIModel:
    torch.manual_seed(0)
    options = dict(lora_rank=4, lora_alpha=8.0, generator_hidden_dim=16, site_embed_dim=8, b_init_std=0.05)
    options.update(kwargs)
    return TAGIModel(load_backbone("tiny", dict(d_model=32, num_heads=2)), **options).eval()


def tokens(rows, length, seed):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 300, (rows, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[-1, length - 3 :] = 0  # one padded row
    return ids, mask


@pytest.fixture(scope="module")
def instructions():
    return tokens(2, 9, seed=11)


@pytest.fixture(scope="module")
def inputs():
    ids, mask = tokens(4, 8, seed=12)
    decoder_input_ids = torch.randint(3, 300, (4, 5), generator=torch.Generator().manual_seed(13))
    return ids, mask, decoder_input_ids


def test_zero_lora_without_fusion_or_fid_is_the_bare_backbone(instructions, inputs):
    model = make_model(fusion=False, fid=False)
    torch.nn.init.zeros_(model.hypernet.head_B.weight)  # its bias starts at zero
    ids, mask, dec = inputs
    with torch.no_grad():
        task = model.encode_task(*instructions)
        assert torch.count_nonzero(task.lora.B) == 0
        ours = model(task, ids, mask, decoder_input_ids=dec, task_index=torch.tensor([0, 1, 0, 1])).logits
        bare = model.backbone(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert torch.equal(ours, bare)


def test_fresh_fusion_is_an_identity(instructions, inputs):
    """Zero-initialised fusion output: with FiD off and zero LoRA, the fused model is the backbone."""
    model = make_model(fusion=True, fid=False)
    torch.nn.init.zeros_(model.hypernet.head_B.weight)
    ids, mask, dec = inputs
    with torch.no_grad():
        task = model.encode_task(*instructions)
        ours = model(task, ids, mask, decoder_input_ids=dec, task_index=torch.tensor([0, 0, 1, 1])).logits
        bare = model.backbone(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert torch.equal(ours, bare)


def test_fusion_and_fid_change_the_output_once_trained(instructions, inputs):
    model = make_model(fusion=True, fid=True)
    torch.nn.init.normal_(model.fusion[0].out.weight, std=0.5)
    ids, mask, dec = inputs
    with torch.no_grad():
        task = model.encode_task(*instructions)
        states, states_mask = model.encode_inputs(task.select(torch.tensor([0, 0, 1, 1])), ids, mask)
        plain, _ = model.encode_inputs(task.select(torch.tensor([0, 0, 1, 1])), ids, mask, reads_instruction=False)
        fused = model(task, ids, mask, decoder_input_ids=dec, task_index=torch.tensor([0, 0, 1, 1])).logits
        unfused = model(task, ids, mask, decoder_input_ids=dec, task_index=torch.tensor([0, 0, 1, 1]), lora_only=True).logits
    assert states.shape[1] == instructions[0].shape[1] + ids.shape[1]  # [I ; F]
    assert torch.equal(states_mask[:, : instructions[0].shape[1]], instructions[1][[0, 0, 1, 1]])
    assert (states[:, instructions[0].shape[1]:] - plain).abs().max() > 1e-3  # fusion moved the input states
    assert (fused - unfused).abs().max() > 1e-3  # and fusion + FiD move the logits


def test_fused_mixed_task_batch_matches_each_row_alone(instructions, inputs):
    """Fusion keys/values are projected per task and shared by that task's rows: same result as per row."""
    model = make_model(fusion=True, fid=True)
    for fusion in model.fusion:
        torch.nn.init.normal_(fusion.out.weight, std=0.5)
    ids, mask, dec = inputs
    task_index = torch.tensor([1, 0, 1, 0])
    with torch.no_grad():
        task = model.encode_task(*instructions)
        mixed = model(task, ids, mask, decoder_input_ids=dec, task_index=task_index, merge=False).logits
        per_row_tasks = model(task.select(task_index), ids, mask, decoder_input_ids=dec, merge=False).logits
        alone = torch.cat([model(task.select(task_index[r : r + 1]), ids[r : r + 1], mask[r : r + 1],
                                 decoder_input_ids=dec[r : r + 1]).logits for r in range(4)])
        unfused = model(task, ids, mask, decoder_input_ids=dec, task_index=task_index, lora_only=True).logits
    assert (mixed - per_row_tasks).abs().max() <= 1e-5 and (mixed - alone).abs().max() <= 1e-4
    assert (mixed - unfused).abs().max() > 1e-3  # fusion + FiD are in play


def test_one_task_projects_the_instruction_once_for_the_decoder(instructions, inputs):
    """Single-task calls give the decoder precomputed instruction keys/values: same outputs, fewer FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    model = make_model(fusion=True, fid=True)
    ids, mask, dec = inputs
    with torch.no_grad():
        task = model.encode_task(*instructions).select(torch.tensor([0]))
        per_row = task.select(torch.zeros(4, dtype=torch.long))  # 4 task rows: the backbone's own projection
        flops = []
        for encoding in (task, per_row):
            counter = FlopCounterMode(display=False)
            with counter:
                logits = model(encoding, ids, mask, decoder_input_ids=dec, merge=False).logits
            flops.append((counter.get_total_flops(), logits))
        shared = model.generate(task, ids, mask, max_new_tokens=5, do_sample=False)
        separate = model.generate(per_row, ids, mask, max_new_tokens=5, do_sample=False)
        beams = model.generate(task, ids, mask, max_new_tokens=5, do_sample=False, num_beams=2)
    (cached_flops, cached), (plain_flops, plain) = flops
    assert (cached - plain).abs().max() <= 1e-5 and cached_flops < plain_flops
    assert torch.equal(shared, separate) and beams.shape[0] == 4


def test_mixed_task_batch_projects_each_instruction_once_at_inference(instructions, inputs):
    """At inference a mixed-task batch gets the decoder's instruction keys/values per task, not per row
    (each task's own LoRA on v): the training path's logits, fewer FLOPs; merged one-row calls too."""
    from torch.utils.flop_counter import FlopCounterMode

    model = make_model(fusion=True, fid=True)
    ids, mask, dec = inputs
    task_index = torch.tensor([1, 0, 1, 1])
    task = model.encode_task(*instructions)
    results = []
    for grad in (False, True):  # with grad: the backbone projects [I ; F] for every row
        counter = FlopCounterMode(display=False)
        with torch.set_grad_enabled(grad), counter:
            logits = model(task, ids, mask, decoder_input_ids=dec, task_index=task_index).logits
        results.append((counter.get_total_flops(), logits.detach()))
    (shared_flops, shared), (per_row_flops, per_row) = results
    assert (shared - per_row).abs().max() <= 1e-5 and shared_flops < per_row_flops
    with torch.no_grad():  # one row: merged weights, the instruction values need no LoRA added
        merged = model(task, ids[:1], mask[:1], decoder_input_ids=dec[:1], task_index=task_index[:1]).logits
    assert (merged - per_row[:1]).abs().max() <= 1e-5


def test_exported_generated_lora_reproduces_our_logits_in_peft(instructions, inputs, tmp_path):
    model = make_model(fusion=False, fid=False)
    ids, mask, dec = inputs
    with torch.no_grad():
        task = model.encode_task(*instructions).select(torch.tensor([1]))
        ours = model(task, ids, mask, decoder_input_ids=dec, merge=False).logits
        bare = model.backbone(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    save_adapter(tmp_path / "gen", task.lora, model.site_names, alpha=model.lora_alpha)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model.backbone), str(tmp_path / "gen")).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert (ours - theirs).abs().max() <= 1e-5
    assert (ours - bare).abs().max() > 1e-3


def test_gradients_reach_hypernetwork_and_fusion_not_the_frozen_backbone(instructions, inputs):
    model = make_model(fusion=True, fid=True).train()
    ids, mask, _ = inputs
    labels = torch.randint(3, 300, (4, 5))
    task = model.encode_task(*instructions)
    model(task, ids, mask, labels=labels, task_index=torch.tensor([0, 1, 1, 0])).loss.backward()
    for name, parameter in model.hypernet.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    for name, parameter in model.fusion.named_parameters():
        assert parameter.grad is not None, name
    assert all(fusion.out.weight.grad.abs().sum() > 0 for fusion in model.fusion)
    assert all(parameter.grad is None for parameter in model.backbone.parameters())


def test_trainable_backbone_gets_gradients(instructions, inputs):
    model = make_model(freeze_backbone=False).train()
    ids, mask, _ = inputs
    task = model.encode_task(*instructions)
    model(task, ids, mask, labels=torch.randint(3, 300, (4, 5)), task_index=torch.tensor([0, 1, 1, 0])).loss.backward()
    assert model.backbone.shared.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("beams", [1, 3])
def test_generate_per_example_and_merged_paths_agree(instructions, inputs, beams):
    model = make_model().double()
    ids, mask, _ = inputs
    options = dict(max_new_tokens=6, num_beams=beams, do_sample=False)
    with torch.no_grad():
        tasks = model.encode_task(*instructions)
        task = tasks.select(torch.tensor([0]))
        merged = model.generate(task, ids, mask, merge=True, **options)
        hooked = model.generate(task, ids, mask, merge=False, **options)
        per_row = model.generate(tasks, ids, mask, task_index=torch.zeros(4, dtype=torch.long), **options)
        mixed = model.generate(tasks, ids, mask, task_index=torch.tensor([0, 1, 0, 1]), **options)
        alone = [model.generate(tasks.select(torch.tensor([t])), ids[i : i + 1], mask[i : i + 1], **options) for i, t in enumerate([0, 1, 0, 1])]
    assert torch.equal(merged, hooked) and torch.equal(merged, per_row)
    for row, single in enumerate(alone):
        assert torch.equal(mixed[row, : single.shape[1]], single[0])


def test_one_task_encoding_serves_100_inputs_with_one_hypernetwork_call(instructions):
    model = make_model()
    calls = []
    model.hypernet.register_forward_hook(lambda *args: calls.append(1))
    ids, mask = tokens(100, 8, seed=21)
    with torch.no_grad():
        task = model.encode_task(instructions[0][:1], instructions[1][:1])
        for start in range(0, 100, 10):
            model(task, ids[start : start + 10], mask[start : start + 10], decoder_input_ids=ids[start : start + 10, :3])
        model.generate(task, ids[:10], mask[:10], max_new_tokens=3)
    assert len(calls) == 1


def test_lora_weights_validate_shapes():
    with pytest.raises(ValueError, match="disagree"):
        LoRAWeights(torch.zeros(1, 4, 2, 8), torch.zeros(1, 4, 8, 3), 1.0)


def _lora_of_relative_size(model: TAGIModel, relative: float, seed: int) -> LoRAWeights:
    """One task's LoRA whose update at every site is `relative` × ‖W‖ (Frobenius)."""
    generator = torch.Generator().manual_seed(seed)
    sites = model.sites()
    A = torch.randn(1, len(sites), 4, sites[0].in_features, generator=generator, dtype=torch.float64)
    B = torch.randn(1, len(sites), sites[0].out_features, 4, generator=generator, dtype=torch.float64)
    lora = LoRAWeights(A, B, 2.0)
    for index, site in enumerate(sites):
        B[0, index] *= relative * site.weight.double().norm() / lora.delta(0, index).norm()
    return lora


@pytest.mark.parametrize("relative", [1e-2, 3e-3, 1e-3])
def test_one_task_inference_in_bf16_keeps_the_lora_update(instructions, inputs, relative):
    """The merged one-task path (validation, test, Student) on bf16 weights computes what training's per-row
    hooks compute, within bf16 rounding. Merging ΔW into bf16 weights rounds most of a small update away
    (17 % / 48 % / 78 % of it lost at ‖ΔW‖/‖W‖ 1e-2 / 3e-3 / 1e-3), so the path falls back to the hooks there."""
    ids, mask, dec = inputs
    model = make_model(fusion=False, fid=False).double()
    task = model.encode_task(*(t[:1] for t in instructions))
    lora = _lora_of_relative_size(model, relative, seed=3)
    with torch.no_grad():
        bare = model.backbone(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        task.lora = lora
        exact = model(task, ids, mask, decoder_input_ids=dec, merge=False).logits  # float64 reference
        model.to(torch.bfloat16)
        task.lora = LoRAWeights(lora.A.bfloat16(), lora.B.bfloat16(), lora.scale)
        served = model(task, ids, mask, decoder_input_ids=dec, merge=True).logits.double()
        trained = model(task, ids, mask, decoder_input_ids=dec, merge=False).logits.double()
        bare_bf16 = model.backbone(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits.double()
    update = exact - bare  # what the LoRA changes, in float64
    # The bf16 run's own rounding of the bare model is the floor; the LoRA's effect must survive above it.
    floor = (bare_bf16 - bare).norm()
    assert (served - trained).norm() <= 1e-6 * trained.norm()  # the served path is the trained path
    assert ((served - bare_bf16) - update).norm() <= 0.1 * update.norm() + 2 * floor
    assert model._path(task, None, True, False).merged is False


def test_merging_into_bf16_weights_or_under_autocast_is_refused():
    from tagi.modeling.lora import merge_is_exact, merged_lora

    model = make_model()
    sites = model.sites()
    lora = LoRAWeights(torch.zeros(1, len(sites), 4, 32), torch.zeros(1, len(sites), 32, 4), 2.0)
    assert merge_is_exact(sites)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not merge_is_exact(sites)
    model.to(torch.bfloat16)
    assert not merge_is_exact(sites)
    with pytest.raises(RuntimeError, match="apply_lora"), torch.no_grad(), merged_lora(sites, lora):
        pass
