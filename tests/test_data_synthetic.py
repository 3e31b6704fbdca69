"""The embedded task suite: deterministic, SNI-readable, small, and only solvable from the instruction."""

import filecmp
import random

from tagi.data import synthetic
from tagi.data.sni import build_clusters, load_split
from tagi.data.sni_dataset import prepare_data_dir


def tree_bytes(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files_and_other_seeds_differ(tmp_path):
    a = synthetic.write_suite(tmp_path / "a", seed=3, num_instances=20)
    b = synthetic.write_suite(tmp_path / "b", seed=3, num_instances=20)
    c = synthetic.write_suite(tmp_path / "c", seed=4, num_instances=20)
    assert tree_bytes(a) == tree_bytes(b)
    assert not filecmp.cmp(a / "tasks" / "task001_word_order_reverse_p0.json",
                           c / "tasks" / "task001_word_order_reverse_p0.json", shallow=False)


def test_cli_writes_the_same_suite(tmp_path):
    synthetic.main(["--out", str(tmp_path / "cli"), "--seed", "3", "--num-instances", "20"])
    assert tree_bytes(tmp_path / "cli") == tree_bytes(synthetic.write_suite(tmp_path / "api", 3, 20))


def test_suite_passes_the_reader_with_required_size(tmp_path):
    root = synthetic.write_suite(tmp_path, seed=0, num_instances=30)
    train, val, test = (load_split(root, subset=subset) for subset in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (93, 10, 10)
    names = [{t.name for t in tasks} for tasks in (train, val, test)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])  # disjoint task sets
    clusters = build_clusters(train + val + test)
    assert len(clusters) == 9
    for task in train + val + test:
        assert len(task.instances) == 30 and len(task.positive_examples) == 2
        assert len(task.definition.encode()) <= 130 and task.paraphrases and task.paraphrases[0] != task.definition
        assert all(len(i.input.encode()) <= 40 and len(i.outputs[0].encode()) <= 40 for i in task.instances)
        demos = {d.input for d in task.positive_examples}
        assert not demos & {i.input for i in task.instances}  # demonstrations never leak into instances
    # paraphrases: several distinct definitions per family
    for category in {t.category for t in train}:
        assert len({t.definition for t in train if t.category == category}) >= 2


def test_validation_and_test_hold_out_the_same_kinds():
    """Each of val and test has unseen combinations, unseen phrasings and a whole unseen category."""
    specs = synthetic.suite()
    train = [s for s in specs if s.split == "train"]
    seen_cells = {tuple(op.slug for op in s.ops) for s in train}
    seen_categories = {s.category for s in train}
    for split, unseen_category in (("val", "Acronyms"), ("test", "Composition")):
        held = [s for s in specs if s.split == split]
        assert {s.category for s in held} - seen_categories == {unseen_category}
        combos = [s for s in held if s.category in seen_categories and tuple(op.slug for op in s.ops) not in seen_cells]
        phrasings = [s for s in held if s.phrasing == synthetic.UNSEEN_PHRASING]
        assert len(combos) >= 6 and len(phrasings) == 2 and all(tuple(op.slug for op in s.ops) in seen_cells for s in phrasings)
    assert not {s.paraphrase() for s in specs} & {s.definition() for s in specs}  # paraphrases are never a task


def test_copying_the_input_never_matches_and_inputs_have_many_answers(tmp_path):
    root = synthetic.write_suite(tmp_path, seed=0, num_instances=30)
    for subset in ("train", "val", "test"):
        for task in load_split(root, subset=subset):
            assert all(i.input not in i.outputs for i in task.instances), task.name
    # one input, many different answers across the train tasks: only the instruction tells them apart
    train = [s for s in synthetic.suite() if s.split == "train"]
    rng = random.Random(0)
    for _ in range(50):
        words = synthetic._random_words(rng)
        assert len({s.outputs(list(words))[0] for s in train}) >= 15


def test_held_out_tasks_need_the_instruction():
    """Every held-out task disagrees with every train task on some input: no single input → output
    mapping learnt from training solves it; only the definition says what to do."""
    specs = synthetic.suite()
    train = [s for s in specs if s.split == "train"]
    rng = random.Random(0)
    probes = [synthetic._random_words(rng) for _ in range(200)]
    for held_out in (s for s in specs if s.split != "train"):
        assert held_out.definition() not in {s.definition() for s in train}
        if held_out.phrasing == synthetic.UNSEEN_PHRASING:
            continue  # a trained operation in new words: its answers are those of a train task by design
        for seen in train:
            assert any(held_out.outputs(list(w))[0] != seen.outputs(list(w))[0] for w in probes), (held_out, seen)


def test_prepare_data_dir_generates_once(tmp_path):
    root = prepare_data_dir("synthetic", synthetic_seed=5, cache_dir=str(tmp_path))
    assert root == tmp_path / "synthetic-v3-seed5" and (root / "synthetic.json").is_file()
    stamp = (root / "synthetic.json").stat().st_mtime_ns
    assert prepare_data_dir(None, synthetic_seed=5, cache_dir=str(tmp_path)) == root
    assert (root / "synthetic.json").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob("*.tmp*"))


def test_synthetic_tokenizer_is_deterministic_and_covers_held_out_text():
    from tagi.data.synthetic import suite
    from tagi.data.tokenization import load_tokenizer, synthetic_tokenizer

    tokenizer = load_tokenizer("synthetic")
    synthetic_tokenizer.cache_clear()
    assert load_tokenizer("synthetic").get_vocab() == tokenizer.get_vocab()  # rebuilt: same vocabulary
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)  # T5's ids
    words = ["moth", "frog", "ant"]
    held_out = [spec for spec in suite() if spec.split != "train"]
    texts = [spec.definition() for spec in held_out] + [spec.paraphrase() for spec in held_out] + [spec.outputs(list(words))[0] for spec in held_out]
    for text in texts + ["Definition: x\n\nPositive Example 1 -\nInput: a b\nOutput: B A"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text
    assert len(tokenizer("Given a list of words, reverse the order of the words.")["input_ids"]) <= 15  # word pieces
