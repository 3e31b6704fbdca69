"""How a prompt's tokens become a model input: `head + content + tail`, the one rule shared by training
data, evaluation and serving (`Student`), so what a student is served is what it trained on.

    plain   content + EOS                                     T5, Tk-Instruct (the default)
    chat    the tokenizer's chat template, one user turn:     instruction-tuned causal LMs (SmolLM2)
            <|im_start|>system … <|im_end|>\\n<|im_start|>user\\n  content  <|im_end|>\\n<|im_start|>assistant\\n

The answer (the labels) is `answer + end`: EOS under `plain`; under `chat`, the token the template closes an
assistant turn with (`<|im_end|>` for SmolLM2 and Qwen, `<|eot_id|>` for Llama 3, `<end_of_turn>` for Gemma,
whose EOS is another token), EOS where the template closes it with no special token. The head and tail are
tokenized on their own, as the content is: for SmolLM2 that gives the same ids as
`apply_chat_template(..., tokenize=True)` on the whole turn (tested).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal, Sequence

from jinja2.exceptions import TemplateError

from tagi.errors import ConfigurationError

PromptKind = Literal["plain", "chat"]
_MARK = "\x00"  # stands for the content when the chat template is rendered once
_ANSWER = "\x01"  # stands for an assistant turn's content


@dataclass(frozen=True)
class PromptFormat:
    head: tuple[int, ...]
    tail: tuple[int, ...]
    answer_end: int  # the token an answer ends with (labels, options, where generation stops)

    @classmethod
    def of(cls, tokenizer, kind: PromptKind = "plain") -> "PromptFormat":
        if kind == "plain":
            return cls((), (tokenizer.eos_token_id,), tokenizer.eos_token_id)
        if kind == "chat":
            return cls(*_chat_parts(tokenizer), _turn_end(tokenizer))
        raise ConfigurationError(f"data.init_args.prompt_format: {kind!r} is not 'plain' or 'chat'")

    @property
    def overhead(self) -> int:
        return len(self.head) + len(self.tail)

    def wrap(self, content: Sequence[int]) -> list[int]:
        return [*self.head, *content, *self.tail]

    def fit(self, content: Sequence[int], max_len: int, counts: Counter | None = None, field: str = "input") -> list[int]:
        """`wrap(content)`, the content cut so the whole is at most `max_len` tokens (counted in `counts[field]`)."""
        budget = self.content_budget(max_len)
        if len(content) > budget:
            if counts is not None:
                counts[field] += 1
            content = content[:budget]
        return self.wrap(content)

    def content_budget(self, max_len: int) -> int:
        budget = max_len - self.overhead
        if budget < 1:
            raise ConfigurationError(f"a prompt of at most {max_len} tokens leaves no room for content beside the "
                                     f"{self.overhead} tokens of its format; raise the data module's maximum lengths")
        return budget


def _chat_parts(tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The chat template's tokens before and after a user turn's content (generation prompt included)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigurationError("data.init_args.prompt_format: chat needs a tokenizer with a chat template; "
                                 f"{type(tokenizer).__name__} has none (use prompt_format: plain)")
    text = tokenizer.apply_chat_template([{"role": "user", "content": _MARK}], tokenize=False, add_generation_prompt=True)
    head, tail = text.split(_MARK)
    encode = lambda part: tuple(tokenizer(part, add_special_tokens=False)["input_ids"]) if part else ()  # noqa: E731
    return encode(head), encode(tail)


def _turn_end(tokenizer) -> int:
    """The first special token after an assistant turn's content in the chat template: what the instruct model was
    trained to end an answer with. EOS where there is none (the template closes the turn with plain text)."""
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": _MARK}, {"role": "assistant", "content": _ANSWER}],
                                             tokenize=False)
    except TemplateError:  # a template that cannot close an assistant turn says nothing about its end
        return tokenizer.eos_token_id
    after = text.split(_ANSWER)[-1] if _ANSWER in text else ""
    special = set(tokenizer.get_added_vocab().values()) | set(tokenizer.all_special_ids)
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    return next((token for token in ids if token in special), tokenizer.eos_token_id)
