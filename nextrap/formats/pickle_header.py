"""Names, shapes and dtypes of the tensors in a ``torch.save`` file, read without torch and without running
any of the file's code.

A ``torch.save`` file is a zip archive: ``<name>/data.pkl`` is a pickle that describes every tensor
(its storage's dtype, its size, and for a ``DTensor`` the global size and placements), the raw
storages sit beside it in ``<name>/data/<key>``. This module unpickles ``data.pkl`` with
:class:`pickle.Unpickler` whose ``find_class`` knows only an allow-list of names (the ones
``torch.save`` writes for plain tensors and for the DTensor shards of an FSDP ``state_dict``), each
mapped to a small stand-in here: nothing from the file is imported or called. Any other name refuses
the file (:class:`UnsafePickle`), as ``torch.load(weights_only=True)`` does. Storages are not read.

``nextrap scan`` uses it to describe a run of verl's FSDP rank shards as quickly as a safetensors run;
the tensors themselves are read with torch (:mod:`nextrap.run.shard_reader`), under the same allow-list.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DTENSOR_CLASSES", "PickledTensor", "UnsafePickle", "read_tensor_header", "read_tensor_index"]


class UnsafePickle(ValueError):
    """The pickle names a global outside the allow-list (``name`` is ``module.qualname``)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


@dataclass(frozen=True)
class PickledTensor:
    """One tensor of the file: its (global) shape and torch's dtype name; ``dtensor`` for a DTensor shard.

    Where its data lies: ``storage`` (the archive member ``data/<storage>``, of ``dtype`` elements),
    ``offset`` (in elements) and ``stride``; for a DTensor these describe ``local``, the rank's piece.
    """

    shape: tuple[int, ...]
    dtype: str
    dtensor: bool = False
    storage: str | None = None
    offset: int = 0
    stride: tuple[int, ...] = ()
    local: PickledTensor | None = None


# The classes a DTensor shard of an FSDP state dict pickles (torch >= 2.5 spells them under
# torch.distributed.tensor; _MeshLayout / _FlatLayout / ShardOrderEntry are torch 2.9+ details). The
# torch reader allows exactly these, where the installed torch has them.
DTENSOR_CLASSES: tuple[tuple[str, str], ...] = (
    ("torch.distributed.tensor", "DTensor"),
    ("torch.distributed.tensor._dtensor_spec", "DTensorSpec"),
    ("torch.distributed.tensor._dtensor_spec", "TensorMeta"),
    ("torch.distributed.tensor._dtensor_spec", "ShardOrderEntry"),
    ("torch.distributed.tensor.placement_types", "Shard"),
    ("torch.distributed.tensor.placement_types", "Replicate"),
    ("torch.distributed.device_mesh", "DeviceMesh"),
    ("torch.distributed._mesh_layout", "_MeshLayout"),
    ("torch.distributed._mesh_layout", "_FlatLayout"),
)

# torch's storage classes (the dtype marker of a pickled storage) and dtype globals, by torch's dtype name.
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
_DTYPES = frozenset(_STORAGE_DTYPES.values())


class _Stand(dict):
    """Stand-in for an allowed class: keeps nothing but the state pickle gives it (a dict or a tuple)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stand:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.update(state)

    def __reduce__(self) -> Any:  # never pickled again; keeps dict's reduce from being used by mistake
        raise TypeError("stand-in objects are not picklable")


class _DTensor(_Stand):
    pass


@dataclass
class _Storage:
    dtype: str
    key: str | None = None


class _OrderedDict(dict):
    """``collections.OrderedDict``: a module's ``state_dict()`` pickles its ``_metadata`` as state, dropped here."""

    def __setstate__(self, state: Any) -> None:
        pass


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any = (), *rest: Any) -> PickledTensor:
    if not isinstance(storage, _Storage):
        raise UnsafePickle("a tensor without a storage")
    return PickledTensor(
        shape=tuple(int(s) for s in size),
        dtype=storage.dtype,
        storage=storage.key,
        offset=int(offset),
        stride=tuple(int(s) for s in stride),
    )


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    return data


