"""C4 documents and the 3-way / 4-way splitters."""

import json
import random
from pathlib import Path

import pytest

from tagi.data.c4 import C4Segments, iter_documents, split_four_way, split_three_way
from tagi.data.tokenization import load_tokenizer

C4_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wiki-c4" / "c4-sample.jsonl"
needs_c4 = pytest.mark.skipif(not C4_SAMPLE.is_file(), reason=f"shared C4 sample not found at {C4_SAMPLE}")


@pytest.mark.parametrize("n", [3, 7, 20, 33, 500])
def test_three_way_lengths_and_consecutive(n):
    ids = list(range(1000, 1000 + n))
    rng = random.Random(n)
    for _ in range(100):
        a, b, c = split_three_way(ids, rng, max_a=10, max_b=12, max_c=8, min_piece=1)
        assert 1 <= len(a) <= 10 and 1 <= len(b) <= 12 and 1 <= len(c) <= 8
        assert a + b + c == ids[:len(a) + len(b) + len(c)]  # consecutive pieces of the same document
        if n <= 30:
            assert len(a) + len(b) + len(c) == n  # a short document is covered exactly


def test_four_way_lengths_and_consecutive():
    ids, rng = list(range(100)), random.Random(0)
    lengths = set()
    for _ in range(200):
        a, b, c, d = split_four_way(ids, rng, 5, 6, 7, 8, min_piece=2)
        assert a + b + c + d == ids[:len(a + b + c + d)]
        assert all(2 <= len(p) <= m for p, m in zip((a, b, c, d), (5, 6, 7, 8)))
        lengths.add((len(a), len(b), len(c), len(d)))
    assert len(lengths) > 20  # the split points really are random


