"""``--format trl``: a ``checkpoint-<step>/`` folder that TRL / the HF Trainer resume from.

``Trainer.train(resume_from_checkpoint=DIR)`` (TRL's trainers inherit it) reloads the adapter
weights, ``trainer_state.json`` (the step counter and log) and, only when both exist,
``optimizer.pt`` + ``scheduler.pt``. So the folder holds the extrapolated adapter, the run's last
trainer state with ``global_step`` moved to the virtual step, and, with ``optimizer="keep"``, the
last checkpoint's optimizer and scheduler (Adam moments of the weights before the jump: stale but
loadable). With ``"reset"`` they are left out and the Trainer starts a fresh optimizer and schedule.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

from nextrap.layouts import CheckpointRef
from nextrap.util.files import read_regular, write_new

__all__ = ["OPTIMIZER_POLICIES", "STATE_FILES", "write_trainer_state"]

OPTIMIZER_POLICIES = ("keep", "reset")
STATE_FILES = ("optimizer.pt", "scheduler.pt")
# Per-process RNG states and the arguments file: copied along when present, as the Trainer wrote them.
_EXTRA_FILES = ("rng_state.pth", "training_args.bin", "scaler.pt")


def write_trainer_state(folder: Path, last: CheckpointRef, virtual_step: int, optimizer: str) -> list[str]:
    """Add the trainer's files to the adapter ``folder``; returns notes for the report."""
    notes = []
    source = last.path
    state_path = source / "trainer_state.json"
    if os.path.lexists(state_path):
        try:
            state = json.loads(read_regular(state_path))
        except (OSError, ValueError, RecursionError):
            state = None  # a folder, a FIFO, bad bytes: replaced by a minimal state below, with a note
    else:
        state = {"log_history": [], "best_metric": None, "best_model_checkpoint": None}
        notes.append(f"{source} has no trainer_state.json: wrote a minimal one (step counter only)")
    if not isinstance(state, dict):
        state = {"log_history": []}
        notes.append(
            f"{state_path}: not a readable JSON object; wrote a minimal trainer_state.json (step counter only)"
        )
    state["global_step"] = virtual_step
    max_steps = state.get("max_steps")
    if isinstance(max_steps, int | float) and not isinstance(max_steps, bool) and max_steps < virtual_step:
        state["max_steps"] = virtual_step
    write_new(folder / "trainer_state.json", json.dumps(state, indent=2) + "\n")
    if optimizer == "keep":
        present = [name for name in STATE_FILES if _regular(source / name)]
        if len(present) == len(STATE_FILES):
            for name in STATE_FILES:
                shutil.copy2(source / name, folder / name)
        else:
            notes.append(
                f"--optimizer keep: {source} lacks {', '.join(sorted(set(STATE_FILES) - set(present)))}; the Trainer "
                "will start a fresh optimizer and schedule"
            )
    for extra in source.iterdir():
        named = extra.name in _EXTRA_FILES or (extra.name.startswith("rng_state_") and extra.suffix == ".pth")
        if named and _regular(extra):
            shutil.copy2(extra, folder / extra.name)
    return notes


def _regular(path: Path) -> bool:
    """A regular file (links followed): a FIFO or device under a trainer file's name is not copied (it would hang)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
