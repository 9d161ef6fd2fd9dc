"""Finding LoRA checkpoints in trainers' output folders (TRL, verl, OpenRLHF, NeMo-RL, ROLL, plain).

Stdlib only: no torch here, so ``nextrap scan`` can tell what a folder holds before anything heavy
is imported. A checkpoint is an *adapter folder* (``adapter_config.json`` next to
``adapter_model.safetensors`` or ``adapter_model.bin``) at a path that one trainer's layout explains;
its step comes from the trainer's own record where one exists, else from the folder name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nextrap.errors import CheckpointError, InputNotFoundError, LayoutError
from nextrap.files import read_regular
from nextrap.peft_format import CONFIG_NAME, WEIGHT_FILES

__all__ = [
    "LAYOUTS",
    "CheckpointRef",
    "Discovery",
    "discover",
    "find_adapter_weights",
    "from_explicit",
]


# (name, how it looks) in the order they are tried, for error messages.
LAYOUTS: tuple[str, ...] = ("trl", "verl", "openrlhf", "nemo-rl", "roll", "plain")
_LAYOUT_HINTS = (
    "trl checkpoint-N",
    "ms-swift vK-DATE/checkpoint-N",
    "verl global_step_N/actor/lora_adapter",
    "OpenRLHF global_stepN_hf",
    "NeMo-RL step_N/policy/weights",
    "ROLL <worker>/checkpoint-N",
    "plain <name-with-number>/",
)
_MAX_DEPTH = 4
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_VERL_STEP = re.compile(r"^global_step_(\d+)$")
_OPENRLHF = re.compile(r"^global_step(\d+)_hf$")
_NEMO_STEP = re.compile(r"^step_(\d+)$")
_SWIFT_VERSION = re.compile(r"^v\d+-")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")
# Folders that look like a checkpoint of some trainer: reported when they hold no adapter.
_STEP_FOLDER = re.compile(r"^(checkpoint-\d+|global_step_?\d+(_hf)?|step_\d+)$")


@dataclass(frozen=True)
class CheckpointRef:
    """One saved adapter of a run."""

    step: int
    path: Path  # the adapter folder (holds adapter_config.json and the weights file)
    weights: Path  # adapter_model.safetensors (preferred) or adapter_model.bin
    layout: str  # one of LAYOUTS, or "explicit"
    step_source: str  # where the step came from, for humans


@dataclass(frozen=True)
class Discovery:
    """The checkpoints of one run, sorted by step (steps unique), and what the user should know."""

    root: Path | None  # None for explicit lists
    layout: str
    checkpoints: tuple[CheckpointRef, ...]
    notes: tuple[str, ...] = ()

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(c.step for c in self.checkpoints)

    @property
    def input_paths(self) -> tuple[Path, ...]:
        """Every folder and file this run was read from: no output may touch them (:mod:`nextrap.inputs`).

        A checkpoint's parent folder counts too (as named, and where its links lead): a new folder
        there would be taken for a checkpoint by the next scan, and would sit among the user's own.
        """
        paths = [self.root] if self.root else []
        for c in self.checkpoints:
            paths += [c.path, c.weights, c.path.parent, Path(os.path.realpath(c.path)).parent]
        return tuple(dict.fromkeys(paths))

    def to_dict(self) -> dict:
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
class _Match:
    layout: str
    step: int
    step_dir: Path  # the folder named after the step (where trainer records live)
    run: Path  # the run folder the step folder sits in


def _classify(root: Path, adapter: Path) -> _Match | None:
    """Which layout explains the adapter folder ``adapter`` (a path under ``root``), if any."""
    parts = adapter.relative_to(root).parts
    n = len(parts)
    if n >= 3 and parts[-2:] == ("actor", "lora_adapter") and _VERL_STEP.match(parts[-3]):
        return _Match("verl", int(_VERL_STEP.match(parts[-3])[1]), adapter.parents[1], adapter.parents[2])
    if n >= 2 and parts[-1] == "actor" and _VERL_STEP.match(parts[-2]):
        return _Match("verl", int(_VERL_STEP.match(parts[-2])[1]), adapter.parent, adapter.parents[1])
    if n >= 3 and parts[-2:] == ("policy", "weights") and _NEMO_STEP.match(parts[-3]):
        return _Match("nemo-rl", int(_NEMO_STEP.match(parts[-3])[1]), adapter.parents[1], adapter.parents[2])
    if _OPENRLHF.match(parts[-1]):
        return _Match("openrlhf", int(_OPENRLHF.match(parts[-1])[1]), adapter, adapter.parent)
    if _CHECKPOINT.match(parts[-1]):
        step = int(_CHECKPOINT.match(parts[-1])[1])
        if n == 1 or _SWIFT_VERSION.match(parts[-2]):
            return _Match("trl", step, adapter, adapter.parent)
        return _Match("roll", step, adapter, adapter.parent)
    if n == 1 and _LAST_NUMBER.search(parts[0]):
        return _Match("plain", int(_LAST_NUMBER.search(parts[0])[1]), adapter, adapter.parent)
    return None


def _walk(root: Path, notes: list[str]) -> tuple[list[Path], list[Path]]:
    """Folders under ``root`` (bounded depth, no hidden ones): adapters, step-like folders.

    Symlinked folders are followed (users link checkpoints to pick a subset), each real folder once,
    so a link loop ends. Folders that cannot be listed are reported in ``notes``.
    """
    adapters, step_like = [], []
    seen: set[tuple[int, int]] = set()

    def unreadable(exc: OSError) -> None:
        where = Path(exc.filename).relative_to(root) if exc.filename else "a folder"
        notes.append(f"skipped {where}: cannot read it ({exc.strerror or exc})")

    for dirpath, dirnames, _ in os.walk(root, followlinks=True, onerror=unreadable):
        here = Path(dirpath)
        try:
            st = here.stat()
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # reached again through a link: a loop or a duplicate
            dirnames[:] = []
            if here.is_symlink():
                notes.append(f"skipped {here.relative_to(root)}: a link to a folder already read")
            continue
        seen.add((st.st_dev, st.st_ino))
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.startswith("tmp_"))
        if depth >= _MAX_DEPTH:
            dirnames[:] = []
        if here != root and find_adapter_weights(here) is not None:
            adapters.append(here)
        if _STEP_FOLDER.match(here.name):
            step_like.append(here)
    return adapters, step_like


# A recorded step must be a whole number a run can reach; anything else is a damaged record.
MAX_STEP = 10**12


def _json_step(path: Path, key: str, notes: list[str]) -> int | None:
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


def _recorded_step(match: _Match, notes: list[str]) -> tuple[int, str]:
    """The step from the trainer's own record where it keeps one, else from the folder name."""
    record = {
        "trl": ("trainer_state.json", "global_step"),
        "roll": ("trainer_state.json", "global_step"),
        "nemo-rl": ("training_info.json", "step"),
    }.get(match.layout)
    if record is None:
        return match.step, "folder name"
    recorded = _json_step(match.step_dir / record[0], record[1], notes)
    if recorded is None:
        return match.step, "folder name"
    if recorded != match.step:
        notes.append(f"{match.step_dir.name}: {record[0]} says {record[1]} = {recorded}; using {recorded}")
    return recorded, f"{record[0]} {record[1]}"


