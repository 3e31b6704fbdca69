"""The training stages as LightningModules, and what they share (docs/ARCHITECTURE.md)."""

from tagi.training.config import Architecture, Backbone, Distillation, Generation, Optimization
from tagi.training.finetune import FinetuneModule
from tagi.training.pretrain import PretrainModule
from tagi.training.teacher import TeacherModule
from tagi.training.theta0 import Theta0Module

__all__ = [
    "Architecture", "Backbone", "Distillation", "FinetuneModule", "Generation", "Optimization", "PretrainModule",
    "TeacherModule", "Theta0Module",
]
