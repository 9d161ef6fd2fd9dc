"""Finding the checkpoints of one run: walk the folder, let each trainer's layout place what it finds,
and say what was left out and why.

A candidate is an *adapter folder* (``adapter_config.json`` next to ``adapter_model.safetensors`` or
``adapter_model.bin``) or a folder of verl's rank shards (``model_world_size_W_rank_R.pt`` beside
``lora_train_meta.json``). Its step comes from the trainer's own record where one exists, else from the
folder name. Stdlib only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import nextrap.layouts.ms_swift as ms_swift
import nextrap.layouts.nemo_rl as nemo_rl
import nextrap.layouts.openrlhf as openrlhf
import nextrap.layouts.plain as plain
import nextrap.layouts.roll as roll
import nextrap.layouts.trl as trl
import nextrap.layouts.verl as verl
from nextrap.errors import CheckpointError, InputNotFoundError, LayoutError
from nextrap.formats.peft import CONFIG_NAME, WEIGHT_FILES
from nextrap.formats.verl_shards import FORMAT as SHARDS
from nextrap.formats.verl_shards import META_NAME, SHARD_FILE, rank_files, shard_files
from nextrap.layouts.base import (
    LAST_NUMBER,
    PEFT,
    CheckpointRef,
    Discovery,
    Layout,
    Match,
    Sighting,
    Skip,
    find_adapter_weights,
    given_step,
    json_step,
)

__all__ = ["LAYOUTS", "discover", "from_explicit"]

# Tried in this order (each explains its own folders; "plain" takes what is left) and listed in errors.
LAYOUTS: tuple[Layout, ...] = tuple(
    m.LAYOUT for m in (trl, ms_swift, verl, openrlhf, nemo_rl, roll, plain)
)
_BY_NAME = {layout.name: layout for layout in LAYOUTS}
# verl's Megatron-bridge adapter sits five folders down: global_step_N/actor/model/huggingface/adapter.
_MAX_DEPTH = 5
_MAX_SEEN = 10_000  # folders remembered for the "nothing found" message
# Folders that look like a checkpoint of some trainer: reported when they hold no adapter.
_STEP_FOLDER = re.compile(r"^(checkpoint-\d+|global_step_?\d+(_hf)?|step_\d+)$")


def _classify(root: Path, folder: Path, fmt: str) -> Match | Skip | None:
    for layout in LAYOUTS:
        found = layout.classify(root, folder, fmt)
        if found is not None:
            return found
    return None


def _walk(root: Path, notes: list[str]) -> tuple[list[tuple[Path, str]], list[Path], list[Path]]:
    """Folders under ``root`` (bounded depth, no hidden ones, no trainer companions): candidates with their
    format, step-like folders, and every folder seen (relative to ``root``).

    Symlinked folders are followed (users link checkpoints to pick a subset), each real folder once,
    so a link loop ends. Folders that cannot be listed are reported in ``notes``.
    """
    candidates, step_like, seen = [], [], []
    visited: set[tuple[int, int]] = set()

    def unreadable(exc: OSError) -> None:
        where = Path(exc.filename).relative_to(root) if exc.filename else "a folder"
        notes.append(f"skipped {where}: cannot read it ({exc.strerror or exc})")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        here = Path(dirpath)
        try:
            st = here.stat()
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in visited:  # reached again through a link: a loop or a duplicate
            dirnames[:] = []
            if here.is_symlink():
                notes.append(f"skipped {here.relative_to(root)}: a link to a folder already read")
            continue
        visited.add((st.st_dev, st.st_ino))
        rel = here.relative_to(root)
        if len(seen) < _MAX_SEEN and here != root:
            seen.append(rel)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "tmp_")))
        companions = [d for d in dirnames if any(lay.companion(root, here / d) for lay in LAYOUTS)]
        seen.extend(rel / d for d in companions)  # not walked into, but an error's hint may name them
        dirnames[:] = [d for d in dirnames if d not in companions]
        if len(rel.parts) >= _MAX_DEPTH:
            dirnames[:] = []
        if here != root:
            files = set(filenames)
            if CONFIG_NAME in files and any(w in files for w in WEIGHT_FILES):
                candidates.append((here, PEFT))
            elif META_NAME in files and any(SHARD_FILE.match(f) for f in files):
                candidates.append((here, SHARDS))
        if _STEP_FOLDER.match(here.name):
            step_like.append(here)
    return candidates, step_like, seen


def discover(root: str | os.PathLike, *, adapter_name: str | None = None) -> Discovery:
    """Find the LoRA checkpoints of one run under ``root``, whatever the trainer (docs/inputs.md).

    Returns a :class:`Discovery`: the layout, one :class:`CheckpointRef` per step (sorted) and notes on
    folders passed over.

    ``adapter_name``: PEFT saves adapters not named "default" in ``<folder>/<name>/``; with it, only
    such subfolders count (and verl's rank shards, which hold the "default" adapter, only for "default").
    Raises :class:`InputNotFoundError` for a missing or empty folder and :class:`LayoutError` when nothing
    (or several runs) is found.
    """
    root = Path(root)
    _check_run_folder(root)
    notes: list[str] = []
    candidates, step_like, seen = _walk(root, notes)
    matches, skipped = _match_candidates(root, candidates, adapter_name, notes)
    _prefer_adapters_to_shards(root, matches, notes)
    layout = _single_run_layout(root, matches, skipped, seen)
    _note_skipped_folders(root, candidates, step_like, matches, skipped, notes)
    refs = _checkpoint_refs(matches, notes)
    notes.extend(_BY_NAME[layout].run_notes(root, set(refs)))
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
    if find_adapter_weights(root) is not None or (shard_files(root) and (root / META_NAME).is_file()):
        raise LayoutError(
            f"{root} is a single adapter (checkpoint), not a run; pass the folder that holds its checkpoints, "
            f"e.g. {root.parent}"
        )


def _match_candidates(
    root: Path, candidates: list[tuple[Path, str]], adapter_name: str | None, notes: list[str]
) -> tuple[dict[Path, Match], dict[str, list[Path]]]:
    """The candidates some layout places at a step, each with its match, and those a layout leaves out
    on purpose (by reason)."""
    matches: dict[Path, Match] = {}
    skipped: dict[str, list[Path]] = {}
    for folder, fmt in candidates:
        if fmt == SHARDS:
            found = _classify(root, folder, fmt) if adapter_name in (None, "default") else None
        elif adapter_name is not None:
            if folder.name != adapter_name:
                continue
            found = _classify(root, folder.parent, fmt) if folder.parent != root else None
        else:
            found = _classify(root, folder, fmt)
            if found is None and folder.parent != root:
                # PEFT puts a named adapter in a subfolder of the checkpoint folder.
                found = _classify(root, folder.parent, fmt)
                if isinstance(found, Match) and find_adapter_weights(folder.parent) is None:
                    notes.append(f"{folder.parent.name}: using the adapter in its subfolder {folder.name}/")
                else:
                    found = None
        if isinstance(found, Skip):
            skipped.setdefault(found.why, []).append(folder)
        elif found is not None:
            matches[folder] = found
    for why, folders in skipped.items():
        names = ", ".join(str(f.relative_to(root)) for f in folders[:3])
        more = f" and {len(folders) - 3} more" if len(folders) > 3 else ""
        notes.append(f"skipped {names}{more}: {why}")
    return matches, skipped


def _prefer_adapters_to_shards(root: Path, matches: dict[Path, Match], notes: list[str]) -> None:
    """Where one step folder holds both a PEFT adapter and rank shards, read the adapter (one file)."""
    adapters = {m.step_dir: folder for folder, m in matches.items() if m.format == PEFT}
    for folder, m in list(matches.items()):
        if m.format == SHARDS and m.step_dir in adapters:
            del matches[folder]
            notes.append(
                f"{folder.relative_to(root)}: read the PEFT adapter in {adapters[m.step_dir].relative_to(root)}, "
                "not the rank shards beside it"
            )


def _single_run_layout(
    root: Path, matches: dict[Path, Match], skipped: dict[str, list[Path]], seen: list[Path]
) -> str:
    """The layout of the one run the matches belong to; an error when there is none, or several."""
    if not matches:
        raise LayoutError(_nothing_found(root, skipped, seen))
    runs = sorted({(m.layout, m.run) for m in matches.values()}, key=lambda x: (str(x[1]), x[0]))
    if len(runs) > 1:
        listed = ", ".join(f"{run} ({layout})" for layout, run in runs[:4])
        raise LayoutError(
            f"checkpoints of several runs under {root}: {listed}; point nextrap at one of these folders"
        )
    return runs[0][0]


def _nothing_found(root: Path, skipped: dict[str, list[Path]], seen: list[Path]) -> str:
    """The one-line error when no layout explains anything: what was there, and the trainer's fix."""
    step_like = [f for f in seen if _STEP_FOLDER.match(f.name)]
    shown = step_like or [f for f in seen if len(f.parts) == 1]
    if shown:
        listed = ", ".join(f"{f}/" for f in shown[:4]) + (f" and {len(shown) - 4} more" if len(shown) > 4 else "")
        saw = f"saw {'step folders ' if step_like else 'only '}{listed}"
    else:
        saw = "saw no folders, only files"
    for why, folders in skipped.items():
        saw += f"; left out {folders[0].relative_to(root)}: {why}"
    hints = [hint for layout in LAYOUTS if (hint := layout.hint(Sighting(root, tuple(seen))))]
    tried = ", ".join(layout.looks_like for layout in LAYOUTS)
    return (
        f"no LoRA checkpoints found under {root}; {saw}; "
        + "".join(f"{hint}; " for hint in hints)
        + f"tried layouts: {tried}; pass --checkpoint PATH --step N for each checkpoint"
    )


def _note_skipped_folders(
    root: Path,
    candidates: list[tuple[Path, str]],
    step_like: list[Path],
    matches: dict[Path, Match],
    skipped: dict[str, list[Path]],
    notes: list[str],
) -> None:
    """Say which step-like folders and which adapters were left out, and why."""
    used = {m.step_dir for m in matches.values()} | set(matches)
    used |= {f for folders in skipped.values() for f in folders}

    def unused(folder: Path) -> bool:
        return not any(u == folder or folder in u.parents or u in folder.parents for u in used)

    for folder in step_like:
        if unused(folder):
            notes.append(
                f"skipped {folder.relative_to(root)}: no adapter_config.json + adapter weights in it"
            )
    for folder, _ in candidates:
        if unused(folder) and folder not in step_like:
            notes.append(
                f"skipped {folder.relative_to(root)}: an adapter, but no layout tells its step (the name has no "
                "number); pass it with --checkpoint PATH --step N to include it"
            )


def _recorded_step(match: Match, notes: list[str]) -> tuple[int, str]:
    """The step from the trainer's own record where it keeps one, else from the folder name."""
    record = _BY_NAME[match.layout].step_record
    if record is None:
        return match.step, "folder name"
    recorded = json_step(match.step_dir / record[0], record[1], notes)
    if recorded is None:
        return match.step, "folder name"
    if recorded != match.step:
        notes.append(f"{match.step_dir.name}: {record[0]} says {record[1]} = {recorded}; using {recorded}")
    return recorded, f"{record[0]} {record[1]}"


def _ref(folder: Path, step: int, layout: str, source: str, fmt: str) -> CheckpointRef:
    if fmt == SHARDS:
        files = rank_files(folder, step)
        return CheckpointRef(step, folder, files[0], layout, source, format=SHARDS, shards=files)
    weights = find_adapter_weights(folder)
    assert weights is not None  # candidates hold an adapter
    return CheckpointRef(step, folder, weights, layout, source)


def _checkpoint_refs(matches: dict[Path, Match], notes: list[str]) -> dict[int, CheckpointRef]:
    """One reference per step (the step the checkpoint records, else the folder name's)."""
    refs: dict[int, CheckpointRef] = {}
    for folder, match in sorted(matches.items(), key=lambda kv: kv[1].step):
        step, source = _recorded_step(match, notes)
        if step in refs:
            raise LayoutError(f"two checkpoints for step {step}: {refs[step].path} and {folder}; remove one")
        refs[step] = _ref(folder, step, match.layout, source, match.format)
    return refs


def from_explicit(paths: Sequence[str | os.PathLike], steps: Sequence[int] | None) -> Discovery:
    """Checkpoints named one by one (``--checkpoint PATH [--step N]``); a weights file stands for its folder.

    A folder of verl's rank shards (with ``lora_train_meta.json``) counts as one checkpoint. ``steps``
    (one per path, whole numbers in [0, 10^12]) default to each folder's ``trainer_state.json``
    ``global_step``, else the last number in its name. Returns a :class:`Discovery` with layout
    ``explicit``.
    """
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
        fmt = PEFT if weights is not None else SHARDS if (folder / META_NAME).is_file() and shard_files(folder) else None
        if fmt is None:
            raise CheckpointError(
                f"{folder}: not an adapter folder; expected {CONFIG_NAME} and one of {', '.join(WEIGHT_FILES)} "
                f"(or verl's model_world_size_W_rank_R.pt shards with {META_NAME})"
            )
        step, source = _explicit_step(folder, None if steps is None else given_step(steps[i], folder), notes)
        if step in refs:
            raise LayoutError(
                f"two checkpoints for step {step}: {refs[step].path} and {folder}; give distinct steps"
            )
        ref = _ref(folder, step, "explicit", source, fmt)
        if fmt == PEFT and path.is_file() and path.name in WEIGHT_FILES:
            ref = CheckpointRef(step, folder, path, "explicit", source)
        refs[step] = ref
    return Discovery(
        root=None, layout="explicit", checkpoints=tuple(refs[s] for s in sorted(refs)), notes=tuple(notes)
    )


def _explicit_step(folder: Path, given: int | None, notes: list[str]) -> tuple[int, str]:
    if given is not None:
        return given, "given"
    recorded = json_step(folder / "trainer_state.json", "global_step", notes)
    if recorded is not None:
        return recorded, "trainer_state.json global_step"
    # verl's shards sit in global_step_N/actor: the number is the parent's.
    for name in (folder.name, folder.parent.name if folder.name == "actor" else ""):
        number = LAST_NUMBER.search(name)
        if number:
            return int(number[1]), "folder name"
    raise LayoutError(f"{folder}: cannot tell its step from the folder name; pass --step N for it")
