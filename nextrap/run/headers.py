"""One checkpoint's header, read without torch: its ``adapter_config.json`` and the names, shapes and
dtypes of its tensors, grouped into LoRA modules and other trainable tensors, and checked.

This is all ``nextrap scan`` reads, so it imports no torch. A safetensors file starts with its header:
an 8-byte little-endian length, then a JSON object giving each tensor's dtype, shape and data offsets;
:func:`read_safetensors_header` parses it with the checks the safetensors library makes. A header it
does not accept as plainly valid goes to the library itself, which accepts it or says in its own words
what is wrong, so a corrupt file gets the same message here as when its tensors are read. A legacy
``adapter_model.bin`` is a pickle: reading even its header needs torch, imported then.

Dtypes are torch's names (``float32``, ``bfloat16``); :func:`nextrap.run.adapters.torch_dtype` turns one
into a ``torch.dtype``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nextrap.errors import CheckpointError
from nextrap.formats import verl_shards as shard_format
from nextrap.formats.peft import (
    CONFIG_NAME,
    alpha_for_scaling,
    module_name,
    pattern_key,
    pattern_matches,
    scaling,
    split_lora_key,
)
from nextrap.layouts import CheckpointRef
from nextrap.util.files import read_regular

__all__ = [
    "AdapterConfig",
    "AdapterHeader",
    "LoraModule",
    "RawTensor",
    "TensorSpan",
    "check_weights_file",
    "corrupt_safetensors",
    "is_float_dtype",
    "load_bin",
    "parse_config",
    "read_config",
    "read_header",
    "read_safetensors_header",
    "safetensors_layout",
    "tensor_header",
]


# ------------------------------------------------------------------------------------ the config


@dataclass(frozen=True)
class AdapterConfig:
    """The parts of ``adapter_config.json`` that decide ranks and scalings, plus the raw dict.

    ``scaling(module)`` follows PEFT: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA, where r and
    alpha come from the first ``rank_pattern`` / ``alpha_pattern`` key that regex-matches a dotted
    suffix of the module name.
    """

    path: Path
    raw: Mapping[str, Any]
    r: int
    lora_alpha: float
    use_rslora: bool = False
    use_dora: bool = False
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)

    @property
    def base_model(self) -> str | None:
        return self.raw.get("base_model_name_or_path")

    def rank_for(self, module: str) -> int:
        key = pattern_key(self.rank_pattern, module)
        return int(self.rank_pattern[key]) if key is not None else self.r

    def alpha_for(self, module: str) -> float:
        key = pattern_key(self.alpha_pattern, module)
        return float(self.alpha_pattern[key]) if key is not None else self.lora_alpha

    def scaling_for(self, module: str, rank: int | None = None) -> float:
        rank = self.rank_for(module) if rank is None else rank
        return scaling(self.alpha_for(module), rank, self.use_rslora)

    def grown(self, modules: Mapping[str, tuple[int, float]]) -> dict[str, Any]:
        """Config overrides that raise every rank by one at unchanged scaling (``--rank-policy grow``).

        ``modules`` maps each module name to its ``(rank, scaling)``. With per-module patterns every
        module is spelled out, so that no pattern can match the wrong one.
        """
        base = scaling(self.lora_alpha, self.r, self.use_rslora)
        overrides: dict[str, Any] = {"r": self.r + 1, "lora_alpha": alpha_for_scaling(base, self.r + 1, self.use_rslora)}
        if self.rank_pattern or self.alpha_pattern:
            overrides["rank_pattern"] = {re.escape(m): r + 1 for m, (r, _) in modules.items()}
            overrides["alpha_pattern"] = {
                re.escape(m): alpha_for_scaling(s, r + 1, self.use_rslora) for m, (r, s) in modules.items()
            }
        return overrides

    def unmatched_patterns(self, modules: list[str]) -> list[str]:
        """Pattern keys that match none of ``modules``: PEFT ignores them silently, we say so."""
        keys = list(self.rank_pattern) + [k for k in self.alpha_pattern if k not in self.rank_pattern]
        return [k for k in keys if not any(pattern_matches(k, m) for m in modules)]


# Ranges a trained adapter's config lives in; outside them the float32 math underflows or overflows
# (an alpha of 1e-300 gives a scaling of 0, and dividing by it NaN).
MAX_RANK = 1 << 16
ALPHA_RANGE = (1e-6, 1e6)


def _config_rank(path: Path, where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CheckpointError(f"{path}: {where} = {value!r}; expected a positive integer rank")
    if value != int(value) or not 1 <= value <= MAX_RANK:
        raise CheckpointError(f"{path}: {where} = {value!r}; expected an integer rank in [1, {MAX_RANK}]")
    return int(value)


def _config_alpha(path: Path, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CheckpointError(
            f"{path}: {where} = {value!r}; expected a finite number (the LoRA alpha used in training)"
        )
    if value == 0:
        raise CheckpointError(
            f"{path}: {where} is 0, which would make every update vanish (verl's merger writes 0); "
            "set it in adapter_config.json to the value used in training"
        )
    low, high = ALPHA_RANGE
    if not low <= abs(value) <= high:
        raise CheckpointError(
            f"{path}: {where} = {value!r} is outside [{low:g}, {high:g}] (in absolute value), where the "
            "scaling alpha / r stays representable; set the value used in training"
        )
    return float(value)


def _config_patterns(path: Path, name: str, value: Any, check: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CheckpointError(
            f"{path}: {name} must be a JSON object of pattern -> value, got {type(value).__name__}"
        )
    out = {}
    for key, item in value.items():
        try:
            re.compile(rf"(.*\.)?({key})$")
        except re.error as exc:
            raise CheckpointError(
                f"{path}: {name} key {key!r} is not a valid regular expression ({exc})"
            ) from None
        out[key] = check(path, f"{name}[{key!r}]", item)
    return out


def _config_flag(path: Path, raw: Mapping[str, Any], name: str) -> bool:
    value = raw.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise CheckpointError(f"{path}: {name} = {value!r}; expected true or false")
    return value


def read_config(folder: Path) -> AdapterConfig:
    """Parse and check ``folder/adapter_config.json``; raise :class:`CheckpointError` on anything off.

    Every number is checked finite and in range (rank in [1, 2^16], ``|alpha|`` in [1e-6, 1e6]) and
    every pattern compiled, with the file and field named.
    """
    path = Path(folder) / CONFIG_NAME
    try:
        raw = json.loads(read_regular(path))
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: missing; an adapter folder needs {CONFIG_NAME} next to its weights"
        ) from None
    except OSError as exc:
        raise CheckpointError(
            f"{path}: cannot read it ({exc.strerror or exc}); check its permissions"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path}: not valid JSON ({exc}); restore the file from the trainer's output"
        ) from None
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply to be an adapter config") from None
    return parse_config(path, raw)


def parse_config(path: Path, raw: Any) -> AdapterConfig:
    """Check an adapter config's content (from ``path``, named in errors); see :func:`read_config`."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    peft_type = str(raw.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise CheckpointError(f"{path}: peft_type is {peft_type}; nextrap handles LoRA adapters only")
    if "r" not in raw:
        raise CheckpointError(f"{path}: no 'r'; an adapter config states its LoRA rank")
    r = _config_rank(path, "r", raw["r"])
    alpha = _config_alpha(path, "lora_alpha", raw.get("lora_alpha", 8))
    return AdapterConfig(
        path=path,
        raw=raw,
        r=r,
        lora_alpha=alpha,
        use_rslora=_config_flag(path, raw, "use_rslora"),
        use_dora=_config_flag(path, raw, "use_dora"),
        rank_pattern=_config_patterns(path, "rank_pattern", raw.get("rank_pattern"), _config_rank),
        alpha_pattern=_config_patterns(path, "alpha_pattern", raw.get("alpha_pattern"), _config_alpha),
    )


