"""Decoder-only backbones: a tiny random Llama with grouped-query attention (v_proj narrower than q_proj, as in
SmolLM2), its LoRA against peft, the answer alignment the KL relies on, the chat prompt format, and the
exported adapter in a process that never imports tagi."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, ByT5Tokenizer, GPT2Config, GPT2LMHeadModel

from tagi.data.prompts import PromptFormat
from tagi.data.sni_dataset import SNIDataset
from tagi.data.sni import Instance, Task
from tagi.data.tokenization import encode
from tagi.inference.student import Student, format_instruction
from tagi.modeling.backbone import load_backbone
from tagi.modeling.families import CausalLMFamily, T5Family, family_of
from tagi.modeling.losses import kl_distillation
from tagi.modeling.lora import LoRAWeights, apply_lora
from tagi.modeling.model import TAGIModel

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT / "models" / "smollm2-135m-instruct"
LLAMA = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=1)  # q_proj 64 → 64, v_proj 64 → 16
SPEC = {"name": "tiny-llama", "tiny_config": LLAMA, "seed": 0}
# Plain-text markers: ByT5's "</s>" strips the space before it when a whole text is tokenized (an lstrip added
# token), which the head + content + tail rule would not reproduce; SmolLM2's markers do not (tested below).
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_llama(seed: int = 0):
    return load_backbone("tiny-llama", LLAMA, seed)


def tiny_model(**architecture) -> TAGIModel:
    torch.manual_seed(0)
    return TAGIModel(tiny_llama(), lora_rank=4, lora_alpha=8.0, fusion=False, fid=False, generator_width=32,
                     generator_hidden_dim=16, site_embed_dim=8, b_init_std=0.5, **architecture)


def chat_tokenizer(folder: Path):
    """ByT5's byte vocabulary with a chat template, saved and loaded by path as a user's tokenizer is."""
    tokenizer = ByT5Tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def random_lora(model: TAGIModel, seed: int = 1) -> LoRAWeights:
    """A nonzero LoRA of the model's per-site shapes (zero outside each site's block, as generated)."""
    g = torch.Generator().manual_seed(seed)
    task = model.encode_task(torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long))
    A = torch.randn(task.lora.A.shape, generator=g) * 0.3 * model.hypernet.mask_A
    B = torch.randn(task.lora.B.shape, generator=g) * 0.3 * model.hypernet.mask_B
    return LoRAWeights(A, B, task.lora.scale, task.lora.shapes)


def with_lora(model: TAGIModel, lora: LoRAWeights):
    task = model.encode_task(torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long))
    task.lora = lora
    return task


# -- the family and its sites


def test_the_family_is_chosen_from_the_config_and_an_unknown_one_is_named():
    assert isinstance(family_of(tiny_llama()), CausalLMFamily)
    assert isinstance(family_of(load_backbone("tiny", dict(d_model=32, num_heads=2))), T5Family)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        family_of(gpt2)


def test_sites_are_every_layers_q_proj_and_v_proj_with_their_own_shapes():
    model = tiny_model()
    assert model.site_names == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    assert [(s.in_features, s.out_features) for s in model.sites()] == [(64, 64), (64, 16)] * 2
    layout = model.hypernet.layout
    assert (layout.layer, layout.kind, layout.step) == ((0, 0, 1, 1), (0, 1, 0, 1), (0, 0, 1, 1))


def test_fusion_and_fid_are_refused_on_a_model_without_an_encoder():
    with pytest.raises(ValueError, match="fusion: false and fid: false"):
        TAGIModel(tiny_llama(), fusion=True, fid=False)


def test_the_shared_generator_writes_each_sites_shape_without_per_site_heads():
    model = tiny_model()
    task = model.encode_task(torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long))
    lora = task.lora
    assert lora.A.shape == (1, 4, 4, 64) and lora.B.shape == (1, 4, 64, 4)  # stacks as wide as the widest site
    assert lora.shapes == ((64, 64), (64, 16), (64, 64), (64, 16))
    assert lora.site_factors(0, 1)[1].shape == (16, 4) and lora.delta(0, 1).shape == (16, 64)
    assert torch.count_nonzero(lora.B[0, 1, 16:]) == 0 and torch.count_nonzero(lora.B[0, 1, :16]) > 0
    assert len([m for m in model.hypernet.modules() if isinstance(m, torch.nn.Linear)]) == 5  # one head each for A, B


# -- forward: against peft, and answer alignment


def joined_logits(model, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """The plain model on one unpadded `prompt + answer`: the logits that predict the answer tokens (Y, V)."""
    logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
    return logits[len(prompt) - 1: len(prompt) - 1 + len(answer)]


def test_our_lora_equals_peft_on_a_grouped_query_llama():
    model = tiny_model()
    lora = random_lora(model)
    peft = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8.0, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for index, name in enumerate(model.site_names):
            layer = peft.base_model.model.get_submodule(name)
            A, B = lora.site_factors(0, index)
            layer.lora_A["default"].weight.copy_(A)
            layer.lora_B["default"].weight.copy_(B)
        prompt, answer = [10, 20, 30, 40, 50], [60, 70, 80]
        expected = joined_logits(peft, prompt, answer)
        task = with_lora(model, lora)
        inputs = torch.tensor([prompt]), torch.ones(1, 5, dtype=torch.long), torch.tensor([answer])
        hooked = model(task, *inputs[:2], labels=inputs[2], merge=False).logits[0]
        merged = model(task, *inputs[:2], labels=inputs[2], merge=True).logits[0]
        plain = joined_logits(tiny_llama(), prompt, answer)
    assert (expected - plain).abs().max() > 1e-2  # the LoRA changes the model
    assert torch.allclose(hooked, expected, atol=1e-5) and torch.allclose(merged, expected, atol=1e-5)


def test_answer_logits_line_up_with_the_labels_whatever_the_prompts_length():
    """Rows with prompts and answers of different lengths, padded into one batch: each row's logits are the
    ones the model gives that row alone, position j predicting answer token j."""
    model = tiny_model()
    rows = [([11, 12, 13, 14, 15, 16, 17], [40, 41]), ([21, 22, 23], [50, 51, 52, 53])]
    ids = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros(2, 7, dtype=torch.long)
    labels = torch.full((2, 4), -100)
    for i, (prompt, answer) in enumerate(rows):
        ids[i, :len(prompt)], mask[i, :len(prompt)] = torch.tensor(prompt), 1
        labels[i, :len(answer)] = torch.tensor(answer)
    lora = random_lora(model)
    with torch.no_grad():
        out = model(with_lora(model, lora), ids, mask, labels=labels, merge=True)
        with apply_lora(model.sites(), lora):
            for i, (prompt, answer) in enumerate(rows):
                alone = joined_logits(model.backbone, prompt, answer)
                assert torch.allclose(out.logits[i, :len(answer)], alone, atol=1e-5)
    manual = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert torch.allclose(out.loss, manual)


def test_kl_compares_the_same_answer_tokens_under_a_student_and_a_teacher_prompt():
    """The student reads the input alone, the teacher the instruction + the input: different prompt lengths,
    one answer. The KL term must compare each answer token's two distributions."""
    model = tiny_model()
    instruction, x, answer = [90, 91, 92, 93, 94, 95], [30, 31, 32], [60, 61, 62]
    student_ids = torch.tensor([x + [0, 0, 0, 0, 0, 0]])
    student_mask = torch.tensor([[1] * 3 + [0] * 6])
    teacher_ids = torch.tensor([instruction + x])
    labels = torch.tensor([answer])
    lora = random_lora(model)
    with torch.no_grad():
        student = model(with_lora(model, lora), student_ids, student_mask, labels=labels, merge=False).logits
        teacher = model.theta0_answer_logits(teacher_ids, torch.ones_like(teacher_ids), labels).logits
        with apply_lora(model.sites(), lora):
            by_hand_student = joined_logits(model.backbone, x, answer)
        by_hand_teacher = joined_logits(model.backbone, instruction + x, answer)
    assert torch.allclose(student[0], by_hand_student, atol=1e-5) and torch.allclose(teacher[0], by_hand_teacher, atol=1e-5)
    by_hand = torch.nn.functional.kl_div(by_hand_student.log_softmax(-1), by_hand_teacher.log_softmax(-1),
                                         log_target=True, reduction="none").sum(-1).mean()
    assert torch.allclose(kl_distillation(student, teacher, labels), by_hand, atol=1e-6) and by_hand > 0
    same = model.theta0_answer_logits(student_ids, student_mask, labels).logits
    assert float(kl_distillation(same, same.clone(), labels)) == 0.0


