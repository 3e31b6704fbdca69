"""The training stages as LightningModules, and what they share (docs/ARCHITECTURE.md)."""

from tagi.training.config import Architecture, Backbone, Distillation, Generation, Optimization
from tagi.training.finetune import FinetuneModule
from tagi.training.full import FullFinetuneModule
from tagi.training.pretrain import PretrainModule
from tagi.training.teacher import TeacherModule

__all__ = [
    "Architecture", "Backbone", "Distillation", "FinetuneModule", "FullFinetuneModule", "Generation", "Optimization",
    "PretrainModule", "TeacherModule",
]
