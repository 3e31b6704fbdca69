"""Every stage under DeepSpeed ZeRO-2 on 2 CPU processes (`tagi.training.strategies.CPUDeepSpeedStrategy`,
gloo), in float32 and in bf16, and every stage in bf16 mixed precision on one process: the path a GPU
user runs, up to the hardware.

Checked per stage: the first loss equals a one-process float32 run's; the checkpoint is a ZeRO folder;
θ0 and the teachers are written once, in float32 (the optimizer's master weights, not the module's
bf16 copy); the stage-2 ZeRO folder given to `init_from` is consolidated and loads; `--ckpt_path last`
resumes a killed run from its ZeRO folder to the weights of an uninterrupted run; a ZeRO-trained
student is tested in float32 by another strategy and exports an adapter that peft loads, with
`Student.generate`'s greedy output. Runs are `python -m tagi fit` subprocesses, as in test_distributed.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import T5ForConditionalGeneration

from helpers import TINY, chdir_scratch, config

pytestmark = pytest.mark.e2e

STEPS = 6
COMMON = [TINY, f"--trainer.max_steps={STEPS}", f"--trainer.val_check_interval={STEPS}", "--trainer.log_every_n_steps=1",
          "--trainer.enable_progress_bar=false", "--data.init_args.batch_size=4",
          "--data.init_args.max_test_instances_per_task=2"]
HELD_OUT = 10 * 2  # held-out tasks × max_test_instances_per_task
ZERO2 = ["--trainer.strategy=deepspeed_cpu", "--trainer.devices=2", "--trainer.accelerator=cpu"]  # registered name, stage 2
MODES = {"single": [], "zero2": ZERO2, "zero2-bf16": [*ZERO2, "--trainer.precision=bf16-mixed"],
         "bf16": ["--trainer.precision=bf16-mixed"]}
# The teacher stage refuses DeepSpeed (ZeRO steps one flat buffer of every cluster's LoRA, moving absent ones):
# in the ZeRO modes its teachers are trained by 2 DDP processes, which the finetune runs then read.
DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
CLUSTERS = 7  # train categories: the teacher stage's max_steps is per cluster
# Where finetune reads its teachers and stage-2 checkpoint: those the same mode wrote (the ZeRO folder itself
# for the ZeRO modes); its one-process reference reads the same ones.
SOURCES = {"single": "single", "zero2": "zero2", "zero2-bf16": "zero2-bf16", "bf16": "bf16"}


def stage_args(stage: str, mode: str, source: str) -> list[str]:
    return {
        "theta0": [f"--model.init_args.output_dir={mode}-theta0"],
        "teacher": [f"--model.init_args.output_dir={mode}-teachers", "--data.init_args.val_instances_per_task=1"],
        "pretrain": [],
        "finetune": [f"--model.init_args.init_from={source}/pretrain/checkpoints/last.ckpt",
                     f"--model.init_args.teachers={source}-teachers"],
    }[stage]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    yield from chdir_scratch(tmp_path_factory, "deepspeed")


def mode_args(stage: str, mode: str) -> list[str]:
    if stage == "teacher" and mode.startswith("zero2"):
        return [*DDP, *MODES[mode][len(ZERO2):]]
    return MODES[mode]


def command(stage: str, mode: str, name: str, source: str, *extra: str) -> list[str]:
    folder = ["--trainer.logger.save_dir=.", f"--trainer.logger.name={name}", f"--trainer.logger.version={stage}"]
    return [sys.executable, "-m", "tagi", "fit", "--config", config(stage), *COMMON, *stage_args(stage, name, source),
            *folder, *mode_args(stage, mode), *extra]


def run(stage: str, mode: str, name: str | None = None, source: str | None = None, *extra: str) -> dict:
    """One fit, logged in `<name>/<stage>` (name defaults to the mode). Returns the completion marker."""
    name = name or mode
    result = subprocess.run(command(stage, mode, name, source or SOURCES[mode], *extra), capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((Path(name) / stage / "complete.json").read_text())


def ensure(mode: str, *stages: str) -> None:
    """The stages a test reads, run in this mode unless an earlier test did (tests may be selected alone)."""
    for stage in stages:
        if not (Path(mode) / stage / "complete.json").is_file():
            run(stage, mode)


def first_loss(name: str, stage: str) -> float:
    import csv

    key = "train/loss" if stage == "finetune" else "train/ce"
    return next(float(row[key]) for row in csv.DictReader((Path(name) / stage / "metrics.csv").open()) if row.get(key))


def trained_state(marker: dict) -> dict[str, torch.Tensor]:
    """The checkpoint's weights as a consumer reads them (a ZeRO folder: its float32 consolidation)."""
    from tagi.io import read_checkpoint

    return read_checkpoint(marker["last_checkpoint"], "test")["state_dict"]


