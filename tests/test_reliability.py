"""Crash and resume, atomic artifacts, bad input (a clear error and nothing written), NaN/inf stop."""

import csv
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import FAST, ROOT, TINY, chdir_scratch, config, fit, stages_in
from tagi.__main__ import main as tagi_main
from tagi.modeling.adapters import load_adapter, save_adapter
from tagi.data.modules import FinetuneDataModule
from tagi.data.synthetic import ensure_corpus, write_suite
from tagi.modeling.lora import LoRAWeights

pytestmark = pytest.mark.e2e  # CLI runs on tiny stages; the unit tests of files and provenance are in test_io.py

CHECKPOINT_EVERY = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true, every_n_train_steps: %d}
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    yield from chdir_scratch(tmp_path_factory, "reliability")


@pytest.fixture(scope="module")
def stages(workdir, trained_stages):
    """Teachers and a stage-2 checkpoint of the tiny backbone (this module's copy): what the finetune stage reads."""
    return stages_in(trained_stages, workdir)


def finetune_args(stages, *extra: str) -> list[str]:
    return ["fit", "--config", config("finetune"), TINY, *FAST, f"--model.init_args.init_from={stages['pretrain']}",
            f"--model.init_args.teachers={stages['teachers']}", *extra]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime: 'nothing on disk changed' is equality of two trees."""
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*")) if path.is_file()}


def run_fails_cleanly(args: list[str], capsys, *expected: str) -> str:
    """`python -m tagi ARGS` exits 2 with a one-paragraph message containing `expected`, writing nothing."""
    root = Path.cwd()
    before = tree(root)
    with pytest.raises(SystemExit) as exit_info:
        tagi_main(args)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: ") and "Traceback" not in message
    for text in expected:
        assert text in message, message
    assert tree(root) == before, "a failed run changed files on disk"
    return message


# ---------------------------------------------------------------- crash and resume

def _run_stage(args: list[str], run_dir: str, wait: bool = True) -> subprocess.Popen:
    command = [sys.executable, "-m", "tagi", *args, "--trainer.logger.save_dir=.", f"--trainer.logger.name={run_dir}",
               "--trainer.logger.version="]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    if wait:
        _, err = process.communicate()
        assert process.returncode == 0, err[-3000:]
    return process


def resume_args(workdir: Path, stages) -> list[str]:
    """A finetune run of 40 steps, saved every 4; the first call also trains it uninterrupted, into `uninterrupted/`."""
    (workdir / "ckpt-every-4.yaml").write_text(CHECKPOINT_EVERY % 4)  # step 40 is saved
    args = [*finetune_args(stages), "--config", "ckpt-every-4.yaml", "--trainer.max_steps=40",
            "--trainer.val_check_interval=20", "--trainer.deterministic=true",
            "--model.init_args.architecture.generator=hart", "--model.init_args.init_from=null",
            "--model.init_args.distillation.consistency_weight=0.1",  # the HART generator and its state must resume too
            "--trainer.logger.init_args.flush_logs_every_n_steps=1000"]  # the log reaches disk with each checkpoint
    if not (workdir / "uninterrupted/complete.json").is_file():
        _run_stage(args, "uninterrupted")
    return args


def assert_resumed_as_uninterrupted(workdir: Path, run: str) -> None:
    """Weights tensor for tensor, the final metrics, and metrics.csv's logged values equal the uninterrupted run's."""
    expected, resumed = (torch.load(workdir / f"{name}/checkpoints/last.ckpt", weights_only=False) for name in ("uninterrupted", run))
    assert resumed["global_step"] == expected["global_step"] == 40
    assert not any(key.startswith("model.backbone.") for key in expected["state_dict"])  # θ0 is not saved again
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    metrics = [json.loads((workdir / f"{name}/complete.json").read_text())["metrics"] for name in ("uninterrupted", run)]
    assert metrics[0]["val/rougeL"] == metrics[1]["val/rougeL"]
    assert metrics[0]["train/loss"] == metrics[1]["train/loss"]
    # The resumed run's metrics.csv continues the stopped one's: the same logged values at the same steps.
    assert _logged(workdir / f"{run}/metrics.csv") == _logged(workdir / "uninterrupted/metrics.csv")


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(workdir, stages):
    args = resume_args(workdir, stages)
    victim = _run_stage(args, "resumed", wait=False)
    last = workdir / "resumed/checkpoints/last.ckpt"
    # killed once last.ckpt holds step 24 or later: past the rows logged at steps 9 and 19
    signal_when_saved(victim, last.parent, 28, signal.SIGKILL)
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (workdir / "resumed/complete.json").exists()
    killed_at = torch.load(last, weights_only=False)["global_step"]
    assert 24 <= killed_at < 40

    _run_stage([*args, "--ckpt_path=last"], "resumed")
    assert_resumed_as_uninterrupted(workdir, "resumed")


def test_sigterm_mid_run_exits_143_says_how_to_resume_and_the_resume_is_exact(workdir, stages):
    """Lightning turns SIGTERM into a SystemExit without a code: the run exited 0, as if it had finished."""
    args = resume_args(workdir, stages)
    victim = _run_stage(args, "terminated", wait=False)
    _, err = signal_when_saved(victim, workdir / "terminated/checkpoints", 8, signal.SIGTERM)
    assert victim.returncode == 143, err[-3000:]
    stopped = err.strip().splitlines()[-1]
    assert stopped.startswith("stopped: `fit` was stopped by SIGTERM at step") and "Traceback" not in err
    assert "terminated/checkpoints/last.ckpt, is at step" in stopped and "--ckpt_path last" in stopped
    assert not (workdir / "terminated/complete.json").exists()
    _run_stage([*args, "--ckpt_path=last"], "terminated")
    assert_resumed_as_uninterrupted(workdir, "terminated")


def test_ctrl_c_mid_run_exits_130_and_says_how_to_resume(workdir):
    """Lightning ended a Ctrl-C'd fit with exit status 1 after "Detected KeyboardInterrupt, attempting graceful
    shutdown ...", and no word of the checkpoint to resume from (as SIGTERM's `stopped:` line gives)."""
    (workdir / "ckpt-every-4.yaml").write_text(CHECKPOINT_EVERY % 4)
    victim = _run_stage(["fit", "--config", config("pretrain"), TINY, *FAST, "--trainer.max_steps=4000", "--config",
                         "ckpt-every-4.yaml"], "ctrl-c", wait=False)
    _, err = signal_when_saved(victim, workdir / "ctrl-c/checkpoints", 8, signal.SIGINT)
    assert victim.returncode == 130, err[-3000:]
    stopped = err.strip().splitlines()[-1]
    assert stopped.startswith("stopped: `fit` was stopped by Ctrl-C (SIGINT) at step"), stopped
    assert "ctrl-c/checkpoints/last.ckpt, is at step" in stopped and "--ckpt_path last" in stopped
    assert not (workdir / "ctrl-c/complete.json").exists()


