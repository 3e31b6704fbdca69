"""Training cost of one finetune step (CE + KL + parameter loss) and its parts, against a plain peft-LoRA step.

    python benchmarks/training_cost.py [--shapes demo t5-small] [--steps 5] [--device cpu|cuda] [--no-fused]

The architecture at each shape is the shipped one (demo: configs/demo/parts/architecture.yaml;
t5-small and t5-base: configs/sni-t5-base/parts/architecture.yaml). Trainable weights per part
(pooler, generator, fusion) are counted at every shape, without allocating them; the timed shapes
are `--shapes` (t5-base needs a GPU to time in reasonable minutes).

Each measurement runs in its own subprocess, so peak memory is that part's alone: on CPU the peak
resident set above the one right before the timed steps (/proc/self/status VmHWM after resetting it
through /proc/self/clear_refs), on CUDA `torch.cuda.max_memory_allocated` above the allocation
before the steps. Time is the median over `--steps` steps after one warm-up step. Random weights at
the given shape; the batch has the finetune collate's layout (a few tasks, several rows each).

Parts:
  full step     FinetuneModule.training_step (hypernetwork, teacher forward, student, KL, param loss)
                + backward + AdamW step: what `tagi fit` does per optimizer step
  hypernetwork  encode the batch's distinct instructions → LoRA (forward + backward)
  teacher       θ0 + the rows' cluster LoRA on the instruction-concatenated input (forward, no grad)
  student       the TAGI model on the inputs with the generated LoRA (forward + backward of CE)
  optimizer     the AdamW update of the trainable weights, as the stage configures it
  optimizer (unfused)  the same update with torch's unfused implementation
  peft LoRA     peft LoRA (same rank and targets) on θ0, concatenated input, forward + backward + AdamW
Prints a table with ratios to the peft step, writes runs/training-cost/training_cost.{json,md,png}
and the summary docs/results/training-cost.json (`{"<shape>": {"trainable", "trainable_by_part",
"step_ratio", "peak_ratio"}}`, ratios of the full step to the peft step of the same run), from which
the README's table is generated (`python -m tagi.eval.results --write`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REAL = "configs/sni-t5-base/parts/architecture.yaml"
SHAPES = {  # backbone shape, its shipped architecture, and a batch typical of its setting
    "demo": dict(model=dict(d_model=128, num_layers=3, num_heads=4, d_kv=32, d_ff=256, vocab_size=1024),
                 architecture="configs/demo/parts/architecture.yaml", batch=32, tasks=4, instruction=32, input=12, target=8),
    "t5-small": dict(model=dict(d_model=512, num_layers=8, num_heads=6, d_kv=64, d_ff=1024, vocab_size=32128),
                     architecture=REAL, batch=8, tasks=4, instruction=60, input=100, target=10),
    "t5-base": dict(model=dict(d_model=768, num_layers=12, num_heads=12, d_kv=64, d_ff=2048, vocab_size=32128),
                    architecture=REAL, batch=8, tasks=4, instruction=60, input=100, target=10),
}
TIMED = ["demo", "t5-small"]
RESULTS = ROOT / "docs" / "results" / "training-cost.json"
PARTS = ["full step", "hypernetwork", "teacher", "student", "optimizer", "optimizer (unfused)", "peft LoRA"]
CLUSTERS = 8


# ------------------------------------------------------------------ one part, in a child process

def architecture(shape: dict):
    import yaml

    from tagi.training import Architecture

    return Architecture(**yaml.safe_load((ROOT / shape["architecture"]).read_text()))


def trainable_by_part(shape: dict) -> dict[str, int]:
    """The finetune stage's trainable weights per part, counted on the meta device (nothing allocated)."""
    from dataclasses import asdict

    from tagi.modeling.model import TAGIModel
    from tagi.modeling.backbone import load_backbone

    with torch.device("meta"):
        model = TAGIModel(load_backbone("tiny", shape["model"]), **asdict(architecture(shape)))
    return model.trainable_by_part()


def build_module(shape: dict, device: str, fused: bool = True):
    from tagi.modeling.lora import LoRAWeights
    from tagi.training import Backbone, Distillation, FinetuneModule, Generation, Optimization

    torch.manual_seed(0)
    module = FinetuneModule(
        backbone=Backbone("tiny", tiny_config=shape["model"]),
        architecture=architecture(shape),
        tokenizer="synthetic", optimization=Optimization(fused=fused), generation=Generation(),
        distillation=Distillation(kl_weight=1.0, param_weight=1.0, param_form="delta", grad_share_every=0),
    ).to(device)
    # The teacher bank as the finetune stage holds it: one (A, B) per cluster, same sites and rank.
    probe = module.model.encode_task(torch.ones(1, 4, dtype=torch.long, device=device), torch.ones(1, 4, dtype=torch.long, device=device)).lora
    module.teacher_bank = LoRAWeights(0.01 * torch.randn(CLUSTERS, *probe.A.shape[1:], device=device),
                                      0.01 * torch.randn(CLUSTERS, *probe.B.shape[1:], device=device), probe.scale)
    return module