@dataclass(frozen=True)
class LoraModule:
    """One LoRA module: ``dW = scaling * B @ A`` with ``B (out, rank)`` and ``A (rank, in)``.

    ``name`` is the module path without PEFT's ``base_model.model.`` prefix; ``a_key`` / ``b_key``
    are the exact keys in the file (written back unchanged). ``kind`` is ``linear`` or ``embedding``;
    ``dtype`` is torch's name of the stored dtype (``bfloat16``).
    """

    name: str
    a_key: str
    b_key: str
    out_features: int
    in_features: int
    rank: int
    scaling: float
    kind: str
    dtype: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.out_features, self.in_features, self.rank)


@dataclass(frozen=True)
class RawTensor:
    """A trainable tensor that is not a LoRA factor (DoRA magnitude, bias, ``modules_to_save``)."""

    key: str
    shape: tuple[int, ...]
    dtype: str  # torch's name


@dataclass(frozen=True)
class AdapterHeader:
    """What one checkpoint holds, read from the file header without loading data."""

    ref: CheckpointRef
    config: AdapterConfig
    modules: dict[str, LoraModule]
    raw: dict[str, RawTensor]
    notes: tuple[str, ...] = ()

    @property
    def keys(self) -> list[str]:
        out = [k for m in self.modules.values() for k in (m.a_key, m.b_key)]
        return out + list(self.raw)


