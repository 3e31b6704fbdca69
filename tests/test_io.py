"""Artifacts on disk: θ0 weight digests (provenance) and the modes of atomically written files."""

import json
import os


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
    from tagi.training.checkpoints import recorded_stage

    assert recorded_stage({"stage": "full"}) == "theta0" and recorded_stage({"stage": "finetune"}) == "finetune"
