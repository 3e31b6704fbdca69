"""LightningDataModules for the three stages; thin wrappers over the Lightning-free data code.

    TeacherDataModule    train: train tasks, input = Tk-Instruct concatenation     (stage 1)
                         val: held-out instances of the train tasks; test: the test tasks
    PretrainDataModule   train: C4 segments a/b/c ([a; d] with four_way)             (stage 2)
                         val: validation tasks of `eval_data_dir` (else C4 segments); test: test tasks
    FinetuneDataModule   train: train tasks, instruction → H, input → model          (stage 3)
                         val: validation tasks; test: test tasks

Train, validation and test are disjoint task sets (`splits_dir`, or the data's own
`splits/<split>/{train,val,test}_tasks.txt`): validation drives the val metrics and every choice,
the test tasks are read by `test`/`predict` only. After `setup()` each exposes `tokenizer`,
`clusters` (category → id, over all three sets), `train_clusters` (categories with train tasks:
the teacher bank), `eval_tasks` ((task, category) pairs of the test loader) and `val_tasks` (what
its val loader covers); the teacher module also `cluster_tasks` (category → its train task
names). `instruction_control` replaces the evaluation tasks' instructions (`controls.py`);
`student_input` is what the student reads as its input (`sni_dataset.StudentInput`), `prompt_format`
how every prompt becomes model input (`prompts.py`: plain + EOS, or the tokenizer's chat template),
`template` the words around a task's fields (`templates.py`: ours, or Tk-Instruct's collator's exactly), and
`training_targets` which references of a training instance are targets (`sni_dataset.TrainingTargets`).
Batch keys: see `collate.py`. `data_dir="synthetic"` (or None) generates the embedded task suite
into `cache_dir` on first use.
"""

from __future__ import annotations

from functools import partial

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigurationError
from .c4 import C4Segments
from .collate import Collator
from .sampler import ClusterStepSampler, ShuffledBatchSampler, TaskBatchSampler
from .controls import Control, apply_control
from .synthetic import ensure_corpus
from .sni import OnError, Task, split_dir
from .sni_dataset import (SYNTHETIC, Lengths, SNIDataset, StudentInput, TaskSets, TrainingTargets, cap_instances,
                          holdout_instances, load_tasks, prepare_data_dir, resolve_data_dir)
from .prompts import PromptFormat, PromptKind
from .templates import TemplateKind
from .tokenization import load_tokenizer, pad_id



def _pairs(tasks: list[Task]) -> list[tuple[str, str]]:
    return [(t.name, t.category) for t in tasks]