def make_batch(shape: dict, device: str) -> dict:
    """The finetune collate's layout: U distinct instructions, B rows, each with its task and cluster."""
    g = torch.Generator().manual_seed(0)
    vocab, rows, tasks = shape["model"]["vocab_size"], shape["batch"], shape["tasks"]
    ids = lambda n, length: torch.randint(3, vocab, (n, length), generator=g)  # noqa: E731
    instruction, inputs = ids(tasks, shape["instruction"]), ids(rows, shape["input"])
    task_index = torch.arange(rows) % tasks
    concat = torch.cat([instruction[task_index], inputs], 1)  # (B, L+T)
    batch = {
        "instruction_ids": instruction, "instruction_mask": torch.ones_like(instruction),
        "task_index": task_index, "cluster_ids": task_index % CLUSTERS,
        "input_ids": inputs, "attention_mask": torch.ones_like(inputs),
        "concat_input_ids": concat, "concat_attention_mask": torch.ones_like(concat),
        "labels": ids(rows, shape["target"]),
    }
    return {key: value.to(device) for key, value in batch.items()}


def part_step(part: str, module, batch: dict, device: str):
    """A closure running one step of `part`."""
    if part == "peft LoRA":
        return peft_step(module, batch)
    from tagi.training.optim import make_adamw

    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = make_adamw(trainable, module.optimization, fused=part != "optimizer (unfused)" and module.optimization.fused)
    if part == "full step":
        def step():
            loss = module.training_step(batch, 0)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    elif part == "hypernetwork":
        def step():
            lora = module.model.encode_task(batch["instruction_ids"], batch["instruction_mask"]).lora
            (lora.A.square().mean() + lora.B.square().mean()).backward()
            optimizer.zero_grad(set_to_none=True)
    elif part == "teacher":
        def step():
            module.teacher_logits(batch)
    elif part == "student":
        from tagi.modeling.lora import LoRAWeights
        from tagi.modeling.model import TaskEncoding

        with torch.no_grad():  # the hypernetwork's output as a constant: only the student's own work is timed
            task = module.model.encode_task(batch["instruction_ids"], batch["instruction_mask"])
        lora = LoRAWeights(task.lora.A.requires_grad_(), task.lora.B.requires_grad_(), task.lora.scale)
        task = TaskEncoding(lora, task.instruction, task.instruction_mask, task.generator_hidden)

        def step():
            outputs = module.model(task, batch["input_ids"], batch["attention_mask"], labels=batch["labels"],
                                   task_index=batch["task_index"])
            outputs.loss.backward()
            optimizer.zero_grad(set_to_none=True)
    elif part.startswith("optimizer"):
        module.training_step(batch, 0).backward()  # the gradients every update applies

        def step():
            optimizer.step()
    else:
        raise ValueError(part)
    return step


