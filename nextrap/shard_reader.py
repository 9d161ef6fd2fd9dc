"""Reading verl's FSDP rank shards with torch, one tensor at a time.

Each rank's ``model_world_size_W_rank_R.pt`` is a pickle. It is loaded with
``torch.load(weights_only=True, mmap=True)`` with the classes a DTensor shard pickles
(:data:`nextrap.pickle_header.DTENSOR_CLASSES`) added to torch's allow-list for the load only: any other
global refuses the file, and no code from it runs. (Importing ``torch.distributed.tensor`` registers
torch's DTensor classes, ``Partial`` and ``_StridedShard`` among them, for every load; those two are
refused below, when a tensor is put together.) ``torch.distributed`` is never initialised: the
DeviceMesh a shard carries is only read for which rank holds which piece. A LoRA tensor is put together
from the ranks' local pieces along the tensor dimension each ``Shard`` placement names (``Replicate``
mesh dimensions take coordinate 0), and checked against the DTensor's global shape.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from nextrap.errors import CheckpointError
from nextrap.layouts import CheckpointRef
from nextrap.pickle_header import DTENSOR_CLASSES
from nextrap.shard_format import peft_key, refused_pickle

__all__ = ["ShardTensors", "allowed_classes", "open_shards"]

_UNSUPPORTED = re.compile(r"GLOBAL ([\w.]+)")


def allowed_classes() -> list[type]:
    """The classes of :data:`DTENSOR_CLASSES` the installed torch has (imported, as unpickling needs them)."""
    out = []
    for module, name in DTENSOR_CLASSES:
        try:
            out.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue  # an older torch: its shards do not pickle this class either
    return out


@contextmanager
def _allowing(classes: list[type]) -> Iterator[None]:
    """``classes`` allowed for ``weights_only`` loads inside the block, torch's own allow-list as it was after.

    (``torch.serialization.safe_globals`` removes its classes on exit even when torch had registered them
    itself, as ``torch.distributed.tensor`` does for DTensor: that would break later DTensor loads.)
    """
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals(classes)
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


@contextmanager
def _quiet_device_mesh() -> Iterator[None]:
    # Unpickling a DeviceMesh with no process group logs a warning about torch.compile; nothing here
    # compiles or communicates, so it is noise.
    mesh_logger = logging.getLogger("torch.distributed.device_mesh")
    level = mesh_logger.level
    mesh_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        mesh_logger.setLevel(level)


def _load(path: Path, step: int) -> dict[str, Any]:
    try:
        with _allowing(allowed_classes()), _quiet_device_mesh():
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for a refused or broken pickle
        text = str(exc)
        found = _UNSUPPORTED.search(text)
        if found or "Weights only load failed" in text:
            raise refused_pickle(path, step, found[1] if found else "a class outside the allow-list") from None
        raise CheckpointError(
            f"{path}: cannot load the rank shard at step {step} ({type(exc).__name__}: "
            f"{text.strip().splitlines()[0] if text.strip() else ''}); re-copy it"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict at step {step}, found {type(state).__name__}")
    return state


class ShardTensors:
    """The LoRA tensors of one checkpoint's rank shards, by PEFT key: ``tensors[key]`` assembles one."""

    def __init__(self, ref: CheckpointRef, states: Sequence[dict[str, Any]]):
        self.ref = ref
        self._states = states
        self.keys: dict[str, str] = {}  # PEFT key -> state-dict key
        for key in states[0]:
            mapped = peft_key(key)
            if mapped is not None:
                self.keys[mapped[0]] = key
        for rank, state in enumerate(states[1:], start=1):
            missing = [k for k in self.keys.values() if k not in state]
            if missing:
                raise CheckpointError(
                    f"{ref.shards[rank]}: no tensor {missing[0]} at step {ref.step}, which rank 0 holds; the shards "
                    "come from different saves"
                )

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Global shapes by PEFT key, from rank 0's pickle (nothing is put together)."""
        return {key: tuple(self._states[0][name].shape) for key, name in self.keys.items()}

    def __getitem__(self, key: str) -> torch.Tensor:
        name = self.keys[key]
        pieces = [state[name] for state in self._states]
        from torch.distributed.tensor import DTensor

        if not isinstance(pieces[0], DTensor):
            if not isinstance(pieces[0], torch.Tensor):
                raise CheckpointError(
                    f"{self.ref.shards[0]}: {name} is a {type(pieces[0]).__name__}, not a tensor (step {self.ref.step})"
                )
            return pieces[0]  # a parameter FSDP left whole: every rank holds all of it
        return _assemble(self.ref, name, pieces)


def _assemble(ref: CheckpointRef, name: str, pieces: Sequence[Any]) -> torch.Tensor:
    """The global tensor of one DTensor from every rank's piece (rank order = file order)."""
    first = pieces[0]
    placements = tuple(first.placements)
    mesh = first.device_mesh.mesh
    where = f"{ref.path}: {name} at step {ref.step}"
    sharded = [(i, p.dim) for i, p in enumerate(placements) if p.is_shard()]
    unknown = [p for p in placements if type(p).__name__ not in ("Shard", "Replicate")]  # Partial, _StridedShard
    if unknown or len({d for _, d in sharded}) != len(sharded):
        raise CheckpointError(
            f"{where} has placements {placements}; nextrap puts together Shard and Replicate placements, each tensor "
            "dimension sharded once (verl's FSDP and HSDP meshes)"
        )
    if int(mesh.max()) >= len(pieces):
        raise CheckpointError(f"{where}: its device mesh names rank {int(mesh.max())} but {len(pieces)} shards exist")
    grid: dict[tuple[int, ...], torch.Tensor] = {}
    for rank, piece in enumerate(pieces):
        if tuple(piece.placements) != placements:
            raise CheckpointError(f"{where}: rank {rank} has placements {tuple(piece.placements)}, rank 0 {placements}")
        coord = (mesh == rank).nonzero()
        if len(coord) != 1:
            continue  # a rank outside this tensor's mesh
        coord = coord[0].tolist()
        if any(coord[i] for i, p in enumerate(placements) if p.is_replicate()):
            continue  # a replica of pieces already taken
        grid[tuple(coord[i] for i, _ in sharded)] = piece.to_local()

    def build(prefix: tuple[int, ...], level: int) -> torch.Tensor:
        if level == len(sharded):
            return grid[prefix]
        mesh_dim, tensor_dim = sharded[level]
        return torch.cat([build((*prefix, c), level + 1) for c in range(mesh.shape[mesh_dim])], dim=tensor_dim)

    try:
        full = build((), 0)
    except KeyError:
        raise CheckpointError(f"{where}: a rank's piece is missing from the shards") from None
    if tuple(full.shape) != tuple(first.shape):
        raise CheckpointError(
            f"{where}: the ranks' pieces make {list(full.shape)}, the DTensor says {list(first.shape)}; the shards "
            "come from different saves"
        )
    return full


@contextmanager
def open_shards(ref: CheckpointRef) -> Iterator[ShardTensors]:
    """Load every rank's shard of ``ref`` (memory-mapped); the tensors are put together on access."""
    yield ShardTensors(ref, [_load(path, ref.step) for path in ref.shards])
