"""Every block a stage's YAML sets under `model.init_args`, as one dataclass each (LightningCLI
builds them from the YAML; `python -m tagi fit --config ... --print_config` shows their values).
Best values live in the configs under configs/, not here: these defaults only make a class usable
from Python."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from tagi.modeling.backbone import load_backbone
from tagi.modeling.hypernet import GeneratorKind
from tagi.modeling.losses import ParamForm
from tagi.provenance import backbone_record, same_backbone

OptimizerKind = Literal["adamw", "adafactor"]
DecayScope = Literal["all", "matrices"]


@dataclass
class Backbone:
    """Which T5 a stage loads (θ0). Every checkpoint, teacher and adapter records it (`record`), and
    every consumer compares the record with its own (`matches`)."""

    name: str = "tiny"
    """"tiny" (a random T5 built in code), a hub id, or a local `from_pretrained` folder (stage 0's θ0)."""
    tiny_config: dict | None = None
    """Overrides for `tagi.modeling.backbone.tiny_t5_config` when name is "tiny" (d_model, num_layers, ...)."""
    seed: int = 0
    """Initialisation seed of the tiny model."""

    def load(self, vocab_size: int):
        tiny = {"vocab_size": vocab_size, **(self.tiny_config or {})}
        return load_backbone(self.name, tiny, self.seed)

    def record(self) -> dict:
        return backbone_record(asdict(self))

    def matches(self, saved: dict | None) -> bool:
        return same_backbone(asdict(self), saved, asdict(Backbone()))


@dataclass
class Optimization:
    """AdamW (or Adafactor) with linear warm-up, then linear decay to 0."""

    optimizer: OptimizerKind = "adamw"
    """"adamw": torch's AdamW; "adafactor": transformers' Adafactor at the given learning rate (no relative step,
    no parameter scaling: Hugging Face Trainer's `optim=adafactor`, TAGI Table 6's pretraining optimizer)."""
    learning_rate: float = 1e-3
    """Peak learning rate, reached at the end of the warm-up."""
    weight_decay: float = 0.0
    """Decoupled weight decay on the weights `weight_decay_on` names; must not be negative."""
    weight_decay_on: DecayScope = "all"
    """"all": every trained weight; "matrices": weight matrices only, no decay on biases, norm scales and embedding
    tables (the Hugging Face Trainer exempts the first two). "all" is what every result so far was trained with."""
    warmup_ratio: float = 0.06
    """Share of the steps spent warming up."""
    fused: bool = True
    """torch's fused AdamW kernel (CPU and CUDA): the same update in one pass over the weights, 9× faster
    than the default at t5-small shape (benchmarks/training_cost.py). Its float rounding differs, so the
    demo and ni-v1 configs turn it off: their README results were trained without it. Adafactor ignores it."""


@dataclass
class Generation:
    """Decoding on the validation and test tasks."""

    max_new_tokens: int = 64
    """Longest answer generated, in tokens."""
    num_beams: int = 1
    """1: greedy decoding (the papers' setting); more: beam search."""


@dataclass
class Architecture:
    """The hypernetwork and what it adapts (docs/ARCHITECTURE.md, "The method")."""

    lora_rank: int = 8
    """Rank of the generated LoRA; must equal the teachers' (teacher.yaml)."""
    lora_alpha: float = 16.0
    """peft's alpha: the LoRA is scaled by alpha / rank."""
    generator: GeneratorKind = "mlp"
    """"mlp": a pooler + one shared head for every q/v site; "hart": HART's autoregressive per-layer states (§3.1)."""
    generator_width: int = 128
    """Pooler output / HART decoder width."""
    generator_hidden_dim: int = 64
    """The shared head's hidden layer."""
    site_embed_dim: int = 32
    """The learned (stack, layer, q/v) embedding that tells the sites apart."""
    b_init_std: float = 1e-3
    """Scale of the B head at initialisation: the generated delta starts near zero, both heads get gradients."""
    hart_layers: int = 1
    """generator: hart — layers of the decoder that writes one state per backbone layer."""
    hart_heads: int = 4
    """generator: hart — that decoder's attention heads; must divide generator_width."""
    fusion: bool = True
    """Instruction-fusion cross-attention in every encoder block (TAGI eq. 1)."""
    fusion_heads: int | None = None
    """None: the backbone's number of heads."""
    fusion_d_kv: int | None = None
    """None: the backbone's d_kv."""
    fid: bool = True
    """Fusion-in-decoder: the decoder attends to [instruction ; input]."""
    freeze_backbone: bool = True
    """θ0 stays fixed; only the hypernetwork (and fusion) train. Finetuning needs it: the teachers were trained on θ0."""
    train_layer_norms: bool = False
    """The backbone's layer norms train with the hypernetwork (the official code's choice)."""


@dataclass
class Distillation:
    """Stage 3's loss: CE + kl_weight·KL + param_weight·L_param (+ consistency_weight·L_cst); a weight of 0
    skips its term's work entirely."""

    kl_weight: float = 1.0
    """λ of KL(teacher ‖ student) on the answer tokens' distributions."""
    temperature: float = 1.0
    """Softens both distributions of the KL term (scaled back by temperature²)."""
    param_weight: float = 1.0
    """λ of the distance between the generated LoRA and the row's cluster teacher's (param_form)."""
    param_form: ParamForm = "delta"
    """"delta": ‖ΔW_student − ΔW_teacher‖² / ‖ΔW_teacher‖² per site (ΔW = s·B·A), so weight 1 means the same
    at every shape; "ab": MSE on A and on B (the paper's eq. 4, raw scale)."""
    consistency_weight: float = 0.0
    """HART's local consistency loss; needs architecture.generator: hart."""
    grad_share_every: int = 50
    """Every this many steps, log each term's share of the gradient at the generated LoRA (0: never)."""