class _TaskDataModule(LightningDataModule):
    """Loaders and bookkeeping shared by all three; subclasses set `self.hparams` in `__init__`."""

    def _init_state(self) -> None:
        self.tokenizer = None
        self.prompt_format: PromptFormat | None = None
        self.clusters: dict[str, int] = {}
        self.eval_tasks: list[tuple[str, str]] = []
        self.val_tasks: list[tuple[str, str]] = []
        self.train_clusters: list[str] = []  # categories that have train tasks (= teachers to train/load)
        self.datasets: dict[str, Dataset] = {}
        self._resume: dict | None = None  # the train position a restored checkpoint asks for

    def _load_tokenizer(self) -> None:
        self.tokenizer = load_tokenizer(self.hparams.tokenizer)
        self.prompt_format = PromptFormat.of(self.tokenizer, self.hparams.prompt_format)

    def _task_dir(self) -> str | None:
        """The SNI-layout directory this module reads ("synthetic" for the embedded suite)."""
        return self.hparams.data_dir or SYNTHETIC

    def prepare_data(self) -> None:  # once per node: generate the synthetic suite if it is asked for
        if self._task_dir() is not None:
            prepare_data_dir(self._task_dir(), self.hparams.synthetic_seed, self.hparams.cache_dir)

    def _load(self, data_dir: str | None, split: str, max_train: int | None) -> TaskSets:
        """The three task sets; the evaluation ones with `instruction_control` applied."""
        h = self.hparams
        root = prepare_data_dir(data_dir, h.synthetic_seed, h.cache_dir)  # idempotent, race-safe
        sets = load_tasks(root, split, max_train, h.max_test_instances_per_task, h.on_error, h.seed, h.splits_dir)
        sets.val = apply_control(sets.val, h.instruction_control, h.num_pos, h.seed)
        sets.test = apply_control(sets.test, h.instruction_control, h.num_pos, h.seed)
        self.clusters = sets.clusters
        self.eval_tasks = _pairs(sets.test)
        self.train_clusters = sorted({t.category for t in sets.train})
        return sets

    def _validation_tasks(self, sets: TaskSets, data_option: str = "data_dir") -> list[Task]:
        """The validation tasks, capped per task; none is an error that says how to add them."""
        if not sets.val:
            h = self.hparams
            where = h.splits_dir or f"{getattr(h, data_option)}/splits/<split>"
            raise ConfigurationError(
                f"data.init_args.splits_dir: no validation tasks in {where} (val_tasks.txt is missing or empty). "
                "Validation must not read the test tasks: list validation tasks in val_tasks.txt, taken out of "
                "train_tasks.txt, in a folder given as data.init_args.splits_dir (configs/ni-v1/splits is an example; "
                "`python -m tagi.data.carve --data <data_dir> --out <folder>` writes one)")
        return cap_instances(sets.val, self.hparams.max_val_instances_per_task)

    def require_examples(self, stage: str) -> None:
        """`validate` / `test` / `predict` over no example would write no results and exit 0 (a pipeline then
        recorded empty score rows over its earlier ones): an error, raised after `setup` and before anything is written."""
        subset = "val" if stage == "validate" else "test"
        if len(self.datasets.get(subset) or []) > 0:
            return
        h = self.hparams
        if self._task_dir() is None:
            raise ConfigurationError(f"data.init_args.eval_data_dir: not set, so `{stage}` has no {subset} task to score; "
                                     "give the SNI-layout folder of the tasks to evaluate (nothing was written)")
        root = resolve_data_dir(self._task_dir(), h.synthetic_seed, h.cache_dir)
        listed = split_dir(root, getattr(h, "split", None) or h.eval_split, h.splits_dir) / f"{subset}_tasks.txt"
        raise ConfigurationError(f"{listed}: names no task, so `{stage}` has no example to score; list the tasks to "
                                 "evaluate there, or give data.init_args.splits_dir (nothing was written)")

    @property
    def collator(self) -> Collator:
        return Collator(pad_id(self.tokenizer))

    def _train_loader(self, dataset: Dataset, group_of: list[int] | None, per_batch: int | None) -> DataLoader:
        h = self.hparams
        if per_batch:  # few tasks (or clusters) per batch: their instructions are encoded once each
            sampler = TaskBatchSampler(group_of, h.batch_size, per_batch, shuffle=True, seed=h.seed)
        else:
            sampler = ShuffledBatchSampler(len(dataset), h.batch_size, seed=h.seed)
        sampler.resume(**self._take_resume())
        # Its own generator: the loader's per-pass base seed must not draw from the global RNG, or a
        # resumed run (which creates its iterator at a different point) would shift dropout's stream.
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=self.collator, num_workers=h.num_workers,
                          persistent_workers=h.num_workers > 0, generator=torch.Generator().manual_seed(h.seed))

    def _eval_loader(self, name: str) -> DataLoader:
        """Deterministic, task by task (the dataset's order), no shuffling."""
        h = self.hparams
        dataset = self.datasets[name]
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        # Under DDP each rank evaluates its own examples (no padding repeats); metrics sync across ranks.
        sampler = UnrepeatedDistributedSampler(dataset, shuffle=False) if distributed else None
        return DataLoader(dataset, batch_size=h.eval_batch_size or h.batch_size, shuffle=False, sampler=sampler,
                          collate_fn=self.collator, num_workers=h.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The held-out test set (`predict` writes predictions.jsonl; `test` also scores them)."""
        return self.test_dataloader()

    def state_dict(self) -> dict:
        """Saved in checkpoints: the category → cluster id map the model was trained with, and where
        in the training data the run is (so `--ckpt_path` resumes on the next unseen batch)."""
        return {"clusters": dict(self.clusters), "train_position": self._train_position()}

    def _take_resume(self) -> dict:
        """Where the train loader starts: a restored checkpoint's position, else the trainer's epoch."""
        resume, self._resume = self._resume, None
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return resume or {"epoch": epoch, "position": 0}

    def _train_position(self) -> dict | None:
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return None
        progress = trainer.fit_loop.epoch_loop.batch_progress
        epoch = trainer.current_epoch
        if progress.is_last_batch:  # the epoch is over: resume at the start of the next one
            return {"epoch": epoch + 1, "position": 0}
        return {"epoch": epoch, "position": progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint trained with other cluster ids would route rows to the wrong teachers: refuse."""
        saved = state.get("clusters")
        if self.clusters and saved is not None and saved != self.clusters:
            raise ConfigurationError(f"--ckpt_path: the checkpoint's clusters {saved} differ from this data's clusters "
                                     f"{self.clusters}; resume on the data (and split) the checkpoint was trained on")
        self._resume = state.get("train_position")


class TeacherDataModule(_TaskDataModule):
    """Stage 1: batches {input_ids, attention_mask (the concatenation), labels, cluster_ids}. Training batches hold
    one cluster each, cluster after cluster (`ClusterStepSampler`, seeded by `seed`); `only_clusters` trains a subset.
    `max_input_length`: the instance prompt's budget inside the concatenation, the student's (finetuning's) own,
    so a teacher is trained on the instance text the student and the KL's teacher forward read."""

    def __init__(self, data_dir: str | None = "synthetic", split: str = "default", tokenizer: str = "byt5",
                 num_pos: int = 2, batch_size: int = 8, eval_batch_size: int | None = None,
                 max_concat_length: int = 1024, max_target_length: int = 128, max_input_length: int = 512,
                 max_train_instances_per_task: int | None = None, val_instances_per_task: int = 10,
                 max_test_instances_per_task: int | None = 100, only_clusters: list[str] | None = None,
                 num_workers: int = 0, seed: int = 0,
                 on_error: OnError = "raise", synthetic_seed: int = 0, cache_dir: str = "runs/data",
                 splits_dir: str | None = None, instruction_control: Control = "real",
                 prompt_format: PromptKind = "plain", training_targets: TrainingTargets = "first",
                 template: TemplateKind = "tagi"):
        super().__init__()
        self.save_hyperparameters()
        self._init_state()
        self.cluster_tasks: dict[str, list[str]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        self._load_tokenizer()
        max_train = None if h.max_train_instances_per_task is None else (
            h.max_train_instances_per_task + h.val_instances_per_task)
        sets = self._load(self._task_dir(), h.split, max_train)
        train, test = sets.train, sets.test
        if h.only_clusters is not None:
            train = [t for t in train if t.category in set(h.only_clusters)]
        # held out from the sample's end: the teachers train on the very instances the student's cap draws
        train, val = holdout_instances(train, h.val_instances_per_task, None if max_train is None else h.seed)
        self.cluster_tasks = {}
        for t in train:
            self.cluster_tasks.setdefault(t.category, []).append(t.name)
        self.train_clusters = sorted(self.cluster_tasks)
        self.val_tasks = _pairs(val)
        lengths = Lengths(input=h.max_input_length, target=h.max_target_length, concat=h.max_concat_length)
        make = partial(SNIDataset, tokenizer=self.tokenizer, clusters=self.clusters, num_pos=h.num_pos,
                       lengths=lengths, teacher=True, prompt_format=self.prompt_format, template=h.template)
        self.datasets = {"train": make(train, targets=h.training_targets), "val": make(val, with_meta=True),
                         "test": make(test, with_meta=True)}

    def train_dataloader(self) -> DataLoader:
        """The teacher module says how many batches each cluster gets (its per-cluster step budget)."""
        return self.cluster_loader(self.trainer.lightning_module.batches_per_cluster)

    def cluster_loader(self, batches_per_cluster: int) -> DataLoader:
        ds, h = self.datasets["train"], self.hparams
        cluster_of = [ds.clusters[ds.tasks[ti].category] for ti in ds.task_of]
        order = [(self.clusters[name], name) for name in self.train_clusters]
        sampler = ClusterStepSampler(cluster_of, order, batches_per_cluster, h.batch_size, seed=h.seed)
        sampler.resume(**self._take_resume())
        return DataLoader(ds, batch_sampler=sampler, collate_fn=self.collator, num_workers=h.num_workers,
                          persistent_workers=h.num_workers > 0, generator=torch.Generator().manual_seed(h.seed))


class FinetuneDataModule(_TaskDataModule):
    """Stage 3: batches {instruction_ids, instruction_mask, task_index, input_ids, attention_mask,
    labels, cluster_ids, concat_input_ids, concat_attention_mask}; val/test over held-out tasks."""

    def __init__(self, data_dir: str | None = "synthetic", split: str = "default", tokenizer: str = "byt5",
                 num_pos: int = 2, batch_size: int = 8, eval_batch_size: int | None = None,
                 max_instruction_length: int = 1024, max_input_length: int = 512,
                 max_target_length: int = 128, max_concat_length: int = 1024,
                 max_train_instances_per_task: int | None = None, max_val_instances_per_task: int | None = None,
                 max_test_instances_per_task: int | None = 100, tasks_per_batch: int | None = None,
                 num_workers: int = 0, seed: int = 0, on_error: OnError = "raise", synthetic_seed: int = 0,
                 cache_dir: str = "runs/data", splits_dir: str | None = None, instruction_control: Control = "real",
                 student_input: StudentInput = "template", prompt_format: PromptKind = "plain",
                 training_targets: TrainingTargets = "first", template: TemplateKind = "tagi"):
        super().__init__()
        self.save_hyperparameters()
        self._init_state()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        self._load_tokenizer()
        sets = self._load(self._task_dir(), h.split, h.max_train_instances_per_task)
        val = self._validation_tasks(sets)
        self.val_tasks = _pairs(val)
        lengths = Lengths(h.max_instruction_length, h.max_input_length, h.max_target_length, h.max_concat_length)
        self.datasets = _finetune_datasets(self.tokenizer, self.prompt_format, self.clusters, h.num_pos, lengths,
                                           h.student_input, val, sets.test, sets.train, h.training_targets, h.template)

    def train_dataloader(self) -> DataLoader:
        ds = self.datasets["train"]
        return self._train_loader(ds, ds.task_of, self.hparams.tasks_per_batch)


def _finetune_datasets(tokenizer, prompt_format: PromptFormat, clusters: dict[str, int], num_pos: int, lengths: Lengths,
                       student_input: StudentInput, val: list[Task], test: list[Task], train: list[Task] | None = None,
                       training_targets: TrainingTargets = "first", template: TemplateKind = "tagi") -> dict:
    """Finetune-format datasets; the evaluation ones carry metadata."""
    make = partial(SNIDataset, tokenizer=tokenizer, clusters=clusters, num_pos=num_pos, lengths=lengths,
                   student_input=student_input, prompt_format=prompt_format, template=template)
    out = {"val": make(val, with_meta=True), "test": make(test, with_meta=True)}
    if train is not None:
        out["train"] = make(train, targets=training_targets)
    return out


class PretrainDataModule(_TaskDataModule):
    """Stage 2: batches {instruction_ids, instruction_mask, task_index, input_ids, attention_mask,
    labels} from C4 segments; val/test over the held-out tasks of `eval_data_dir` when given
    (the finetune eval batches), else val over C4 segments of the first `val_documents` documents."""

    def __init__(self, source: str, tokenizer: str = "byt5", four_way: bool = False, batch_size: int = 8,
                 eval_batch_size: int | None = None, max_instruction_length: int = 256,
                 max_input_length: int = 256, max_target_length: int = 128, min_piece: int = 8,
                 num_train_segments: int | None = None, max_documents: int | None = None,
                 val_documents: int = 16, num_val_segments: int | None = 64,
                 eval_data_dir: str | None = None, eval_split: str = "default", num_pos: int = 2,
                 max_concat_length: int = 1024, max_val_instances_per_task: int | None = None,
                 max_test_instances_per_task: int | None = 100, num_workers: int = 0, seed: int = 0,
                 on_error: OnError = "raise", synthetic_seed: int = 0, cache_dir: str = "runs/data",
                 splits_dir: str | None = None, instruction_control: Control = "real",
                 student_input: StudentInput = "template", four_way_input_length: int | None = None,
                 max_sequence_length: int | None = None, prompt_format: PromptKind = "plain",
                 template: TemplateKind = "tagi"):
        super().__init__()
        self.save_hyperparameters()
        self._init_state()

    def _task_dir(self) -> str | None:
        return self.hparams.eval_data_dir  # None: no held-out tasks, validate on C4 segments

    def _source(self) -> str:
        """`source: synthetic` → text written from the embedded suite's train tasks (offline demo)."""
        h = self.hparams
        if h.source != SYNTHETIC:
            return h.source
        suite_dir = prepare_data_dir(SYNTHETIC, h.synthetic_seed, h.cache_dir)
        return str(ensure_corpus(suite_dir, suite_dir.with_name(f"{suite_dir.name}-corpus.jsonl")))

    def _segments(self, **kwargs) -> C4Segments:
        h = self.hparams
        return C4Segments(self._source(), self.tokenizer, h.max_instruction_length, h.max_input_length,
                          h.max_target_length, h.four_way, h.min_piece, h.seed,
                          four_way_input_length=h.four_way_input_length, max_sequence_length=h.max_sequence_length,
                          prompt_format=self.prompt_format, **kwargs)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        self._load_tokenizer()
        if h.eval_data_dir is None:  # validate on held-out documents, never trained on
            self.datasets = {"val": self._segments(num_segments=h.num_val_segments, max_documents=h.val_documents)}
            skip = h.val_documents
        else:
            sets = self._load(h.eval_data_dir, h.eval_split, max_train=0)
            val = self._validation_tasks(sets, "eval_data_dir")
            self.val_tasks = _pairs(val)
            lengths = Lengths(h.max_instruction_length, h.max_input_length, h.max_target_length,
                              h.max_concat_length)
            self.datasets = _finetune_datasets(self.tokenizer, self.prompt_format, self.clusters, h.num_pos, lengths,
                                               h.student_input, val, sets.test, template=h.template)
            skip = 0
        self.datasets["train"] = self._segments(num_segments=h.num_train_segments, max_documents=h.max_documents,
                                                skip_documents=skip)

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        loader = SkippingLoader(self.datasets["train"], batch_size=h.batch_size, collate_fn=self.collator,
                                num_workers=h.num_workers, persistent_workers=h.num_workers > 0,
                                generator=torch.Generator().manual_seed(h.seed))
        # Every pass over the stream yields the same segments, so resuming = skipping what was trained on.
        loader.skip = self._take_resume()["position"]
        return loader

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.datasets:
            raise ValueError("PretrainDataModule has no test set: give eval_data_dir (held-out SNI tasks)")
        return self._eval_loader("test")


class SkippingLoader(DataLoader):
    """A loader over a stream whose next pass first drops `skip` batches (mid-epoch resume)."""

    skip = 0

    def __iter__(self):
        iterator = super().__iter__()
        skip, self.skip = self.skip, 0
        for _ in range(skip):
            next(iterator, None)
        return iterator