# ------------------------------------------------------------------------------------------ dtypes

# safetensors' dtype codes -> torch's names. Codes not listed (F8_E4M3, U16, ...) are kept as they are and
# refused: F8_* as an unsupported float type, the others as not floating point (nextrap's math reads float32,
# float16, bfloat16 and float64).
SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
# Bits per element of the codes the torch-free parser accepts: every safetensors version since 0.4 knows
# these. A file with another code (F8_E4M3 came in 0.4.1) goes to the library, which knows its own codes.
_CODE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip


# What nextrap's math reads; other floating-point types (8-, 6-, 4-bit) are named as unsupported.
SUPPORTED_FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _is_low_precision_float(name: str) -> bool:
    """A floating-point dtype nextrap does not read: torch's float8_* names, safetensors' F8_*/F6_*/F4 codes."""
    return name.startswith("float") or re.match(r"^F\d", name) is not None


def is_float_dtype(name: str) -> bool:
    """``torch.dtype.is_floating_point`` from torch's name of the dtype (a test holds it to torch's own)."""
    return name == "bfloat16" or name.startswith("float")


# ------------------------------------------------------------------------------- the weights file

# Anything this small cannot hold a LoRA adapter (an 8-byte length, a JSON header, data): a truncated copy
# or a failed save. (DeepSpeed ZeRO-3's placeholders are bigger: tensors of shape [0], checked below.)
_PLACEHOLDER_BYTES = 128


def check_weights_file(ref: CheckpointRef) -> None:
    """Fail with one line when ``ref``'s weights file is missing, unreadable or too small to be an adapter."""
    path = ref.weights
    try:
        size = path.stat().st_size
        with open(path, "rb"):  # an unreadable file fails here, with its real reason
            pass
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file missing (step {ref.step})") from None
    except OSError as exc:
        raise CheckpointError(
            f"{path}: cannot read the weights at step {ref.step} ({exc.strerror or exc}); check its permissions"
        ) from None
    if size < _PLACEHOLDER_BYTES:
        raise CheckpointError(
            f"{path}: only {size} bytes at step {ref.step}, too small to hold any adapter weights (a truncated "
            "copy or a failed save); re-copy or re-save this checkpoint"
        )


