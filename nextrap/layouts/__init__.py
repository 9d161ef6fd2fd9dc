"""Finding LoRA checkpoints in trainers' output folders: one module per trainer.

Each of :mod:`~nextrap.layouts.trl`, :mod:`~nextrap.layouts.ms_swift`, :mod:`~nextrap.layouts.verl`,
:mod:`~nextrap.layouts.openrlhf`, :mod:`~nextrap.layouts.nemo_rl`, :mod:`~nextrap.layouts.roll` and
:mod:`~nextrap.layouts.plain` defines one :class:`~nextrap.layouts.base.Layout` (its match rule, step
record, companion folders and error hint) and names in its docstring the trainer's save function, file
and the releases it matches; :mod:`~nextrap.layouts.discovery` walks a run folder with them. A new
trainer release is a change to one module and its test. No torch here: ``nextrap scan`` finds a run
before anything heavy is imported.
"""

from __future__ import annotations

from nextrap.layouts.base import MAX_STEP, CheckpointRef, Discovery, find_adapter_weights
from nextrap.layouts.discovery import LAYOUTS, discover, from_explicit

__all__ = [
    "LAYOUTS",
    "MAX_STEP",
    "CheckpointRef",
    "Discovery",
    "discover",
    "find_adapter_weights",
    "from_explicit",
]
