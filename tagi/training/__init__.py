"""The three training stages as LightningModules (DESIGN §1, "Training stages")."""

from tagi.training.stage import Backbone, Generation, Optimization
from tagi.training.finetune import Distillation, FinetuneModule
from tagi.training.full import FullFinetuneModule
from tagi.training.hyper import Architecture
from tagi.training.pretrain import PretrainModule
from tagi.training.teacher import TeacherModule

__all__ = [
    "Architecture", "Backbone", "Distillation", "FinetuneModule", "FullFinetuneModule", "Generation", "Optimization", "PretrainModule", "TeacherModule",
]
