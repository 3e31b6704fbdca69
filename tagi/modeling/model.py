"""Backbone + hypernetwork (+ instruction fusion + fusion-in-decoder on a T5).

    instruction ─► plain backbone (a T5's encoder, a causal LM's hidden states) ─► I, mask_I
                ─► hypernetwork ─► LoRA                                              (once per task)

    T5:        input x ─► encoder with LoRA, and in each block after self-attention:
                          S_l ← S_l + CrossAttn_l(RMSNorm(S_l), I)     (instruction fusion, TAGI eq. 1)
                      ─► F ─► decoder with LoRA cross-attends to [I ; F]  (fusion-in-decoder)
    causal LM: [prompt x ; answer] ─► the model with LoRA            (the generated LoRA alone: an exported
                                                                      adapter is the whole student)

What differs between backbone families lives in `families.py`; fusion and FiD read an encoder's states
and exist for families that have one.

`encode_task` runs the first line once per task and returns a `TaskEncoding`; `forward` and
`generate` take that encoding and any number of inputs. A batch may mix tasks: `task_index[i]`
says which task row `i` belongs to. A single-task batch at inference uses the merged-weights path.
"""


from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from tagi.errors import ConfigurationError
from tagi.modeling.families import family_of
from tagi.modeling.fusion import FusionCrossAttention, fusion_hook, per_row
from tagi.modeling.hypernet import GeneratorKind, LoRAGenerator
from tagi.modeling.lora import LoRAWeights, apply_lora, lora_update, merge_is_exact, merged_lora

log = logging.getLogger(__name__)


@dataclass
class TaskEncoding:
    """What the hypernetwork produced for N tasks; reused for every input of those tasks."""

    lora: LoRAWeights  # A (N, S, r, in), B (N, S, out, r)
    instruction: Tensor  # (N, L, d) encoded instruction I
    instruction_mask: Tensor  # (N, L)
    generator_hidden: Tensor  # (N, T, P) the generator's per-layer context states

    def __len__(self) -> int:
        return len(self.lora)

    def select(self, index: Tensor) -> "TaskEncoding":
        """Per-row view: (len(index), ...) gathered from the task rows."""
        return TaskEncoding(
            self.lora.select(index),
            self.instruction.index_select(0, index),
            self.instruction_mask.index_select(0, index),
            self.generator_hidden.index_select(0, index),
        )


@dataclass(frozen=True)
class ExecutionPath:
    """How one `forward`/`generate` call runs (`TAGIModel._path`)."""

    rows: TaskEncoding  # the LoRA the input rows run with: one task row for all, or one per input row
    merged: bool  # that one task's LoRA is merged into the weights; else forward hooks apply it per row
    reads_instruction: bool  # fusion and FiD on; False: backbone + LoRA only, what an exported adapter computes
    fid_cache: bool  # the decoder's keys/values over the instruction are projected once per task


