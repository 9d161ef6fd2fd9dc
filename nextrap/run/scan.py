"""A run's headers, read without torch: which checkpoints to read, every checkpoint's header, checked to
describe one run, and the summary ``nextrap scan`` prints.

:class:`nextrap.run.trajectory.Trajectory` builds on :class:`RunHeaders` with the tensor side (torch), so a
run is found, checked and described by this code whichever command opens it.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from nextrap.errors import ConfigError, LayoutError, MismatchError
from nextrap.layouts import CheckpointRef, Discovery, discover, from_explicit
from nextrap.run.headers import AdapterConfig, AdapterHeader, LoraModule, RawTensor, read_header

__all__ = ["RunHeaders", "find_checkpoints", "read_run_headers", "scan"]

_Run = TypeVar("_Run", bound="RunHeaders")


@dataclass(frozen=True)
class RunHeaders:
    """Headers of one run's checkpoints (sorted by step) whose module sets, ranks, shapes and scalings agree."""

    discovery: Discovery
    headers: tuple[AdapterHeader, ...]
    notes: tuple[str, ...] = ()

    @property
    def refs(self) -> tuple[CheckpointRef, ...]:
        return tuple(h.ref for h in self.headers)

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(h.ref.step for h in self.headers)

    @property
    def last(self) -> AdapterHeader:
        return self.headers[-1]

    @property
    def modules(self) -> dict[str, LoraModule]:
        return self.last.modules

    @property
    def raw(self) -> dict[str, RawTensor]:
        return self.last.raw

    @property
    def config(self) -> AdapterConfig:
        return self.last.config

    def prefix(self: _Run, count: int) -> _Run:
        """The run's first ``count`` checkpoints (for fitting on a prefix and scoring on the rest), same type."""
        if not 1 <= count <= len(self.headers):
            raise ValueError(f"prefix of {count} checkpoints: the run has {len(self.headers)}")
        return replace(self, headers=self.headers[:count])

    def shape_groups(self) -> dict[tuple[int, int, int], list[str]]:
        """Module names grouped by ``(out, in, rank)``, the unit of batched math."""
        groups: dict[tuple[int, int, int], list[str]] = {}
        for m in self.modules.values():
            groups.setdefault(m.shape, []).append(m.name)
        return groups

    def spacing(self) -> dict[str, float]:
        """Intervals between checkpoints: median and relative spread (0 for even spacing)."""
        gaps = [b - a for a, b in zip(self.steps, self.steps[1:], strict=False)]
        if not gaps:
            return {"median": 0.0, "spread": 0.0}
        med = statistics.median(gaps)
        return {"median": float(med), "spread": float((max(gaps) - min(gaps)) / med) if med else 0.0}

    def summary(self) -> dict:
        """What ``nextrap scan`` prints: layout, steps, modules, ranks, dtypes, sizes."""
        mods = self.modules
        ranks = sorted({m.rank for m in mods.values()})
        dtypes = sorted({m.dtype for m in mods.values()})
        params = sum((m.out_features + m.in_features) * m.rank for m in mods.values())
        return {
            "root": str(self.discovery.root) if self.discovery.root else None,
            "layout": self.discovery.layout,
            "checkpoints": len(self.headers),
            "steps": list(self.steps),
            "spacing": self.spacing(),
            "modules": len(mods),
            "module_kinds": sorted({m.kind for m in mods.values()}),
            "shape_groups": {f"{o}x{i} r{r}": len(n) for (o, i, r), n in self.shape_groups().items()},
            "rank": ranks[0] if len(ranks) == 1 else ranks,
            "scalings": sorted({round(m.scaling, 6) for m in mods.values()}),
            "use_rslora": self.config.use_rslora,
            "use_dora": self.config.use_dora,
            "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
            "lora_parameters": params,
            "raw_tensors": {k: list(t.shape) for k, t in self.raw.items()},
            "base_model": self.config.base_model,
            "checkpoint_paths": [str(r.path) for r in self.refs],
            "notes": list(self.discovery.notes) + list(self.notes),
        }