def test_sigterm_stops_the_pipeline_with_143_and_no_later_stage_runs(workdir):
    """The pipeline exited 0 with no table, and no word that its later stages had not run."""
    (workdir / "ckpt-every-4.yaml").write_text(CHECKPOINT_EVERY % 4)
    overrides = [TINY, *FAST, "--trainer.max_steps=400", "--config", str(workdir / "ckpt-every-4.yaml")]
    command = [sys.executable, "-m", "tagi", "pipeline", "--config", config("pipeline"), "--run=sigterm",
               f"--overrides={json.dumps(overrides)}"]
    victim = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    theta0 = workdir / "checkpoints/sigterm/theta0"
    out, err = signal_when_saved(victim, theta0 / "checkpoints", 4, signal.SIGTERM)
    assert victim.returncode == 143, err[-3000:]
    assert "`fit` was stopped by SIGTERM" in err and "rerun the same `tagi pipeline` command" in err
    assert "--ckpt_path last" not in err.strip().splitlines()[-1]  # the pipeline resumes its stage itself
    assert (theta0 / "checkpoints/last.ckpt").is_file() and not (theta0 / "complete.json").exists()
    assert not (workdir / "checkpoints/sigterm/teacher").exists() and not (workdir / "checkpoints/sigterm/pipeline.json").exists()
    assert "| model" not in out  # no table


def signal_when_saved(process: subprocess.Popen, checkpoints: Path, step: int, signum: int) -> tuple[str, str]:
    """Send `signum` once a periodic checkpoint of `step` or later is in `checkpoints`; the process's output."""
    deadline = time.time() + 300
    while _saved_step(checkpoints) < step and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signum)
    try:
        return process.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # the signal was lost: fail, not hang the suite until its 4000 steps are done
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"the run went on for 300 s after {signal.Signals(signum).name}:\n{err[-2000:]}") from None


def _saved_step(folder: Path) -> int:
    steps = [int(path.stem.rsplit("step=", 1)[1]) for path in folder.glob("*step=*.ckpt")]
    return max(steps, default=0)


def _logged(path: Path) -> set[tuple[str, str, str]]:
    with path.open(newline="") as file:
        return {(row["step"], key, value) for row in csv.DictReader(file) for key, value in row.items() if value and key != "step"}


def test_a_killed_adapter_write_leaves_no_partial_artifact(tmp_path):
    """SIGKILL in the middle of writing an adapter: the old adapter stays whole, no half file appears."""
    lora = LoRAWeights(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 8, 4), 2.0)
    sites = ["encoder.block.0.layer.0.SelfAttention.q", "encoder.block.0.layer.0.SelfAttention.v"]
    target = tmp_path / "adapter"
    save_adapter(target, lora, sites, 8.0, "tiny")
    script = f"""
import os, signal, torch, safetensors.torch as st
from tagi.modeling import adapters
real = st.save_file
def dying_save(tensors, path, *args, **kwargs):
    with open(path, "wb") as handle:
        handle.write(b"partial")  # half a file on disk, then the process dies
    os.kill(os.getpid(), signal.SIGKILL)
adapters.save_file = dying_save
lora = adapters.LoRAWeights(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 8, 4), 2.0)
adapters.save_adapter({str(target)!r}, lora, {sites!r}, 8.0, "tiny")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -signal.SIGKILL
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith(".tmp-")) == ["adapter"]
    assert torch.equal(load_adapter(target, sites).A, lora.A)  # the previous adapter, intact


# ---------------------------------------------------------------- a full disk: one error naming the file, nothing half written

def tagi_process(args: list[str], file_size_limit: int | None = None, **env: str) -> subprocess.CompletedProcess:
    """`python -m tagi ARGS` in a child process; `file_size_limit`: RLIMIT_FSIZE, so a write past that many bytes
    fails with EFBIG ("File too large") as a full disk would (Python ignores the SIGXFSZ that comes with it)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run([sys.executable, "-m", "tagi", *args], capture_output=True, text=True,
                          preexec_fn=limit if file_size_limit else None,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def hidden_files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob(".tmp-*"))


