"""Reading and writing PEFT LoRA adapters: the key, rank and scaling rules live here and nowhere else.

Reading is lazy: :class:`AdapterReader` opens ``adapter_model.safetensors`` and hands out one tensor
at a time (legacy ``adapter_model.bin`` files are memory-mapped with ``weights_only=True``). The
header (keys, shapes, dtypes) is checked before any data is read, so a ZeRO-3 placeholder or a
truncated file fails early with a message that says what it is.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nextrap.errors import CheckpointError, NonFiniteError
from nextrap.layouts import CheckpointRef
from nextrap.peft_format import (
    CONFIG_NAME,
    EMBEDDING_SUFFIXES,
    LINEAR_SUFFIXES,
    NAMED_ADAPTER,
    NAMED_EMBEDDING,
    PEFT_PREFIX,
    SAFETENSORS_NAME,
    alpha_for_scaling,
    pattern_key,
    pattern_matches,
    scaling,
)

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
    "write_adapter",
]

logger = logging.getLogger(__name__)

# Anything this small cannot hold a LoRA adapter (an 8-byte length, a JSON header, data): a truncated copy
# or a failed save. (DeepSpeed ZeRO-3's placeholders are bigger: tensors of shape [0], checked below.)
_PLACEHOLDER_BYTES = 128

_TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


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
        raw = json.loads(path.read_text())
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
    are the exact keys in the file (written back unchanged). ``kind`` is ``linear`` or ``embedding``.
    """

    name: str
    a_key: str
    b_key: str
    out_features: int
    in_features: int
    rank: int
    scaling: float
    kind: str
    dtype: torch.dtype

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.out_features, self.in_features, self.rank)


@dataclass(frozen=True)
class RawTensor:
    """A trainable tensor that is not a LoRA factor (DoRA magnitude, bias, ``modules_to_save``)."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype


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


class AdapterReader:
    """Lazy access to the tensors of one adapter file; use through :func:`open_adapter`."""

    def __init__(
        self,
        ref: CheckpointRef,
        handle: Any,
        shapes: dict[str, tuple[int, ...]],
        dtypes: dict[str, torch.dtype],
    ):
        self.ref = ref
        self._handle = handle
        self.shapes = shapes
        self.dtypes = dtypes

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
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                shapes, dtypes = {}, {}
                for key in handle.keys():
                    sl = handle.get_slice(key)
                    shapes[key] = tuple(sl.get_shape())
                    dtypes[key] = _TORCH_DTYPES.get(sl.get_dtype(), sl.get_dtype())
                yield AdapterReader(ref, handle, shapes, dtypes)
        except SafetensorError as exc:
            raise CheckpointError(
                f"{path}: corrupt safetensors file at step {ref.step} ({_first_line(exc)}); re-copy or re-save "
                "this checkpoint"
            ) from None
    else:
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
        yield AdapterReader(
            ref, state, {k: tuple(v.shape) for k, v in state.items()}, {k: v.dtype for k, v in state.items()}
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_header(ref: CheckpointRef) -> AdapterHeader:
    """Read ``ref``'s config and tensor header, group keys into LoRA modules and raw tensors, check them."""
    config = read_config(ref.path)
    with open_adapter(ref) as reader:
        shapes, dtypes = reader.shapes, reader.dtypes
    if not shapes:
        raise CheckpointError(
            f"{ref.weights}: holds no tensors at step {ref.step}: a ZeRO-3 placeholder or a failed save; "
            "gather the weights before saving"
        )
    not_float = [k for k, d in dtypes.items() if not (isinstance(d, torch.dtype) and d.is_floating_point)]
    if not_float:
        key = not_float[0]
        raise CheckpointError(
            f"{ref.weights}: tensor {key} is {str(dtypes[key]).replace('torch.', '')} at step {ref.step}; LoRA "
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


def _module_name(key_prefix: str) -> str:
    return key_prefix[len(PEFT_PREFIX) :] if key_prefix.startswith(PEFT_PREFIX) else key_prefix


def _group_keys(
    ref: CheckpointRef,
    config: AdapterConfig,
    shapes: dict[str, tuple[int, ...]],
    dtypes: dict[str, torch.dtype],
) -> tuple[dict[str, LoraModule], dict[str, RawTensor], list[str]]:
    pairs, kinds, raw, notes = _pair_factor_keys(ref, shapes, dtypes)
    modules: dict[str, LoraModule] = {}
    for prefix, parts in pairs.items():
        module = _lora_module(ref, config, prefix, parts, kinds[prefix], shapes, dtypes)
        modules[module.name] = module
    return dict(sorted(modules.items())), dict(sorted(raw.items())), notes


def _pair_factor_keys(
    ref: CheckpointRef, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, torch.dtype]
) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, RawTensor], list[str]]:
    """Sort a file's keys into LoRA factor pairs (``{prefix: {"A": key, "B": key}}``, with each prefix's
    kind) and the other tensors, which are carried through as they are."""
    pairs: dict[str, dict[str, str]] = {}
    kinds: dict[str, str] = {}
    raw: dict[str, RawTensor] = {}
    notes: list[str] = []
    for key in shapes:
        prefix, part, kind = _split_lora_key(key)
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
    dtypes: dict[str, torch.dtype],
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
    name = _module_name(prefix)
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


def _split_lora_key(key: str) -> tuple[str | None, str, str]:
    """``(module key prefix, "A"|"B", kind)`` for a LoRA factor key, ``(None, "", "")`` otherwise."""
    for suffix in LINEAR_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix[-8], "linear"
    for suffix in EMBEDDING_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix[-1], "embedding"
    m = NAMED_ADAPTER.match(key)
    if m:
        return m["module"], m["part"][-1], "linear"
    m = NAMED_EMBEDDING.match(key)
    if m:
        return m["module"], m["part"][-1], "embedding"
    return None, "", ""


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
    LoraConfig(**values).save_pretrained(str(folder))
