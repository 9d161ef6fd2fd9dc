"""``nextrap.json``: the typed report of one extrapolation, and the one place that knows its file and schema.

:class:`Report` is what :func:`nextrap.ops.extrapolate` returns and writes, and what every consumer (the
CLI's summary, the Hub card, the callbacks, the reference trainer) reads back with :meth:`Report.load`
or :meth:`Report.for_adapter`. One :class:`OutputEntry` per written adapter. The schema is versioned:
``schema_version`` 1 is the first typed one; reports written before it (no ``schema_version``) are read
as version 0, whose fields are the same. ``docs/report.md`` describes every field.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from nextrap.errors import CheckpointError
from nextrap.util.files import read_regular, write_new

__all__ = ["REPORT_NAME", "SCHEMA_VERSION", "OutputEntry", "Report"]

REPORT_NAME = "nextrap.json"
SCHEMA_VERSION = 1
OUTPUT_FORMATS = ("peft", "trl", "merged")


@dataclass
class OutputEntry:
    """One written output: the adapter (or TRL checkpoint, or merged model) for one coefficient.

    ``path`` is relative to the report's folder (``"."`` when the adapter is that folder);
    ``virtual_step`` is the training step the jump stands for (``last_step + coef * horizon steps``);
    ``modules`` holds per-module figures (update norm, truncation error of the rank-r refactoring).
    """

    coef: float
    path: str
    virtual_step: float
    format: str = "peft"
    requested_step: int | None = None
    jump_over_observed_span: float | None = None
    rank: int | list[int] = 0
    max_relative_truncation_error: float = 0.0
    modules: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def step(self) -> int:
        """The virtual step rounded to the step counter a trainer resumes with."""
        return round(self.virtual_step)


@dataclass
class Report:
    """What one extrapolation read, how it predicted, and what it wrote (``nextrap.json``)."""

    nextrap_version: str
    created: str
    inputs: dict[str, Any]  # root, layout, checkpoints: [{step, path, weights, step_source, sha256?}]
    options: dict[str, Any]  # ExtrapolateOptions as a dict
    device: str
    method: str  # the method that made the outputs (``auto`` resolved)
    horizon: dict[str, Any]  # intervals, steps, requested, training_pairs
    last_step: int
    spacing: dict[str, Any]
    predictor: dict[str, Any]  # the predictor's diagnostics (fit report, shares)
    outputs: list[OutputEntry]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    backtest: dict[str, Any] | None = None  # the evidence behind ``--method auto``
    schema_version: int = SCHEMA_VERSION
    folder: Path | None = field(default=None, compare=False)  # where it was saved or loaded from

    # -- files --------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form written as ``nextrap.json`` (with the schema version)."""
        d = asdict(self)
        d.pop("folder")
        if d["backtest"] is None:
            d.pop("backtest")
        return d

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/nextrap.json`` (the caller makes it atomic); returns its path."""
        path = Path(folder) / REPORT_NAME
        text = json.dumps(_strict(self.to_dict()), indent=2, default=_json_default, allow_nan=False)
        return write_new(path, text + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any], folder: Path | None = None) -> Report:
        """A report from its JSON (``folder``: where it was read, for messages); refuses a newer schema."""
        version = int(data.get("schema_version", 0))
        if version > SCHEMA_VERSION:
            raise CheckpointError(
                f"{folder or 'report'}: {REPORT_NAME} has schema version {version}, newer than this nextrap "
                f"reads ({SCHEMA_VERSION}); upgrade nextrap"
            )
        known = {f.name for f in fields(cls)} - {"folder", "outputs"}
        entry_fields = {f.name for f in fields(OutputEntry)}
        outputs = [OutputEntry(**{k: v for k, v in o.items() if k in entry_fields}) for o in data["outputs"]]
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["schema_version"] = SCHEMA_VERSION  # read into the current shape (version 0 has the same fields)
        return cls(**kwargs, outputs=outputs, folder=folder)

    @classmethod
    def load(cls, folder: str | Path) -> Report:
        """The report in ``folder``; :class:`CheckpointError` (one line) when it is missing or not ours."""
        folder = Path(folder)
        path = folder / REPORT_NAME
        try:
            data = json.loads(read_regular(path))
        except FileNotFoundError:
            raise CheckpointError(f"{folder}: no {REPORT_NAME}; give a folder nextrap extrapolate wrote") from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable ({exc}); re-run nextrap extrapolate") from None
        if not _looks_like_report(data):
            raise CheckpointError(f"{path}: not a nextrap report (no nextrap_version or outputs)")
        try:
            return cls.from_dict(data, folder)
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: malformed report ({exc}); re-run nextrap extrapolate") from None

    @classmethod
    def find(cls, adapter: str | Path) -> Report | None:
        """The report of an adapter folder nextrap wrote: in the folder itself or its parent, else None."""
        adapter = Path(adapter)
        for folder in (adapter, adapter.parent):
            if (folder / REPORT_NAME).is_file():
                try:
                    return cls.load(folder)
                except CheckpointError:
                    return None
        return None

    # -- lookups ------------------------------------------------------------------------------------

    def path_of(self, entry: OutputEntry) -> Path:
        """Where ``entry``'s adapter lies (needs :attr:`folder`, set by save and load)."""
        if self.folder is None:
            raise ValueError("the report has no folder yet: save or load it first")
        return self.folder if entry.path == "." else self.folder / entry.path

    def entry_for(self, adapter: str | Path) -> OutputEntry | None:
        """The entry whose adapter is ``adapter`` (a path to it), or None."""
        target = Path(adapter).resolve()
        for entry in self.outputs:
            if self.path_of(entry).resolve() == target:
                return entry
        return None

    @property
    def checkpoint_steps(self) -> list[int]:
        """The steps of the checkpoints the extrapolation read, in order."""
        return [c["step"] for c in self.inputs.get("checkpoints", [])]


def _looks_like_report(data: Any) -> bool:
    return isinstance(data, dict) and "nextrap_version" in data and isinstance(data.get("outputs"), list)


def _strict(value: Any) -> Any:
    """``value`` with every non-finite float as None: NaN and Infinity are not JSON, and strict parsers
    (JavaScript's, Python's with ``parse_constant``) refuse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def _json_default(obj: Any) -> Any:
    """Paths, torch dtypes and devices as strings."""
    if isinstance(obj, Path):
        return str(obj)
    name = type(obj).__name__
    if name in ("dtype", "device"):  # torch.dtype / torch.device, without importing torch here
        return str(obj).replace("torch.", "")
    raise TypeError(f"not JSON-serializable: {name}")