def test_a_checkpoint_that_cannot_be_written_names_it_and_keeps_the_old_one(workdir):
    """A resume whose checkpoint does not fit: an OSError traceback naming no file (EFBIG here, ENOSPC on a
    full disk) from Lightning's temporary file in $TMPDIR. Now one paragraph naming last.ckpt, exit 2."""
    fit("pretrain", "--trainer.logger.init_args.name=no-room", "--trainer.max_steps=2")
    folder = workdir / "checkpoints/demo/no-room/checkpoints"
    before = (folder / "last.ckpt").read_bytes()
    resumed = tagi_process(["fit", "--config", config("pretrain"), TINY, *FAST, "--trainer.logger.init_args.name=no-room",
                            "--ckpt_path=last", "--overwrite=true"], file_size_limit=len(before) // 2)
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    message = resumed.stderr.strip().splitlines()[-1]
    assert message == (f"error: {Path('checkpoints/demo/no-room/checkpoints/last.ckpt')}: cannot be written (File too large); "
                       "the file is larger than this process may write (ulimit -f) or the filesystem allows; what was "
                       "there before is unchanged")
    assert (folder / "last.ckpt").read_bytes() == before and hidden_files(folder) == []


def test_a_config_yaml_that_cannot_be_written_keeps_the_old_one(workdir):
    """Lightning wrote config.yaml in place when the fit set up: a resume on a full disk (RLIMIT_FSIZE 3000 bytes, the
    file is ~3.2 kB) truncated the run's config.yaml and left 3000 bytes of it, with a traceback naming no file."""
    fit("pretrain", "--trainer.logger.init_args.name=no-room-config", "--trainer.max_steps=2")
    folder = workdir / "checkpoints/demo/no-room-config"
    before = {name: (folder / name).read_bytes() for name in ("config.yaml", "metrics.csv")}
    resumed = tagi_process(["fit", "--config", config("pretrain"), TINY, *FAST, "--trainer.logger.init_args.name=no-room-config",
                            "--ckpt_path=last", "--overwrite=true"], file_size_limit=3000)
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    assert resumed.stderr.strip().splitlines()[-1].startswith(
        f"error: {Path('checkpoints/demo/no-room-config/config.yaml')}: cannot be written (File too large)")
    assert {name: (folder / name).read_bytes() for name in before} == before and hidden_files(folder) == []


def test_a_test_run_that_cannot_write_its_predictions_leaves_the_earlier_ones_and_no_hidden_file(workdir, stages):
    """A disk full while `test` streams its predictions (RLIMIT_FSIZE: 16 kB, the file is ~36 kB): a traceback
    naming no file, and a hidden half `.tmp-predictions.jsonl-*` left in the run folder."""
    evaluate = ["test", "--config", config("pretrain"), TINY, f"--ckpt_path={stages['pretrain']}", "--trainer.logger.init_args.name=no-room-test",
                "--data.init_args.max_test_instances_per_task=20", "--trainer.enable_progress_bar=false"]
    assert tagi_process(evaluate).returncode == 0
    folder = workdir / "checkpoints/demo/no-room-test"
    earlier = {name: (folder / name).read_bytes() for name in ("predictions.jsonl", "results.json", "results.md")}
    failed = tagi_process(evaluate, file_size_limit=16_000)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert failed.stderr.strip().splitlines()[-1].startswith(
        f"error: {Path('checkpoints/demo/no-room-test/predictions.jsonl')}: cannot be written (File too large)")
    assert {name: (folder / name).read_bytes() for name in earlier} == earlier and hidden_files(folder) == []


def _can_mount_a_tmpfs() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount_a_tmpfs(), reason="needs `unshare` with user namespaces, to mount a small tmpfs")
def test_a_checkpoint_is_staged_beside_it_not_in_tmpdir(tmp_path, monkeypatch):
    """Two small filesystems (tmpfs, in a mount namespace of the test's own). Lightning wrote a checkpoint to
    $TMPDIR, then moved it: onto a full run folder the move is a copy, which left 600 kB of a 1 MB last.ckpt
    under its final name; and a $TMPDIR too small for one checkpoint failed a run with room to spare."""
    monkeypatch.chdir(tmp_path)
    for folder in ("full", "small-tmp"):
        (tmp_path / folder).mkdir()
    command = shlex.join([sys.executable, "-m", "tagi", "fit", "--config", config("pretrain"), TINY, *FAST])
    script = (f"mount -t tmpfs -o size=600k tmpfs full && mount -t tmpfs -o size=64k tmpfs small-tmp || exit 99\n"
              f"{command} --trainer.logger.init_args.save_dir=full 2> full.err; echo $? > full.rc\n"
              "find full -type f | sort > full.files\n"
              f"TMPDIR=$PWD/small-tmp {command} --trainer.logger.init_args.save_dir=roomy 2> small-tmp.err; echo $? > small-tmp.rc\n")
    subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert Path("full.rc").read_text().strip() == "2", Path("full.err").read_text()[-3000:]
    assert Path("full.err").read_text().strip().splitlines()[-1].startswith(
        "error: full/pretrain/checkpoints/last.ckpt: cannot be written (No space left on device); the disk is full")
    assert "last.ckpt" not in Path("full.files").read_text() and ".tmp-" not in Path("full.files").read_text()
    assert Path("small-tmp.rc").read_text().strip() == "0", Path("small-tmp.err").read_text()[-3000:]
    assert torch.load("roomy/pretrain/checkpoints/last.ckpt", weights_only=False)["global_step"] == 4


# ---------------------------------------------------------------- bad input: clear error, nothing written

def test_missing_data_dir(workdir, stages, capsys):
    run_fails_cleanly(finetune_args(stages, "--data.init_args.data_dir=no/such/dir"), capsys,
                      "data.init_args.data_dir", "no/such/dir", "is not a directory", "Super-NaturalInstructions layout")


def test_a_task_in_two_split_lists_stops_before_anything_is_built(workdir, stages, capsys, tmp_path):
    from tagi.data.synthetic import write_suite

    suite = write_suite(tmp_path / "suite", num_instances=3)
    splits = tmp_path / "splits"
    splits.mkdir()
    for subset in ("train", "val", "test"):
        (splits / f"{subset}_tasks.txt").write_text((suite / "splits/default" / f"{subset}_tasks.txt").read_text())
    shared = (splits / "val_tasks.txt").read_text().split()[0]
    with open(splits / "test_tasks.txt", "a") as handle:
        handle.write(shared + "\n")  # a validation task that is also a test task
    run_fails_cleanly(finetune_args(stages, f"--data.init_args.data_dir={suite}", f"--data.init_args.splits_dir={splits}"),
                      capsys, shared, "val_tasks.txt", "test_tasks.txt", "in both lists", "disjoint")