class TAGIModel(nn.Module):
    """A backbone whose q/v projections get LoRA weights generated from a task instruction."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        generator: GeneratorKind = "mlp",
        generator_width: int = 128,
        generator_hidden_dim: int = 64,
        site_embed_dim: int = 32,
        b_init_std: float = 1e-3,
        hart_layers: int = 1,
        hart_heads: int = 4,
        fusion: bool = True,
        fusion_heads: int | None = None,
        fusion_d_kv: int | None = None,
        fid: bool = True,
        freeze_backbone: bool = True,
        train_layer_norms: bool = False,
    ):
        super().__init__()
        config = backbone.config
        self.backbone = backbone
        self.family = family_of(backbone)
        if (fusion or fid) and not self.family.reads_instruction_states:
            raise ConfigurationError(
                f"architecture.fusion and architecture.fid read an encoder's states; a {config.model_type} backbone has "
                "none. Set model.init_args.architecture.fusion: false and fid: false (the generated LoRA alone)")
        self.lora_rank, self.lora_alpha = lora_rank, lora_alpha
        self.use_fusion, self.use_fid = fusion, fid
        self.site_names = self.family.site_names()
        self._site_index = {backbone.get_submodule(name): i for i, name in enumerate(self.site_names)}
        self.hypernet = LoRAGenerator(
            self.family.site_layout(self.site_names),
            instruction_dim=self.family.hidden_size,
            shapes=[(site.in_features, site.out_features) for site in self.sites()],
            rank=lora_rank,
            kind=generator,
            width=generator_width,
            hidden_dim=generator_hidden_dim,
            site_embed_dim=site_embed_dim,
            b_init_std=b_init_std,
            hart_layers=hart_layers,
            hart_heads=hart_heads,
        )
        # The fusion attention's width is its own: at the backbone's width it would be 4·d² weights per
        # encoder block (28M at t5-base), more than the whole hypernetwork.
        self.fusion = nn.ModuleList(
            FusionCrossAttention(config.d_model, fusion_heads or config.num_heads, fusion_d_kv or config.d_kv,
                                 config.layer_norm_epsilon) for _ in backbone.encoder.block
        ) if fusion else None
        self.backbone.requires_grad_(not freeze_backbone)
        # The official TAGI code trains the backbone's layer norms. They are shared by every task, so
        # they are part of the student, not of its generated LoRA; θ0's values are kept for the teachers.
        self.theta0_norms: dict[str, Tensor] = {}
        if train_layer_norms:
            for name, module in backbone.named_modules():
                if self.family.is_norm(module):
                    module.requires_grad_(True)
                    self.theta0_norms[f"{name}.weight"] = module.weight.detach().clone()

    def theta0_answer_logits(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> Any:
        """`.logits` (B, Ly, V) of θ0 (`theta0_backbone`) on prompts and answers: the teachers' forward."""
        return self.family.answer_logits(self.theta0_backbone, input_ids, attention_mask, labels)

    def theta0_backbone(self, **kwargs: Any) -> Any:
        """The backbone as θ0 is (its own layer norms, whatever the student trained), called with
        `kwargs`, with its dropout off; forward hooks (a teacher's LoRA) still apply. No in-place swap:
        the student's graph of this step holds the trained norm weights.

        Dropout off: this is the teachers' forward, a distillation target. A pretrained T5 keeps
        `dropout_rate` 0.1 and stays in train mode during training, so with dropout on two calls on
        one batch differ (by up to ~32 in a logit at t5-base) and the KL would chase noise."""
        with eval_mode(self.backbone):
            if not self.theta0_norms:
                return self.backbone(**kwargs)
            norms = {name: weight.to(self.backbone.device) for name, weight in self.theta0_norms.items()}
            return torch.func.functional_call(self.backbone, norms, args=(), kwargs=kwargs, strict=False)

    def trainable_by_part(self) -> dict[str, int]:
        """Trainable weights per part: the instruction reader (pooler, or HART's decoder), the shared
        head with its site embeddings, the fusion attention, and the backbone where it is trained."""
        parts = {"pooler": self.hypernet.reader(), "generator": self.hypernet, "fusion": self.fusion, "backbone": self.backbone}
        counts = {name: sum(p.numel() for p in module.parameters() if p.requires_grad) if module is not None else 0
                  for name, module in parts.items()}
        counts["generator"] -= counts["pooler"]
        return counts

    def load_trained_state(self, state: dict[str, Tensor]) -> None:
        """A stage checkpoint's weights (keys without the `model.` prefix), except the frozen backbone's.
        Those are θ0, which this model loaded itself and every consumer checks by digest; a checkpoint
        written under bf16 (DeepSpeed casts the whole module) holds them rounded to bf16, and loading
        them would silently move θ0 away from what the teachers and an exported adapter's base read.
        Raises RuntimeError, as `load_state_dict` does, when the rest does not fit."""
        frozen = {f"backbone.{name}" for name, parameter in self.backbone.named_parameters(remove_duplicate=False)
                  if not parameter.requires_grad}
        result = self.load_state_dict({key: value for key, value in state.items() if key not in frozen}, strict=False)
        # A backbone weight the checkpoint lacks is θ0's, as this model loaded it: a stage leaves the backbone weights
        # it froze out of its checkpoint, and this run may train some of them (layer norms, or the whole backbone).
        missing = sorted(key for key in set(result.missing_keys) - frozen if not key.startswith("backbone."))
        if missing or result.unexpected_keys:
            raise RuntimeError(f"missing keys {missing[:5]}, unexpected keys {result.unexpected_keys[:5]}")

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    def sites(self) -> list[nn.Linear]:
        return [self.backbone.get_submodule(name) for name in self.site_names]

    # -- per task, once

    def encode_instruction(self, instruction_ids: Tensor, instruction_mask: Tensor) -> Tensor:
        """The instruction through the plain backbone (no LoRA, no fusion): (N, L, d)."""
        return self.family.encode_instruction(instruction_ids, instruction_mask)

    def encode_task(self, instruction_ids: Tensor, instruction_mask: Tensor) -> TaskEncoding:
        """Run the hypernetwork on N instructions. Do this once per task and reuse the result."""
        instruction = self.encode_instruction(instruction_ids, instruction_mask)  # (N, L, d)
        generated = self.hypernet(instruction, instruction_mask)  # A (N, S, r, in), B (N, S, out, r)
        lora = LoRAWeights(generated.A, generated.B, self.lora_scale, self.hypernet.site_shapes())
        return TaskEncoding(lora, instruction, instruction_mask, generated.hidden)

    # -- per input, many times

    def _path(self, task: TaskEncoding, task_index: Tensor | None, merge: bool | None, lora_only: bool,
              num_beams: int = 1) -> ExecutionPath:
        """How a forward/generate call runs, decided once, here (as peft's `Linear.forward` decides at its top)."""
        rows = task if task_index is None else task.select(task_index)
        # Merging is only ever a speed-up: where it would round the update away (bf16 weights or autocast)
        # the hooks compute what training computed.
        wanted = len(rows) == 1 and not torch.is_grad_enabled() if merge is None else merge
        merged = wanted and merge_is_exact(self.sites())
        reads_instruction = not lora_only and (self.use_fusion or self.use_fid)
        # The instruction's decoder keys/values are shared by one task's rows, or (inference only) gathered
        # per row of a mixed batch. Training batches leave them to the backbone: the same values in another
        # batch shape round differently, and the measured results (README, Results) were trained that way.
        # Beam search would need the cache expanded per beam, so it leaves them to the backbone too.
        shared = (len(task) == 1 if task_index is None else not torch.is_grad_enabled()) and num_beams == 1
        return ExecutionPath(rows, merged, reads_instruction, self.use_fid and reads_instruction and shared)

    @contextmanager
    def adapted(self, path: ExecutionPath) -> Iterator[None]:
        """Inside the block the backbone runs with the path's LoRA: merged into the weights (one task, no
        gradient) or applied per row by forward hooks."""
        with (merged_lora if path.merged else apply_lora)(self.sites(), path.rows.lora):
            yield

    def _task_values(self, site: nn.Linear, task: TaskEncoding, merged: bool) -> Tensor:
        """`site` (a LoRA'd v projection) on the N instructions, each with its own task's LoRA: (N, L, out).
        Called beside the per-row hooks of `apply_lora`, which expect batch rows, so it calls the
        weights directly instead of the module."""
        plain = nn.functional.linear(task.instruction, site.weight)
        if merged:  # the one task's delta is in the weights already
            return plain
        index = self._site_index[site]
        A, B = task.lora.A[:, index].to(plain.dtype), task.lora.B[:, index].to(plain.dtype)  # (N, r, in), (N, out, r)
        return plain + lora_update(task.instruction, A, B, task.lora.scale)

    def encode_inputs(
        self, task: TaskEncoding, input_ids: Tensor, attention_mask: Tensor, task_index: Tensor | None = None,
        reads_instruction: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Encoder pass (call inside `adapted`): states the decoder attends to, and their mask.

        `task` holds N tasks; row i of the inputs belongs to task `task_index[i]` (None: one task for
        all rows, or already one task row per input). Returns [I ; F] and [mask_I ; mask] with FiD
        on, else F and mask. Shapes (B, L+T, d), (B, L+T). `reads_instruction` False skips fusion and
        FiD: what the backbone + an exported PEFT adapter computes.
        """
        batch = input_ids.shape[0]
        with ExitStack() as hooks:
            if self.fusion is not None and reads_instruction:
                for block, fusion in zip(self.backbone.encoder.block, self.fusion):
                    hook = fusion_hook(fusion, task.instruction, task.instruction_mask, task_index, batch)
                    hooks.callback(block.layer[-1].register_forward_pre_hook(hook).remove)
            states = self.backbone.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if not (self.use_fid and reads_instruction):
            return states, attention_mask
        instruction = per_row(task.instruction, batch, task_index)  # (B, L, d)
        instruction_mask = per_row(task.instruction_mask, batch, task_index).to(attention_mask.dtype)
        return torch.cat([instruction, states], 1), torch.cat([instruction_mask, attention_mask], 1)

    def forward(
        self,
        task: TaskEncoding,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor | None = None,
        task_index: Tensor | None = None,
        merge: bool | None = None,
        lora_only: bool = False,
        **decoder_kwargs: Any,
    ) -> Seq2SeqLMOutput:
        """Logits (and CE loss when `labels` are given) for inputs of the encoded task(s)."""
        path = self._path(task, task_index, merge, lora_only)
        if not path.reads_instruction:  # backbone + LoRA: the family's own forward
            with self.adapted(path):
                return self.family.answer_logits(self.backbone, input_ids, attention_mask, labels, **decoder_kwargs)
        with self.adapted(path):
            states, mask = self.encode_inputs(task, input_ids, attention_mask, task_index, path.reads_instruction)
            cache = self._fid_cache(task, task_index, states, path.merged) if path.fid_cache else None
            return self.backbone(
                encoder_outputs=BaseModelOutput(last_hidden_state=states), attention_mask=mask, labels=labels,
                past_key_values=cache, use_cache=cache is not None, **decoder_kwargs
            )

    @torch.no_grad()
    def generate(
        self,
        task: TaskEncoding,
        input_ids: Tensor,
        attention_mask: Tensor,
        task_index: Tensor | None = None,
        merge: bool | None = None,
        lora_only: bool = False,
        **generate_kwargs: Any,
    ) -> Tensor:
        """`backbone.generate` for inputs of the encoded task(s); beams keep their row's weights."""
        path = self._path(task, task_index, merge, lora_only, generate_kwargs.get("num_beams", 1))
        if not path.reads_instruction:
            with self.adapted(path):
                return self.family.generate(input_ids, attention_mask, **generate_kwargs)
        with self.adapted(path):
            states, mask = self.encode_inputs(task, input_ids, attention_mask, task_index, path.reads_instruction)
            if path.fid_cache:
                generate_kwargs["past_key_values"] = self._fid_cache(task, task_index, states, path.merged)
            return self.backbone.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=states), attention_mask=mask, **generate_kwargs
            )

    def _fid_cache(self, task: TaskEncoding, task_index: Tensor | None, states: Tensor, merged: bool) -> EncoderDecoderCache:
        """Decoder cross-attention keys/values over [I ; F], the instruction's part projected once per task.

        Without this, every input row re-projects its task's instruction states in every decoder
        layer, which makes per-input cost grow with instruction length. One task per call, or (at
        inference) a mixed-task batch via `task_index`. Call inside `adapted`.
        """
        batch, length = states.shape[0], task.instruction.shape[1]
        inputs = states[:, length:]  # (B, T, d): F
        layers = []
        for block in self.backbone.decoder.block:
            attention = block.layer[1].EncDecAttention
            if task_index is None:  # one task: the site's own call (merged weights, or its LoRA hook)
                instruction_keys = _heads(attention, attention.k(task.instruction)).expand(batch, -1, -1, -1)
                instruction_values = _heads(attention, attention.v(task.instruction)).expand(batch, -1, -1, -1)
            else:
                instruction_keys, instruction_values = self._per_row_instruction_kv(attention, task, task_index, merged)
            keys = torch.cat([instruction_keys, _heads(attention, attention.k(inputs))], 2)
            values = torch.cat([instruction_values, _heads(attention, attention.v(inputs))], 2)
            layers.append((keys, values))  # (B, h, L+T, dk) each
        return EncoderDecoderCache(DynamicCache(config=self.backbone.config), DynamicCache(layers))

    def _per_row_instruction_kv(self, attention: nn.Module, task: TaskEncoding, task_index: Tensor,
                                merged: bool) -> tuple[Tensor, Tensor]:
        """A mixed-task batch: the N instructions projected once, then each row given its task's keys and
        values, (B, h, L, dk) each. The values carry each task's own LoRA (`_task_values`)."""
        keys = _heads(attention, attention.k(task.instruction)).index_select(0, task_index)
        values = _heads(attention, self._task_values(attention.v, task, merged)).index_select(0, task_index)
        return keys, values


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """`module` and its children in eval mode inside the block; each one's own mode restored after."""
    modes = [(child, child.training) for child in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for child, training in modes:
            child.train(training)


def _heads(attention: nn.Module, x: Tensor) -> Tensor:
    """(N, S, h·dk) → (N, h, S, dk) for a T5 attention layer."""
    return x.view(x.shape[0], x.shape[1], -1, attention.key_value_proj_dim).transpose(1, 2)