def peft_step(module, batch: dict):
    """Plain peft LoRA on a copy of θ0, same rank/alpha and target modules, on the concatenated input."""
    import copy

    from peft import LoraConfig, get_peft_model

    from tagi.training.optim import make_adamw

    architecture = module.architecture
    config = LoraConfig(r=architecture.lora_rank, lora_alpha=architecture.lora_alpha, target_modules=["q", "v"], lora_dropout=0.0)
    model = get_peft_model(copy.deepcopy(module.model.backbone), config)
    module.model = None  # only the peft copy stays in memory
    optimizer = make_adamw([p for p in model.parameters() if p.requires_grad], module.optimization)

    def step():
        loss = model(input_ids=batch["concat_input_ids"], attention_mask=batch["concat_attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def memory_mark(device: str) -> int:
    """Start a peak-memory window; return the current level."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
    return _proc_status("VmRSS")


def memory_peak(device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _proc_status("VmHWM")


def measure_part(shape_name: str, part: str, steps: int, device: str, fused: bool) -> dict:
    warnings.filterwarnings("ignore")  # self.log outside a Trainer; peft's notices
    shape = SHAPES[shape_name]
    module = build_module(shape, device, fused).train()
    batch = make_batch(shape, device)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    step = part_step(part, module, batch, device)
    step()  # warm-up: allocator pools, optimizer state
    before = memory_mark(device)
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = memory_peak(device)
    return {"shape": shape_name, "part": part, "seconds": statistics.median(times), "peak_bytes_above_start": max(0, peak - before),
            "peak_bytes": peak, "finetune_trainable_params": trainable}


# ------------------------------------------------------------------ the driver

def run_child(shape: str, part: str, steps: int, device: str, fused: bool) -> dict:
    # A fixed mmap threshold makes glibc hand freed large blocks back, so RSS follows what torch holds.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    command = [sys.executable, __file__, "--child", shape, part, "--steps", str(steps), "--device", device,
               *([] if fused else ["--no-fused"])]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{shape} / {part} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict], counts: dict[str, dict[str, int]]) -> str:
    lines = ["| shape | part | s / step | × peft step | peak MiB above start | × peft |", "|---|---|---:|---:|---:|---:|"]
    for shape in dict.fromkeys(row["shape"] for row in rows):
        mine = [row for row in rows if row["shape"] == shape]
        peft = next(row for row in mine if row["part"] == "peft LoRA")
        for row in mine:
            memory = row["peak_bytes_above_start"] / 2**20
            lines.append(f"| {shape} | {row['part']} | {row['seconds']:.3f} | {row['seconds'] / peft['seconds']:.2f} | "
                         f"{memory:.1f} | {row['peak_bytes_above_start'] / max(peft['peak_bytes_above_start'], 1):.2f} |")
    for shape, parts in counts.items():
        split = ", ".join(f"{name} {count / 1e6:.2f}M" for name, count in parts.items() if count)
        lines.append(f"\n{shape}: {sum(parts.values()) / 1e6:.2f}M trainable weights in the finetune stage ({split})")
    return "\n".join(lines)


def summary(rows: list[dict], counts: dict[str, dict[str, int]], device: str, steps: int, fused: bool) -> dict:
    """docs/results/training-cost.json: per shape, trainable weights and the full step's ratios to peft."""
    from tagi.eval.results import git_commit

    out: dict = {"commit": git_commit(ROOT), "device": device, "threads": torch.get_num_threads(), "steps": steps,
                 "fused": fused}
    for shape, parts in counts.items():
        mine = {row["part"]: row for row in rows if row["shape"] == shape}
        entry = {"trainable": sum(parts.values()), "trainable_by_part": parts, "step_ratio": None, "peak_ratio": None}
        if mine:
            full, peft = mine["full step"], mine["peft LoRA"]
            entry["step_ratio"] = round(full["seconds"] / peft["seconds"], 3)
            entry["peak_ratio"] = round(full["peak_bytes_above_start"] / max(peft["peak_bytes_above_start"], 1), 3)
            entry["seconds"] = {part: round(row["seconds"], 4) for part, row in mine.items()}
        out[shape] = entry
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(row["shape"] for row in rows))
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 3.5), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        mine = {row["part"]: row for row in rows if row["shape"] == shape}
        ax.barh(PARTS[::-1], [mine[part]["seconds"] for part in PARTS[::-1]], color="#4c72b0")
        ax.set_xlabel("seconds per step")
        ax.set_title(f"finetune step parts — {shape}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=TIMED, choices=list(SHAPES), help="shapes to time")
    parser.add_argument("--results", default=str(RESULTS), help="summary JSON the README is generated from")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=str(ROOT / "runs" / "training-cost"), help="folder for the table, JSON and plot")
    parser.add_argument("--no-fused", dest="fused", action="store_false",
                        help="optimization.fused: false (torch's unfused AdamW) in every part; fused is the stages' default")
    parser.add_argument("--child", nargs=2, metavar=("SHAPE", "PART"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_part(*args.child, args.steps, args.device, args.fused)))
        return []
    start, rows = time.perf_counter(), []
    for shape in args.shapes:
        for part in PARTS:
            rows.append(run_child(shape, part, args.steps, args.device, args.fused))
            print(f"  {shape} / {part}: {rows[-1]['seconds']:.3f} s", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {shape: trainable_by_part(SHAPES[shape]) for shape in SHAPES}
    text = (f"## Finetune step cost ({args.device}, {torch.get_num_threads()} threads, median of {args.steps} steps, "
            f"{'fused' if args.fused else 'unfused'} AdamW)\n\n"
            f"{table(rows, counts)}\n")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(summary(rows, counts, args.device, args.steps, args.fused), indent=2) + "\n")
    (out / "training_cost.md").write_text(text)
    (out / "training_cost.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, out / "training_cost.png")
    print(text)
    print(f"({time.perf_counter() - start:.0f} s; plot: {out / 'training_cost.png'})")
    return rows


if __name__ == "__main__":
    main()
