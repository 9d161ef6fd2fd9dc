"""Reading and writing PEFT LoRA adapters' tensors, with torch.

Headers (config, keys, shapes, dtypes) and the key, rank and scaling rules are :mod:`nextrap.headers`'
(no torch), re-exported here. Reading is lazy: :class:`AdapterReader` opens ``adapter_model.safetensors``
and hands out one tensor at a time (legacy ``adapter_model.bin`` files are memory-mapped with
``weights_only=True``; verl's rank shards too, each tensor put together from the ranks' pieces when it
is asked for, see :mod:`nextrap.shard_reader`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from nextrap.errors import CheckpointError, NonFiniteError
from nextrap.files import read_regular, write_new
from nextrap.headers import (
    AdapterConfig,
    AdapterHeader,
    LoraModule,
    RawTensor,
    check_weights_file,
    corrupt_safetensors,
    load_bin,
    read_config,
    read_header,
)
from nextrap.layouts import CheckpointRef
from nextrap.peft_format import CONFIG_NAME, SAFETENSORS_NAME
from nextrap.shard_format import FORMAT as SHARDS
from nextrap.shard_reader import open_shards

__all__ = [
    "SAFETENSORS_NAME",
    "AdapterConfig",
    "AdapterHeader",
    "AdapterReader",
    "LoraModule",
    "RawTensor",
    "open_adapter",
    "read_config",
    "read_header",
    "torch_dtype",
    "write_adapter",
]

logger = logging.getLogger(__name__)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a header's dtype name (``bfloat16`` -> ``torch.bfloat16``)."""
    return getattr(torch, name)


class AdapterReader:
    """Lazy access to the tensors of one adapter file; use through :func:`open_adapter`."""

    def __init__(self, ref: CheckpointRef, handle: Any, shapes: dict[str, tuple[int, ...]]):
        self.ref = ref
        self._handle = handle
        self.shapes = shapes

    def keys(self) -> list[str]:
        return list(self.shapes)

    def get(
        self, key: str, dtype: torch.dtype | None = torch.float32, check_finite: bool = True
    ) -> torch.Tensor:
        """Load one tensor (as ``dtype``; ``None`` keeps the stored dtype), failing on NaN/Inf."""
        if key not in self.shapes:
            raise CheckpointError(f"{self.ref.weights}: no tensor {key!r} (step {self.ref.step})")
        tensor = self._handle.get_tensor(key) if hasattr(self._handle, "get_tensor") else self._handle[key]
        if check_finite and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = "NaN" if bool(torch.isnan(tensor).any()) else "Inf"
            raise CheckpointError(
                f"{self.ref.weights}: tensor {key} at step {self.ref.step} contains {bad}; the run diverged "
                "before this checkpoint: drop it (and later ones) from the input"
            )
        return tensor if dtype is None else tensor.to(dtype)


@contextmanager
def open_adapter(ref: CheckpointRef) -> Iterator[AdapterReader]:
    """Open a checkpoint's weights lazily; raise :class:`CheckpointError` for corrupt, unreadable or stub files."""
    check_weights_file(ref)
    if ref.format == SHARDS:
        with open_shards(ref) as tensors:
            yield AdapterReader(ref, tensors, tensors.shapes)
    elif ref.weights.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(ref.weights), framework="pt", device="cpu") as handle:
                shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
                yield AdapterReader(ref, handle, shapes)
        except SafetensorError as exc:
            raise corrupt_safetensors(ref, exc) from None
    else:
        state = load_bin(ref)
        yield AdapterReader(ref, state, {k: tuple(v.shape) for k, v in state.items()})


def write_adapter(
    folder: Path,
    tensors: Mapping[str, torch.Tensor],
    config: AdapterConfig,
    overrides: Mapping[str, Any] | None = None,
) -> None:
    """Write a PEFT adapter (safetensors + config) into an existing, empty ``folder``.

    The config goes through ``peft.LoraConfig`` so that it is one PEFT can load; ``overrides``
    replace fields (e.g. ``r`` and ``lora_alpha`` when the rank grows). Callers make the write
    atomic by writing into a temporary folder (see :mod:`nextrap.atomic`).
    """
    from peft import LoraConfig
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    folder = Path(folder)
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(f"{key}: Inf/NaN in the tensor to write; nothing was written")
    target = folder / SAFETENSORS_NAME
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(target), metadata={"format": "pt"})
    except SafetensorError as exc:
        # safetensors reports I/O failures (a full disk, a size limit) as its own error type: give them
        # back their errno and path, so they read like any other OS error.
        found = re.search(r"(?:I/O error: )?(.*?) \(os error (\d+)\)", str(exc))
        if found is None:
            raise
        raise OSError(int(found[2]), found[1], str(target)) from None
    fields = LoraConfig.__dataclass_fields__
    values = {k: v for k, v in {**config.raw, **(overrides or {})}.items() if k in fields and fields[k].init}
    dropped = sorted(set(config.raw) - set(values) - {"peft_type", "auto_mapping"})
    if dropped:
        logger.info("adapter_config fields unknown to the installed peft were dropped: %s", dropped)
    values.pop("peft_type", None)
    lora = LoraConfig(**values)
    lora.save_pretrained(str(folder))
    _sort_set_fields(folder / CONFIG_NAME, lora)


def _sort_set_fields(path: Path, lora: Any) -> None:
    """PEFT keeps ``target_modules`` (and a few others) as sets and writes them in hash-seed order; sorted,
    identical runs write byte-identical configs."""
    sets = [name for name, value in vars(lora).items() if isinstance(value, set | frozenset)]
    if not sets:
        return
    data = json.loads(read_regular(path))
    for name in sets:
        if isinstance(data.get(name), list):
            data[name] = sorted(data[name], key=str)
    path.unlink()  # in the writer's private folder: written anew (no rename, which the crash tests count)
    write_new(path, json.dumps(data, indent=2, sort_keys=True))