def test_splitters_reproducible_and_too_short():
    ids = list(range(300))
    first = [split_three_way(ids, random.Random(7), 50, 50, 50, 4) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    assert split_three_way(list(range(5)), random.Random(0), 9, 9, 9, min_piece=2) is None
    with pytest.raises(ValueError, match="min_piece"):
        split_three_way(ids, random.Random(0), 1, 9, 9, min_piece=2)


def test_local_jsonl_txt_and_bad_lines(tmp_path):
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "one doc"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    (tmp_path / "more.txt").write_text("line doc\n\nsecond line\n")
    assert list(iter_documents(str(tmp_path / "docs.jsonl"))) == ["one doc", "two"]
    assert list(iter_documents(str(tmp_path))) == ["one doc", "two", "line doc", "second line"]
    assert list(iter_documents(str(tmp_path / "*.txt"))) == ["line doc", "second line"]
    bad = tmp_path / "bad" / "bad.jsonl"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: field 'text'"):
        list(iter_documents(str(bad)))
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: malformed JSON"):
        list(iter_documents(str(bad)))
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        list(iter_documents(str(tmp_path / "nothing-here")))


def segments(source, **kw):
    kw = dict(max_instruction_length=24, max_input_length=20, max_target_length=12, min_piece=2) | kw
    return list(C4Segments(source, load_tokenizer("byt5"), **kw))


def test_segments_are_consecutive_reproducible_and_bounded(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(400))
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": text}) + "\n")
    tok = load_tokenizer("byt5")
    doc, eos = tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id
    segs = segments(str(tmp_path / "d.jsonl"), seed=1)
    assert segs == segments(str(tmp_path / "d.jsonl"), seed=1) != segments(str(tmp_path / "d.jsonl"), seed=2)
    joined = []
    for s in segs:
        assert len(s["instruction"]) <= 24 and len(s["input"]) <= 20 and len(s["labels"]) <= 12
        assert s["instruction"][-1] == s["input"][-1] == s["labels"][-1] == eos
        joined += s["instruction"][:-1] + s["input"][:-1] + s["labels"][:-1]
    assert joined == doc[:len(joined)] and len(doc) - len(joined) < 6  # a, b, c tile the document in order


def test_four_way_segments_and_epoch_length(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(400))
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": text}) + "\n")
    segs = segments(str(tmp_path / "d.jsonl"), four_way=True, num_segments=50)
    assert len(segs) == 50  # cycles over the single document with fresh split points
    assert all(len(s["instruction"]) <= 24 for s in segs)


@needs_c4
def test_shared_c4_sample_offline():
    docs = iter_documents(str(C4_SAMPLE))
    assert next(docs).startswith("Anarchism")
    assert sum(1 for _ in docs) + 1 == 1159
    tok = load_tokenizer(str(C4_SAMPLE.parents[2] / "tokenizers" / "t5"))
    segs = list(C4Segments(str(C4_SAMPLE), tok, 64, 64, 32, num_segments=20, max_documents=5))
    assert len(segs) == 20 and all(len(s["labels"]) <= 32 for s in segs)


def test_hub_spec_is_parsed_for_streaming(monkeypatch):
    """The online path (not run here): `hf:allenai/c4/en` → load_dataset("allenai/c4", "en", streaming)."""
    import datasets

    calls = []

    def fake_load_dataset(repo, config, split, streaming):
        calls.append((repo, config, split, streaming))
        return iter([{"text": "streamed"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert list(iter_documents("hf:allenai/c4/en")) == ["streamed"]
    assert list(iter_documents("hf:wikitext", split="validation")) == ["streamed"]
    assert calls == [("allenai/c4", "en", "train", True), ("wikitext", None, "validation", True)]


def _document(tmp_path, n=400) -> str:
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "".join(chr(ord("a") + i % 26) for i in range(n))}) + "\n")
    return str(tmp_path / "d.jsonl")


def test_four_way_input_length_fixes_b_and_nothing_else(tmp_path):
    """HyperTuning §4.2's short b: every segment's model input is exactly that many tokens (+ EOS)."""
    source = _document(tmp_path)
    drawn = segments(source, four_way=True, num_segments=40)
    fixed = segments(source, four_way=True, num_segments=40, four_way_input_length=5)
    assert len({len(s["input"]) for s in drawn}) > 1  # the default draws b like the other pieces
    assert {len(s["input"]) for s in fixed} == {6}
    assert len({len(s["labels"]) for s in fixed}) > 1 and all(len(s["instruction"]) <= 24 for s in fixed)


@pytest.mark.parametrize("kw, message", [
    (dict(four_way_input_length=5), "four_way_input_length: 5; .* needs four_way: true"),
    (dict(four_way=True, four_way_input_length=20), r"four_way_input_length: 20; .* max_input_length less the prompt format's tokens \(19"),
    (dict(four_way=True, four_way_input_length=1), r"four_way_input_length: 1; .* min_piece \(2\)"),
    (dict(max_sequence_length=5), "max_sequence_length: 5; the pieces need at least 6 tokens"),
])
def test_split_options_that_cannot_work_are_refused_naming_the_option(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        segments(_document(tmp_path), **kw)


def test_max_sequence_length_caps_the_document_tokens_of_a_segment(tmp_path):
    """TAGI §A.2: each C4 sequence truncated to 1024 tokens, then split. Here 30 of the 50 the limits allow: every
    segment but the document's last covers exactly 30 tokens, still consecutive."""
    source = _document(tmp_path)
    covered = lambda segs: [len(s["instruction"]) + len(s["input"]) + len(s["labels"]) - 3 for s in segs]  # no EOS
    assert max(covered(segments(source, seed=3))) > 30  # without the cap a segment covers up to 23 + 19 + 11
    capped = segments(source, seed=3, max_sequence_length=30)
    assert set(covered(capped)[:-1]) == {30} and covered(capped)[-1] <= 30
    tok = load_tokenizer("byt5")
    joined = [t for s in capped for t in s["instruction"][:-1] + s["input"][:-1] + s["labels"][:-1]]
    text = json.loads(Path(source).read_text())["text"]
    assert joined == tok(text, add_special_tokens=False)["input_ids"][:len(joined)]
