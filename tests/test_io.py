"""Artifacts on disk: θ0 weight digests and checkpoint provenance (`tagi.provenance`), and the modes of
atomically written files."""

import json
import os
from pathlib import Path

import pytest


def test_a_backbone_folder_retrained_in_place_is_noticed(tmp_path):
    """Checkpoints, teachers and adapters record θ0's weight digest; a θ0 replaced since no longer matches."""
    from tagi.io import BACKBONE_META, weights_digest, weights_record
    from tagi.modeling.backbone import load_backbone
    from tagi.training.config import Backbone

    folder = tmp_path / "theta0"
    load_backbone("tiny", dict(d_model=32, num_heads=2)).save_pretrained(folder)
    spec = Backbone(name=str(folder))
    saved = spec.record()
    assert len(saved["weights"]) == 16 and spec.matches(saved)
    assert spec.matches({key: value for key, value in saved.items() if key != "weights"})  # a record from before digests

    load_backbone("tiny", dict(d_model=32, num_heads=2), seed=1).save_pretrained(folder)  # retrained in place
    assert not spec.matches(saved) and spec.record()["weights"] != saved["weights"]

    # stage 0's recorded digest is trusted only while the files are the ones it recorded
    (folder / BACKBONE_META).write_text(json.dumps({**weights_record(folder), "weights_sha256": "recorded"}))
    assert weights_digest(folder) == "recorded"
    load_backbone("tiny", dict(d_model=32, num_heads=2), seed=2).save_pretrained(folder)
    assert weights_digest(folder) not in ("recorded", saved["weights"])


def test_a_hub_backbone_whose_weights_changed_since_is_noticed(tmp_path, monkeypatch):
    """A hub id records the digest of the weights the local cache has for it (and their revision); a later commit
    that changed no weight passes, one that changed the weights (downloaded by a later load) does not."""
    import huggingface_hub.constants

    from tagi.provenance import CheckpointError, Provenance
    from tagi.training.config import Backbone

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--model"

    def download(commit: str, weights: bytes) -> None:  # the cache layout from_pretrained leaves
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
        (repo / "snapshots" / commit / "model.safetensors").write_bytes(weights)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    spec = Backbone(name="org/model")
    assert "hub_weights" not in spec.record()  # not cached: nothing to record
    download("a" * 40, b"weights one")
    saved = spec.record()
    assert saved["revision"] == "a" * 40 and spec.matches(saved)
    student = Provenance.of({"tagi": {"stage": "finetune", "backbone": saved}}, "last.ckpt", "--ckpt_path")
    download("b" * 40, b"weights one")  # a commit that changed no weight (a README)
    assert spec.matches(saved)
    student.verify(["finetune"])
    download("c" * 40, b"weights two")  # the weights changed, and a later load downloaded them
    assert not spec.matches(saved) and spec.matches({key: value for key, value in saved.items() if key != "hub_weights"})
    with pytest.raises(CheckpointError, match=f"revision {'a' * 40}.*weights there are now .* \\(revision {'c' * 40}\\)"):
        student.verify(["finetune"])


def test_artifacts_get_the_users_umask(tmp_path):
    """Written to a temporary name (0600 / 0700) and renamed, they still get the user's usual mode."""
    from tagi.io import atomic_directory, atomic_write_text

    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "results.json", "{}\n")
        with atomic_directory(tmp_path / "adapter") as staging:
            (staging / "adapter_config.json").write_text("{}\n")
    finally:
        os.umask(previous)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "adapter").stat().st_mode & 0o777 == 0o755


def test_stage_zero_checkpoints_from_before_its_rename_are_read_as_theta0():
    from tagi.provenance import Provenance

    assert Provenance.of({"tagi": {"stage": "full"}}, "x.ckpt", "--ckpt_path").stage == "theta0"
    assert Provenance.of({"tagi": {"stage": "finetune"}}, "x.ckpt", "--ckpt_path").stage == "finetune"
    assert Provenance.of({}, "x.ckpt", "--ckpt_path").stage is None  # a checkpoint no stage of ours wrote


