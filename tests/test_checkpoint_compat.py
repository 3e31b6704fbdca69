"""A checkpoint written before the package layout changed (tests/fixtures/pre-layout-pretrain.ckpt:
a tiny pretrain-stage student, 3 steps, written by commit 4a71eda) still loads and computes the
logits it computed then. Checkpoints hold weights and plain `describe()` records, no class paths,
so moving code must not break the runs users already have."""

from pathlib import Path

import torch

from tagi.inference.student import Student

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_checkpoint_from_before_the_layout_move_loads_and_gives_the_same_logits():
    expected = torch.load(FIXTURES / "pre-layout-pretrain.expected.pt")
    student = Student.from_checkpoint(FIXTURES / "pre-layout-pretrain.ckpt")
    task = student.encode(expected["instruction"])
    batch = student.tokenizer(expected["inputs"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = student.model(task, batch["input_ids"], batch["attention_mask"],
                               decoder_input_ids=expected["decoder_input_ids"], merge=True).logits
    # Other CPUs round differently in the last bits; a wrong weight or path would move logits by ~1.
    torch.testing.assert_close(logits, expected["logits"], atol=1e-4, rtol=1e-4)
