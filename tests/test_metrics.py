import json
import random
from pathlib import Path

import pytest
import torch

from tagi.eval.metrics import InstructionMetrics, exact_match, normalize_answer, results_table, rouge_l

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ROUGE_CASES = SHARED / "data/rouge-check/gpt3-ni-v1-cases.jsonl"


# --- per-example scores ---------------------------------------------------------------------------


def test_rouge_l_reproduces_google_rouge_score_on_real_cases():
    if not ROUGE_CASES.is_file():
        pytest.skip(f"rouge-check cases not found at {ROUGE_CASES}")
    cases = [json.loads(line) for line in ROUGE_CASES.read_text().splitlines() if line.strip()]
    assert len(cases) == 1100
    bad = [(c, rouge_l(c["prediction"], c["references"])) for c in cases]
    bad = [(c, got) for c, got in bad if abs(got - c["rougeL"]) > 1e-6]
    assert not bad, f"{len(bad)} mismatches, first: {bad[0]}"


def test_rouge_l_agrees_with_rouge_score_on_odd_text():
    # Differential check against the dev-only reference scorer: unicode, digits, short words, blanks.
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    words = ["İstanbul", "café", "ﬁne", "straße", "①", "٣", "Ⅻ", "ΣΑΣ", "dying", "skies", "was", "news",
             "running", "runs", "1990s", "U.S.", "e-mail", "the", "a", "", "\t", "\n", "Hello,", "world!"]
    rng = random.Random(0)
    for _ in range(300):
        pred = " ".join(rng.choices(words, k=rng.randint(0, 6)))
        refs = [" ".join(rng.choices(words, k=rng.randint(0, 6))) for _ in range(rng.randint(1, 3))]
        expected = max(scorer.score(ref, pred)["rougeL"].fmeasure for ref in refs)
        assert rouge_l(pred, refs) == pytest.approx(expected, abs=1e-6), (pred, refs)


@pytest.mark.parametrize(
    "prediction,references,expected",
    [
        ("running", ["runs"], 1.0),  # Porter: both → "run"
        ("was", ["wa"], 0.0),  # tokens of ≤ 3 characters are not stemmed ("was" would become "wa")
        ("Hello, world!", ["hello world"], 1.0),  # case and punctuation are ignored
        ("café", ["caf"], 1.0),  # non-ASCII letters are separators, as in Google's tokenizer
        ("the cat sat", ["a dog", "the cat sat down"], 6 / 7),  # best reference: P=1, R=3/4
        ("", ["anything"], 0.0),
        ("?!", ["?!"], 0.0),  # no tokens on either side
    ],
)
def test_rouge_l_hand_checked(prediction, references, expected):
    assert rouge_l(prediction, references) == pytest.approx(expected, abs=1e-7)


def test_exact_match_normalisation():
    assert normalize_answer("  The  Cat,\tsat! ") == "the cat sat"
    assert exact_match("The Cat!", ["the cat"]) == 1.0
    assert exact_match("cat", ["the cat"]) == 0.0  # SNI keeps articles
    assert exact_match("yes", ["No", "Yes."]) == 1.0  # max over references
    assert exact_match("", ["..."]) == 1.0  # both normalise to ""


def test_scores_reject_missing_references():
    with pytest.raises(ValueError, match="non-empty list"):
        rouge_l("x", [])
    with pytest.raises(ValueError, match="non-empty list"):
        exact_match("x", "x")


# --- InstructionMetrics ---------------------------------------------------------------------------

TASKS = [("t1", "Cat A"), ("t2", "Cat A"), ("t3", "B"), ("t4", "C")]


def _fill(metric: InstructionMetrics) -> None:
    metric.update(["yes", "no"], [["yes"], ["Yes"]], ["t1", "t1"])  # rougeL 1, 0; EM 1, 0
    metric.update(["the cat sat", "Hello, world"], [["the cat sat down"], ["hello world"]], ["t2", "t3"])


def test_instruction_metrics_aggregation():
    metric = InstructionMetrics(TASKS)
    _fill(metric)
    out = {k: v.item() for k, v in metric.compute().items()}
    expected = {
        "rougeL": 100 * (1 + 0 + 6 / 7 + 1) / 4, "exact_match": 50.0, "count": 4,
        "rougeL/task/t1": 50.0, "exact_match/task/t1": 50.0, "count/task/t1": 2,
        "rougeL/task/t2": 100 * 6 / 7, "exact_match/task/t2": 0.0, "count/task/t2": 1,
        "rougeL/task/t3": 100.0, "exact_match/task/t3": 100.0, "count/task/t3": 1,
        "rougeL/category/Cat A": 100 * (1 + 0 + 6 / 7) / 3, "exact_match/category/Cat A": 100 / 3,
        "count/category/Cat A": 3,
        "rougeL/category/B": 100.0, "exact_match/category/B": 100.0, "count/category/B": 1,
    }  # t4 / category C have no examples: no entries
    assert out.keys() == expected.keys()
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-5), key


def test_instruction_metrics_merge_like_ddp_and_reset():
    # merge_state reduces with each state's dist_reduce_fx ("cat"), as a DDP sync does.
    first, second = InstructionMetrics(TASKS), InstructionMetrics(TASKS)
    first.update(["yes", "no"], [["yes"], ["Yes"]], ["t1", "t1"])
    second.update(["the cat sat", "Hello, world"], [["the cat sat down"], ["hello world"]], ["t2", "t3"])
    first.merge_state(second)
    single = InstructionMetrics(TASKS)
    _fill(single)
    assert first.compute().keys() == single.compute().keys()
    for key, value in single.compute().items():
        torch.testing.assert_close(first.compute()[key], value)

    single.reset()
    single.update(["no"], [["yes"]], ["t3"])
    out = single.compute()
    assert out["count"].item() == 1 and out["rougeL"].item() == 0.0
    assert "count/task/t1" not in out


def test_instruction_metrics_unknown_task_and_bad_lengths():
    metric = InstructionMetrics(TASKS)
    with pytest.raises(KeyError, match="task_zzz"):
        metric.update(["a"], [["a"]], ["task_zzz"])
    with pytest.raises(ValueError, match="2 predictions"):
        metric.update(["a", "b"], [["a"]], ["t1"])
    with pytest.raises(ValueError, match="two categories"):
        InstructionMetrics([("t1", "A"), ("t1", "B")])


def test_results_table():
    metric = InstructionMetrics(TASKS)
    _fill(metric)
    table = results_table(metric.compute()).splitlines()
    assert table[0] == "| scope | name | examples | rougeL | exact_match |"
    assert "| task | t1 | 2 | 50.00 | 50.00 |" in table
    assert "| category | Cat A | 3 | 61.90 | 33.33 |" in table
    assert table[-1] == "| overall | all | 4 | 71.43 | 50.00 |"
    assert len(table) == 2 + 3 + 2 + 1  # header, tasks, categories, overall