def test_a_test_task_spelled_another_way_in_the_train_list_is_refused(tmp_path, capsys, monkeypatch):
    """`./x` passed the overlap check against `x`, and the test task was trained on; `../` read outside data_dir."""
    monkeypatch.chdir(tmp_path)
    suite = write_suite(tmp_path / "suite", num_instances=3)
    splits = tmp_path / "splits"
    shutil.copytree(suite / "splits/default", splits)
    test_task = (splits / "test_tasks.txt").read_text().split()[0]
    train = (splits / "train_tasks.txt").read_text()
    fit = ["fit", "--config", config("theta0"), TINY, *FAST, f"--data.init_args.data_dir={suite}",
           f"--data.init_args.splits_dir={splits}", "--model.init_args.output_dir=theta0"]
    (splits / "train_tasks.txt").write_text(train + f"./{test_task}\n")
    run_fails_cleanly(fit, capsys, "train_tasks.txt and", "test_tasks.txt", repr(test_task), "in both lists")
    (splits / "train_tasks.txt").write_text(train + f"../../other/tasks/{test_task}\n")
    run_fails_cleanly(fit, capsys, str(splits / "train_tasks.txt"), f"'../../other/tasks/{test_task}' is not a task name")


def test_missing_splits_dir(workdir, stages, capsys):
    run_fails_cleanly(finetune_args(stages, "--data.init_args.splits_dir=no/such/splits"), capsys,
                      "data.init_args.splits_dir", "no/such/splits", "is not a directory", "python -m tagi.data.carve")


def test_missing_backbone_folder(workdir, stages, capsys):
    run_fails_cleanly(["fit", "--config", config("finetune"), "--model.init_args.backbone.name=checkpoints/none/theta0"],
                      capsys, "model.init_args.backbone.name", "checkpoints/none/theta0", "stage 0")


def test_teachers_missing_a_cluster(workdir, stages, capsys):
    partial = workdir / "teachers-partial"
    if not partial.exists():
        shutil.copytree(stages["teachers"], partial)
        shutil.rmtree(partial / "counting")
    run_fails_cleanly(finetune_args(stages, f"--model.init_args.teachers={partial}"), capsys,
                      "teacher for cluster 'Counting' not found", str(partial / "counting"), "run the teacher stage")


def test_two_categories_with_one_teacher_folder_name_are_refused_before_training(tmp_path, capsys, monkeypatch):
    """'Word Order' and 'Word-Order' wrote one folder: "wrote 4 teacher adapters" left 3, and the student
    distilled both clusters from the survivor."""
    monkeypatch.chdir(tmp_path)
    suite = write_suite(tmp_path / "suite", num_instances=3)
    for path in sorted((suite / "tasks").glob("*.json")):
        task = json.loads(path.read_text())
        if task["Categories"][0] == "Case" and path.stem in (suite / "splits/default/train_tasks.txt").read_text():
            path.write_text(json.dumps({**task, "Categories": ["Word-Order"]}))
            break
    run_fails_cleanly(["fit", "--config", config("teacher"), TINY, *FAST, f"--data.init_args.data_dir={suite}",
                       "--model.init_args.output_dir=teachers/t"], capsys,
                      "categories 'Word Order' and 'Word-Order' have one teacher folder name, 'word-order'")


def test_teacher_rank_different_from_the_hypernetwork(workdir, stages, capsys):
    run_fails_cleanly(finetune_args(stages, "--model.init_args.architecture.lora_rank=4", "--model.init_args.init_from=null"),
                      capsys, "does not match this student", "LoRA rank 8 ≠ the hypernetwork's 4", "Retrain the teachers")


def edited_teachers(stages, name: str, file_name: str, changes) -> Path:
    """A copy of the teachers whose `file_name` (JSON) in every cluster folder is edited by `changes`."""
    copy = Path.cwd() / name
    if not copy.exists():
        shutil.copytree(stages["teachers"], copy)
        for path in copy.glob(f"*/{file_name}"):
            path.write_text(json.dumps(changes(json.loads(path.read_text()))))
    return copy


def test_teacher_backbone_different_from_the_student(workdir, stages, capsys):
    other = edited_teachers(stages, "teachers-other-backbone", "meta.json",
                            lambda meta: {**meta, "backbone": {**meta["backbone"], "seed": 7}})
    run_fails_cleanly(finetune_args(stages, f"--model.init_args.teachers={other}"), capsys,
                      "does not match this student", "backbone")


def test_teacher_targets_different_from_the_hypernetwork(workdir, stages, capsys):
    other = edited_teachers(stages, "teachers-other-targets", "adapter_config.json",
                            lambda config: {**config, "target_modules": ["q", "k", "v"]})
    run_fails_cleanly(finetune_args(stages, f"--model.init_args.teachers={other}"), capsys,
                      "cannot be used", "adapter_config.json", "target_modules is ['k', 'q', 'v'], expected ['q', 'v']",
                      "Retrain the teachers")


def test_stage2_checkpoint_from_another_backbone(workdir, stages, capsys):
    run_fails_cleanly(finetune_args(stages, "--model.init_args.backbone.seed=5"), capsys,
                      "model.init_args.init_from", "was trained on backbone", "same model.init_args.backbone")


def test_resuming_from_another_stage_checkpoint(workdir, stages, capsys):
    run_fails_cleanly(finetune_args(stages, f"--ckpt_path={stages['pretrain']}"), capsys,
                      "--ckpt_path", "'pretrain' stage", "'finetune' stage")


@pytest.mark.parametrize("option, message", [
    ("--trainer.max_steps=0", "trainer.max_steps: 0 trains nothing"),
    ("--data.init_args.batch_size=0", "data.init_args.batch_size: 0; it must be at least 1"),
    ("--data.init_args.tasks_per_batch=-1", "data.init_args.tasks_per_batch: -1; it must be at least 1"),
    ("--data.init_args.max_input_length=0", "data.init_args.max_input_length: 0; it must be at least 1"),
    ("--model.init_args.architecture.lora_rank=0", "model.init_args.architecture.lora_rank: 0; it must be positive"),
    ("--model.init_args.optimization.learning_rate=-1", "optimization.learning_rate: -1.0; it must be positive"),
    ("--trainer.devices=0", "Trainer(devices='0')"),  # Lightning's own verdict, shown as one error line
])
def test_counts_that_cannot_train(workdir, stages, capsys, option, message):
    run_fails_cleanly(finetune_args(stages, option), capsys, message)