STAGES = ["theta0", "teacher", "pretrain", "finetune"]
ZERO_STAGES = ["theta0", "pretrain", "finetune"]  # the teacher stage refuses DeepSpeed (test_teachers.py)


@pytest.mark.parametrize("stage", ZERO_STAGES)
def test_stage_trains_with_zero2_on_two_cpu_processes(workdir, stage):
    if stage == "finetune":
        ensure("zero2", "teacher", "pretrain")
    marker = run(stage, "zero2")
    assert marker["global_step"] == STEPS
    folder = Path(marker["last_checkpoint"])
    assert (folder / "latest").is_file() and (folder / "zero_to_fp32.py").is_file()  # a ZeRO checkpoint folder
    assert sorted(path.name for path in (folder / "checkpoint").iterdir()) == [
        "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert marker["metrics"]["val/count"] == HELD_OUT  # each held-out example once across the 2 ranks
    if stage == "theta0":
        assert T5ForConditionalGeneration.from_pretrained("zero2-theta0").config.d_model == 32

    run(stage, "single", "single-zero2", "zero2")
    # Same initial weights and rank 0's first batch is the one-process run's first batch; the C4 stream
    # (pretrain) shards by document instead, so only roughly there (as under DDP).
    tolerance = 0.1 if stage == "pretrain" else 1e-4
    assert abs(first_loss("zero2", stage) - first_loss("single-zero2", stage)) <= tolerance * abs(first_loss("single-zero2", stage))


@pytest.mark.parametrize("mode", ["bf16", "zero2-bf16"])
@pytest.mark.parametrize("stage", STAGES)
def test_stage_trains_in_bf16_and_its_checkpoint_loads_in_float32(workdir, stage, mode):
    """(The teachers of zero2-bf16 train under 2 DDP processes in bf16-mixed.)"""
    if stage == "finetune":
        ensure(mode, "teacher", "pretrain")
    marker = run(stage, mode)
    assert marker["global_step"] == STEPS * (CLUSTERS if stage == "teacher" else 1) and torch.isfinite(torch.tensor(first_loss(mode, stage)))
    if stage != "teacher":
        assert marker["metrics"]["val/count"] == HELD_OUT and "val/rougeL" in marker["metrics"]
    state = trained_state(marker)
    # The trained weights (θ0 trains the whole backbone); buffers such as HART's state keep the run's precision.
    weights = [key for key in state if state[key].is_floating_point() and not key.startswith("consistency_")]
    trained = [key for key in weights if not key.startswith(("model.backbone.", "backbone."))] or weights
    assert trained and all(state[key].dtype == torch.float32 for key in trained), {state[key].dtype for key in trained}
    if stage == "theta0":  # exported from the float32 master weights: equal to the checkpoint's
        exported = load_file(f"{mode}-theta0/model.safetensors")
        assert all(value.dtype == torch.float32 for value in exported.values())
        assert all(torch.equal(value, state[f"backbone.{key}"]) for key, value in exported.items())
    if stage == "teacher":
        adapter = load_file(next(Path(f"{mode}-teachers").glob("*/adapter_model.safetensors")))
        assert all(value.dtype == torch.float32 for value in adapter.values())


def test_a_killed_zero2_run_resumes_from_its_folder_to_the_uninterrupted_weights(workdir):
    """SIGKILL after a periodic ZeRO save, then `--ckpt_path last`: the final weights equal an uninterrupted run's."""
    Path("every-4.yaml").write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                                    "      init_args: {save_last: true, every_n_train_steps: 4}\n")
    extra = ["--config", "every-4.yaml", "--trainer.max_steps=24", "--trainer.val_check_interval=24",
             "--trainer.deterministic=true"]
    ensure("zero2", "teacher", "pretrain")
    run("finetune", "zero2", "uninterrupted", "zero2", *extra)
    victim = subprocess.Popen(command("finetune", "zero2", "resumed", "zero2", *extra), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    saves = Path("resumed/finetune/checkpoints")
    deadline = time.time() + 300
    while not list(saves.glob("*step=8.ckpt/latest")) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)  # both ranks
    victim.wait()
    assert not Path("resumed/finetune/complete.json").exists(), "the run finished before it could be killed"

    resumed = run("finetune", "zero2", "resumed", "zero2", *extra, "--ckpt_path=last")
    expected = trained_state(json.loads(Path("uninterrupted/finetune/complete.json").read_text()))
    got = trained_state(resumed)
    assert resumed["global_step"] == 24 and got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key
    # the folder holds what the run trained: θ0's frozen weights are left out, neither in the module's states nor
    # as DeepSpeed's "frozen parameter fragments" (a resume loads them from θ0)
    states = torch.load(next(Path(resumed["last_checkpoint"]).rglob("mp_rank_00_model_states.pt")), weights_only=False)
    assert not any(".backbone." in key for key in states["module"]) and not states.get("frozen_param_fragments")


