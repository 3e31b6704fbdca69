"""benchmarks/rehearsal.py and scripts/gpu-check.sh: the GPU acceptance run is the CPU rehearsal's code with
CUDA's hardware settings, it refuses a machine without CUDA in one line, and the rehearsal's every
hand-off passes (here at a tiny shape, through the same configs/sni-t5-base/ files)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT

spec = importlib.util.spec_from_file_location("rehearsal", ROOT / "benchmarks/rehearsal.py")
rehearsal = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rehearsal)


def test_the_gpu_check_runs_the_rehearsal_with_only_the_hardware_settings_changed(tmp_path):
    script = (ROOT / "scripts/gpu-check.sh").read_text()
    assert "exec .venv/bin/python benchmarks/rehearsal.py --device cuda" in script
    for stage in rehearsal.STAGES:
        cpu = rehearsal.stage_command(stage, tmp_path, "cpu", None, 3)
        cuda = rehearsal.stage_command(stage, tmp_path, "cuda", None, 3)
        hardware = set(rehearsal.hardware_overrides("cpu", stage)) | set(rehearsal.hardware_overrides("cuda", stage))
        assert [arg for arg in cpu if arg not in hardware] == [arg for arg in cuda if arg not in hardware]
        assert cpu[3:6] == ["fit", "--config", str(ROOT / f"configs/sni-t5-base/{stage}.yaml")]  # the GPU user's config
    # the CUDA run keeps the config's own DeepSpeed strategy; the CPU one swaps only its class
    assert not any(arg.startswith("--trainer.strategy") for arg in rehearsal.hardware_overrides("cuda"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: gpu-check.sh would run")
def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_2():
    result = subprocess.run(["bash", "scripts/gpu-check.sh"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("gpu-check: no CUDA device") and not result.stdout


@pytest.mark.e2e
def test_the_rehearsal_passes_every_hand_off_at_a_tiny_shape(tmp_path):
    out = tmp_path / "rehearsal.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/rehearsal.py"), "--shape", "tiny", "--steps", "2",
                             "--work", str(tmp_path / "work"), "--out", str(out)], capture_output=True, text=True)
    report = json.loads(out.read_text())
    assert result.returncode == 0, json.dumps(report["hand_offs"], indent=1) + result.stderr[-2000:]
    assert [item["hand_off"] for item in report["hand_offs"]] == [
        "teachers → finetune", "stage-2 ZeRO folder → init_from", "student → tagi test", "tagi test → tagi adapter → peft"]
    for stage in rehearsal.STAGES:
        figures = report["stages"][stage]
        precision = "32-true" if stage == "pretrain" else "bf16-mixed"  # the config's own: Table 6 pretrains in float32
        strategy = "DDPStrategy" if stage == "teacher" else "CPUDeepSpeedStrategy"  # the teachers: DDP (ZeRO is refused)
        assert figures["processes"] == 2 and figures["strategy"] == strategy and figures["precision"] == precision
        assert figures["seconds_per_step"] > 0 and figures["tokens_per_step"] > 0 and figures["trainable_weights"] > 0
        assert figures["peak_rss_gib_per_process"] > 0
    assert Path(tmp_path / "work/theta0/config.json").is_file()
