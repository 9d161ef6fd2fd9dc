"""Sampling, log-probabilities and accuracy for fixed-length answers.

Prompts of a task all have the same length and answers exactly ``answer_len`` tokens, so batches are
rectangular: generation is ``answer_len`` cached forward steps, with no padding or stop tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from nextrap.reference.model import encode
from nextrap.reference.tasks import Task

__all__ = ["accuracy", "answer_logprobs", "draw", "generate", "model_device"]


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters: where its inputs go."""
    return next(model.parameters()).device


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of ``probs`` ``(n, V)``, drawn on ``generator``'s device, returned on ``probs``'.

    The generator stays on the CPU wherever the model runs, so a seed names the same stream of draws.
    """
    where = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(where), 1, generator=generator)[:, 0].to(probs.device)


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    answer_len: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Answers ``(n, answer_len)`` int64 sampled after ``prompt_ids`` ``(n, P)``; temperature 0 is greedy.

    No KV cache: answers are a handful of tokens, and a full forward per token keeps this independent
    of how the installed transformers version spells its cache arguments.
    """
    ids = prompt_ids
    for _ in range(answer_len):
        logits = model(input_ids=ids).logits[:, -1].float()
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            nxt = draw(torch.softmax(logits / temperature, -1), generator)
        ids = torch.cat([ids, nxt[:, None]], 1)
    return ids[:, prompt_ids.shape[1] :]


def answer_logprobs(model: nn.Module, prompt_ids: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Log-probabilities ``(n, answer_len)`` float32 of ``answer_ids`` given ``prompt_ids`` (with grad)."""
    ids = torch.cat([prompt_ids, answer_ids], 1)
    logits = model(input_ids=ids).logits[:, prompt_ids.shape[1] - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, answer_ids[..., None])[..., 0]


@torch.no_grad()
def accuracy(
    model: nn.Module, tokenizer, task: Task, problems: list[tuple[str, str]], batch: int = 512
) -> float:
    """Share of ``problems`` whose greedy answer matches exactly."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(problems), batch):
        chunk = problems[i : i + batch]
        prompts = encode(tokenizer, [p for p, _ in chunk]).to(model_device(model))
        answers = encode(tokenizer, [a for _, a in chunk], bos=False).to(prompts.device)
        pred = generate(model, prompts, task.answer_len, temperature=0)
        correct += int((pred == answers).all(1).sum())
    model.train(was_training)
    return correct / max(1, len(problems))