ONE_RANK_DISK_FULL = """
import os, resource
if os.environ.get("LOCAL_RANK") == "1":  # this rank's writes fail past 20 kB, as on a full disk (EFBIG; SIGXFSZ ignored)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
"""


def test_a_shard_that_one_rank_cannot_write_stops_every_rank_with_one_error_naming_the_checkpoint(workdir, tmp_path):
    """DeepSpeed ends a save with a barrier: a rank whose shard write failed raised before it, and the other rank
    waited there forever. Now the failure is held to the barrier, then every rank stops (exit 2), the error names
    the checkpoint, and no folder is left half written."""
    (tmp_path / "sitecustomize.py").write_text(ONE_RANK_DISK_FULL)  # read by every Python process the run starts
    every_2 = tmp_path / "every-2.yaml"
    every_2.write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                       "      init_args: {save_last: true, every_n_train_steps: 2}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command("theta0", "zero2", "full-disk", "zero2", "--config", str(every_2)), capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    checkpoints = Path("full-disk/theta0/checkpoints")
    assert result.stderr.count("error:") == 1 and "error: full-disk/theta0/checkpoints/" in result.stderr
    assert "process 1:" in result.stderr  # the rank that failed, said by rank 0
    assert not list(checkpoints.glob(".tmp-*")) and not list(checkpoints.glob("*.ckpt"))  # nothing half written
    assert not Path("full-disk/theta0/complete.json").exists()