def corrupt_safetensors(ref: CheckpointRef, exc: BaseException) -> CheckpointError:
    """The one-line error for a safetensors file the library refuses, in the library's words."""
    return CheckpointError(
        f"{ref.weights}: corrupt safetensors file at step {ref.step} ({_first_line(exc)}); re-copy or re-save "
        "this checkpoint"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def tensor_header(ref: CheckpointRef) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Shapes and dtype names of the tensors in ``ref``'s weights file, keyed by name, without their data.

    Names come in the order the safetensors library lists them (sorted), or a ``.bin``'s own order.
    """
    check_weights_file(ref)
    if ref.weights.suffix == ".safetensors":
        header = read_safetensors_header(ref.weights)
        return header if header is not None else _library_header(ref)
    state = load_bin(ref)
    return (
        {k: tuple(v.shape) for k, v in state.items()},
        {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()},
    )


def _library_header(ref: CheckpointRef) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The header as the safetensors library reads it (its numpy side: no torch), or its one-line error."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(ref.weights), framework="numpy") as handle:
            slices = {key: handle.get_slice(key) for key in handle.keys()}
            return (
                {key: tuple(sl.get_shape()) for key, sl in slices.items()},
                {key: SAFETENSORS_DTYPES.get(sl.get_dtype(), sl.get_dtype()) for key, sl in slices.items()},
            )
    except SafetensorError as exc:
        raise corrupt_safetensors(ref, exc) from None


# The safetensors library refuses headers longer than this.
_MAX_HEADER_BYTES = 100_000_000
_U64 = 2**64
# A JSON \u escape of a UTF-16 surrogate: Python decodes a lone one, the library's JSON parser refuses it.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class TensorSpan:
    """Where one tensor's bytes lie in a safetensors file: ``start``/``stop`` from the file's start."""

    dtype: str  # torch's name
    shape: tuple[int, ...]
    start: int
    stop: int


# Kept over safe_open(framework="numpy") (15 ms per 7B-shaped header) and huggingface_hub's parser (8 ms, 0.76 s import): 6 ms.
def safetensors_layout(path: Path) -> dict[str, TensorSpan] | None:
    """Each tensor's dtype, shape and byte span in the file, from a plainly valid header; else None.

    None has the meaning it has for :func:`read_safetensors_header`: the file goes to the library. With a
    layout, a reader can ``pread`` each tensor straight into its destination (no memory map, whose touched
    pages would count as the process's resident memory for as long as the file stays open).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little")
            if len(head) < 8 or length > _MAX_HEADER_BYTES:
                return None
            text = f.read(length)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    if len(text) != length:
        return None
    entries = _header_entries(text)
    if entries is None or _data_end(list(entries.values())) != size - 8 - length:
        return None
    base = 8 + length
    return {
        name: TensorSpan(SAFETENSORS_DTYPES.get(code, code), shape, base + start, base + stop)
        for name, (code, shape, (start, stop)) in sorted(entries.items())
    }


def read_safetensors_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]] | None:
    """Shapes and dtype names of a safetensors file's tensors (sorted by name) from its JSON header, or None.

    None means "not plainly valid": anything the safetensors library might refuse (a bad length, JSON it
    would not parse, an unknown dtype, offsets that do not tile the data exactly), and a few things it
    might accept (duplicate keys, extra fields); the caller then asks the library. So every header
    accepted here is one the library accepts with the same tensors (``tests/test_fuzz.py`` checks it).
    """
    layout = safetensors_layout(path)
    if layout is None:
        return None
    return {name: span.shape for name, span in layout.items()}, {name: span.dtype for name, span in layout.items()}


def _header_entries(text: bytes) -> dict[str, tuple[str, tuple[int, ...], tuple[int, int]]] | None:
    """``{name: (dtype code, shape, (start, end))}`` from the JSON header, or None if anything is off."""
    try:
        decoded = text.decode("utf-8")
        if _SURROGATE_ESCAPE.search(decoded):
            return None
        header = json.loads(
            decoded, object_pairs_hook=_unique_keys, parse_int=_unsigned, parse_float=_refuse, parse_constant=_refuse
        )
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    if not isinstance(header, dict):
        return None
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        return None
    entries = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            return None
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _CODE_BITS or not isinstance(shape, list) or not isinstance(offsets, list):
            return None
        if len(offsets) != 2 or not all(type(x) is int and x < _U64 for x in shape + offsets):  # no bools
            return None
        entries[name] = (dtype, tuple(shape), (offsets[0], offsets[1]))
    return entries


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def _unsigned(digits: str) -> int:
    # The library reads shapes and offsets as unsigned integers; "-0" included, a minus sign is refused.
    if digits.startswith("-"):
        raise ValueError(digits)
    return int(digits)


