"""Reading and writing PEFT LoRA adapters' tensors, with torch.

Headers (config, keys, shapes, dtypes) and the key, rank and scaling rules are :mod:`nextrap.run.headers`'
(no torch), re-exported here. Reading is lazy: a reader opens ``adapter_model.safetensors`` and
hands out one tensor at a time, with ``pread`` from a file descriptor when the header is plainly valid
(:class:`FileReader`), through the safetensors library otherwise; legacy ``adapter_model.bin`` files are
memory-mapped with ``weights_only=True``; verl's rank shards too, each tensor put together from the
ranks' pieces when it is asked for (:mod:`nextrap.run.shard_reader`). A :class:`ReaderPool` keeps one reader
per checkpoint open across a pass.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from nextrap.errors import CheckpointError, NonFiniteError
from nextrap.formats.peft import CONFIG_NAME, SAFETENSORS_NAME
from nextrap.formats.verl_shards import FORMAT as SHARDS
from nextrap.layouts import CheckpointRef
from nextrap.run.headers import (
    AdapterConfig,
    AdapterHeader,
    LoraModule,
    RawTensor,
    TensorSpan,
    check_weights_file,
    corrupt_safetensors,
    load_bin,
    read_config,
    read_header,
    safetensors_layout,
)
from nextrap.run.shard_reader import open_shards
from nextrap.util.files import read_regular, write_new

__all__ = [
    "SAFETENSORS_NAME",
    "AdapterConfig",
    "AdapterHeader",
    "AdapterReader",
    "FileReader",
    "LoraModule",
    "RawTensor",
    "ReaderPool",
    "check_finite_tensor",
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
    """Lazy access to the tensors of one adapter file; use through :func:`open_adapter` or a :class:`ReaderPool`.

    ``keys()``, ``shapes`` and ``get(key)`` are the interface every reader offers; ``read_into`` copies a
    tensor into a tensor of the caller's (converting the dtype), which readers that can fill memory in
    place (:class:`FileReader`) do without an intermediate copy.
    """

    def __init__(self, ref: CheckpointRef, handle: Any, shapes: dict[str, tuple[int, ...]]):
        self.ref = ref
        self._handle = handle
        self.shapes = shapes

    def keys(self) -> list[str]:
        return list(self.shapes)

    def _missing(self, key: str) -> CheckpointError:
        return CheckpointError(f"{self.ref.weights}: no tensor {key!r} (step {self.ref.step})")

    def _stored(self, key: str) -> torch.Tensor:
        if key not in self.shapes:
            raise self._missing(key)
        if not hasattr(self._handle, "get_tensor"):
            return self._handle[key]
        from safetensors import SafetensorError

        try:
            return self._handle.get_tensor(key)
        except SafetensorError as exc:
            raise corrupt_safetensors(self.ref, exc) from None

    def get(
        self, key: str, dtype: torch.dtype | None = torch.float32, check_finite: bool = True
    ) -> torch.Tensor:
        """Load one tensor (as ``dtype``; ``None`` keeps the stored dtype), failing on NaN/Inf."""
        tensor = self._stored(key)
        if check_finite:
            check_finite_tensor(self.ref, key, tensor)
        return tensor if dtype is None else tensor.to(dtype)

    def read_into(self, key: str, out: torch.Tensor) -> None:
        """Copy tensor ``key`` into ``out`` (same shape, any float dtype); no finite check."""
        out.copy_(self._stored(key).reshape(out.shape))

    def close(self) -> None:
        """Release the file (a no-op here: :func:`open_adapter`'s context closes the library's handle)."""


class FileReader(AdapterReader):
    """Reads a safetensors file with ``pread`` from a file descriptor kept open, given its layout.

    Unlike the library's memory map, reading leaves nothing mapped: the pages of a file read once do not
    stay in the process's resident memory however long the reader is kept, so one reader per
    checkpoint can stay open for a whole pass over the run. ``read_into`` reads straight into the
    destination when it has the stored dtype (one copy from the page cache, the least possible).
    """

    def __init__(self, ref: CheckpointRef, layout: Mapping[str, TensorSpan]):
        super().__init__(ref, None, {k: span.shape for k, span in layout.items()})
        self._layout = dict(layout)
        self._fd: int | None = os.open(ref.weights, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def dtype(self, key: str) -> torch.dtype:
        return torch_dtype(self._layout[key].dtype)

    def _stored(self, key: str) -> torch.Tensor:
        if key not in self._layout:
            raise self._missing(key)
        span = self._layout[key]
        out = torch.empty(span.shape, dtype=torch_dtype(span.dtype))
        self._pread(key, out)
        return out

    def read_into(self, key: str, out: torch.Tensor) -> None:
        if key not in self._layout:
            raise self._missing(key)
        span = self._layout[key]
        if out.device.type == "cpu" and out.is_contiguous() and out.dtype == torch_dtype(span.dtype):
            self._pread(key, out)
        else:
            out.copy_(self._stored(key).reshape(out.shape))

    def _pread(self, key: str, out: torch.Tensor) -> None:
        span = self._layout[key]
        size = span.stop - span.start
        if out.numel() * out.element_size() != size:
            raise CheckpointError(
                f"{self.ref.weights}: tensor {key} holds {size} bytes at step {self.ref.step}, expected "
                f"{out.numel() * out.element_size()}; re-copy or re-save this checkpoint"
            )
        if size == 0:
            return
        if self._fd is None:
            raise ValueError(f"{self.ref.weights}: reader used after close")
        view = memoryview(out.view(torch.uint8).reshape(-1).numpy())
        done = 0
        while done < size:  # a read may return less than asked (over 2 GiB, signals): go on
            got = os.preadv(self._fd, [view[done:]], span.start + done)
            if got <= 0:
                raise CheckpointError(
                    f"{self.ref.weights}: the file ends inside tensor {key} at step {self.ref.step} (truncated "
                    "since its header was read?); re-copy or re-save this checkpoint"
                )
            done += got

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        try:  # noqa: SIM105 (contextlib may be gone at interpreter exit too)
            self.close()
        except Exception:  # at interpreter exit the os module may be gone; the OS closes the file then
            pass


def check_finite_tensor(ref: CheckpointRef, key: str, tensor: torch.Tensor) -> None:
    """Raise the one-line :class:`CheckpointError` when ``tensor`` (key ``key`` of ``ref``) holds NaN or Inf."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = "NaN" if bool(torch.isnan(tensor).any()) else "Inf"
        raise CheckpointError(
            f"{ref.weights}: tensor {key} at step {ref.step} contains {bad}; the run diverged "
            "before this checkpoint: drop it (and later ones) from the input"
        )


