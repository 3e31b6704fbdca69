"""Stage 3: finetune the hypernetwork (+ fusion) on instruction tasks, distilling from the teachers.

    loss = CE + λ_kl · KL(teacher ‖ student) + λ_param · L_param(generated LoRA, teacher LoRA) + λ_cst · L_cst

The teacher of a row is the backbone θ0 + the LoRA of the row's task cluster, fed the
instruction-concatenated input, without gradient; or, when the teachers sit on another model
(`teacher_backbone`, TAGI's Tk-Instruct), that model + the LoRA, loaded frozen in eval mode and kept
out of checkpoints. A λ of 0 skips its term's work entirely.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from tagi.inference.runner import StudentRunner
from tagi.modeling.families import family_of
from tagi.modeling.adapters import AdapterError, cluster_folders, load_adapter, read_meta
from tagi.errors import ConfigurationError
from tagi.io import read_checkpoint
from tagi.modeling.lora import LoRAWeights, apply_lora
from tagi.modeling.losses import consistency_loss, kl_distillation, lora_param_distance
from tagi.modeling.model import TAGIModel
from tagi.provenance import Provenance, verify_teacher
from tagi.training.config import Architecture, Backbone, Distillation, Generation, Optimization
from tagi.training.stage import Stage

log = logging.getLogger(__name__)


class FinetuneModule(Stage):
    stage = "finetune"

    def __init__(
        self,
        backbone: Backbone = Backbone(),
        architecture: Architecture = Architecture(),
        tokenizer: str = "byt5",
        optimization: Optimization = Optimization(),
        generation: Generation = Generation(),
        adapter_only: bool = False,
        distillation: Distillation = Distillation(),
        init_from: str | None = None,
        teachers: str | None = None,
        teacher_backbone: Backbone | None = None,
    ):
        """`adapter_only`: as in `PretrainModule`. `init_from`: the stage-2 checkpoint to warm-start from;
        `teachers`: the teacher stage's output_dir; `teacher_backbone`: the model the teachers sit on when it is
        not θ0 (the teacher stage's own `teacher_backbone`; same tokenizer)."""
        super().__init__(backbone, tokenizer, optimization, generation)
        self.architecture, self.adapter_only = architecture, adapter_only
        self.model = TAGIModel(backbone.load(len(self.tokenizer)), **asdict(architecture))
        self.student = StudentRunner(self.model, self.tokenizer)
        if distillation.consistency_weight > 0 and architecture.generator != "hart":
            raise ConfigurationError(
                "distillation.consistency_weight > 0 is HART's local consistency loss on its per-layer states; "
                f"it needs model.init_args.architecture.generator: hart (this run has {architecture.generator!r})")
        self.distillation = distillation
        self.init_from, self.teachers, self.teacher_backbone = init_from, teachers, teacher_backbone
        self.teacher_bank: LoRAWeights | None = None
        # The teachers' own backbone where it is not θ0: run, never trained or saved, so held outside the module tree.
        self.frozen: dict[str, nn.Module] = {}
        generator = self.model.hypernet
        states = (generator.layout.num_steps if architecture.generator == "hart" else 1, architecture.generator_width)
        # HART consistency state: the previous step's batch-mean per-layer states (T, P) (resumable).
        self.register_buffer("consistency_mean", torch.zeros(states))
        self.register_buffer("consistency_steps", torch.zeros((), dtype=torch.long))
        self._warm_started = False

    @property
    def needs_teachers(self) -> bool:
        return self.distillation.kl_weight > 0 or self.distillation.param_weight > 0

    # -- start-up: warm start and teacher bank

    def _warm_start(self, path: str) -> None:
        """Weights only (optimizer/loop state are not carried over; resuming a stage is --ckpt_path)."""
        if not Path(path).exists():
            raise ConfigurationError(f"model.init_args.init_from: {path} does not exist; point it at the stage-2 (pretrain) checkpoint")
        checkpoint = read_checkpoint(path, "model.init_args.init_from")  # a ZeRO folder: its float32 consolidation
        described = Provenance.of(checkpoint, path, "model.init_args.init_from").verify(
            ["pretrain"], self.backbone_spec,
            hint="Use the same model.init_args.backbone in both stages, or the stage-2 (pretrain) checkpoint trained "
                 "on this backbone.").record
        trained = described.get("architecture", {})
        self._check_backbone_training(path, trained.get("freeze_backbone", True))
        self._check_norms_training(path, trained.get("train_layer_norms", False))
        state = {key[len("model."):]: value for key, value in checkpoint["state_dict"].items() if key.startswith("model.")}
        try:
            self.model.load_trained_state(state)
        except RuntimeError as error:
            raise ConfigurationError(f"model.init_args.init_from: {path} does not fit this architecture ({error}); "
                                     "use the pretrain stage's model.init_args.architecture") from None
        log.info("warm-started from %s", path)

    def _check_backbone_training(self, path: str, pretrained_frozen: bool) -> None:
        """A stage 2 that trained the backbone (HINT's) warm-starts only a run that trains it on and reads no teachers:
        the teachers were trained on θ0, and a frozen backbone would drop what stage 2 learned without a word."""
        if pretrained_frozen:
            return
        frozen = not any(parameter.requires_grad for parameter in self.model.backbone.parameters())
        if frozen or self.needs_teachers:
            why = ("the teachers' KL and parameter loss need the frozen θ0 they were trained on" if self.needs_teachers else
                   "this run freezes it (model.init_args.architecture.freeze_backbone: true), so what stage 2 learned would be lost")
            raise ConfigurationError(
                f"model.init_args.init_from: {path} trained the backbone (architecture.freeze_backbone: false), and {why}. "
                "Pretrain with architecture.freeze_backbone: true, or train the backbone here too with no teachers "
                "(distillation.kl_weight and param_weight 0, as configs/demo/baselines/hint.yaml)")

    def _check_norms_training(self, path: str, pretrained_norms: bool) -> None:
        """A stage 2 that trained the layer norms warm-starts only a run that trains them on: a frozen norm is
        θ0's, so the warm start would drop what stage 2 learned without a word."""
        if pretrained_norms and not self.model.theta0_norms and any(
                not parameter.requires_grad for parameter in self.model.backbone.parameters()):
            raise ConfigurationError(
                f"model.init_args.init_from: {path} trained the backbone's layer norms (architecture.train_layer_norms: "
                "true), and this run freezes them, so what stage 2 learned would be lost. Train them here too "
                "(--model.init_args.architecture.train_layer_norms=true), or warm-start from a stage 2 that did not")

    def prepare(self, datamodule) -> None:
        """Warm start from stage 2 and load the teacher bank: every check of the previous stages'
        artifacts, run by the CLI before anything is written (and by `setup` for plain Trainer use)."""
        if self.init_from and not self._warm_started:
            self._warm_start(self.init_from)
            self._warm_started = True
        if self.needs_teachers and self.teacher_bank is None:
            self.teacher_bank = self._load_teacher_bank(datamodule.clusters, datamodule.train_clusters)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            self.prepare(self.trainer.datamodule)

    def _load_teacher_bank(self, clusters: dict[str, int], needed: list[str]) -> LoRAWeights:
        if not self.teachers:
            raise ConfigurationError("model.init_args.teachers is not set but kl_weight/param_weight > 0 need the teacher bank")
        root = Path(self.teachers)
        if not root.is_dir():
            raise ConfigurationError(f"model.init_args.teachers: {root} is not a folder; point it at the teacher stage's "
                                     "output_dir (one PEFT folder per cluster)")
        sites = self._teacher_site_names()
        first = None
        A = B = None
        folders = cluster_folders(needed)  # teachers written before the teacher stage refused a shared folder
        for name in needed:
            directory = root / folders[name]
            if not directory.is_dir():
                raise ConfigurationError(f"teacher for cluster {name!r} not found: {directory} is missing (run the teacher stage)")
            try:
                verify_teacher(directory, read_meta(directory), self.teacher_backbone or self.backbone_spec,
                               self.architecture.lora_rank, self.tokenizer_name, self.teacher_backbone is not None)
                lora = load_adapter(directory, sites)
            except AdapterError as error:
                raise ConfigurationError(f"teacher for cluster {name!r} cannot be used: {error}. Retrain the teachers "
                                         "with this package's teacher stage (teacher.yaml), which writes q/v LoRA.") from None
            if A is None:
                first = lora
                A = torch.zeros(len(clusters), *lora.A.shape[1:])  # (K, S, r, in)
                B = torch.zeros(len(clusters), *lora.B.shape[1:])  # (K, S, out, r)
            A[clusters[name]], B[clusters[name]] = lora.A[0], lora.B[0]
        return LoRAWeights(A.to(self.device), B.to(self.device), first.scale, first.shapes)

    def _teacher_site_names(self) -> list[str]:
        """The LoRA sites of the model the teachers sit on; loads that model when it is not θ0."""
        spec = self.teacher_backbone
        if spec is None or spec.matches(self.backbone_spec.record()):
            return self.model.site_names
        if "teacher" not in self.frozen:
            self.frozen["teacher"] = self._load_teacher_model(spec)
        family = family_of(self.frozen["teacher"])
        names = family.site_names()
        shapes = [(site.in_features, site.out_features) for site in map(self.frozen["teacher"].get_submodule, names)]
        if self.distillation.param_weight > 0 and (names != self.model.site_names or shapes != [
                (site.in_features, site.out_features) for site in self.model.sites()]):
            raise ConfigurationError(
                f"model.init_args.teacher_backbone: {spec.name}'s LoRA sites differ from θ0's ({len(names)} sites, first "
                f"{shapes[0]} against {len(self.model.site_names)}); the parameter loss compares LoRAs site by site, so "
                "set distillation.param_weight: 0, or use teachers on a model of θ0's shape")
        return names

    def _load_teacher_model(self, spec: Backbone) -> nn.Module:
        """The teachers' backbone: frozen, in eval mode (no dropout in a distillation target), same vocabulary."""
        model = spec.load(len(self.tokenizer)).requires_grad_(False).eval()
        theirs, ours = model.get_output_embeddings().weight.shape[0], self.model.backbone.get_output_embeddings().weight.shape[0]
        if theirs != ours:
            raise ConfigurationError(
                f"model.init_args.teacher_backbone: {spec.name} predicts {theirs} tokens and θ0 {ours}; the KL compares "
                "their distributions token by token, so the teachers' backbone must share θ0's tokenizer")
        log.info("teacher forward on model.init_args.teacher_backbone %s (frozen, eval mode)", spec.name)
        return model

    # -- training

    def _teacher_bank(self) -> LoRAWeights:
        """The bank on this module's device, moved there once: it is loaded in `setup`, before
        Lightning moves the model, and copying it every step would cost a transfer per step."""
        bank = self.teacher_bank
        if bank.A.device != self.device:
            bank = self.teacher_bank = LoRAWeights(bank.A.to(self.device), bank.B.to(self.device), bank.scale, bank.shapes)
        return bank

    def teacher_logits(self, batch: dict) -> Tensor:
        """The teachers' backbone (θ0 or `teacher_backbone`) + the row's cluster LoRA on the instruction-concatenated
        input: (B, T, V), no gradient."""
        rows = self._teacher_bank().select(batch["cluster_ids"])
        inputs = (batch["concat_input_ids"], batch["concat_attention_mask"], batch["labels"])
        teacher = self.frozen.get("teacher")
        if teacher is None:
            with torch.no_grad(), apply_lora(self.model.sites(), rows):
                return self.model.theta0_answer_logits(*inputs).logits
        if teacher.device != self.device:
            teacher.to(self.device)  # once: it is outside the module tree Lightning moves
        family = family_of(teacher)
        with torch.no_grad(), apply_lora([teacher.get_submodule(name) for name in family.site_names()], rows):
            return family.answer_logits(teacher, *inputs).logits

    def _param_distance(self, task, batch: dict) -> Tensor:
        task_clusters = torch.empty(len(task), dtype=torch.long, device=self.device)
        task_clusters.scatter_(0, batch["task_index"], batch["cluster_ids"])  # (N,) cluster of each task
        bank = self._teacher_bank()
        A_t, B_t = bank.A[task_clusters], bank.B[task_clusters]
        lora = task.lora
        return lora_param_distance(self.distillation.param_form, lora.A, lora.B, lora.scale, A_t, B_t, bank.scale,
                                   lora.shapes)

    def _consistency(self, task) -> Tensor:
        # A copy: the loss keeps its target for backward, and the buffer is overwritten just below.
        previous = self.consistency_mean.clone() if self.consistency_steps > 0 else None
        loss, mean = consistency_loss(task.generator_hidden, previous)
        if self._trainer is not None and self.trainer.world_size > 1:
            mean = self.all_gather(mean).mean(dim=0)  # the global batch's mean: every rank keeps the same state
        self.consistency_mean.copy_(mean)
        self.consistency_steps += 1
        return loss

    def training_step(self, batch: dict, batch_idx: int):
        task, outputs = self.student.outputs(batch)
        d = self.distillation
        terms = {"ce": outputs.loss}
        if d.kl_weight > 0:
            terms["kl"] = kl_distillation(outputs.logits, self.teacher_logits(batch), batch["labels"], d.temperature)
        if d.param_weight > 0:
            terms["param"] = self._param_distance(task, batch)
        if d.consistency_weight > 0:
            terms["cst"] = self._consistency(task)
        weights = {"ce": 1.0, "kl": d.kl_weight, "param": d.param_weight, "cst": d.consistency_weight}
        if len(terms) > 1 and d.grad_share_every and self.global_step % d.grad_share_every == 0 and self._trainer is not None:
            self._log_grad_shares(terms, weights, task)
        return self.training_loss(terms, batch["input_ids"].shape[0], weights)

    def _log_grad_shares(self, terms: dict[str, Tensor], weights: dict[str, float], task) -> None:
        """Each weighted term's share of the gradient norm at the generated LoRA (A, B): which loss is
        actually steering the generator. One extra backward per term, so only every few steps."""
        norms = {}
        for name, value in terms.items():
            if not value.requires_grad:
                continue
            grads = torch.autograd.grad(weights[name] * value, [task.lora.A, task.lora.B], retain_graph=True, allow_unused=True)
            squares = [g.float().pow(2).sum() for g in grads if g is not None]
            if squares:
                norms[name] = torch.stack(squares).sum().sqrt()
        total = sum(norms.values())
        # Straight to the logger: a `self.log` value would be re-emitted at every later logging step until
        # the epoch ends. Computed on every rank (a sharded backbone gathers its weights in backward).
        if norms and float(total) > 0 and self._trainer is not None and self.logger is not None:
            self.logger.log_metrics({f"train/grad_share/{name}": float(norm / total) for name, norm in norms.items()},
                                    step=self.global_step)

    def describe(self) -> dict:
        return {**super().describe(), "architecture": asdict(self.architecture), "distillation": asdict(self.distillation),
                "init_from": self.init_from, "teachers": self.teachers,
                "teacher_backbone": self.teacher_backbone.record() if self.teacher_backbone is not None else None}
