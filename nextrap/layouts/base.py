"""What every trainer layout is made of: the checkpoint reference, the discovery result, and the small
interface one trainer's module fills in (its match rule, step record, companions and error hint).

Stdlib only, like the whole :mod:`nextrap.layouts` package: ``nextrap scan`` finds a run before anything
heavy is imported.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nextrap.errors import CheckpointError, LayoutError
from nextrap.formats.peft import CONFIG_NAME, WEIGHT_FILES
from nextrap.util.files import read_regular

__all__ = [
    "LAST_NUMBER",
    "MAX_STEP",
    "PEFT",
    "CheckpointRef",
    "Discovery",
    "Layout",
    "Match",
    "Sighting",
    "Skip",
    "find_adapter_weights",
    "json_step",
]

PEFT = "peft"  # CheckpointRef.format of an adapter folder (adapter_config.json + adapter weights)
LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")
# A recorded step must be a whole number a run can reach; anything else is a damaged record.
MAX_STEP = 10**12


@dataclass(frozen=True)
class CheckpointRef:
    """One saved adapter of a run.

    ``format`` is ``peft`` (an adapter folder) or ``fsdp-shards`` (verl's rank shards, read through
    :mod:`nextrap.formats.verl_shards`); for shards ``weights`` is rank 0's file and ``shards`` lists every rank's.
    """

    step: int
    path: Path  # the adapter folder (or the folder holding the rank shards)
    weights: Path  # adapter_model.safetensors (preferred) or adapter_model.bin; rank 0's shard for shards
    layout: str  # a layout's name, or "explicit"
    step_source: str  # where the step came from, for humans
    format: str = PEFT
    shards: tuple[Path, ...] = ()

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the tensors are read from."""
        return self.shards or (self.weights,)


@dataclass(frozen=True)
class Discovery:
    """The checkpoints of one run, sorted by step (steps unique), and what the user should know."""

    root: Path | None  # None for explicit lists
    layout: str
    checkpoints: tuple[CheckpointRef, ...]
    notes: tuple[str, ...] = ()

    @property
    def steps(self) -> tuple[int, ...]:
        """The checkpoints' steps, ascending."""
        return tuple(c.step for c in self.checkpoints)

    @property
    def input_paths(self) -> tuple[Path, ...]:
        """Every folder and file this run was read from: no output may touch them (:mod:`nextrap.util.inputs`).

        A checkpoint's parent folder counts too (as named, and where its links lead): a new folder
        there would be taken for a checkpoint by the next scan, and would sit among the user's own.
        """
        paths = [self.root] if self.root else []
        for c in self.checkpoints:
            paths += [c.path, *c.files, c.path.parent, Path(os.path.realpath(c.path)).parent]
        return tuple(dict.fromkeys(paths))

    def to_dict(self) -> dict:
        """The discovery as JSON (what the report records of the inputs)."""
        return {
            "root": str(self.root) if self.root else None,
            "layout": self.layout,
            "checkpoints": [
                {
                    "step": c.step,
                    "path": str(c.path),
                    "weights": str(c.weights),
                    "layout": c.layout,
                    "step_source": c.step_source,
                    **({"format": c.format, "shards": [str(p) for p in c.shards]} if c.shards else {}),
                }
                for c in self.checkpoints
            ],
            "notes": list(self.notes),
        }


def find_adapter_weights(folder: Path) -> Path | None:
    """The weights file of an adapter folder, or None when ``folder`` holds no adapter."""
    if not (folder / CONFIG_NAME).is_file():
        return None
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


@dataclass(frozen=True)
class Match:
    """A checkpoint folder placed by a layout: its step (from the folder names), the folder named after the
    step (where the trainer's records live) and the run folder the step folders sit in."""

    layout: str
    step: int
    step_dir: Path
    run: Path
    format: str = PEFT


@dataclass(frozen=True)
class Skip:
    """A folder a layout knows and leaves out on purpose; ``why`` is said once for all such folders."""

    layout: str
    why: str


@dataclass(frozen=True)
class Sighting:
    """What the walk saw under ``root`` (folders relative to it), for the error when nothing matched."""

    root: Path
    folders: tuple[Path, ...]

    def named(self, pattern: re.Pattern[str]) -> list[Path]:
        return [f for f in self.folders if pattern.match(f.name)]


def _never(root: Path, folder: Path) -> bool:
    return False


def _no_hint(seen: Sighting) -> str | None:
    return None


def _no_notes(root: Path, steps: set[int]) -> list[str]:
    return []


@dataclass(frozen=True)
class Layout:
    """One trainer's folder layout.

    ``classify(root, folder, format)`` places a candidate folder (an adapter folder, or a folder of rank
    shards) at a step, returns a :class:`Skip` for a folder the trainer writes besides its checkpoints,
    or None when the layout does not explain it. ``step_record`` is ``(file in the step folder, JSON
    key)`` of the trainer's own step counter; ``companion(root, folder)`` says which folders the trainer
    writes next to its checkpoints that hold none (skipped silently, not walked into); ``hint`` returns
    the trainer-specific fix when nothing was found but the trainer's traces were; ``run_notes(root,
    steps)`` adds what the trainer's run-level records say about the steps found.
    """

    name: str
    looks_like: str  # how its checkpoints look, for "tried layouts: ..."
    classify: Callable[[Path, Path, str], Match | Skip | None]
    step_record: tuple[str, str] | None = None
    companion: Callable[[Path, Path], bool] = field(default=_never)
    hint: Callable[[Sighting], str | None] = field(default=_no_hint)
    run_notes: Callable[[Path, set[int]], list[str]] = field(default=_no_notes)


def json_step(path: Path, key: str, notes: list[str]) -> int | None:
    """The integer ``key`` of the JSON record ``path``; None when the file or the key is absent.

    A record that is there but unreadable (a folder, a FIFO, a device, a huge file, bad bytes, a list)
    adds a note and is passed over: the step then comes from the folder name. A value that is there but
    is no valid step (1e999, -3, 2.5, "x") raises :class:`CheckpointError` naming the file and field:
    guessing past a damaged record would mislabel the checkpoint.
    """
    try:
        data = json.loads(read_regular(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        notes.append(f"{path}: cannot read it ({exc.strerror or exc}); the step comes from the folder name")
        return None
    except (ValueError, RecursionError):
        notes.append(f"{path}: not valid JSON; the step comes from the folder name")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path}: a JSON {type(data).__name__}, not an object; the step comes from the folder name")
        return None
    if data.get(key) is None:
        return None
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise CheckpointError(f"{path}: {key} = {value!r}; expected a whole number of steps")
    if value in (float("inf"), float("-inf")) or value != int(value) or not 0 <= value <= MAX_STEP:
        raise CheckpointError(
            f"{path}: {key} = {value!r}; expected a whole number of steps in [0, {MAX_STEP}]; fix or remove the file"
        )
    return int(value)


def given_step(value: object, folder: Path) -> int:
    """A step given for an explicit checkpoint: a whole number in [0, MAX_STEP], as a recorded one must be."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value in (
        float("inf"),
        float("-inf"),
    ) or value != int(value):
        raise LayoutError(f"--step {value!r} for {folder}: expected a whole number of steps")
    if not 0 <= value <= MAX_STEP:
        raise LayoutError(f"--step {value!r} for {folder}: expected a step in [0, {MAX_STEP}]")
    return int(value)
