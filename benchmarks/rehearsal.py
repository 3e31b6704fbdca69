"""The real-scale path, rehearsed: every `configs/sni-t5-base/` stage for a few steps at t5-base's shape.

    python benchmarks/rehearsal.py                       # CPU: DeepSpeed ZeRO-2 on 2 gloo processes, bf16
    python benchmarks/rehearsal.py --device cuda         # GPU: Lightning's DeepSpeed on CUDA (scripts/gpu-check.sh)
    python benchmarks/rehearsal.py --shape tiny --out X  # the same code on a tiny T5 (tests/test_rehearsal.py)

What a GPU user runs, through the same CLI and the same stage configs, with only what this machine
needs in place of what it lacks:
- θ0: random weights in a folder written from t5-base's config (d 768, 12 + 12 layers, dropout 0.1,
  gated-GELU, untied head, as `google/t5-base-lm-adapt`), loaded by `from_pretrained` like a hub model
  (no download here);
- data: NI v1 (`<shared>/data/ni-v1`, the `configs/ni-v1/splits/` task lists) for SNI v2, wiki-c4 for
  C4, the real T5 vocabulary (`<shared>/tokenizers/t5`); without `--shared` the embedded synthetic suite
  and its tokenizer (the model keeps t5-base's 32,128-entry vocabulary);
- hardware: `--device cpu` runs `tagi.training.strategies.CPUDeepSpeedStrategy` on 2 processes
  (the config's ZeRO stage and precision kept), `--device cuda` the config's own strategy on the visible
  GPUs; both: `--steps` optimizer steps per stage, validation on 1 batch, test on 1 instance per task,
  1 data-loading worker.
Every hand-off is checked: the teachers → finetune (KL and parameter loss computed), the stage-2 ZeRO
folder → `init_from` (consolidated to float32 and loaded), the student → `tagi test` → `tagi adapter`
(peft loads the adapter and gives `Student.generate`'s greedy answer). Per stage: seconds per step
(median, first step left out), peak memory (per process, from the `StepStats` callback; and the whole
process tree's proportional set size, sampled every 0.5 s, which also names a stage killed for memory),
trainable weights, tokens per step. A stage the machine's memory cannot hold at its config's batch size
is named with its peak, and rerun at half the batch (down to 2 rows per process). Writes `--out` (default `docs/results/rehearsal.json` on CPU,
`runs/rehearsal-cuda/rehearsal.json` on CUDA) and prints it; the README's table is generated from the
CPU file (`python -m tagi.eval.results --write`). Exit status 1 when a stage or hand-off failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTING = ROOT / "configs/sni-t5-base"
T5_BASE = dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
               feed_forward_proj="gated-gelu", vocab_size=32128, dropout_rate=0.1, tie_word_embeddings=False,
               relative_attention_num_buckets=32, relative_attention_max_distance=128)
SHAPES = {"t5-base": T5_BASE,
          "tiny": {**T5_BASE, "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 2}}
STAGES = ("teacher", "pretrain", "finetune")
INSTRUCTION = "Given a sentence, write it with its words in reverse order."
ANSWER_INPUT = "the cat sat on the mat"


def write_theta0(folder: Path, shape: str, tokenizer_source: str | None) -> Path:
    """θ0 with random weights at the shape, and the tokenizer, as a `from_pretrained` folder (reused when there)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from tagi.data.tokenization import load_tokenizer

    torch.manual_seed(0)
    config = T5Config(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **SHAPES[shape])
    staging = folder.with_name(f".tmp-{folder.name}")
    T5ForConditionalGeneration(config).save_pretrained(staging)
    load_tokenizer(tokenizer_source or "synthetic").save_pretrained(staging)
    staging.rename(folder)
    return folder


