"""How an extrapolated adapter goes to disk: one small interface, three writers, chosen once from the options.

* :class:`PeftWriter` (``format="peft"``): a PEFT adapter folder, loadable with
  ``PeftModel.from_pretrained``;
* :class:`TrlWriter` (``format="trl"``): a ``checkpoint-<virtual step>/`` folder with the adapter and the
  run's trainer state, which TRL / the HF Trainer resume from (:mod:`nextrap.output.trainer_checkpoint`);
* :class:`MergedWriter` (``merge=True``): the base model with the adapter merged in (:mod:`nextrap.output.merge`).

:class:`OutputOptions` says which, and how the output folder is treated; the pipeline in
:mod:`nextrap.ops.extrapolate` computes the tensors and hands each adapter to ``writer.write``. Writers
write into a folder that is still temporary: :mod:`nextrap.output.atomic` renames it into place at the end.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nextrap.errors import ConfigError
from nextrap.formats.peft import looks_like_hub_id
from nextrap.output.trainer_checkpoint import OPTIMIZER_POLICIES
from nextrap.util.cli_spec import cli
from nextrap.util.validate import check_types

if TYPE_CHECKING:
    import torch

    from nextrap.layouts import CheckpointRef
    from nextrap.run.headers import AdapterConfig
    from nextrap.run.scan import RunHeaders

__all__ = ["FORMATS", "NewAdapter", "OutputOptions", "OutputWriter", "writer_for"]

FORMATS = ("peft", "trl")


@dataclass(frozen=True)
class OutputOptions:
    """How the outputs are written (what they hold is :class:`~nextrap.ops.options.ExtrapolateOptions`).

    ``format``: ``peft`` adapters or ``trl`` checkpoint folders; ``optimizer`` (``keep``/``reset``, TRL
    only): whether the last checkpoint's optimizer and scheduler go along; ``merge`` with ``base_model``:
    merged full weights instead of adapters; ``overwrite``: replace an existing output (never an input);
    ``hash_inputs``: record the sha256 of every input file in the report.
    """

    format: str = field(
        default="peft",
        metadata=cli(
            "--format",
            "peft: adapter folders; trl: a checkpoint-<virtual step>/ folder TRL's resume_from_checkpoint accepts.",
            dest="out_format",
            choices=FORMATS,
            group="Output",
        ),
    )
    optimizer: str = field(
        default="reset",
        metadata=cli(
            "--optimizer",
            "With --format trl: copy the last checkpoint's optimizer.pt/scheduler.pt (keep) or not (reset).",
            choices=OPTIMIZER_POLICIES,
            group="Output",
        ),
    )
    merge: bool = field(
        default=False,
        metadata=cli(
            "--merge", "Write merged full weights (needs --base-model) instead of adapters.", is_flag=True, group="Output"
        ),
    )
    base_model: str | None = field(default=None, metadata=cli("--base-model", "Base model folder, for --merge.", group="Output"))
    overwrite: bool = field(
        default=False, metadata=cli("--overwrite", "Replace the output folder if it exists.", is_flag=True, group="Output")
    )
    hash_inputs: bool = field(
        default=True,
        metadata=cli(
            "--no-hash", "Skip the sha256 of the input files in nextrap.json.", dest="no_hash", is_flag=True, invert=True,
            group="Output",
        ),
    )

    def __post_init__(self) -> None:
        check_types(self)
        if self.format not in FORMATS:
            raise ConfigError(f"format {self.format!r}: expected one of {list(FORMATS)}")
        if self.merge and not self.base_model:
            raise ConfigError("merge needs base_model: pass --base-model PATH with --merge")
        if self.format == "trl" and self.merge:
            raise ConfigError(
                "--format trl resumes the run's own adapter: it cannot be combined with --merge "
                "(TRL reloads weights into the same rank and keys)"
            )
        if self.optimizer not in OPTIMIZER_POLICIES:
            raise ConfigError(f"optimizer {self.optimizer!r}: expected one of {list(OPTIMIZER_POLICIES)}")
        if self.optimizer == "keep" and self.format != "trl":
            raise ConfigError(
                "--optimizer keep copies the optimizer state into a TRL checkpoint: add --format trl, "
                "or drop --optimizer (a PEFT adapter folder holds no optimizer state)"
            )

    @property
    def kind(self) -> str:
        """What one output is: ``peft``, ``trl`` or ``merged`` (the report's ``format`` of each output)."""
        return "merged" if self.merge else self.format

    def input_paths(self) -> tuple[Path, ...]:
        """What the writer reads besides the run: the base model's folder with ``merge`` (a Hub id reads nothing here)."""
        if self.merge and self.base_model and Path(self.base_model).exists():
            return (Path(self.base_model),)
        return ()

    def check_base_model(self) -> None:
        """Fail before any work when ``base_model`` is neither a folder nor shaped like a Hub id."""
        path = self.base_model
        if self.merge and path and not Path(path).is_dir() and not looks_like_hub_id(path):
            raise ConfigError(
                f"base model {path}: no such folder; pass the folder (or hub id) of the model the adapters were "
                "trained on"
            )


@dataclass(frozen=True)
class NewAdapter:
    """One extrapolated adapter, ready to write: the run's keys and dtypes, its config, where it stands.

    ``tensors``: every key of the run's adapter files; ``overrides``: config fields that change (rank and
    alpha when the rank grows); ``virtual_step``: the training step the jump stands for; ``last``: the
    run's last checkpoint (a TRL checkpoint takes its trainer state from there).
    """

    tensors: dict[str, torch.Tensor]
    config: AdapterConfig
    overrides: dict[str, Any]
    virtual_step: float
    last: CheckpointRef


class OutputWriter(Protocol):
    kind: str

    def check(self, run: RunHeaders) -> None:
        """Fail before any work when ``run``'s adapters cannot be written this way (headers only)."""
        ...

    def write(self, folder: Path, adapter: NewAdapter) -> tuple[Path, list[str]]:
        """Write ``adapter`` into the existing, empty ``folder``; returns the adapter's folder and notes."""
        ...


class PeftWriter:
    kind = "peft"

    def check(self, run: RunHeaders) -> None:
        pass

    def write(self, folder: Path, adapter: NewAdapter) -> tuple[Path, list[str]]:
        from nextrap.run.adapters import write_adapter

        write_adapter(folder, adapter.tensors, adapter.config, adapter.overrides)
        return folder, []


@dataclass(frozen=True)
class TrlWriter:
    optimizer: str
    kind: str = "trl"

    def check(self, run: RunHeaders) -> None:
        pass

    def write(self, folder: Path, adapter: NewAdapter) -> tuple[Path, list[str]]:
        from nextrap.output.trainer_checkpoint import write_trainer_state
        from nextrap.run.adapters import write_adapter

        step = round(adapter.virtual_step)
        step_dir = folder / f"checkpoint-{step}"
        step_dir.mkdir()
        write_adapter(step_dir, adapter.tensors, adapter.config, adapter.overrides)
        return step_dir, write_trainer_state(step_dir, adapter.last, step, self.optimizer)


@dataclass(frozen=True)
class MergedWriter:
    base_model: str
    kind: str = "merged"

    def check(self, run: RunHeaders) -> None:
        from nextrap.output.merge import check_base_model_fits

        check_base_model_fits(self.base_model, run.modules.values(), str(run.refs[-1].path))

    def write(self, folder: Path, adapter: NewAdapter) -> tuple[Path, list[str]]:
        from nextrap.output.merge import write_merged
        from nextrap.run.adapters import write_adapter

        staging = folder / ".adapter"  # the adapter the merge reads; inside the temporary output, then gone
        staging.mkdir()
        write_adapter(staging, adapter.tensors, adapter.config, adapter.overrides)
        write_merged(staging, self.base_model, folder)
        shutil.rmtree(staging)
        return folder, []


def writer_for(options: OutputOptions) -> OutputWriter:
    """The one writer ``options`` ask for."""
    if options.merge:
        assert options.base_model is not None  # checked by OutputOptions
        return MergedWriter(options.base_model)
    if options.format == "trl":
        return TrlWriter(options.optimizer)
    return PeftWriter()