def discover(root: str | os.PathLike, *, adapter_name: str | None = None) -> Discovery:
    """Find the LoRA checkpoints of one run under ``root``.

    ``adapter_name``: PEFT saves adapters not named "default" in ``<folder>/<name>/``; with it, only
    such subfolders count. Raises :class:`InputNotFoundError` for a missing or empty folder and
    :class:`LayoutError` when nothing (or several runs) is found.
    """
    root = Path(root)
    _check_run_folder(root)
    notes: list[str] = []
    adapters, step_like = _walk(root, notes)
    matches = _match_adapters(root, adapters, adapter_name, notes)
    layout = _single_run_layout(root, matches)
    _note_skipped_folders(root, adapters, step_like, matches, notes)
    refs = _checkpoint_refs(matches, notes)
    if layout == "verl":
        latest = _read_int(root / "latest_checkpointed_iteration.txt")
        if latest is not None and latest not in refs:
            notes.append(
                f"latest_checkpointed_iteration.txt names step {latest}, which has no LoRA adapter here"
            )
    return Discovery(
        root=root, layout=layout, checkpoints=tuple(refs[s] for s in sorted(refs)), notes=tuple(notes)
    )


def _check_run_folder(root: Path) -> None:
    """Refuse a root that is missing, a file, empty, or a single checkpoint rather than a run."""
    if not root.exists():
        raise InputNotFoundError(f"no such folder: {root}; pass the output folder of your training run")
    if not root.is_dir():
        raise InputNotFoundError(
            f"{root} is a file, not a folder; pass the output folder of your training run"
        )
    if not any(root.iterdir()):
        raise InputNotFoundError(f"{root} is empty; pass the output folder of your training run")
    if find_adapter_weights(root) is not None:
        raise LayoutError(
            f"{root} is a single adapter (checkpoint), not a run; pass the folder that holds its checkpoints, "
            f"e.g. {root.parent}"
        )


def _match_adapters(
    root: Path, adapters: list[Path], adapter_name: str | None, notes: list[str]
) -> dict[Path, _Match]:
    """The adapter folders that some layout places at a step, each with its match."""
    matches: dict[Path, _Match] = {}
    for folder in adapters:
        if adapter_name is not None:
            if folder.name != adapter_name:
                continue
            match = _classify(root, folder.parent) if folder.parent != root else None
        else:
            match = _classify(root, folder)
            if match is None and folder.parent != root:
                # PEFT puts a named adapter in a subfolder of the checkpoint folder.
                match = _classify(root, folder.parent)
                if match is not None and find_adapter_weights(folder.parent) is None:
                    notes.append(f"{folder.parent.name}: using the adapter in its subfolder {folder.name}/")
                else:
                    match = None
        if match is not None:
            matches[folder] = match
    return matches