def _refuse(text: str) -> Any:
    raise ValueError(text)  # a float, NaN or Infinity: no shape or offset is one


def _data_end(entries: list[tuple[str, tuple[int, ...], tuple[int, int]]]) -> int | None:
    """The end of the data the tensors cover, if their offsets tile it from 0 and match their sizes, else None.

    The library's own rule: sorted by offsets, each tensor starts where the previous one ended and spans
    exactly ``prod(shape) * bits / 8`` bytes, with no count overflowing 64 bits.
    """
    end = 0
    for dtype, shape, (start, stop) in sorted(entries, key=lambda e: e[2]):
        if start != end or stop < start:
            return None
        bits = math.prod(shape) * _CODE_BITS[dtype]
        if bits >= _U64 or math.prod(shape) >= _U64 or bits % 8 or stop - start != bits // 8:
            return None
        end = stop
    return end


def load_bin(ref: CheckpointRef) -> dict[str, Any]:
    """A legacy ``adapter_model.bin``'s state dict (memory-mapped, ``weights_only``), checked to map names to
    tensors. Unpickling needs torch, so torch is imported here, and only here, on the header side."""
    import torch

    path = ref.weights
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for a broken pickle/zip
        if "weights_only" in str(exc) or "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"{path}: the .bin at step {ref.step} holds Python objects besides tensors; nextrap loads "
                "pickles with weights_only=True and never runs their code: re-save it as safetensors with a "
                "tool you trust"
            ) from None
        raise CheckpointError(
            f"{path}: cannot load legacy .bin adapter at step {ref.step} ({type(exc).__name__}: "
            f"{_first_line(exc)})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: entry {bad[0]!r} at step {ref.step} is a {type(state[bad[0]]).__name__}, not a tensor; "
            "an adapter file maps names to tensors (nested dicts are not an adapter)"
        )
    return state


# ------------------------------------------------------------------------------------ the header


def read_header(ref: CheckpointRef) -> AdapterHeader:
    """Read ``ref``'s config and tensor header, group keys into LoRA modules and raw tensors, check them."""
    if ref.format == shard_format.FORMAT:
        check_weights_file(ref)
        shapes, dtypes = shard_format.read_shard_header(ref.shards, ref.step)
        config = parse_config(*shard_format.adapter_config_raw(ref.path, ref.step, shapes))
    else:
        config = read_config(ref.path)
        shapes, dtypes = tensor_header(ref)
    if not shapes:
        raise CheckpointError(
            f"{ref.weights}: holds no tensors at step {ref.step}: a ZeRO-3 placeholder or a failed save; "
            "gather the weights before saving"
        )
    unsupported = [k for k, d in dtypes.items() if d not in SUPPORTED_FLOAT_DTYPES]
    if unsupported:
        key = unsupported[0]
        if _is_low_precision_float(dtypes[key]):
            raise CheckpointError(
                f"{ref.weights}: tensor {key} at step {ref.step}: dtype {dtypes[key]} is not supported "
                f"(nextrap reads {', '.join(SUPPORTED_FLOAT_DTYPES)}); save the adapter in one of these"
            )
        raise CheckpointError(
            f"{ref.weights}: tensor {key} is {dtypes[key]} at step {ref.step}; LoRA "
            "weights are floating point (float32, float16, bfloat16, float64): is this file an adapter?"
        )
    empty = [k for k, s in shapes.items() if math.prod(s) == 0]
    if empty:
        raise CheckpointError(
            f"{ref.weights}: tensor {empty[0]} has shape {list(shapes[empty[0]])} at step {ref.step}: "
            "a DeepSpeed ZeRO-3 placeholder, not real weights; save with gathered 16-bit weights"
        )
    modules, raw, notes = _group_keys(ref, config, shapes, dtypes)
    if not modules:
        raise CheckpointError(
            f"{ref.weights}: no lora_A / lora_B pairs found at step {ref.step}; is this a LoRA adapter?"
        )
    unmatched = config.unmatched_patterns(list(modules))
    if unmatched:
        notes.append(f"rank_pattern/alpha_pattern keys that match no module (PEFT ignores them): {unmatched}")
    return AdapterHeader(ref=ref, config=config, modules=modules, raw=raw, notes=tuple(notes))