def test_files_that_are_not_what_they_claim(workdir, stages, capsys):
    """Truncated checkpoints and adapters, undecodable task files, unknown names: one message, exit 2."""
    Path("empty.ckpt").write_bytes(b"")
    Path("garbage.ckpt").write_bytes(b"not a checkpoint at all")
    run_fails_cleanly(["test", "--config", config("finetune"), TINY, "--ckpt_path=empty.ckpt"], capsys,
                      "--ckpt_path empty.ckpt: not a readable checkpoint")
    Path("a-folder.ckpt").mkdir(exist_ok=True)
    run_fails_cleanly(["test", "--config", config("finetune"), TINY, "--ckpt_path=a-folder.ckpt"], capsys,
                      "--ckpt_path: a-folder.ckpt is a folder but not a DeepSpeed checkpoint")
    run_fails_cleanly(finetune_args(stages, "--model.init_args.init_from=garbage.ckpt"), capsys,
                      "model.init_args.init_from garbage.ckpt: not a readable checkpoint")
    broken = Path("teachers-truncated")
    if not broken.exists():
        shutil.copytree(stages["teachers"], broken)
        weights = broken / "case" / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:50])
    run_fails_cleanly(finetune_args(stages, f"--model.init_args.teachers={broken}"), capsys,
                      "teachers-truncated/case/adapter_model.safetensors: not a readable safetensors file")
    run_fails_cleanly(finetune_args(stages, "--data.init_args.tokenizer=no-such-tokenizer"), capsys,
                      "data.init_args.tokenizer: 'no-such-tokenizer' is not a tokenizer")
    run_fails_cleanly(finetune_args(stages, "--data.init_args.split=nope"), capsys, "splits/nope/train_tasks.txt: split file not found")
    run_fails_cleanly(finetune_args(stages, "--trainer.logger.init_args.save_dir=/proc/tagi"), capsys,
                      "trainer.logger.init_args.save_dir: /proc/tagi cannot be written")
    # a ConfigurationError raised in a constructor, which jsonargparse wraps in its own ValueError
    run_fails_cleanly(finetune_args(stages, "--model.init_args.distillation.consistency_weight=0.1"), capsys,
                      "consistency_weight > 0", "needs model.init_args.architecture.generator: hart")