def find_checkpoints(
    run: str | os.PathLike | Discovery | None = None,
    checkpoints: Sequence[str | os.PathLike] | None = None,
    steps: Sequence[int] | None = None,
    adapter_name: str | None = None,
) -> Discovery:
    """The checkpoints to read: a folder to search, or explicit ``checkpoints`` (+ ``steps``), not both."""
    if isinstance(run, Discovery):
        return run
    if checkpoints:
        if run is not None:
            raise ConfigError("give either a run folder or explicit checkpoints (--checkpoint), not both")
        return from_explicit(checkpoints, steps)
    if steps:
        raise ConfigError("steps (--step) need explicit checkpoints (--checkpoint PATH) to go with them")
    if run is None:
        raise ConfigError("no input: give a run folder or --checkpoint PATH --step N for each checkpoint")
    return discover(run, adapter_name=adapter_name)


def read_run_headers(discovery: Discovery) -> RunHeaders:
    """Read every checkpoint's header and check that they describe one run; no tensor data is read."""
    if len(discovery.checkpoints) < 2:
        where = discovery.root or "the given checkpoints"
        raise LayoutError(
            f"{where}: found {len(discovery.checkpoints)} checkpoint(s); extrapolation needs at least 2 "
            "(better 4 or more) saved along one run"
        )
    headers = tuple(read_header(ref) for ref in discovery.checkpoints)
    _check_consistent(headers)
    notes: list[str] = []
    for h in headers:
        notes.extend(n for n in h.notes if n not in notes)
    return RunHeaders(discovery=discovery, headers=headers, notes=tuple(notes))


def scan(
    run: str | os.PathLike | Discovery | None = None,
    checkpoints: Sequence[str | os.PathLike] | None = None,
    steps: Sequence[int] | None = None,
    adapter_name: str | None = None,
) -> dict[str, Any]:
    """What a run folder holds, read from headers only (no torch, unless the run's checkpoints are legacy
    ``.bin`` pickles).

    Args:
        run: a run folder (any trainer's layout) or a :class:`Discovery`; or None with ``checkpoints``.
        checkpoints: adapter folders named one by one; ``steps`` gives their steps.
        adapter_name: read adapters saved under this name (``<checkpoint>/<name>/``).

    Returns:
        A JSON-able dict: ``layout``, ``steps``, the checkpoint folders, the modules with their shapes,
        ranks, scalings and dtypes, and ``notes`` (folders passed over and why).

    Raises:
        InputNotFoundError, LayoutError, CheckpointError, MismatchError: one line naming the folder.
    """
    return read_run_headers(find_checkpoints(run, checkpoints, steps, adapter_name)).summary()


def _check_consistent(headers: Sequence[AdapterHeader]) -> None:
    first = headers[0]
    for h in headers[1:]:
        where = f"step {h.ref.step} ({h.ref.path}) vs step {first.ref.step}"
        missing = sorted(set(first.modules) - set(h.modules))
        extra = sorted(set(h.modules) - set(first.modules))
        if missing or extra:
            name = (missing or extra)[0]
            verb = "lacks" if missing else "adds"
            raise MismatchError(
                f"{where}: {verb} LoRA module {name}; all checkpoints must come from one run with the same target_modules"
            )
        for name, m in first.modules.items():
            o = h.modules[name]
            if o.shape != m.shape:
                raise MismatchError(
                    f"{where}: module {name} has (out, in, r) = {o.shape}, expected {m.shape}; checkpoints of different runs?"
                )
            if abs(o.scaling - m.scaling) > 1e-9 * max(1.0, abs(m.scaling)):
                raise MismatchError(
                    f"{where}: module {name} has scaling {o.scaling:g}, expected {m.scaling:g}; "
                    "lora_alpha / use_rslora / alpha_pattern differ between checkpoints"
                )
        raw_a, raw_b = first.raw, h.raw
        if set(raw_a) != set(raw_b):
            name = sorted(set(raw_a) ^ set(raw_b))[0]
            raise MismatchError(f"{where}: tensor {name} is present in one checkpoint only")
        for key, t in raw_a.items():
            if raw_b[key].shape != t.shape:
                raise MismatchError(
                    f"{where}: tensor {key} has shape {list(raw_b[key].shape)}, expected {list(t.shape)}"
                )