def test_the_instruction_encoding_is_causal_and_ignores_padding():
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        states = model.encode_instruction(ids, torch.ones_like(ids))  # (1, 6, d)
        changed_end = model.encode_instruction(torch.tensor([[5, 6, 7, 8, 99, 98]]), torch.ones_like(ids))
        padded = model.encode_instruction(torch.tensor([[5, 6, 7, 8, 9, 10, 0, 0]]), torch.tensor([[1] * 6 + [0, 0]]))
    assert torch.allclose(states[:, :4], changed_end[:, :4], atol=1e-6)  # a token reads only what comes before it
    assert not torch.allclose(states[:, 4:], changed_end[:, 4:])
    assert torch.allclose(states, padded[:, :6], atol=1e-5)


def test_generation_returns_each_rows_answer_as_it_would_alone():
    model = tiny_model()
    task = with_lora(model, random_lora(model))
    prompts = [[11, 12, 13, 14, 15], [21, 22]]
    ids = torch.tensor([[11, 12, 13, 14, 15], [21, 22, 0, 0, 0]])
    mask = torch.tensor([[1] * 5, [1, 1, 0, 0, 0]])
    with torch.no_grad():
        batched = model.generate(task, ids, mask, max_new_tokens=6, do_sample=False, min_new_tokens=6)
        alone = [model.generate(task, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), max_new_tokens=6,
                                do_sample=False, min_new_tokens=6)[0] for p in prompts]
    assert batched.shape == (2, 6)  # the answer only, no prompt
    assert all(torch.equal(batched[i], alone[i]) for i in range(2))


