"""Verifiable tasks for the reference trainer: digit problems with exact-match rewards.

Every problem has a fixed-length prompt and a fixed-length answer (numbers are zero-padded), so a
batch needs no padding and generation is exactly ``answer_len`` tokens. Problems are drawn from a
``torch.Generator``; the held-out evaluation set comes from its own seed and training draws skip
it, so accuracy is measured on problems the policy never trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["TASKS", "TEST_POOL", "Task", "get_task"]

TEST_SEED = 10_000
TEST_POOL = 2048


@dataclass(frozen=True)
class Task:
    """A family of problems: prompt ``<prefix><operands joined by sep>=``, answer of ``answer_len`` digits."""

    name: str
    prefix: str
    sep: str
    operands: int
    digits: int
    answer_len: int
    solve: Callable[[list[int], int], str]

    @property
    def prompt_len(self) -> int:
        """Characters in a prompt (without the BOS token the tokenizer adds)."""
        return len(self.prefix) + self.operands * self.digits + (self.operands - 1) * len(self.sep) + 1

    def format(self, operands: list[int]) -> tuple[str, str]:
        """``(prompt, answer)`` strings for one problem."""
        body = self.sep.join(f"{x:0{self.digits}d}" for x in operands)
        return f"{self.prefix}{body}=", self.solve(operands, self.digits)

    def sample(
        self, generator: torch.Generator, n: int, exclude: frozenset[str] = frozenset()
    ) -> list[tuple[str, str]]:
        """``n`` problems drawn with ``generator``; prompts in ``exclude`` (the held-out set) are redrawn."""
        out: list[tuple[str, str]] = []
        while len(out) < n:
            draw = torch.randint(0, 10**self.digits, (n, self.operands), generator=generator).tolist()
            for row in draw:
                prompt, answer = self.format(row)
                if prompt not in exclude and len(out) < n:
                    out.append((prompt, answer))
        return out

    def test_set(self, n: int = 512) -> list[tuple[str, str]]:
        """The held-out evaluation problems: the first ``n`` (at most ``TEST_POOL``) of a fixed pool.

        Drawn in fixed chunks from their own seed, so a smaller set is a prefix of a larger one;
        training draws exclude the whole pool (``test_prompts``).
        """
        if not 0 < n <= TEST_POOL:
            raise ValueError(f"test set size must be in 1..{TEST_POOL}, got {n}")
        return self._pool(TEST_SEED, TEST_POOL)[:n]

    def test_prompts(self) -> frozenset[str]:
        return frozenset(p for p, _ in self._pool(TEST_SEED, TEST_POOL))

    def validation_set(self, n: int, seed: int) -> list[tuple[str, str]]:
        """Problems for model selection during the warm start, disjoint from the test pool."""
        return self._pool(seed, n, exclude=self.test_prompts())

    def _pool(self, seed: int, n: int, exclude: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
        gen = torch.Generator().manual_seed(seed)
        seen: dict[str, str] = {}
        while len(seen) < n:
            for prompt, answer in self.sample(gen, 256, exclude):
                if len(seen) < n:
                    seen.setdefault(prompt, answer)
        return list(seen.items())


def _add(operands: list[int], digits: int) -> str:
    return f"{operands[0] + operands[1]:0{digits + 1}d}"


def _reverse(operands: list[int], digits: int) -> str:
    return f"{operands[0]:0{digits}d}"[::-1]


def _sort(operands: list[int], digits: int) -> str:
    return "".join(sorted(f"{operands[0]:0{digits}d}"))


TASKS: dict[str, Task] = {
    "sort": Task("sort", "s", "", operands=1, digits=6, answer_len=6, solve=_sort),
    "add": Task("add", "a", "+", operands=2, digits=3, answer_len=4, solve=_add),
    "reverse": Task("reverse", "r", "", operands=1, digits=6, answer_len=6, solve=_reverse),
}


def get_task(name: str) -> Task:
    """The task called ``name``; a ``ValueError`` lists the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