def _open_reader(ref: CheckpointRef, stack: ExitStack) -> AdapterReader:
    """A reader of ``ref``'s weights whose resources ``stack`` releases."""
    check_weights_file(ref)
    if ref.format == SHARDS:
        tensors = stack.enter_context(open_shards(ref))
        return AdapterReader(ref, tensors, tensors.shapes)
    if ref.weights.suffix == ".safetensors":
        layout = safetensors_layout(ref.weights) if hasattr(os, "preadv") else None
        if layout is not None:
            reader = FileReader(ref, layout)
            stack.callback(reader.close)
            return reader
        # A header our parser does not take as plainly valid: the library reads it, or says what is wrong.
        from safetensors import SafetensorError, safe_open

        try:
            handle = stack.enter_context(safe_open(str(ref.weights), framework="pt", device="cpu"))
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except SafetensorError as exc:
            raise corrupt_safetensors(ref, exc) from None
        return AdapterReader(ref, handle, shapes)
    state = load_bin(ref)
    return AdapterReader(ref, state, {k: tuple(v.shape) for k, v in state.items()})


@contextmanager
def open_adapter(ref: CheckpointRef) -> Iterator[AdapterReader]:
    """Open a checkpoint's weights lazily; raise :class:`CheckpointError` for corrupt, unreadable or stub files."""
    from safetensors import SafetensorError

    with ExitStack() as stack:
        reader = _open_reader(ref, stack)
        try:
            yield reader
        except SafetensorError as exc:
            raise corrupt_safetensors(ref, exc) from None


class ReaderPool:
    """One open reader per checkpoint, kept across the chunks of a pass (and the passes of a command).

    Opening a checkpoint parses its header; doing it once per checkpoint instead of once per chunk and
    checkpoint is what made a 7B-shaped backtest reopen its 16 files 6220 times. At most ``limit`` files
    are open at once (least recently used closed first), so long runs stay under the descriptor limit.
    Thread-safe: a reader thread may fetch the next chunk while the caller computes on this one.
    """

    def __init__(self, limit: int = 128):
        self._limit = limit
        self._open: OrderedDict[Path, tuple[AdapterReader, ExitStack]] = OrderedDict()
        self._lock = threading.Lock()

    def reader(self, ref: CheckpointRef) -> AdapterReader:
        with self._lock:
            key = ref.weights
            if key in self._open:
                self._open.move_to_end(key)
                return self._open[key][0]
            stack = ExitStack()
            try:
                reader = _open_reader(ref, stack)
            except BaseException:
                stack.close()
                raise
            self._open[key] = (reader, stack)
            while len(self._open) > self._limit:
                _, (_, old) = self._open.popitem(last=False)
                old.close()
            return reader

    def close(self) -> None:
        with self._lock:
            while self._open:
                _, (_, stack) = self._open.popitem()
                stack.close()

    def __del__(self) -> None:
        try:  # noqa: SIM105 (contextlib may be gone at interpreter exit too)
            self.close()
        except Exception:  # at interpreter exit
            pass


def write_adapter(
    folder: Path,
    tensors: Mapping[str, torch.Tensor],
    config: AdapterConfig,
    overrides: Mapping[str, Any] | None = None,
) -> None:
    """Write a PEFT adapter (safetensors + config) into an existing, empty ``folder``.

    The config goes through ``peft.LoraConfig`` so that it is one PEFT can load; ``overrides``
    replace fields (e.g. ``r`` and ``lora_alpha`` when the rank grows). Callers make the write
    atomic by writing into a temporary folder (see :mod:`nextrap.output.atomic`).
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
