"""The pretrained reference policy: SmolLM2-135M-Instruct answering chat-formatted addition problems.

Sampling runs under ``torch.inference_mode`` with a KV cache: one forward over the prompts, then one
single-token forward per answer token, stopping when every answer has written the end-of-turn token
or after ``max_new_tokens``. Answers are ragged; tokens after a row's end-of-turn token are filled
with that token and masked out of the loss (``answer_mask``). Log-probabilities ask the model for
the logits of the answer positions only (``logits_to_keep``): the 49,152-wide output layer is a
fifth of the model's work per token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nextrap.errors import ConfigError
from nextrap.reference.chat import ChatTask, get_chat_task
from nextrap.reference.policy import draw, model_device
from nextrap.reference.weights import require_weights

__all__ = [
    "BASE_ID",
    "DTYPES",
    "SmolLM2Config",
    "accuracy",
    "answer_logprobs",
    "answer_mask",
    "encode_prompts",
    "generate",
    "load_base",
    "rollout",
]

BASE_ID = "nextrap-smollm2-135m-instruct-q4_1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class SmolLM2Config:
    """Settings of the SmolLM2 policy: its chat task, the compute dtype, and the longest answer sampled."""

    task: str = "add2"
    dtype: str = "float32"
    max_new_tokens: int = 12

    def __post_init__(self) -> None:
        try:
            get_chat_task(self.task)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.dtype not in DTYPES:
            raise ConfigError(f"SmolLM2Config.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"SmolLM2Config.max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def base_id(self) -> str:
        """Names the base model (adapter configs record it as ``base_model_name_or_path``)."""
        return BASE_ID

    def get_task(self) -> ChatTask:
        return get_chat_task(self.task)


def load_base(cfg: SmolLM2Config, folder: str | os.PathLike | None = None):
    """The model (``cfg.dtype``, eval mode) and its tokenizer, from the fetched weights (or ``folder``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = Path(folder) if folder is not None else require_weights()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[cfg.dtype])
    # adapters record this as base_model_name_or_path: it names the model, not a cache path
    model.config.name_or_path = BASE_ID
    model.name_or_path = BASE_ID
    return model.eval(), tokenizer