def data_overrides(stage: str, shared: Path | None, theta0: Path) -> list[str]:
    """NI v1 / wiki-c4 from `shared` in place of SNI v2 / C4; the synthetic suite without it."""
    tokenizer = f"--data.init_args.tokenizer={theta0}"
    if shared is None:
        tasks = ["--data.init_args.data_dir=synthetic", "--data.init_args.splits_dir=null"]
        if stage == "pretrain":
            return [tokenizer, "--data.init_args.source=synthetic", "--data.init_args.eval_data_dir=synthetic",
                    "--data.init_args.splits_dir=null"]
        return [tokenizer, *tasks]
    splits = f"--data.init_args.splits_dir={ROOT / 'configs/ni-v1/splits'}"
    if stage == "pretrain":
        return [tokenizer, f"--data.init_args.source={shared / 'data/wiki-c4/c4-sample.jsonl'}",
                f"--data.init_args.eval_data_dir={shared / 'data/ni-v1'}", splits]
    return [tokenizer, f"--data.init_args.data_dir={shared / 'data/ni-v1'}", splits]


def hardware_overrides(device: str, stage: str = "pretrain") -> list[str]:
    """The one place CPU and CUDA differ: the rest of each command is the same code and config. The teachers run
    the config's DDP (gloo on CPU: no strategy to swap); the other stages its DeepSpeed, on CPU as
    `CPUDeepSpeedStrategy`."""
    if device == "cpu":
        swap = [] if stage == "teacher" else ["--trainer.strategy.class_path=tagi.training.strategies.CPUDeepSpeedStrategy"]
        return ["--trainer.accelerator=cpu", "--trainer.devices=2", *swap]  # keeps the ZeRO stage
    return ["--trainer.accelerator=gpu", "--trainer.devices=-1"]  # the config's own strategy


def stage_command(stage: str, work: Path, device: str, shared: Path | None, steps: int) -> list[str]:
    theta0 = work / "theta0"
    wiring = {
        "teacher": [f"--model.init_args.output_dir={work / 'teachers'}"],
        "pretrain": [],
        "finetune": [f"--model.init_args.init_from={last_checkpoint(work, 'pretrain')}",
                     f"--model.init_args.teachers={work / 'teachers'}"],
    }[stage]
    return [sys.executable, "-m", "tagi", "fit", "--config", str(SETTING / f"{stage}.yaml"),
            f"--model.init_args.backbone.name={theta0}", *data_overrides(stage, shared, theta0), *wiring,
            f"--trainer.logger.init_args.save_dir={work / 'checkpoints'}", *hardware_overrides(device, stage),
            f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}", "--trainer.limit_val_batches=1",
            "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
            "--trainer.callbacks+=tagi.training.callbacks.StepStats", "--data.init_args.num_workers=1",
            "--data.init_args.max_test_instances_per_task=1"]


def last_checkpoint(work: Path, stage: str) -> Path:
    return work / "checkpoints" / stage / "checkpoints" / "last.ckpt"


class TreeMemory:
    """The peak memory of a process and all its children (DeepSpeed's second rank included), sampled."""

    def __init__(self, process: subprocess.Popen):
        import psutil

        self.root, self.peak, self._psutil = psutil.Process(process.pid), 0, psutil
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while True:
            try:
                tree = [self.root, *self.root.children(recursive=True)]
                # PSS: a forked data worker shares its parent's pages, which summed resident sets count twice.
                self.peak = max(self.peak, sum(p.memory_full_info().pss for p in tree if p.is_running()))
            except self._psutil.Error:
                return
            time.sleep(0.5)

    def gib(self) -> float:
        return round(self.peak / 2**30, 2)


STAGE_TIMEOUT = 3600  # s: a rank killed for memory leaves the other waiting in a collective for DeepSpeed's 30 min