def _rebuild_wrapper_subclass(cls: Any, dtype: Any, size: Any, *rest: Any) -> Any:
    if cls is not _DTensor:
        raise UnsafePickle("a tensor subclass other than DTensor")
    out = _DTensor()
    out["__shape__"] = tuple(int(s) for s in size)
    out["__dtype__"] = dtype
    return out


def _rebuild_from_type_v2(func: Callable[..., Any], new_type: Any, args: Any, state: Any) -> Any:
    out = func(*args)
    if isinstance(out, _Stand):
        out.__setstate__(state)  # a dict, or (dict, slots) as torch's _get_obj_state gives it
    return out


def _allowed() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): _OrderedDict,
        ("torch", "Size"): tuple,
        ("torch", "device"): lambda *a: ("device", *a),
        ("torch.serialization", "_get_layout"): lambda name: name,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_wrapper_subclass"): _rebuild_wrapper_subclass,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    }
    table.update({("torch", name): _Storage(dtype) for name, dtype in _STORAGE_DTYPES.items()})
    table.update({("torch", name): name for name in _DTYPES})
    for module, name in DTENSOR_CLASSES:
        table[(module, name)] = _DTensor if name == "DTensor" else type(name, (_Stand,), {})
    return table


_ALLOWED = _allowed()


class _HeaderUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickle(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage type, key, location, numel): the dtype and where the data is.
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise UnsafePickle(f"persistent id {pid!r:.60}")
        return _Storage(pid[1].dtype, str(pid[2]))


def _first_member(f: io.BufferedReader) -> str | None:
    """The name of the archive's first member when it is a stored ``data.pkl`` (torch.save writes it first),
    with ``f`` left at its data; None otherwise. Read from the local header, without parsing the archive's
    directory (torch writes the sizes after the data, but a pickle ends itself: no size is needed)."""
    head = f.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04" or int.from_bytes(head[8:10], "little") != 0:
        return None
    name_len, extra_len = int.from_bytes(head[26:28], "little"), int.from_bytes(head[28:30], "little")
    name = f.read(name_len).decode("utf-8", "replace")
    if not (name.endswith("/data.pkl") or name == "data.pkl"):
        return None
    f.seek(extra_len, 1)
    return name


def _unpickle(stream: Any) -> Any:
    try:
        return _HeaderUnpickler(stream).load()
    except UnsafePickle:
        raise
    except Exception as exc:  # a damaged pickle raises many types
        raise ValueError(f"damaged pickle ({type(exc).__name__}: {exc})") from None


def read_tensor_header(path: Path) -> dict[str, PickledTensor]:
    """``{name: PickledTensor}`` of the top-level state dict of the ``torch.save`` file ``path``.

    Raises :class:`UnsafePickle` for a name outside the allow-list, ``ValueError`` for a file that is
    not a ``torch.save`` zip archive of a ``{name: tensor}`` dict, ``OSError`` when it cannot be read.
    """
    return read_tensor_index(path)[1]


def read_tensor_index(path: Path) -> tuple[str, dict[str, PickledTensor]]:
    """The archive's folder prefix (storages are ``<prefix>data/<storage>``) and :func:`read_tensor_header`'s dict."""
    with open(path, "rb") as f:
        name = _first_member(f)
        if name is not None:
            state = _unpickle(f)
    if name is None:
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
                if len(names) != 1:
                    raise ValueError("no data.pkl in the archive: not a torch.save file")
                name, state = names[0], _unpickle(io.BytesIO(archive.read(names[0])))
        except zipfile.BadZipFile as exc:
            raise ValueError(f"not a torch.save zip archive ({exc})") from None
    prefix = name[: -len("data.pkl")]
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a state dict")
    out = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise ValueError(f"key {key!r} is not a string")
        if isinstance(value, _DTensor):
            dtype, local = value.get("__dtype__"), value.get("_local_tensor")
            if dtype not in _DTYPES or not isinstance(local, PickledTensor):
                raise ValueError(f"{key}: DTensor without a dtype or a local tensor")
            out[key] = PickledTensor(shape=value["__shape__"], dtype=dtype, dtensor=True, local=local)
        elif isinstance(value, PickledTensor):
            out[key] = value
        else:
            raise ValueError(f"{key}: a {type(value).__name__}, not a tensor")
    return prefix, out
