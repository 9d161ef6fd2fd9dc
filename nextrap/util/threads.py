"""How many intra-op threads torch gets: one per free core, decided before torch is imported (no torch here).

torch starts one intra-op thread per core. On a machine that other work keeps busy (nextrap runs beside
trainers) those threads wait on each other at every parallel op, and the whole command slows down many
times over: on 2 cores at load 4-6, ``nextrap demo`` took 47 minutes with torch's default and 4.4 with
one thread (``benchmarks/threads.py`` measures it side by side, idle and busy). So the default is the
cores this process may use minus the load average, at least one; an explicit choice always wins:

1. ``--threads N`` (the CLI's global option);
2. ``NEXTRAP_THREADS``;
3. ``OMP_NUM_THREADS`` as the user set it (torch reads it itself);
4. free cores: ``len(os.sched_getaffinity(0)) - os.getloadavg()[0]``, rounded, between 1 and the cores.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

__all__ = ["ENV", "ThreadChoice", "apply_threads", "choose_threads", "free_cores"]

ENV = "NEXTRAP_THREADS"


@dataclass(frozen=True)
class ThreadChoice:
    """``threads``: the intra-op thread count; ``source``: what decided it (for the log)."""

    threads: int
    source: str


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def free_cores(cores: int | None = None, load: float | None = None) -> int:
    """Cores not taken by other work: ``cores - load`` (1-minute load average) rounded, in ``[1, cores]``."""
    cores = _cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average (Windows): assume an idle machine
            load = 0.0
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def _positive(text: str, where: str) -> int:
    from nextrap.errors import ConfigError

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{where} = {text!r}: give a whole number of threads, 1 or more")
    return value


def choose_threads(option: int | None = None, environ: dict[str, str] | None = None) -> ThreadChoice:
    """The thread count by the rules above; ``environ`` defaults to ``os.environ``."""
    env = os.environ if environ is None else environ
    if option is not None:
        return ThreadChoice(_positive(str(option), "--threads"), "--threads")
    if env.get(ENV, "").strip():
        return ThreadChoice(_positive(env[ENV].strip(), ENV), ENV)
    if env.get("OMP_NUM_THREADS", "").strip():
        return ThreadChoice(_positive(env["OMP_NUM_THREADS"].strip(), "OMP_NUM_THREADS"), "OMP_NUM_THREADS")
    cores = _cores()
    return ThreadChoice(free_cores(cores), f"free cores ({cores} cores, load {_load():.1f})")


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def apply_threads(choice: ThreadChoice) -> None:
    """Give torch ``choice.threads`` intra-op threads: through the environment when torch is not imported yet
    (it reads ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` at import), else ``torch.set_num_threads``."""
    # SciPy's OpenBLAS gets one thread: nextrap calls it (nextrap.linalg.lowrank.gram's syrk) only when torch
    # has one thread too, and several torch threads use torch's own product instead, so OpenBLAS's threads
    # would only spin beside torch's OpenMP ones. Read when SciPy's BLAS is first loaded, after this; a value
    # the user set wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != choice.threads:
            torch.set_num_threads(choice.threads)
        return
    os.environ["OMP_NUM_THREADS"] = str(choice.threads)
    os.environ["MKL_NUM_THREADS"] = str(choice.threads)