def encode_prompts(tokenizer, task: ChatTask, questions: list[str]) -> torch.Tensor:
    """Chat-template token ids ``(n, P)`` int64 of ``questions``, ending with the assistant's turn opener."""
    texts = [
        tokenizer.apply_chat_template(task.messages(q), tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if len({len(row) for row in ids}) != 1:
        raise ConfigError(
            f"task {task.name!r}: prompts tokenise to different lengths {sorted({len(r) for r in ids})}; "
            "this policy needs a tokenizer that splits numbers into digits"
        )
    return torch.tensor(ids, dtype=torch.long)


def answer_mask(answers: torch.Tensor, stop_id: int) -> torch.Tensor:
    """``(n, A)`` bool: the tokens of each answer up to and including its first ``stop_id``."""
    is_stop = (answers == stop_id).long()
    return (is_stop.cumsum(1) - is_stop) == 0


def generate(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    stop_id: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    share_prefix: bool = False,
) -> torch.Tensor:
    """Answers ``(n, A)`` int64, ``A <= max_new_tokens``, sampled with a KV cache; temperature 0 is greedy.

    A row that wrote ``stop_id`` is padded with it; generation ends early when every row has. The model
    runs on ``prompt_ids``' device; the random draws use ``generator`` on its own device (the CPU), so
    a seed gives the same samples wherever the model runs, up to the device's arithmetic.

    ``share_prefix``: the leading tokens every prompt shares (the chat template's system turn and the
    question's first words: 30 of SmolLM2's 46 prompt tokens) go through the model once, for one row, and
    their KV cache is repeated over the batch: about half an evaluation's work. The same arithmetic up to
    rounding (a greedy answer can differ where two tokens tie to the last bit); GRPO's sampling keeps the
    plain path so that runs stay comparable with earlier ones.
    """
    with torch.inference_mode():
        out = _prefill(model, prompt_ids, share_prefix)
        done = torch.zeros(len(prompt_ids), dtype=torch.bool, device=prompt_ids.device)
        tokens = []
        for i in range(max_new_tokens):
            logits = out.logits[:, -1].float()
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                nxt = draw(torch.softmax(logits / temperature, -1), generator)
            nxt = torch.where(done, torch.full_like(nxt, stop_id), nxt)
            tokens.append(nxt)
            done |= nxt == stop_id
            if bool(done.all()) or i == max_new_tokens - 1:
                break
            out = model(input_ids=nxt[:, None], use_cache=True, logits_to_keep=1, **_cache_of(out))
        answers = torch.stack(tokens, 1)
    return answers.clone()  # a normal tensor: inference tensors cannot enter a later backward pass


def _prefill(model: nn.Module, prompt_ids: torch.Tensor, share_prefix: bool) -> Any:
    """The model's output (logits of the last position, KV cache) after reading every prompt."""
    same = (prompt_ids == prompt_ids[:1]).all(0).long().cumprod(0)
    shared = min(int(same.sum()), prompt_ids.shape[1] - 1)  # at least one token is read per row
    if not share_prefix or shared < 2 or len(prompt_ids) < 2:
        return model(input_ids=prompt_ids, use_cache=True, logits_to_keep=1)
    head = model(input_ids=prompt_ids[:1, :shared], use_cache=True, logits_to_keep=1)
    cache = _cache_of(head)
    next(iter(cache.values())).batch_repeat_interleave(len(prompt_ids))
    return model(input_ids=prompt_ids[:, shared:], use_cache=True, logits_to_keep=1, **cache)


def _cache_of(out: Any) -> dict[str, Any]:
    """The KV cache of ``out`` as the keyword the next call takes.

    transformers 5.x renamed the argument and the output field ``past_key_values`` to ``cache``; the
    old name warns on every call and is to stop working (5.40), older releases know only the old one.
    """
    cache = getattr(out, "cache", None)
    return {"cache": cache} if cache is not None else {"past_key_values": out.past_key_values}


def answer_logprobs(model: nn.Module, prompt_ids: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Log-probabilities ``(n, A)`` float32 of ``answer_ids`` given ``prompt_ids`` (with grad)."""
    ids = torch.cat([prompt_ids, answer_ids], 1)
    logits = model(input_ids=ids, logits_to_keep=answer_ids.shape[1] + 1).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, answer_ids[..., None])[..., 0]


def _stop_id(tokenizer) -> int:
    return (
        tokenizer.convert_tokens_to_ids("<|im_end|>")
        if "<|im_end|>" in tokenizer.get_vocab()
        else tokenizer.eos_token_id
    )


def rollout(
    model: nn.Module,
    tokenizer,
    cfg: SmolLM2Config,
    problems: list[tuple[str, str]],
    group_size: int,
    temperature: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``group_size`` sampled answers per problem: prompt ids, answer ids, answer mask, rewards ``(n,)``."""
    task = cfg.get_task()
    stop = _stop_id(tokenizer)
    prompts = encode_prompts(tokenizer, task, [q for q, _ in problems]).repeat_interleave(group_size, 0)
    prompts = prompts.to(model_device(model))
    answers = generate(model, prompts, cfg.max_new_tokens, stop, temperature, generator)
    texts = tokenizer.batch_decode(answers.cpu(), skip_special_tokens=True)
    targets = [a for _, a in problems for _ in range(group_size)]
    rewards = torch.tensor([task.reward(t, a) for t, a in zip(texts, targets, strict=True)])
    return prompts, answers, answer_mask(answers, stop), rewards


def accuracy(
    model: nn.Module, tokenizer, cfg: SmolLM2Config, problems: list[tuple[str, str]], batch: int = 64
) -> float:
    """Share of ``problems`` whose greedy answer is right."""
    was_training = model.training
    model.eval()
    task, stop, correct = cfg.get_task(), _stop_id(tokenizer), 0
    for i in range(0, len(problems), batch):
        chunk = problems[i : i + batch]
        prompts = encode_prompts(tokenizer, task, [q for q, _ in chunk]).to(model_device(model))
        answers = generate(model, prompts, cfg.max_new_tokens, stop, temperature=0, share_prefix=True)
        texts = tokenizer.batch_decode(answers.cpu(), skip_special_tokens=True)
        correct += sum(task.reward(t, a) for t, (_, a) in zip(texts, chunk, strict=True))
    model.train(was_training)
    return correct / max(1, len(problems))