def _group_keys(
    ref: CheckpointRef,
    config: AdapterConfig,
    shapes: dict[str, tuple[int, ...]],
    dtypes: dict[str, str],
) -> tuple[dict[str, LoraModule], dict[str, RawTensor], list[str]]:
    pairs, kinds, raw, notes = _pair_factor_keys(ref, shapes, dtypes)
    modules: dict[str, LoraModule] = {}
    for prefix, parts in pairs.items():
        module = _lora_module(ref, config, prefix, parts, kinds[prefix], shapes, dtypes)
        modules[module.name] = module
    return dict(sorted(modules.items())), dict(sorted(raw.items())), notes


def _pair_factor_keys(
    ref: CheckpointRef, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str]
) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, RawTensor], list[str]]:
    """Sort a file's keys into LoRA factor pairs (``{prefix: {"A": key, "B": key}}``, with each prefix's
    kind) and the other tensors, which are carried through as they are."""
    pairs: dict[str, dict[str, str]] = {}
    kinds: dict[str, str] = {}
    raw: dict[str, RawTensor] = {}
    notes: list[str] = []
    for key in shapes:
        prefix, part, kind = split_lora_key(key)
        if prefix is None:
            raw[key] = RawTensor(key=key, shape=shapes[key], dtype=dtypes[key])
            continue
        if part in pairs.setdefault(prefix, {}):
            raise CheckpointError(
                f"{ref.weights}: two tensors for {prefix} {part} at step {ref.step} ({key})"
            )
        pairs[prefix][part] = key
        kinds[prefix] = kind
        if key.count(".") - prefix.count(".") > 2 and not notes:
            notes.append(f"keys carry the adapter name (e.g. {key}); they are written back as they are")
    return pairs, kinds, raw, notes


def _lora_module(
    ref: CheckpointRef,
    config: AdapterConfig,
    prefix: str,
    parts: dict[str, str],
    kind: str,
    shapes: dict[str, tuple[int, ...]],
    dtypes: dict[str, str],
) -> LoraModule:
    """The module of one factor pair, after checking that both factors are there, are 2-D, agree on the
    rank and that the rank is the one the config gives (else the scaling would be wrong)."""
    if set(parts) != {"A", "B"}:
        missing = "B" if "A" in parts else "A"
        raise CheckpointError(
            f"{ref.weights}: module {prefix} has no lora_{missing} "
            f"at step {ref.step}; the file is incomplete"
        )
    a_shape, b_shape = shapes[parts["A"]], shapes[parts["B"]]
    if len(a_shape) != 2 or len(b_shape) != 2:
        raise CheckpointError(
            f"{ref.weights}: module {prefix} has factors of shapes {list(a_shape)} and {list(b_shape)} at step "
            f"{ref.step}; only linear and embedding LoRA (2-D factors) are supported"
        )
    rank = a_shape[0]
    if b_shape[1] != rank:
        raise CheckpointError(
            f"{ref.weights}: module {prefix} has lora_A {list(a_shape)} and lora_B {list(b_shape)} at step "
            f"{ref.step}: their ranks differ"
        )
    name = module_name(prefix)
    expected = config.rank_for(name)
    if expected != rank:
        raise CheckpointError(
            f"{ref.weights}: module {name} has rank {rank} but {config.path.name} says r = {expected} at step "
            f"{ref.step}; fix r / rank_pattern so the scaling is right"
        )
    return LoraModule(
        name=name,
        a_key=parts["A"],
        b_key=parts["B"],
        out_features=b_shape[0],
        in_features=a_shape[1],
        rank=rank,
        scaling=config.scaling_for(name, rank),
        kind=kind,
        dtype=dtypes[parts["B"]],
    )