def test_a_zero2_student_is_tested_in_float32_and_exports_a_peft_adapter(workdir):
    """The ZeRO-2 bf16 student: `tagi test` by one float32 process reads its folder consolidated, and `tagi
    adapter` on the folder writes an adapter that peft loads, giving `Student.generate`'s greedy answer."""
    from tagi.inference.student import Student

    ensure("zero2-bf16", "teacher", "pretrain", "finetune")
    folder = Path("zero2-bf16/finetune/checkpoints/last.ckpt")
    result = subprocess.run([sys.executable, "-m", "tagi", "test", "--config", config("finetune"), *COMMON,
                             *stage_args("finetune", "zero2-bf16", "zero2-bf16"), "--trainer.logger.save_dir=.",
                             "--trainer.logger.name=zero2-bf16", "--trainer.logger.version=finetune",
                             f"--ckpt_path={folder}"], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    scores = json.loads(Path("zero2-bf16/finetune/test/results.json").read_text())
    assert scores["overall"]["count"] == HELD_OUT

    exported = subprocess.run([sys.executable, "-m", "tagi", "adapter", "--ckpt", str(folder), "--instruction",
                               "Reverse the order of the words.", "--out", "adapters/reverse"], capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr[-3000:]
    out = Path("adapters/reverse")
    meta = json.loads((out / "meta.json").read_text())
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(out / base), str(out)).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer([meta["input_template"].replace("{input}", "cow ape")], return_tensors="pt")
    served = tokenizer.batch_decode(model.generate(**batch, max_new_tokens=8), skip_special_tokens=True)
    student = Student.from_checkpoint(folder)
    assert served == student.generate(meta["instruction"], ["cow ape"], max_new_tokens=8, lora_only=True)


@pytest.mark.parametrize("strategy, expected", [
    ("--trainer.strategy=deepspeed_cpu_stage_3", "ZeRO stage 3 is not supported"),
    ("--trainer.strategy=deepspeed_stage_3", "ZeRO stage 3 is not supported"),
    ("--trainer.strategy=fsdp", "fsdp shards the weights and is not supported"),
    ("--trainer.strategy.class_path=lightning.pytorch.strategies.FSDPStrategy", "shards the weights and is not supported"),
    ("--trainer.strategy=tagi.training.strategies.CPUDeepSpeedStrategy",  # Lightning would lowercase it as a name
     "--trainer.strategy.class_path=tagi.training.strategies.CPUDeepSpeedStrategy"),
])
def test_strategies_refused_before_anything_is_built(workdir, capsys, strategy, expected):
    from tagi.__main__ import main as tagi_main

    with pytest.raises(SystemExit) as exit_info:
        tagi_main([*command("pretrain", "single", "refused", "single")[3:], strategy, "--trainer.accelerator=cpu"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert expected in message and "trainer.strategy" in message, message[-2000:]
    assert not Path("refused").exists()


def test_a_checkpoint_is_resumed_only_by_the_kind_of_strategy_that_wrote_it(workdir, capsys):
    """A ZeRO folder under a one-process fit, a single file under DeepSpeed: each one error naming --ckpt_path
    and the strategy, before anything is built or written."""
    from tagi.__main__ import main as tagi_main

    ensure("zero2", "pretrain")
    ensure("single", "pretrain")
    cases = [
        (command("pretrain", "single", "mixed-a", "single", "--ckpt_path=zero2/pretrain/checkpoints/last.ckpt"),
         "a DeepSpeed checkpoint folder, which only DeepSpeed resumes"),
        (command("pretrain", "zero2", "mixed-b", "zero2", "--ckpt_path=single/pretrain/checkpoints/last.ckpt"),
         "a single-file checkpoint, but trainer.strategy is DeepSpeed"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            tagi_main(args[3:])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "--ckpt_path" in err, err[-2000:]
    assert not Path("mixed-a").exists() and not Path("mixed-b").exists()


def test_the_pipeline_runs_every_stage_on_two_deepspeed_processes_in_bf16(workdir):
    """`tagi pipeline` under DeepSpeed: Lightning's launcher runs the whole pipeline in each process, so every
    rank must return from a stage only once rank 0 has written its marker and exports (the next stage reads
    them); rank 0 alone writes the run's table."""
    overrides = [TINY, "--trainer.max_steps=4", "--trainer.val_check_interval=4", "--trainer.limit_val_batches=1",
                 "--trainer.enable_progress_bar=false", "--data.init_args.max_test_instances_per_task=2",
                 "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.precision=bf16-mixed"]
    # The strategy per stage, as a second config file: the teachers refuse DeepSpeed and run DDP.
    Path("zero2.yaml").write_text("trainer:\n  strategy: deepspeed_cpu\n")
    Path("ddp.yaml").write_text("trainer:\n  strategy: ddp\n")
    demo = Path(config("theta0")).parent
    stages = [f"--{stage}={json.dumps([str(demo / f'{stage}.yaml'), str(Path(part).resolve())])}" for stage, part in
              (("theta0", "zero2.yaml"), ("teacher", "ddp.yaml"), ("pretrain", "zero2.yaml"), ("finetune", "zero2.yaml"))]
    result = subprocess.run([sys.executable, "-m", "tagi", "pipeline", "--config", str(demo / "pipeline.yaml"), *stages,
                             "--run", "ds-pipeline", "--controls=[empty]", f"--overrides={json.dumps(overrides)}"],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    run = Path("checkpoints/ds-pipeline")
    assert all((run / stage / "complete.json").is_file() for stage in ("theta0", "teacher", "pretrain", "finetune"))
    assert (run / "finetune/checkpoints/last.ckpt/latest").is_file()  # the student is a ZeRO folder, tested as one
    table = json.loads((run / "table.json").read_text())
    assert set(table["rows"]) >= {"student (TAGI)", "student, empty instruction", "backbone + exported adapter only"}
    assert result.stdout.count("| model (test tasks) |") == 1  # one process printed the table