def test_a_task_file_that_is_not_utf8(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = write_suite(tmp_path / "suite", num_instances=4)
    task = sorted((suite / "tasks").glob("*.json"))[0]
    task.write_bytes(task.read_bytes().replace(b"Definition", b"D\xe9finition", 1))  # latin-1, not UTF-8
    run_fails_cleanly(["fit", "--config", config("theta0"), TINY, *FAST, f"--data.init_args.data_dir={suite}",
                       "--model.init_args.output_dir=theta0"], capsys, f"{task.name}: field '<file>': not UTF-8 text")


def test_deepspeed_without_cuda_says_to_use_auto_or_ddp(workdir, stages, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: DeepSpeed is allowed")
    run_fails_cleanly(finetune_args(stages, "--trainer.strategy=deepspeed_stage_2"), capsys,
                      "trainer.strategy", "CUDA", "--trainer.strategy=auto", "ddp")


def test_nan_loss_stops_with_step_and_terms_and_keeps_the_last_good_checkpoint(workdir, stages, capsys, monkeypatch):
    from tagi.training import finetune

    real_kl, calls = finetune.kl_distillation, []

    def kl_that_blows_up(*args, **kwargs):
        calls.append(1)
        return torch.tensor(float("nan")) if len(calls) == 5 else real_kl(*args, **kwargs)

    monkeypatch.setattr(finetune, "kl_distillation", kl_that_blows_up)
    (workdir / "ckpt-every-2.yaml").write_text(CHECKPOINT_EVERY % 2)
    args = finetune_args(stages, "--config", "ckpt-every-2.yaml", "--trainer.max_steps=8", "--trainer.logger.name=nan-run")
    with pytest.raises(SystemExit) as exit_info:
        tagi_main(args)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "step 4" in message and "kl=nan" in message and "ce=" in message and "--ckpt_path last" in message
    run = workdir / "checkpoints/demo/nan-run"
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 4  # steps 0-3 were good
    assert not (run / "complete.json").exists()


def test_instruction_longer_than_the_limit_is_truncated_counted_and_warned(workdir, caplog):
    data = FinetuneDataModule(data_dir="synthetic", tokenizer="synthetic", num_pos=0, max_instruction_length=6)
    data.prepare_data()
    data.setup("fit")
    assert max(len(example["instruction"]) for example in data.datasets["test"]) <= 6
    warning = next(record.getMessage() for record in caplog.records if "truncated to the configured lengths" in record.getMessage())
    truncated, total = warning.split("instruction ")[1].split(" tasks")[0].split("/")
    assert int(truncated) == int(total) > 0 and "(max 6)" in warning


# ---------------------------------------------------------------- resuming: what `--ckpt_path` may continue

def pretrain_args(*extra: str) -> list[str]:
    return ["fit", "--config", config("pretrain"), TINY, *FAST, *extra]


def test_a_lora_rank_above_the_model_width_is_refused(workdir, capsys):
    """Rank 33 on the tiny backbone's 32-wide q/v projections trained without a word (a rank-33 update of a 32 × 32
    matrix is a rank-32 one with more weights)."""
    run_fails_cleanly(pretrain_args("--model.init_args.architecture.lora_rank=33", "--trainer.logger.init_args.name=wide-rank"),
                      capsys, "model.init_args.architecture.lora_rank: 33 is above the width of θ0's q/v projections (32 → 32)")
    run_fails_cleanly(["fit", "--config", config("teacher"), TINY, *FAST, "--model.init_args.lora_rank=64",
                       "--trainer.logger.init_args.name=wide-rank", "--model.init_args.output_dir=teachers/wide"],
                      capsys, "model.init_args.lora_rank: 64 is above the width", "Give at most 32")


def test_resume_last_without_a_checkpoint_trains_nothing(workdir, stages, capsys):
    """Lightning alone warns and trains from scratch, replacing the run's artifacts."""
    run_fails_cleanly(finetune_args(stages, "--trainer.logger.init_args.name=never-ran", "--ckpt_path=last"), capsys,
                      "--ckpt_path last", "never-ran/checkpoints/last.ckpt", "to resume")


def test_resume_last_is_checked_against_the_stage_and_backbone(workdir, stages, capsys):
    run_fails_cleanly(pretrain_args("--model.init_args.backbone.seed=5", "--ckpt_path=last"), capsys,
                      "--ckpt_path", "pretrain/checkpoints/last.ckpt", "'seed': 0", "'seed': 5")
    run_fails_cleanly(finetune_args(stages, "--trainer.logger.init_args.name=pretrain", "--ckpt_path=last"), capsys,
                      "'pretrain' stage", "'finetune' stage")


def test_resuming_with_another_architecture_is_refused_before_the_run_folder_is_touched(workdir, stages, capsys):
    """lora_rank 4 (or fusion off) against a run trained at 8: Lightning's load_state_dict failed with a size-mismatch
    (or unexpected-keys) traceback, after it had rewritten the finished run's config.yaml with the new value, so
    the next resume from that config.yaml failed too."""
    run_fails_cleanly(pretrain_args("--model.init_args.architecture.lora_rank=4", "--ckpt_path=last"), capsys,
                      "pretrain/checkpoints/last.ckpt does not fit this model: 4 tensors of another shape (e.g. "
                      "model.hypernet.head_A.weight: [256, 64] there, [128, 64] here); its architecture differs: lora_rank 8 "
                      "there, 4 here. Give the settings it was trained with (the config.yaml saved in its run folder)")
    run_fails_cleanly(pretrain_args("--model.init_args.architecture.fusion=false", "--ckpt_path=last"), capsys,
                      "tensors this model does not have (e.g. model.fusion.0.norm.weight); its architecture differs: fusion True there, False here")


def test_a_checkpoint_from_another_run_does_not_lift_the_overwrite_refusal(workdir, stages, capsys):
    teacher = workdir / "checkpoints/demo/teacher/checkpoints/last.ckpt"
    run_fails_cleanly(["fit", "--config", config("teacher"), TINY, *FAST, "--trainer.logger.init_args.name=fresh-teacher",
                       "--model.init_args.output_dir=teachers/t", f"--ckpt_path={teacher}"], capsys,
                      "model.init_args.output_dir: teachers/t already holds", "--overwrite=true")


def test_continuing_a_finished_theta0_that_later_stages_read_needs_overwrite(tmp_path, capsys, monkeypatch):
    """Refused a fresh fit, the user followed the advice (--ckpt_path last, more steps): θ0 was trained on and
    exported again in place, with no word, and every later stage was then refused."""
    monkeypatch.chdir(tmp_path)
    command = ["fit", "--config", config("theta0"), TINY, *FAST, "--model.init_args.output_dir=theta0"]
    tagi_main(command)
    run_fails_cleanly(command, capsys, "holds a finished run", "continue it with --ckpt_path last --overwrite=true",
                      "exports model.init_args.output_dir theta0 again")
    run_fails_cleanly([*command, "--ckpt_path=last", "--trainer.max_steps=6"], capsys,
                      "--ckpt_path: checkpoints/demo/theta0 holds a finished run", "exports model.init_args.output_dir theta0 again",
                      "add --overwrite=true to continue it anyway")
    tagi_main([*command, "--ckpt_path=last", "--trainer.max_steps=6", "--overwrite=true"])  # asked for
    assert json.loads(Path("theta0/tagi_backbone.json").read_text())["global_step"] == 6


def test_continuing_a_finished_pretrain_run_that_finetune_warm_starts_from_needs_overwrite(tmp_path, capsys, monkeypatch):
    """θ0 and the teachers needed --overwrite; a finished pretrain run continued with --ckpt_path last replaced, with
    no word, the last.ckpt a finetune had warm-started from (its record names that file, not a copy)."""
    monkeypatch.chdir(tmp_path)
    command = pretrain_args("--trainer.logger.init_args.name=p")
    tagi_main(command)
    last = Path("checkpoints/demo/p/checkpoints/last.ckpt")
    run_fails_cleanly(command, capsys, "continue it with --ckpt_path last --overwrite=true (continuing it replaces "
                      f"{last}, which finetune runs warm-start from (model.init_args.init_from)")
    run_fails_cleanly([*command, "--ckpt_path=last", "--trainer.max_steps=6"], capsys,
                      "--ckpt_path: checkpoints/demo/p holds a finished run; continuing it replaces", "add --overwrite=true",
                      f"another --trainer.logger.init_args.name and --ckpt_path {last}")
    tagi_main([*pretrain_args("--trainer.logger.init_args.name=p-longer"), f"--ckpt_path={last}", "--trainer.max_steps=6"])
    assert torch.load(last, weights_only=False)["global_step"] == 4  # the advice left the file finetune read as it was
    tagi_main([*command, "--ckpt_path=last", "--trainer.max_steps=6", "--overwrite=true"])  # asked for
    assert torch.load(last, weights_only=False)["global_step"] == 6


def test_a_fit_over_a_finished_run_that_dies_leaves_it_unfinished(tmp_path, monkeypatch):
    """The old complete.json stayed until the new fit ended: killed midway, the run passed for finished and the
    pipeline skipped the stage, over a half-trained last.ckpt."""
    from tagi.training.theta0 import Theta0Module

    monkeypatch.chdir(tmp_path)
    command = ["fit", "--config", config("theta0"), TINY, *FAST, "--model.init_args.output_dir=theta0"]
    tagi_main(command)
    real_step = Theta0Module.training_step

    def dies_at_step_2(self, batch, batch_idx):
        if self.global_step == 2:
            raise RuntimeError("the machine went down")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(Theta0Module, "training_step", dies_at_step_2)
    with pytest.raises(RuntimeError, match="the machine went down"):
        tagi_main([*command, "--overwrite=true"])
    assert not Path("checkpoints/demo/theta0/complete.json").exists()


def test_a_resume_under_another_spelling_of_the_folder_keeps_one_last_checkpoint(workdir, stages):
    """Lightning compares the checkpoint folder as a string: resumed through an absolute save_dir it wrote
    last-v1.ckpt and left last.ckpt at the killed run's step."""
    fit("pretrain", "--trainer.logger.init_args.name=spelling", "--trainer.max_steps=2")
    fit("pretrain", "--trainer.logger.init_args.name=spelling", "--trainer.max_steps=4", "--ckpt_path=last", "--overwrite=true",
        f"--trainer.logger.init_args.save_dir={workdir / 'checkpoints/demo'}")
    folder = workdir / "checkpoints/demo/spelling/checkpoints"
    assert sorted(path.name for path in folder.glob("last*")) == ["last.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 4
    assert json.loads((folder.parent / "complete.json").read_text())["global_step"] == 4


def test_an_output_dir_another_run_wrote_while_this_one_trained_is_not_replaced(tmp_path, capsys, monkeypatch):
    """Two θ0 fits with one output_dir both passed the check at start and both exported: one replaced the other."""
    from tagi.training.theta0 import Theta0Module

    monkeypatch.chdir(tmp_path)
    real_step = Theta0Module.training_step

    def step_while_another_run_exports(self, batch, batch_idx):
        if self.global_step == 1 and not Path("theta0").exists():  # the other fit finishes first
            Path("theta0").mkdir()
            Path("theta0/config.json").write_text("{}")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(Theta0Module, "training_step", step_while_another_run_exports)
    command = ["fit", "--config", config("theta0"), TINY, *FAST, "--trainer.logger.init_args.name=second"]
    with pytest.raises(SystemExit) as exit_info:
        tagi_main([*command, "--model.init_args.output_dir=theta0"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model.init_args.output_dir theta0: another run wrote it while this one trained (this fit found it absent" in message
    assert os.listdir("theta0") == ["config.json"] and not Path("checkpoints/demo/second/complete.json").exists()
    tagi_main([*command, "--model.init_args.output_dir=theta0-second", "--ckpt_path=last"])  # what the message advises
    assert (tmp_path / "theta0-second/tagi_backbone.json").is_file() and os.listdir("theta0") == ["config.json"]


def test_a_second_fit_into_an_output_dir_another_fit_holds_is_refused_before_it_trains(tmp_path, capsys, monkeypatch):
    """The claim on output_dir was taken only at export: a second θ0 fit into it trained to the end and was
    refused then. It is held from the start of the fit, so the second fit is refused before it trains."""
    import socket

    monkeypatch.chdir(tmp_path)
    Path(".theta0.lock").write_text(f"{socket.gethostname()}:{os.getpid()} 2026-12-02 00:00:00\n")  # a live first fit
    run_fails_cleanly(["fit", "--config", config("theta0"), TINY, *FAST, "--model.init_args.output_dir=theta0"], capsys,
                      "model.init_args.output_dir theta0: another run is writing into it")
    assert not Path("checkpoints").exists()  # refused before the run folder was made


def test_the_output_dir_lock_inside_a_fresh_run_folder_is_not_taken_for_earlier_logs(tmp_path, monkeypatch, recwarn):
    """θ0's output_dir is inside its run folder: with its lock held from the start, Lightning warned that the fresh
    run's folder was not empty and that previous log files would be deleted."""
    monkeypatch.chdir(tmp_path)
    tagi_main(["fit", "--config", config("theta0"), TINY, *FAST, "--model.init_args.output_dir=checkpoints/demo/theta0/model"])
    assert Path("checkpoints/demo/theta0/model/tagi_backbone.json").is_file()
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]


def test_damaged_teacher_json_and_a_teachers_file_are_clean_errors(workdir, stages, capsys):
    for name, file_name in (("teachers-bad-meta", "meta.json"), ("teachers-bad-config", "adapter_config.json")):
        copy = workdir / name
        if not copy.exists():
            shutil.copytree(stages["teachers"], copy)
            (copy / "case" / file_name).write_text("{not json")
        run_fails_cleanly(finetune_args(stages, f"--model.init_args.teachers={copy}"), capsys,
                          f"{name}/case/{file_name}: not readable JSON")
    Path("teachers.txt").write_text("not a folder")
    run_fails_cleanly(finetune_args(stages, "--model.init_args.teachers=teachers.txt"), capsys,
                      "model.init_args.teachers: teachers.txt is not a folder")


def test_an_evaluation_with_bad_data_writes_no_folder(workdir, stages, capsys):
    """Lightning creates the logger's folder before the data is set up: the data is read first."""
    run_fails_cleanly(["test", "--config", config("pretrain"), TINY, f"--ckpt_path={stages['pretrain']}",
                       "--data.init_args.eval_split=nope"], capsys, "splits/nope/train_tasks.txt: split file not found")


@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_an_evaluation_of_no_example_is_refused(workdir, stages, capsys, subcommand):
    """It exited 0 and wrote no results (a pipeline then replaced its score rows with {})."""
    evaluate = [subcommand, "--config", config("pretrain"), TINY, f"--ckpt_path={stages['pretrain']}"]
    run_fails_cleanly([*evaluate, "--data.init_args.max_test_instances_per_task=0"], capsys,
                      "data.init_args.max_test_instances_per_task: 0; it must be at least 1")
    suite = next(Path("runs/data").glob("synthetic-v*-seed0"))
    ensure_corpus(suite, suite.with_name(f"{suite.name}-corpus.jsonl"))  # a cache the data setup writes on first use
    no_tests = workdir / "splits-without-test-tasks"
    if not no_tests.exists():
        shutil.copytree(suite / "splits/default", no_tests)
        (no_tests / "test_tasks.txt").write_text("# none yet\n")
    run_fails_cleanly([*evaluate, f"--data.init_args.splits_dir={no_tests}"], capsys,
                      f"{no_tests / 'test_tasks.txt'}: names no task, so `{subcommand}` has no example to score")


def test_pipeline_inputs_are_checked_before_any_stage_trains(workdir, capsys):
    pipeline = ["pipeline", "--config", str(Path(config("pipeline")))]
    run_fails_cleanly([*pipeline, "--run=/tmp/elsewhere"], capsys, "run: '/tmp/elsewhere' is not a run name")
    run_fails_cleanly([*pipeline, "--finetune=finetun.yaml"], capsys, "finetune: ", "configs/demo/finetun.yaml is not a file")
    run_fails_cleanly([*pipeline, "--publish=true", "--results_json=null"], capsys,
                      "publish: true writes the table to results_json, which is not set")


@pytest.mark.parametrize("option, message", [
    ("--trainer.max_epochs=0", "trainer.max_epochs: 0 trains nothing"),
    ("--model.init_args.architecture.lora_alpha=0", "model.init_args.architecture.lora_alpha: 0.0; it must be positive"),
    ("--model.init_args.optimization.weight_decay=-1", "optimization.weight_decay: -1.0"),
    ("--model.init_args.init_from=a-plain-folder", "model.init_args.init_from: a-plain-folder is a folder but not a DeepSpeed"),
    ("--trainer.accelerator=gpu", "CUDA"),
    ("--data.init_args.data_dir=not-sni", "data.init_args.data_dir"),
    # it wrote last.ckpt, config.yaml and complete.json into the current folder, unlocked, replaced by the next run
    ("--trainer.logger=false", "trainer.logger: false leaves the run without a run folder"),
    # a ValueError traceback once the data was set up; now the parser's, in one line naming the key
    ("--data.init_args.on_error=ignore", "error: data.init_args.on_error: Expected a typing.Literal['raise', 'skip']. Got value: ignore"),
    ("--seed_everything=-1", "seed_everything: -1; give an integer from 0 to 4294967295"),  # numpy's ValueError traceback
])
def test_more_values_refused_before_anything_is_built(workdir, stages, capsys, option, message):
    Path("a-plain-folder").mkdir(exist_ok=True)
    Path("not-sni").mkdir(exist_ok=True)
    if torch.cuda.is_available() and "gpu" in option:
        pytest.skip("this machine has CUDA")
    run_fails_cleanly(finetune_args(stages, option), capsys, message)


def test_an_evaluation_without_a_logger_is_refused(workdir, stages, capsys):
    """Its results.json and predictions.jsonl went into the current folder."""
    run_fails_cleanly(["test", "--config", config("pretrain"), TINY, f"--ckpt_path={stages['pretrain']}",
                       "--trainer.logger=false"], capsys, "trainer.logger: false")


@pytest.mark.parametrize("subcommand", ["validate", "predict"])
def test_validate_and_predict_need_a_checkpoint(workdir, capsys, subcommand):
    run_fails_cleanly([subcommand, "--config", config("finetune"), TINY], capsys, "--ckpt_path", "never trained")


def test_an_unwritable_output_dir_and_a_teacher_of_another_tokenizer(workdir, stages, capsys):
    run_fails_cleanly(["fit", "--config", config("teacher"), TINY, *FAST, "--model.init_args.output_dir=/proc/tagi"],
                      capsys, "model.init_args.output_dir: /proc/tagi cannot be written")
    other = edited_teachers(stages, "teachers-other-tokenizer", "meta.json", lambda meta: {**meta, "tokenizer": "byt5"})
    run_fails_cleanly(finetune_args(stages, f"--model.init_args.teachers={other}"), capsys,
                      "does not match this student", "tokenizer 'byt5' ≠ 'synthetic'")


def test_a_stage_file_with_a_trainer_block_beside_its_trainer_part_is_refused(workdir, capsys):
    """The part would be dropped whole (or the block, by order) without a word: say how to write it instead."""
    folder = workdir / "nested-configs"
    if not folder.exists():
        shutil.copytree(ROOT / "configs/demo", folder)  # parts/ resolve beside it
        text = (folder / "pretrain.yaml").read_text()
        (folder / "pretrain.yaml").write_text(text.replace("trainer.max_steps: 300\n", "trainer:\n  max_steps: 300\n"))
    run_fails_cleanly(["fit", "--config", str(folder / "pretrain.yaml"), TINY, *FAST], capsys,
                      "pretrain.yaml: its `trainer:` block and the `trainer:` block of parts/trainer.yaml",
                      "`trainer.max_steps: ...`")


def test_an_empty_or_broken_config_file_is_named(workdir, capsys):
    """jsonargparse said "Unexpected config: " (and nothing after) for an empty file, and placed a YAML error
    "in <unicode string>": neither named the file, here a part that a stage file names."""
    folder = workdir / "broken-configs"
    if not folder.exists():
        shutil.copytree(ROOT / "configs/demo", folder)
    part = folder / "parts/trainer.yaml"
    text = part.read_text()
    part.write_text("# to be filled in\n")
    run_fails_cleanly(["fit", "--config", str(folder / "pretrain.yaml"), TINY, *FAST], capsys,
                      f"error: {part}: the file is empty (or only comments); a config file holds options as `key: value` lines")
    part.write_text(text)
    (folder / "pipeline.yaml").write_text("teacher: teacher.yaml\nrun: demo: x\n")
    run_fails_cleanly(["pipeline", "--config", str(folder / "pipeline.yaml")], capsys,
                      f"error: {folder / 'pipeline.yaml'}: not valid YAML at line 2, column 10: mapping values are not allowed here")
