"""Reading verl's FSDP rank shards with torch, one tensor at a time.

Each rank's ``model_world_size_W_rank_R.pt`` is a pickle. It is loaded with
``torch.load(weights_only=True, mmap=True)`` with the classes a DTensor shard pickles
(:data:`nextrap.formats.pickle_header.DTENSOR_CLASSES`) added to torch's allow-list for the load only: any other
global refuses the file, and no code from it runs. (Importing ``torch.distributed.tensor`` registers
torch's DTensor classes, ``Partial`` and ``_StridedShard`` among them, for every load; those two are
refused below.) Each file is unpickled once per process (:func:`_file_index`, cached): what is kept is
where each LoRA tensor's piece lies in the file, and a tensor is read from there when it is asked for,
so memory holds one tensor at a time, as with safetensors. ``torch.distributed`` is never initialised: the
DeviceMesh a shard carries is only read for which rank holds which piece. A LoRA tensor is put together
from the ranks' local pieces along the tensor dimension each ``Shard`` placement names (``Replicate``
mesh dimensions take coordinate 0), and checked against the DTensor's global shape.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nextrap.errors import CheckpointError
from nextrap.formats.pickle_header import DTENSOR_CLASSES, UnsafePickle, read_tensor_index
from nextrap.formats.verl_shards import SHARD_FILE, peft_key, refused_pickle
from nextrap.layouts import CheckpointRef

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


@dataclass(frozen=True)
class _Entry:
    """Where one tensor of a rank's file lies and how it fits into the whole: read once per file.

    ``placements`` are ``("shard", dim)`` / ``("replicate",)`` per mesh dimension and ``coord`` the rank's
    coordinate on the DTensor's mesh (both empty for a plain tensor, held whole by every rank); the
    rank's piece is ``shape`` elements of ``dtype`` at ``stride``, ``offset`` elements into the file's
    bytes at ``start``.
    """

    global_shape: tuple[int, ...]
    placements: tuple[tuple[Any, ...], ...]
    mesh_shape: tuple[int, ...]
    coord: tuple[int, ...] | None
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    start: int
    offset: int


def _placement(p: Any, where: str) -> tuple[Any, ...]:
    kind = type(p).__name__  # Partial and _StridedShard (a Shard subclass) are not put together here
    if kind == "Shard":
        return ("shard", int(p.dim))
    if kind == "Replicate":
        return ("replicate",)
    raise CheckpointError(
        f"{where} has a {kind} placement; nextrap puts together Shard and Replicate placements (verl's FSDP and "
        "HSDP meshes)"
    )


def _member_starts(path: Path) -> dict[str, int]:
    """Byte offset of every stored (uncompressed) member's data in the zip file, as torch.save writes them."""
    starts = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{path}: member {info.filename} is compressed; torch.save stores them plain")
            f.seek(info.header_offset)
            local = f.read(30)  # the local file header: name and extra-field lengths at bytes 26..29
            starts[info.filename] = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(
                local[28:30], "little"
            )
    return starts


@functools.lru_cache(maxsize=4096)
def _file_index(path: Path, size: int, mtime_ns: int, step: int) -> dict[str, _Entry]:
    """The LoRA tensors of one rank's file, by state-dict key. The file is unpickled twice, each time with
    the allow-list: by torch (``weights_only``: the placements and the rank's mesh coordinate, however the
    installed torch spells a DeviceMesh) and by :mod:`nextrap.formats.pickle_header` (which storage, at which
    offset and stride). Cached per file version, so each file is unpickled once per process."""
    from torch.distributed.tensor import DTensor

    state = _load(path, step)
    try:
        prefix, header = read_tensor_index(path)
    except UnsafePickle as exc:
        raise refused_pickle(path, step, exc.name) from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: not a model shard at step {step} ({exc}); re-copy it") from None
    starts = _member_starts(path)
    rank = int(SHARD_FILE.match(path.name)[2])
    entries = {}
    for key, value in state.items():
        if peft_key(key) is None:
            continue
        where = f"{path}: {key} at step {step}"
        pickled = header.get(key)
        if isinstance(value, DTensor):
            mesh = value.device_mesh.mesh
            found = (mesh == rank).nonzero()
            coord = tuple(found[0].tolist()) if len(found) == 1 else None
            placements = tuple(_placement(p, where) for p in value.placements)
            piece, local_shape, mesh_shape = (pickled.local if pickled else None), tuple(value.to_local().shape), tuple(mesh.shape)
        elif isinstance(value, torch.Tensor):
            coord, placements, piece, local_shape, mesh_shape = (), (), pickled, tuple(value.shape), ()
        else:
            raise CheckpointError(f"{where} is a {type(value).__name__}, not a tensor")
        if piece is None or piece.storage is None or piece.shape != local_shape:
            raise CheckpointError(f"{where}: the pickle and torch disagree on this tensor; re-copy the file")
        entries[key] = _Entry(
            global_shape=tuple(value.shape),
            placements=placements,
            mesh_shape=mesh_shape,
            coord=coord,
            dtype=value.dtype,
            shape=piece.shape,
            stride=piece.stride,
            start=starts[f"{prefix}data/{piece.storage}"],
            offset=piece.offset,
        )
    return entries


