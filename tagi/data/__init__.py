"""Data: SNI-layout tasks, the embedded synthetic suite, C4 segments, collators, DataModules.

The DataModules (Lightning) live in `tagi.data.modules` and are imported lazily, so the rest of
the data code can be used without importing Lightning.
"""

from .c4 import C4Segments, iter_documents, split_four_way, split_pieces, split_three_way
from .collate import IGNORE_INDEX, Collator
from .sampler import TaskBatchSampler
from .sni import Instance, InvalidTaskError, Task, build_clusters, load_clusters, load_split, save_clusters
from .sni_dataset import Lengths, SNIDataset
from .synthetic import write_suite
from .templates import concat_input_text, instruction_text, student_input_text
from .tokenization import load_tokenizer

_MODULES = ("TeacherDataModule", "PretrainDataModule", "FinetuneDataModule")

__all__ = ["C4Segments", "Collator", "IGNORE_INDEX", "Instance", "InvalidTaskError", "Lengths", "SNIDataset",
           "Task", "TaskBatchSampler", "build_clusters", "concat_input_text", "instruction_text",
           "iter_documents", "load_clusters", "load_split", "load_tokenizer", "student_input_text",
           "save_clusters", "split_four_way", "split_pieces", "split_three_way", "write_suite", *_MODULES]


def __getattr__(name: str):
    if name in _MODULES:
        from . import modules

        return getattr(modules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
