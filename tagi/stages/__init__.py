"""The three training stages as LightningModules (DESIGN §1, "Training stages")."""

from tagi.stages.base import Backbone, Generation, Optimization
from tagi.stages.finetune import Distillation, FinetuneModule
from tagi.stages.full import FullFinetuneModule
from tagi.stages.hyper import Architecture
from tagi.stages.pretrain import PretrainModule
from tagi.stages.teacher import TeacherModule

__all__ = [
    "Architecture", "Backbone", "Distillation", "FinetuneModule", "FullFinetuneModule", "Generation", "Optimization", "PretrainModule", "TeacherModule",
]