# -- prompts


def test_the_chat_format_gives_the_ids_apply_chat_template_gives(tmp_path):
    tokenizer = chat_tokenizer(tmp_path / "tok")
    form = PromptFormat.of(tokenizer, "chat")
    content = "Now complete the following example -\nInput: cow ape\nOutput: "
    expected = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=True)["input_ids"]
    assert form.wrap(encode(tokenizer, [content])[0]) == list(expected)
    content_ids = encode(tokenizer, [content])[0]
    assert form.fit(content_ids, 40) == [*form.head, *content_ids[:40 - form.overhead], *form.tail]  # the content is cut
    assert len(form.fit(content_ids, 40)) == 40
    with pytest.raises(ValueError, match="leaves no room for content"):
        form.fit(content_ids, form.overhead)
    with pytest.raises(ValueError, match="prompt_format: chat needs a tokenizer with a chat template"):
        PromptFormat.of(ByT5Tokenizer(), "chat")


GEMMA_LIKE = ("{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
              "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def test_an_answer_ends_with_the_token_the_chat_template_closes_a_turn_with(tmp_path):
    # Gemma closes a turn with <end_of_turn>, not its EOS: labels and options end with what the instruct model
    # was trained to end an answer with. A template that closes a turn with plain text keeps EOS.
    tokenizer = ByT5Tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tokenizer.chat_template = GEMMA_LIKE
    tokenizer.save_pretrained(tmp_path / "gemma-like")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "gemma-like")
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    form = PromptFormat.of(tokenizer, "chat")
    assert form.answer_end == end_of_turn != tokenizer.eos_token_id
    assert PromptFormat.of(tokenizer, "plain").answer_end == tokenizer.eos_token_id
    assert PromptFormat.of(chat_tokenizer(tmp_path / "plain-end"), "chat").answer_end == tokenizer.eos_token_id
    task = Task("t", "Repeat the word.", [], [Instance("i", "cow", ["cow"], ["cow", "ape"])], ["demo"], Path("."))
    data = SNIDataset([task], tokenizer, {"demo": 0}, num_pos=0, prompt_format=form, with_meta=True)
    assert data[0]["labels"][-1] == end_of_turn and all(option[-1] == end_of_turn for option in data[0]["options"])


def test_generation_stops_at_the_answers_end_besides_the_models_own_eos():
    model = tiny_model()
    task = with_lora(model, random_lora(model, seed=2))
    ids, mask = torch.tensor([[11, 12, 13]]), torch.ones(1, 3, dtype=torch.long)
    with torch.no_grad():
        free = model.generate(task, ids, mask, max_new_tokens=8, do_sample=False, min_new_tokens=8)[0].tolist()
        stop = free[3]
        stopped = model.generate(task, ids, mask, max_new_tokens=8, do_sample=False, eos_token_id=stop)[0].tolist()
        model.backbone.generation_config.eos_token_id = free[0]  # the model's own EOS, met first
        first = model.generate(task, ids, mask, max_new_tokens=8, do_sample=False, eos_token_id=stop)[0].tolist()
    assert len(set(free[:4])) > 1  # a varied answer, so where it stops says something
    assert stopped == free[:free.index(stop) + 1]  # right after the answer's end
    assert first == free[:1]  # the model's own EOS still stops it