def test_provenance_verifies_stage_backbone_and_unchanged_weights(tmp_path):
    """Every reader of a checkpoint's record goes through `Provenance.verify`; each refusal names the option,
    the file, what it holds and what was expected."""
    import pytest

    from tagi.modeling.backbone import load_backbone
    from tagi.provenance import CheckpointError, Provenance
    from tagi.training.config import Backbone

    folder = tmp_path / "theta0"
    load_backbone("tiny", dict(d_model=32, num_heads=2)).save_pretrained(folder)
    spec = Backbone(name=str(folder))
    checkpoint = {"tagi": {"stage": "pretrain", "backbone": spec.record(), "architecture": {}}}
    record = Provenance.of(checkpoint, "run/last.ckpt", "--ckpt").verify(["pretrain", "finetune"]).record
    assert record == checkpoint["tagi"]
    assert Provenance.of(checkpoint, "a.ckpt", "--ckpt").verify(["pretrain"], spec).stage == "pretrain"

    with pytest.raises(CheckpointError, match=r"--ckpt_path a.ckpt was written by the 'pretrain' stage.*'finetune'.*Fix it"):
        Provenance.of(checkpoint, "a.ckpt", "--ckpt_path").verify(["finetune"], spec, hint="Fix it.")
    with pytest.raises(CheckpointError, match=r"init_from a.ckpt was trained on backbone .*but this run uses .*'tiny'"):
        Provenance.of(checkpoint, "a.ckpt", "init_from").verify(["pretrain"], Backbone())

    load_backbone("tiny", dict(d_model=32, num_heads=2), seed=1).save_pretrained(folder)  # θ0 retrained in place
    with pytest.raises(CheckpointError, match=r"--ckpt a.ckpt was trained on backbone .* the weights there are now"):
        Provenance.of(checkpoint, "a.ckpt", "--ckpt").verify(["pretrain"])
    with pytest.raises(CheckpointError, match="was trained on backbone"):
        Provenance.of(checkpoint, "a.ckpt", "--ckpt").verify(["pretrain"], spec)


def test_a_teacher_record_is_verified_against_the_student():
    import pytest

    from tagi.provenance import CheckpointError, verify_teacher
    from tagi.training.config import Backbone

    meta = {"backbone": Backbone().record(), "lora_rank": 8, "tokenizer": "byt5"}
    verify_teacher(Path("teachers/c"), meta, Backbone(), 8, "byt5")  # the same: no error
    with pytest.raises(CheckpointError, match=r"teacher teachers/c does not match.*LoRA rank 8 ≠ the hypernetwork's 4; "
                                              r"tokenizer 'byt5' ≠ 'synthetic'"):
        verify_teacher(Path("teachers/c"), meta, Backbone(), 4, "synthetic")
    with pytest.raises(CheckpointError, match=r"backbone .* ≠ "):
        verify_teacher(Path("teachers/c"), meta, Backbone(seed=1), 8, "byt5")


def test_a_folder_and_a_symlink_to_it_have_one_lock(tmp_path):
    """The lock was keyed by the path as typed: two fits, into a folder and into a symlink to it, both ran."""
    import pytest

    from tagi.errors import ConfigurationError
    from tagi.io import folder_lock

    real = tmp_path / "runs" / "finetune"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "runs-link").symlink_to(tmp_path / "runs")
    with folder_lock(real, "trainer.logger"):
        for other in (tmp_path / "link", tmp_path / "runs-link" / "finetune"):
            with pytest.raises(ConfigurationError, match=f"trainer.logger {other}: another run is writing into it"):
                with folder_lock(other, "trainer.logger"):
                    pass
    with folder_lock(tmp_path / "link", "trainer.logger"):  # released: the next writer gets it
        assert (tmp_path / "runs" / ".finetune.lock").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link", "runs", "runs-link"]


def test_a_damaged_theta0_record_is_a_warning_and_the_digest_is_computed(tmp_path, caplog):
    """tagi_backbone.json is only a cache of θ0's digest: damaged, every consumer (a stage, `tagi adapter`)
    stopped with a JSONDecodeError traceback."""
    from tagi.io import BACKBONE_META, weights_digest
    from tagi.modeling.backbone import load_backbone

    folder = tmp_path / "theta0"
    load_backbone("tiny", dict(d_model=32, num_heads=2)).save_pretrained(folder)
    digest = weights_digest(folder)
    for damage in (b"{not json", b"\xff\xfe", b"[1, 2]"):
        (folder / BACKBONE_META).write_bytes(damage)
        assert weights_digest(folder) == digest
        assert f"{folder / BACKBONE_META}: not readable as stage 0's record" in caplog.text
        caplog.clear()


def test_ctrl_c_during_a_checkpoint_write_is_delivered_once_the_file_is_whole(tmp_path, monkeypatch):
    """A KeyboardInterrupt inside `torch.save` broke its zip writer ("unexpected pos"), which hid the interrupt:
    the fit exited 1 with a traceback instead of 130 and the resume hint (seen in CI)."""
    import signal

    import torch

    from tagi.training.checkpoints import AtomicCheckpointIO

    real_save, calls = torch.save, []

    def save_interrupted(obj, handle):
        signal.raise_signal(signal.SIGINT)  # as if Ctrl-C were pressed while the file is written
        calls.append("after the signal")
        real_save(obj, handle)

    monkeypatch.setattr(torch, "save", save_interrupted)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's own (conftest.py)
    target = tmp_path / "last.ckpt"
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"weights": torch.arange(4.0)}, target)
    assert calls == ["after the signal"]
    assert torch.equal(torch.load(target)["weights"], torch.arange(4.0))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored
