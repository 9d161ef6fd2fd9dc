"""Fuzzing the readers (hypothesis): whatever the bytes, a valid result or a NextrapError, never another
exception, and the inputs unchanged.

The default run keeps a few hundred examples in total (seconds); ``-m slow`` runs many more.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from nextrap.errors import NextrapError
from nextrap.layouts import CheckpointRef, discover
from nextrap.run.adapters import read_config, read_header
from nextrap.run.headers import SAFETENSORS_DTYPES, read_safetensors_header
from nextrap.run.open import open_run

FAST = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))

_KEY = "base_model.model.layers.0.q_proj"


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def _valid_adapter(folder: Path, rank: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {f"{_KEY}.lora_A.weight": torch.randn(rank, 8), f"{_KEY}.lora_B.weight": torch.randn(8, rank)},
        str(folder / "adapter_model.safetensors"),
    )
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 4, "peft_type": "LORA"}))


def _never_crashes(fn, folder: Path) -> None:
    """``fn()`` returns or raises a NextrapError; ``folder`` is byte-for-byte the same afterwards."""
    before = _fingerprint(folder)
    with contextlib.suppress(NextrapError):
        fn()
    assert _fingerprint(folder) == before


# ------------------------------------------------------------------------------ safetensors bytes

_dtypes = st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "XX", ""])
_shapes = st.lists(st.integers(min_value=-2, max_value=9), max_size=3)
_header_entry = st.fixed_dictionaries(
    {
        "dtype": _dtypes,
        "shape": _shapes,
        "data_offsets": st.lists(st.integers(-4, 600), min_size=0, max_size=3),
    }
)
_names = st.sampled_from(
    [f"{_KEY}.lora_A.weight", f"{_KEY}.lora_B.weight", "x", "", "base_model.model.m.lora_A.default.weight"]
)


@st.composite
def _safetensors_bytes(draw) -> bytes:
    header = draw(st.dictionaries(_names, _header_entry, max_size=3))
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2))
    text = json.dumps(header).encode()
    if draw(st.booleans()):
        text = draw(st.binary(max_size=40)) + text[: draw(st.integers(0, len(text)))]
    declared = draw(st.one_of(st.just(len(text)), st.integers(0, 2**64 - 1)))
    body = draw(st.binary(min_size=0, max_size=600))
    return struct.pack("<Q", declared) + text + body


def _check_bytes(data: bytes, mutate_valid: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "checkpoint-1"
        _valid_adapter(folder)
        weights = folder / "adapter_model.safetensors"
        if mutate_valid:  # flip bytes of a real file: headers that almost parse
            raw = bytearray(weights.read_bytes())
            for i, b in enumerate(data[:16]):
                raw[(i * 37 + b) % len(raw)] ^= b or 1
            weights.write_bytes(bytes(raw))
        else:
            weights.write_bytes(data)
        ref = CheckpointRef(1, folder, weights, "explicit", "given")

        _agrees_with_the_library(weights)

        def read_all() -> None:
            header = read_header(ref)
            from nextrap.run.adapters import open_adapter

            with open_adapter(ref) as reader:
                for key in header.keys:
                    reader.get(key)

        _never_crashes(read_all, folder)


@FAST
@given(_safetensors_bytes(), st.booleans())
def test_safetensors_bytes(data: bytes, mutate_valid: bool):
    _check_bytes(data, mutate_valid)


@pytest.mark.slow
@SLOW
@given(_safetensors_bytes(), st.booleans())
def test_safetensors_bytes_many(data: bytes, mutate_valid: bool):
    _check_bytes(data, mutate_valid)


# ------------------------------------------------------------------------------ the torch-free header parser


def _library_reading(path: Path):
    """Shapes and dtype names as the safetensors library reads the file, or None where it refuses it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            slices = {key: f.get_slice(key) for key in f.keys()}
            return (
                {key: tuple(sl.get_shape()) for key, sl in slices.items()},
                {key: SAFETENSORS_DTYPES.get(sl.get_dtype(), sl.get_dtype()) for key, sl in slices.items()},
            )
    except SafetensorError:
        return None


def _agrees_with_the_library(path: Path) -> bool:
    """What the torch-free parser accepts, the library reads the same way (names in the same order, shapes,
    dtypes); a file the parser does not accept goes to the library anyway. Returns whether it accepted."""
    parsed = read_safetensors_header(path)
    if parsed is not None:
        library = _library_reading(path)
        assert library is not None, f"parsed a header the library refuses: {path.read_bytes()[:300]!r}"
        assert parsed == library and list(parsed[0]) == list(library[0])
    return parsed is not None


_TORCH_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
                 torch.int16, torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2]  # fmt: skip
_tensors = st.dictionaries(
    st.sampled_from(["a", "b.lora_A.weight", "\u00e9t\u00e9", "", "__meta__", "z" * 40]),
    st.tuples(st.sampled_from(_TORCH_DTYPES), st.lists(st.integers(0, 5), max_size=3)),
    max_size=4,
)
# Edits of a valid header: None keeps it; each other one is something a writer or a broken copy could do.
_edits = st.sampled_from(
    [None, "pad", "offset+1", "offset-1", "shape-1", "shape-float", "shape-bool", "shape-huge", "offset--0",
     "dtype-I32", "dtype-XX", "extra-field", "metadata-int", "metadata-null", "duplicate", "data+1",
     "data-1", "surrogate", "not-object", "three-offsets"]
)  # fmt: skip


def _edit_fields(header: dict, edit: str) -> None:
    """JSON-level edits of the first tensor's entry, or of the metadata."""
    names = [k for k in header if k != "__metadata__"]
    first = header[names[0]] if names else {"shape": [], "data_offsets": [0, 0]}
    if edit in ("offset+1", "offset-1"):
        first["data_offsets"][1] += 1 if edit == "offset+1" else -1
    elif edit.startswith("shape-") and first["shape"]:
        first["shape"][0] = {"shape-1": -1, "shape-float": 2.0, "shape-bool": True, "shape-huge": 2**64}[edit]
    elif edit.startswith("dtype-"):
        first["dtype"] = edit[len("dtype-") :]
    elif edit == "extra-field":
        first["align"] = 8
    elif edit == "three-offsets":
        first["data_offsets"].append(0)
    elif edit.startswith("metadata-"):
        header["__metadata__"] = {"format": 1} if edit == "metadata-int" else None


def _edit_header(header: dict, edit: str | None) -> str:
    """The header text after ``edit``: JSON-level edits on the dict, then text-level ones on the string."""
    if edit is not None:
        _edit_fields(header, edit)
    text = json.dumps(header)
    names = [k for k in header if k != "__metadata__"]
    if edit == "pad":  # the library pads its own headers with spaces to 8 bytes
        text += " " * 7
    elif edit == "offset--0":
        text = text.replace('"data_offsets": [0,', '"data_offsets": [-0,', 1)
    elif edit == "duplicate" and names:
        text = text[:-1] + ", " + json.dumps(names[0]) + ": " + json.dumps(header[names[0]]) + "}"
    elif edit == "surrogate":
        entry = '"\\ud800": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}'
        text = "{" + entry + (", " + text[1:] if len(text) > 2 else "}")
    elif edit == "not-object":
        text = "[" + text + "]"
    return text


def _write_edited(path: Path, tensors: dict, edit: str | None) -> None:
    save_file({k: torch.zeros(shape).to(dtype) for k, (dtype, shape) in tensors.items()}, str(path))
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    data = raw[8 + n :]
    text = _edit_header(json.loads(raw[8 : 8 + n]), edit).encode()
    if edit == "data+1":
        data += b"\0"
    elif edit == "data-1" and data:
        data = data[:-1]
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def _check_parser(tensors: dict, edit: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "adapter_model.safetensors"
        _write_edited(path, tensors, edit)
        accepted = _agrees_with_the_library(path)
        # A valid file takes the fast path, unless it holds float8 tensors: their codes are newer than
        # safetensors 0.4, so the parser leaves them to the installed library.
        float8 = any(dtype.itemsize == 1 and dtype.is_floating_point for dtype, _ in tensors.values())
        if edit in (None, "pad") and not float8:
            assert accepted


@FAST
@given(_tensors, _edits)
def test_header_parser_agrees_with_the_safetensors_library(tensors, edit):
    _check_parser(tensors, edit)


@pytest.mark.slow
@SLOW
@given(_tensors, _edits)
def test_header_parser_agrees_with_the_safetensors_library_many(tensors, edit):
    _check_parser(tensors, edit)


# ------------------------------------------------------------------------------ adapter_config.json values

_HOSTILE = [1e999, -1e999, float("nan"), 1e-300, 1e308, 2**64, -3, 0, 0.5, 16, 4, "16", "x", "(", True, None]
_json_scalars = st.one_of(
    st.sampled_from(_HOSTILE),  # half of the draws: values known to break naive readers
    st.one_of(
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=4),
    ),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=3,
)
_pattern_dicts = st.dictionaries(
    st.sampled_from(["q_proj", "(", "[a-", "layers\\.0\\..*", "*", "q_proj|k_proj", "(?P<x>", ""]),
    _json_values,
    max_size=2,
)


@st.composite
def _configs(draw) -> str:
    cfg = {"peft_type": draw(st.sampled_from(["LORA", "LORA", "lora", "IA3", 3]))}
    number = st.one_of(st.sampled_from(_HOSTILE), _json_values)
    for key, values in (
        ("r", number),
        ("lora_alpha", number),
        ("use_rslora", _json_values),
        ("use_dora", _json_values),
        ("rank_pattern", st.one_of(_pattern_dicts, _json_values)),
        ("alpha_pattern", st.one_of(_pattern_dicts, _json_values)),
    ):
        if key == "r" or draw(st.integers(0, 3)) > 0:
            cfg[key] = draw(values)
    text = json.dumps(cfg, allow_nan=True)
    if draw(st.integers(0, 9)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


def _check_config(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "checkpoint-1"
        _valid_adapter(folder)
        (folder / "adapter_config.json").write_text(text)
        ref = CheckpointRef(1, folder, folder / "adapter_model.safetensors", "explicit", "given")

        def read() -> None:
            config = read_config(folder)
            header = read_header(ref)
            for module in header.modules.values():
                assert math.isfinite(module.scaling) and module.scaling != 0  # a valid result is usable
            assert config.r >= 1

        _never_crashes(read, folder)


@FAST
@given(_configs())
def test_adapter_config_values(text: str):
    _check_config(text)


@pytest.mark.slow
@SLOW
@given(_configs())
def test_adapter_config_values_many(text: str):
    _check_config(text)


# ------------------------------------------------------------------------------ trainer_state.json values


def _check_state(value, raw_text: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        for step in (1, 2):
            _valid_adapter(run / f"checkpoint-{step}")
        state = run / "checkpoint-2" / "trainer_state.json"
        state.write_text(
            raw_text if raw_text is not None else json.dumps({"global_step": value}, allow_nan=True)
        )

        def find() -> None:
            d = discover(run)
            assert all(isinstance(s, int) and s >= 0 for s in d.steps)

        _never_crashes(find, run)


@FAST
@given(_json_values, st.one_of(st.none(), st.text(max_size=30), st.just('{"global_step": 1e999}')))
def test_trainer_state_values(value, raw_text):
    _check_state(value, raw_text)


@pytest.mark.slow
@SLOW
@given(_json_values, st.one_of(st.none(), st.text(max_size=30)))
def test_trainer_state_values_many(value, raw_text):
    _check_state(value, raw_text)


# ------------------------------------------------------------------------------ folder layouts

_folder_names = st.sampled_from(
    [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-3",
        "checkpoint-final",
        "global_step_2",
        "actor",
        "lora_adapter",
        "global_step3_hf",
        "step_4",
        "policy",
        "weights",
        "v1-2024",
        "default",
        ".hidden",
        "run-5",
        "x",
    ]
)
_entries = st.lists(
    st.tuples(
        st.lists(_folder_names, min_size=1, max_size=4),
        st.sampled_from(
            ["adapter", "config-only", "weights-only", "empty", "file", "link-up", "link-sibling"]
        ),
    ),
    min_size=1,
    max_size=6,
)


def _build_layout(root: Path, entries) -> None:
    root.mkdir()
    for parts, kind in entries:
        folder = root.joinpath(*parts)
        if any(p.is_file() or p.is_symlink() for p in [folder, *folder.parents] if root in p.parents):
            continue
        if kind == "file":
            if not folder.exists():
                folder.parent.mkdir(parents=True, exist_ok=True)
                folder.write_text("not a folder")
            continue
        if kind in ("link-up", "link-sibling"):
            if not folder.exists():
                folder.parent.mkdir(parents=True, exist_ok=True)
                folder.symlink_to(root if kind == "link-up" else folder.parent)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        if kind in ("adapter", "config-only"):
            (folder / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
        if kind in ("adapter", "weights-only"):
            _valid_adapter(folder) if kind == "adapter" else save_file(
                {"x": torch.zeros(2)}, str(folder / "adapter_model.safetensors")
            )


def _check_layout(entries) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "run"
        _build_layout(root, entries)

        def open_it() -> None:
            traj = open_run(root)
            assert len(traj.steps) >= 2 and list(traj.steps) == sorted(set(traj.steps))

        _never_crashes(open_it, root)


@FAST
@given(_entries)
def test_folder_layouts(entries):
    _check_layout(entries)


@pytest.mark.slow
@SLOW
@given(_entries)
def test_folder_layouts_many(entries):
    _check_layout(entries)


def test_fuzz_helpers_see_a_change(tmp_path: Path):
    """The unchanged-inputs property can fail: a write inside the folder changes its fingerprint."""
    _valid_adapter(tmp_path / "a")
    with pytest.raises(AssertionError):
        _never_crashes(lambda: (tmp_path / "a" / "new").write_text("x"), tmp_path / "a")
    shutil.rmtree(tmp_path / "a")
    assert not os.path.exists(tmp_path / "a")