def _index(path: Path, step: int) -> dict[str, _Entry]:
    try:
        st = path.stat()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the rank shard at step {step} ({exc.strerror or exc})") from None
    return _file_index(path, st.st_size, st.st_mtime_ns, step)


def _read_piece(path: Path, entry: _Entry) -> torch.Tensor:
    """A rank's piece of one tensor, read from the file's bytes (nothing else of the file is read)."""
    itemsize = entry.dtype.itemsize
    span = 1 + sum((n - 1) * s for n, s in zip(entry.shape, entry.stride, strict=True)) if all(entry.shape) else 0
    with open(path, "rb") as f:
        f.seek(entry.start + entry.offset * itemsize)
        data = bytearray(f.read(span * itemsize))
    if len(data) != span * itemsize:
        raise CheckpointError(f"{path}: truncated (a tensor's data runs past the end); re-copy it")
    flat = torch.frombuffer(data, dtype=entry.dtype) if span else torch.empty(0, dtype=entry.dtype)
    return flat.as_strided(entry.shape, entry.stride)


class ShardTensors:
    """The LoRA tensors of one checkpoint's rank shards, by PEFT key: ``tensors[key]`` assembles one."""

    def __init__(self, ref: CheckpointRef):
        self.ref = ref
        self._indexes = [_index(path, ref.step) for path in ref.shards]
        self.keys: dict[str, str] = {}  # PEFT key -> state-dict key
        for key in self._indexes[0]:
            mapped = peft_key(key)
            if mapped is not None:
                self.keys[mapped[0]] = key
        for rank, index in enumerate(self._indexes[1:], start=1):
            missing = [k for k in self.keys.values() if k not in index]
            if missing:
                raise CheckpointError(
                    f"{ref.shards[rank]}: no tensor {missing[0]} at step {ref.step}, which rank 0 holds; the shards "
                    "come from different saves"
                )

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Global shapes by PEFT key (nothing is read)."""
        return {key: self._indexes[0][name].global_shape for key, name in self.keys.items()}

    def __getitem__(self, key: str) -> torch.Tensor:
        name = self.keys[key]
        entries = [index[name] for index in self._indexes]
        where = f"{self.ref.path}: {name} at step {self.ref.step}"
        first = entries[0]
        if not first.placements:
            return _read_piece(self.ref.shards[0], first)  # a parameter FSDP left whole on every rank
        sharded = [(i, p[1]) for i, p in enumerate(first.placements) if p[0] == "shard"]
        if len({d for _, d in sharded}) != len(sharded):
            raise CheckpointError(f"{where}: one tensor dimension sharded over two mesh dimensions; not supported")
        grid: dict[tuple[int, ...], torch.Tensor] = {}
        for rank, entry in enumerate(entries):
            if entry.placements != first.placements or entry.global_shape != first.global_shape:
                raise CheckpointError(f"{where}: rank {rank} and rank 0 disagree on its placements; different saves?")
            if entry.coord is None or any(entry.coord[i] for i, p in enumerate(first.placements) if p[0] == "replicate"):
                continue  # outside this tensor's mesh, or a replica of a piece taken from another rank
            grid[tuple(entry.coord[i] for i, _ in sharded)] = _read_piece(self.ref.shards[rank], entry)

        def build(prefix: tuple[int, ...], level: int) -> torch.Tensor:
            if level == len(sharded):
                return grid[prefix]
            mesh_dim, tensor_dim = sharded[level]
            parts = [build((*prefix, c), level + 1) for c in range(first.mesh_shape[mesh_dim])]
            return torch.cat(parts, dim=tensor_dim)

        try:
            full = build((), 0)
        except KeyError:
            raise CheckpointError(f"{where}: a rank's piece is missing from the shards") from None
        if tuple(full.shape) != first.global_shape:
            raise CheckpointError(
                f"{where}: the ranks' pieces make {list(full.shape)}, the DTensor says {list(first.global_shape)}; "
                "the shards come from different saves"
            )
        return full


@contextmanager
def open_shards(ref: CheckpointRef) -> Iterator[ShardTensors]:
    """The tensors of ``ref``'s rank shards; each tensor is read from the ranks' files when it is asked for."""
    yield ShardTensors(ref)
