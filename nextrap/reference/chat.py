"""Chat-formatted verifiable tasks for a pretrained instruct model: addition with an exact numeric answer.

A problem is ``(question, answer)``: the question ``"What is 23 + 45? Answer with just the number."``
goes to the model as a user turn of
its chat template, the answer is the integer ``68``. Operands have exactly ``digits`` digits, so with
a tokenizer that splits numbers into single digits (SmolLM2's does) every prompt of a task has the
same length in tokens and a batch needs no padding. The model's free-form completion is scored by
:func:`parse_answer`: SmolLM2 tends to write ``"23 + 45 = 68"`` or ``"The answer is 68."``, so the
number after the first ``=`` counts, or the first number when there is no ``=``.

The held-out pool comes from its own seed and training draws skip it, as in :mod:`.tasks`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

__all__ = ["CHAT_TASKS", "ChatTask", "get_chat_task", "parse_answer"]

TEST_SEED = 20_000
TEST_POOL = 2048

_NUMBER = re.compile(r"-?\d+")


def parse_answer(completion: str) -> int | None:
    """The integer a completion answers: the first number after the first ``=``, else the first number.

    Thousands separators (``1,234``) are read as one number; None when there is no number to read.
    """
    text = completion.replace(",", "")
    if "=" in text:
        text = text.split("=", 1)[1]
    found = _NUMBER.search(text)
    return int(found.group()) if found else None


@dataclass(frozen=True)
class ChatTask:
    """Addition of two ``digits``-digit numbers, asked in one user turn."""

    name: str
    digits: int

    @property
    def answer_len(self) -> int:
        """Most digits an answer has (for the tiny policy's fixed-length interface; unused in sampling)."""
        return self.digits + 1

    def question(self, a: int, b: int) -> str:
        # measured on SmolLM2-135M-Instruct (32 held-out problems, bf16): this wording gives 0.09 at
        # temperature 0.7 with answers like "93 + 58 = 151"; a bare "93 + 58 =" gave 0.00 when sampled
        return f"What is {a} + {b}? Answer with just the number."

    def messages(self, question: str) -> list[dict[str, str]]:
        """The chat turns of one problem (the model's template adds its default system prompt)."""
        return [{"role": "user", "content": question}]

    def reward(self, completion: str, answer: str) -> float:
        """1.0 when the completion's answer (:func:`parse_answer`) equals ``answer``, else 0.0."""
        return float(parse_answer(completion) == int(answer))

    def sample(
        self, generator: torch.Generator, n: int, exclude: frozenset[str] = frozenset()
    ) -> list[tuple[str, str]]:
        """``n`` problems ``(question, answer)`` drawn with ``generator``; questions in ``exclude`` are redrawn."""
        low, high = 10 ** (self.digits - 1), 10**self.digits
        out: list[tuple[str, str]] = []
        while len(out) < n:
            draw = torch.randint(low, high, (n, 2), generator=generator).tolist()
            for a, b in draw:
                question = self.question(a, b)
                if question not in exclude and len(out) < n:
                    out.append((question, str(a + b)))
        return out

    def test_set(self, n: int = 256) -> list[tuple[str, str]]:
        """The first ``n`` (at most ``TEST_POOL``) held-out problems; a smaller set is a prefix of a larger one."""
        if not 0 < n <= TEST_POOL:
            raise ValueError(f"test set size must be in 1..{TEST_POOL}, got {n}")
        return self._pool()[:n]

    def test_prompts(self) -> frozenset[str]:
        return frozenset(q for q, _ in self._pool())

    def _pool(self) -> list[tuple[str, str]]:
        gen = torch.Generator().manual_seed(TEST_SEED + self.digits)
        seen: dict[str, str] = {}
        while len(seen) < TEST_POOL:
            for question, answer in self.sample(gen, 256):
                if len(seen) < TEST_POOL:
                    seen.setdefault(question, answer)
        return list(seen.items())


CHAT_TASKS: dict[str, ChatTask] = {
    "add2": ChatTask("add2", digits=2),
    "add3": ChatTask("add3", digits=3),
}


def get_chat_task(name: str) -> ChatTask:
    """The chat task called ``name``; a ``ValueError`` lists the known ones."""
    try:
        return CHAT_TASKS[name]
    except KeyError:
        raise ValueError(f"unknown chat task {name!r}; known: {', '.join(CHAT_TASKS)}") from None
