"""Rank classification on a case with a known answer; inference-cost accounting."""

import pytest
import torch
from transformers import ByT5Tokenizer

from tagi.eval.cost import measure, task_cost
from tagi.eval.evaluation import Evaluation
from tagi.modeling.model import TAGIModel
from tagi.modeling.backbone import load_backbone
from tagi.eval.rank import RankAccuracy, option_scores, rank_classify


def test_rank_classification_picks_the_option_the_model_prefers():
    # A scorer whose logits strongly prefer token 7 at every position: the option made of 7s wins,
    # however long, because scores are length-normalised; a mixed option scores in between.
    def scorer(rows, labels):
        logits = torch.zeros(labels.shape[0], labels.shape[1], 10)
        logits[..., 7] = 5.0
        return logits

    options = [[[3, 4, 1], [7, 7, 7, 7, 7, 1], [7, 3, 1]], [[7, 1], [2, 1]]]
    scores = option_scores(scorer, options, pad_id=0)
    assert [s.shape[0] for s in scores] == [3, 2]
    assert scores[0][0] < scores[0][2] < scores[0][1]
    chosen = rank_classify(scorer, options, pad_id=0)
    assert chosen == [1, 0]
    metric = RankAccuracy()
    metric.update(chosen, [1, [1, 0]])
    metric.update([2], [0])
    assert metric.compute().item() == pytest.approx(2 / 3)


def test_evaluation_counts_ranked_rows_across_batches_and_resets():
    tok = ByT5Tokenizer()
    evaluation = Evaluation([("t", "c")], tok)

    def prefers_first_option(rows, labels):  # logits (R, Y, V) that favour option 0's token at every position
        logits = torch.zeros(labels.shape[0], labels.shape[1], len(tok))
        logits[..., tok("a").input_ids[0]] = 5.0
        return logits

    plain = dict(references=[["x"]], task_names=["t"])
    ranked = dict(references=[["a"], ["b"], ["a"]], task_names=["t"] * 3,
                  options=[[tok("a").input_ids, tok("b").input_ids]] * 2 + [[]])  # row 2 has no options
    evaluation.update(plain, ["x"], prefers_first_option)
    evaluation.update(ranked, ["a", "a", "a"], prefers_first_option)
    scores = evaluation.compute()
    assert scores["rank_count"] == 2 and scores["rank_accuracy"] == 50.0  # row 0 right (a), row 1 wrong (b)
    evaluation.update(plain, ["x"], prefers_first_option)
    assert "rank_count" not in evaluation.compute()  # reset: the next pass ranked nothing


def test_rank_classification_with_a_real_model_matches_its_loss():
    torch.manual_seed(0)
    backbone = load_backbone("tiny", dict(d_model=32, num_heads=2)).eval()
    tok = ByT5Tokenizer()
    inputs = tok(["cow fox"], return_tensors="pt")
    options = [[tok("ape").input_ids, tok("cat dog").input_ids]]

    def scorer(rows, labels):
        return backbone(input_ids=inputs.input_ids[rows], attention_mask=inputs.attention_mask[rows], labels=labels).logits

    scores = option_scores(scorer, options, pad_id=0)[0]
    for k, ids in enumerate(options[0]):  # = -CE of that option alone (mean over its tokens)
        loss = backbone(**inputs, labels=torch.tensor([ids])).loss
        assert scores[k].item() == pytest.approx(-loss.item(), abs=1e-5)


def test_tagi_cost_grows_less_with_the_instruction_than_the_baseline():
    torch.manual_seed(0)
    model = TAGIModel(load_backbone("tiny", dict(d_model=32, num_heads=2)), lora_rank=4, generator_hidden_dim=16).eval()
    n, input_len, target = 8, 12, 4
    inputs = (torch.randint(3, 300, (n, input_len)), torch.ones(n, input_len, dtype=torch.long))
    labels = torch.randint(3, 300, (n, target))
    costs = {}
    for length in (32, 128):
        instruction = (torch.randint(3, 300, (1, length)), torch.ones(1, length, dtype=torch.long))
        concat = (torch.randint(3, 300, (n, length + input_len)), torch.ones(n, length + input_len, dtype=torch.long))
        costs[length] = task_cost(model, instruction, inputs, concat, labels, batch_size=4, batched=length == 128)
    short, long = costs[32], costs[128]
    assert long.baseline.flops > 2.5 * short.baseline.flops  # the baseline pays for the instruction n times
    assert long.tagi_instruction.flops > short.tagi_instruction.flops  # TAGI once ...
    # Per input, TAGI still pays for attending to I (fusion, FiD), but less than for re-encoding it.
    assert long.tagi_inputs.flops - short.tagi_inputs.flops < 0.5 * (long.baseline.flops - short.baseline.flops)
    assert long.ratios()["flops"] < short.ratios()["flops"] < 1.0
    assert set(short.as_dict()["ratio_tagi_over_baseline"]) == {"flops", "seconds"}
    # The batched path (per-row LoRA on every input token) costs more than merged weights, less than concatenation.
    assert long.ratios()["flops"] < long.ratios()["flops_batched"] < 1.0


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_attention_flops_are_counted_as_the_same_matmuls_written_out(name):
    # torch's counter skips the CPU attention kernel that transformers' models and our fusion layers call;
    # `measure` counts it: the model's own attention costs what its eager (written-out) attention counts.
    torch.manual_seed(0)
    backbone = load_backbone(name, dict(num_heads=2)).eval()
    ids = torch.randint(3, 300, (2, 16))

    def call():
        if name == "tiny":
            return backbone(input_ids=ids, labels=ids[:, :4].clone())
        return backbone(input_ids=ids)

    backbone.set_attn_implementation("sdpa")
    counted = measure(call).flops
    backbone.set_attn_implementation("eager")
    assert counted == measure(call).flops


def test_the_fusion_layers_attention_is_counted():
    from torch.nn.functional import scaled_dot_product_attention

    q, k = torch.randn(2, 4, 10, 16), torch.randn(2, 4, 7, 16)  # (B, h, T, d), (B, h, S, d)
    assert measure(lambda: scaled_dot_product_attention(q, k, k)).flops == 2 * (2 * 2 * 4 * 10 * 7 * 16)  # QKᵀ, AV