def run(command: list[str], log: Path) -> dict:
    """One CLI command; its output to `log`. Wall time, exit status (-9 when it ran past STAGE_TIMEOUT), and the
    process tree's peak memory."""
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                   env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        memory = TreeMemory(process)
        try:
            code = process.wait(timeout=STAGE_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code = process.wait()
    return {"exit": code, "wall_seconds": round(time.perf_counter() - started, 1), "peak_pss_gib_tree": memory.gib(),
            "log": str(log.relative_to(ROOT) if log.is_relative_to(ROOT) else log)}


def config_batch_size(stage: str) -> int:
    import yaml

    return yaml.safe_load((SETTING / f"{stage}.yaml").read_text())["data"]["init_args"]["batch_size"]


def out_of_memory(result: dict) -> bool:
    """Killed with the machine's memory nearly all taken: the kernel's OOM killer ended a rank."""
    import psutil

    return result["exit"] != 0 and result["peak_pss_gib_tree"] * 2**30 >= 0.85 * psutil.virtual_memory().total


def fit_in_memory(stage: str, work: Path, device: str, shared: Path | None, steps: int, logs: Path) -> tuple[dict, list]:
    """The stage at its config's batch size; where that does not fit in memory, at half of it, and so on
    down to 2 rows per process (a hardware override, like the device). Returns the last run and the
    attempts that did not fit (batch size, peak memory, log)."""
    batch, too_big = config_batch_size(stage), []
    while True:
        log = logs / (f"{stage}.log" if not too_big else f"{stage}-batch{batch}.log")
        command = stage_command(stage, work, device, shared, steps)
        result = run(command if not too_big else [*command, f"--data.init_args.batch_size={batch}"], log)
        result["batch_size_per_process"] = batch
        if not out_of_memory(result) or batch <= 2:
            return result, too_big
        too_big.append({"batch_size_per_process": batch, "peak_pss_gib_tree": result["peak_pss_gib_tree"],
                        "exit": result["exit"], "log": result["log"]})
        subprocess.run(["rm", "-rf", str(work / "checkpoints" / stage)], check=True)  # the killed run's folder
        batch //= 2


def stage_figures(work: Path, stage: str) -> dict:
    folder = work / "checkpoints" / stage
    perf = json.loads((folder / "perf.json").read_text()) if (folder / "perf.json").is_file() else {}
    keep = ("seconds_per_step", "step_seconds", "peak_rss_gib_per_process", "peak_cuda_gib_per_process", "processes",
            "trainable_weights", "tokens_per_step", "precision", "strategy")
    return {key: perf[key] for key in keep if key in perf}


def check(name: str, passed: bool, detail: str) -> dict:
    return {"hand_off": name, "pass": bool(passed), "detail": detail}


def check_finetune_read_teachers(work: Path) -> dict:
    import csv

    metrics = work / "checkpoints/finetune/metrics.csv"
    rows = list(csv.DictReader(metrics.open())) if metrics.is_file() else []
    kl = [float(row["train/kl"]) for row in rows if row.get("train/kl")]
    param = [float(row["train/param"]) for row in rows if row.get("train/param")]
    passed = bool(kl and param) and all(v == v and v > 0 for v in kl + param)
    return check("teachers → finetune", passed, f"train/kl {kl[:3]}, train/param {param[:3]} (first steps)")


def check_zero_folder_warm_start(work: Path) -> dict:
    from tagi.io import is_zero_folder, read_checkpoint_record

    folder = last_checkpoint(work, "pretrain")
    finetune = last_checkpoint(work, "finetune")
    if not (is_zero_folder(folder) and finetune.exists()):
        return check("stage-2 ZeRO folder → init_from", False, f"{folder} is not a ZeRO folder, or finetune wrote no checkpoint")
    record = read_checkpoint_record(finetune, "finetune")["tagi"]
    consolidated = folder.with_name(folder.name + ".fp32.ckpt")
    passed = record.get("init_from") == str(folder) and consolidated.is_file()
    return check("stage-2 ZeRO folder → init_from", passed,
                 f"finetune record init_from={record.get('init_from')}; consolidated {consolidated.name}: {consolidated.is_file()}")


def test_command(work: Path, device: str, shared: Path | None) -> list[str]:
    fit = stage_command("finetune", work, device, shared, steps=1)
    keep = [arg for arg in fit[fit.index("--config"):] if not arg.startswith(("--trainer.max_steps", "--trainer.val_check"))]
    return [sys.executable, "-m", "tagi", "test", *keep, f"--ckpt_path={last_checkpoint(work, 'finetune')}"]


def check_test(work: Path, result: dict, shared: Path | None) -> dict:
    path = work / "checkpoints/finetune/test/results.json"
    expected = 12 if shared is not None else 10  # held-out test tasks × 1 instance
    if result["exit"] != 0 or not path.is_file():
        return check("student → tagi test", False, f"exit {result['exit']}, see {result['log']}")
    count = json.loads(path.read_text())["overall"]["count"]
    return check("student → tagi test", count == expected, f"results.json overall count {count} (expected {expected})")


def check_adapter(work: Path, result: dict) -> dict:
    """The exported adapter in plain peft gives the student's (backbone + generated LoRA) greedy answer."""
    if result["exit"] != 0:
        return check("tagi test → tagi adapter → peft", False, f"exit {result['exit']}, see {result['log']}")
    from peft import PeftModel
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from tagi.inference.student import Student

    out = work / "adapter"
    meta = json.loads((out / "meta.json").read_text())
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(out / base), str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer([meta["input_template"].replace("{input}", ANSWER_INPUT)], return_tensors="pt")
    served = tokenizer.batch_decode(model.generate(**batch, max_new_tokens=8), skip_special_tokens=True)
    student = Student.from_checkpoint(last_checkpoint(work, "finetune")).generate(
        meta["instruction"], [ANSWER_INPUT], max_new_tokens=8, lora_only=True)
    return check("tagi test → tagi adapter → peft", served == student, f"peft {served!r}, Student {student!r}")


def rehearse(work: Path, device: str, shape: str, shared: Path | None, steps: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    tokenizer = str(shared / "tokenizers/t5") if shared is not None else None
    write_theta0(work / "theta0", shape, tokenizer)
    report = {"device": device, "shape": shape, "steps_per_stage": steps, "stages": {}, "hand_offs": [],
              "data": "NI v1 + wiki-c4 + T5 vocabulary" if shared else "synthetic suite (no shared data)"}
    for stage in STAGES:
        result, too_big = fit_in_memory(stage, work, device, shared, steps, logs)
        report["stages"][stage] = {**result, **stage_figures(work, stage), **({"did_not_fit": too_big} if too_big else {})}
        if result["exit"] != 0:
            report["hand_offs"].append(check(f"{stage} stage", False, f"exit {result['exit']}, see {result['log']}"))
            return report
    report["hand_offs"] += [check_finetune_read_teachers(work), check_zero_folder_warm_start(work)]
    tested = run(test_command(work, device, shared), logs / "test.log")
    report["stages"]["test"] = tested
    report["hand_offs"].append(check_test(work, tested, shared))
    exported = run([sys.executable, "-m", "tagi", "adapter", "--ckpt", str(last_checkpoint(work, "finetune")),
                    "--instruction", INSTRUCTION, "--out", str(work / "adapter")], logs / "adapter.log")
    report["stages"]["adapter"] = exported
    report["hand_offs"].append(check_adapter(work, exported))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="t5-base")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per stage (the first is not timed)")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"),
                        help="the shared data folder (NI v1, wiki-c4, T5 vocabulary); absent: the synthetic suite")
    parser.add_argument("--work", help="run folder (default runs/rehearsal-<device>-<shape>; removed first)")
    parser.add_argument("--out", help="the JSON to write (default docs/results/rehearsal.json for cpu at t5-base)")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device on this machine: the GPU rehearsal needs one (the CPU one is --device cpu)", file=sys.stderr)
        return 2
    shared = Path(args.shared) if (Path(args.shared) / "data/ni-v1").is_dir() else None
    work = Path(args.work or ROOT / "runs" / f"rehearsal-{args.device}-{args.shape}").resolve()
    for stale in ("checkpoints", "teachers", "adapter"):  # θ0 is reused: only its random weights are in it
        subprocess.run(["rm", "-rf", str(work / stale)], check=True)
    default = ROOT / "docs/results/rehearsal.json" if (args.device, args.shape) == ("cpu", "t5-base") else work / "rehearsal.json"
    out = Path(args.out) if args.out else default
    from tagi.eval.results import git_commit

    started = time.perf_counter()
    report = rehearse(work, args.device, args.shape, shared, args.steps)
    report |= {"commit": git_commit(ROOT), "seconds": round(time.perf_counter() - started, 1),
               "cpu_threads": torch.get_num_threads(),
               "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None}
    report["passed"] = all(item["pass"] for item in report["hand_offs"]) and len(report["hand_offs"]) == 4
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