@pytest.mark.skipif(not SMOLLM2.is_dir(), reason="needs models/smollm2-135m-instruct: python -m tagi fetch smollm2-135m-instruct")
def test_smollm2s_chat_format_and_per_site_shapes():
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
    form = PromptFormat.of(tokenizer, "chat")
    content = "Now complete the following example -\nInput: x y\nOutput: "
    expected = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True)
    assert form.wrap(encode(tokenizer, [content])[0]) == list(expected["input_ids"])
    assert tokenizer.decode(form.tail).endswith("<|im_start|>assistant\n")
    assert form.answer_end == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.device("meta"):
        from transformers import AutoConfig, AutoModelForCausalLM

        model = TAGIModel(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(SMOLLM2)), lora_rank=8, fusion=False, fid=False)
    assert len(model.site_names) == 60 and {(s.in_features, s.out_features) for s in model.sites()} == {(576, 576), (576, 192)}


# -- export


def test_an_exported_adapter_serves_in_plain_peft_what_the_student_generates(tmp_path):
    """`tagi adapter` on a decoder-only student: AutoModelForCausalLM + PeftModel, in a process that never imports
    tagi, with the chat template applied to the meta.json's input template, answer greedily as Student.generate."""
    tokenizer = chat_tokenizer(tmp_path / "tok")
    student = Student(tiny_model(), tokenizer, SPEC, prompt_format="chat")
    instruction = format_instruction("Reverse the words.", [("a b", "b a")])
    inputs = ["cow fox", "ape"]
    ours = student.generate(instruction, inputs, max_new_tokens=8)
    out = student.export_adapter(instruction, tmp_path / "reverse")
    config = json.loads((out / "adapter_config.json").read_text())
    assert {key: config[key] for key in ("r", "lora_alpha", "base_model_name_or_path")} == {
        "r": 4, "lora_alpha": 8.0, "base_model_name_or_path": "backbone"}
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    script = f"""
import json, sys
from pathlib import Path
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
out = Path({str(out)!r})
meta = json.loads((out / "meta.json").read_text())
tokenizer = AutoTokenizer.from_pretrained(out)
base = AutoModelForCausalLM.from_pretrained(out / "backbone").eval()
model = PeftModel.from_pretrained(base, str(out)).eval()
own = base.generation_config.eos_token_id
stops = [tokenizer.convert_tokens_to_ids(meta["answer_end"]), *(own if isinstance(own, list) else [own])]
answers = []
for x in {inputs!r}:
    content = meta["input_template"].replace("{{input}}", x)
    ids = tokenizer.apply_chat_template([{{"role": "user", "content": content}}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    new = model.generate(**ids, max_new_tokens=8, do_sample=False, eos_token_id=stops)[0, ids["input_ids"].shape[1]:]
    answers.append(tokenizer.decode(new, skip_special_tokens=True))
assert "tagi" not in sys.modules
print(json.dumps(answers))
"""
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ours
    meta = json.loads((out / "meta.json").read_text())
    assert meta["prompt_format"] == "chat" and meta["answer_end"] == student.tokenizer.eos_token  # this template: EOS


def test_a_model_and_tokenizer_without_a_pad_token_generate_and_pad(tmp_path):
    """Llama 3 / Mistral: no pad token, and (Llama 3) several end-of-sequence ids. Padding uses the first EOS
    (masks say what is padding) instead of failing on None or on a list."""
    from tagi.data.tokenization import pad_id

    backbone = tiny_llama()
    backbone.generation_config.pad_token_id, backbone.generation_config.eos_token_id = None, [1, 2]
    ids, mask = torch.tensor([[0, 5, 6, 7]]), torch.tensor([[0, 1, 1, 1]])
    assert family_of(backbone).generate(ids, mask, max_new_tokens=3, do_sample=False).shape[0] == 1
    backbone.generation_config.eos_token_id = None  # neither: nothing to stop or pad with but what the caller gives
    assert family_of(backbone).generate(ids, mask, max_new_tokens=3, do_sample=False, min_new_tokens=3).shape == (1, 3)
    tokenizer = chat_tokenizer(tmp_path / "tok")
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None and pad_id(tokenizer) == tokenizer.eos_token_id