def _single_run_layout(root: Path, matches: dict[Path, _Match]) -> str:
    """The layout of the one run the matches belong to; an error when there is none, or several."""
    if not matches:
        raise LayoutError(
            f"no LoRA checkpoints found under {root} (tried layouts: {', '.join(_LAYOUT_HINTS)}); "
            "pass --checkpoint PATH --step N for each checkpoint"
        )
    runs = sorted({(m.layout, m.run) for m in matches.values()}, key=lambda x: (str(x[1]), x[0]))
    if len(runs) > 1:
        listed = ", ".join(f"{run} ({layout})" for layout, run in runs[:4])
        raise LayoutError(
            f"checkpoints of several runs under {root}: {listed}; point nextrap at one of these folders"
        )
    return runs[0][0]


def _note_skipped_folders(
    root: Path, adapters: list[Path], step_like: list[Path], matches: dict[Path, _Match], notes: list[str]
) -> None:
    """Say which step-like folders and which adapters were left out, and why."""
    used = {m.step_dir for m in matches.values()} | set(matches)

    def unused(folder: Path) -> bool:
        return not any(u == folder or folder in u.parents or u in folder.parents for u in used)

    for folder in step_like:
        if unused(folder):
            notes.append(
                f"skipped {folder.relative_to(root)}: no adapter_config.json + adapter weights in it"
            )
    for folder in adapters:
        if unused(folder) and folder not in step_like:
            notes.append(
                f"skipped {folder.relative_to(root)}: an adapter, but no layout tells its step (the name has no "
                "number); pass it with --checkpoint PATH --step N to include it"
            )


def _checkpoint_refs(matches: dict[Path, _Match], notes: list[str]) -> dict[int, CheckpointRef]:
    """One reference per step (the step the checkpoint records, else the folder name's)."""
    refs: dict[int, CheckpointRef] = {}
    for folder, match in sorted(matches.items(), key=lambda kv: kv[1].step):
        step, source = _recorded_step(match, notes)
        ref = CheckpointRef(
            step=step,
            path=folder,
            weights=find_adapter_weights(folder),
            layout=match.layout,
            step_source=source,
        )
        if step in refs:
            raise LayoutError(f"two checkpoints for step {step}: {refs[step].path} and {folder}; remove one")
        refs[step] = ref
    return refs


def _read_int(path: Path) -> int | None:
    try:
        return int(read_regular(path, limit=4096).strip())
    except (OSError, ValueError):
        return None


def _given_step(value: object, folder: Path) -> int:
    """A step given for an explicit checkpoint: a whole number in [0, MAX_STEP], as a recorded one must be."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value != int(value):
        raise LayoutError(f"--step {value!r} for {folder}: expected a whole number of steps")
    if not 0 <= value <= MAX_STEP:
        raise LayoutError(f"--step {value!r} for {folder}: expected a step in [0, {MAX_STEP}]")
    return int(value)


def from_explicit(paths: Sequence[str | os.PathLike], steps: Sequence[int] | None) -> Discovery:
    """Checkpoints named one by one (``--checkpoint PATH [--step N]``); a weights file stands for its folder."""
    if steps is not None and len(steps) != len(paths):
        raise LayoutError(
            f"{len(paths)} --checkpoint but {len(steps)} --step given; give one --step per --checkpoint, or none"
        )
    refs: dict[int, CheckpointRef] = {}
    notes: list[str] = []
    for i, raw in enumerate(paths):
        path = Path(raw)
        if not path.exists():
            raise InputNotFoundError(f"no such checkpoint: {path}")
        folder = path.parent if path.is_file() else path
        weights = find_adapter_weights(folder)
        if weights is None:
            raise CheckpointError(
                f"{folder}: not an adapter folder; expected {CONFIG_NAME} and one of {', '.join(WEIGHT_FILES)}"
            )
        if path.is_file() and path.name in WEIGHT_FILES:
            weights = path
        if steps is not None:
            step, source = _given_step(steps[i], folder), "given"
        else:
            recorded = _json_step(folder / "trainer_state.json", "global_step", notes)
            number = _LAST_NUMBER.search(folder.name)
            if recorded is not None:
                step, source = recorded, "trainer_state.json global_step"
            elif number:
                step, source = int(number[1]), "folder name"
            else:
                raise LayoutError(
                    f"{folder}: cannot tell its step from the folder name; pass --step N for it"
                )
        if step in refs:
            raise LayoutError(
                f"two checkpoints for step {step}: {refs[step].path} and {folder}; give distinct steps"
            )
        refs[step] = CheckpointRef(
            step=step, path=folder, weights=weights, layout="explicit", step_source=source
        )
    return Discovery(
        root=None, layout="explicit", checkpoints=tuple(refs[s] for s in sorted(refs)), notes=tuple(notes)
    )
