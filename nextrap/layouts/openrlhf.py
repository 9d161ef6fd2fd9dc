"""OpenRLHF (``openrlhf.cli.train_ppo_ray`` and the other trainers).

Save function: ``openrlhf/trainer/ray/ppo_actor.py`` ``PolicyModelActor.save_checkpoint(tag)`` writes
DeepSpeed state into ``CKPT_PATH/_actor/<tag>/`` and, with ``--ckpt.save_hf``, the model through
``openrlhf/utils/deepspeed/deepspeed.py`` ``DeepspeedStrategy.save_model`` into ``CKPT_PATH/<tag>_hf/``:
a PEFT adapter (``adapter_model.bin`` instead of ``.safetensors`` under ZeRO-3 or tensor parallelism).
``openrlhf/trainer/ppo_trainer.py`` saves tag ``global_step{N}`` every ``--ckpt.save_steps`` and tag
``best_global_step{N}`` on each new best eval metric (on by default, ``save_best_checkpoint``): that
folder duplicates or precedes a regular save, so it is left out with one note. ``_actor/`` and
``_critic/`` hold no adapter and are skipped silently. Releases: OpenRLHF 0.11.2 (read from its wheel;
earlier releases not checked); folder trees in the tests are built from that source, not written by OpenRLHF.
"""

from __future__ import annotations

import re
from pathlib import Path

from nextrap.layouts.base import Layout, Match, Sighting, Skip

HF = re.compile(r"^global_step(\d+)_hf$")
BEST_HF = re.compile(r"^best_global_step(\d+)_hf$")
DEEPSPEED_DIRS = ("_actor", "_critic")


def _classify(root: Path, folder: Path, fmt: str) -> Match | Skip | None:
    m = HF.match(folder.name)
    if m:
        return Match("openrlhf", int(m[1]), folder, folder.parent, fmt)
    if BEST_HF.match(folder.name):
        return Skip(
            "openrlhf",
            "OpenRLHF's copies of the best-eval checkpoint (each duplicates or precedes a global_stepN_hf save)",
        )
    return None


def _companion(root: Path, folder: Path) -> bool:
    return folder.name in DEEPSPEED_DIRS


def _hint(seen: Sighting) -> str | None:
    for name in DEEPSPEED_DIRS[:1]:
        if any(f.name == name for f in seen.folders):
            return f"{name}/ holds OpenRLHF's DeepSpeed state only: train with --ckpt.save_hf to save adapters"
    return None


LAYOUT = Layout(
    name="openrlhf",
    looks_like="OpenRLHF global_stepN_hf",
    classify=_classify,
    companion=_companion,
    hint=_hint,
)
