"""The options several commands share, built from the options dataclasses' metadata, and turning a
command's parameters back into those dataclasses (``--from-report`` included)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from nextrap.cli.support import option, options_from, stack, values_for
from nextrap.ops.options import ExtrapolateOptions
from nextrap.output.writers import OutputOptions
from nextrap.predictors.config import FitOptions, NExtConfig, RelexConfig
from nextrap.publish.options import HubOptions

__all__ = [
    "force_option",
    "next_config",
    "plot_overwrite_option",
    "rerun",
    "with_fit_options",
    "with_hub_options",
    "with_inputs",
    "with_relex_options",
]


_input_options = [
    click.argument("run_dir", required=False, type=click.Path(path_type=Path)),
    option(
        "--checkpoint",
        "checkpoints",
        multiple=True,
        type=click.Path(path_type=Path),
        help="An adapter folder; repeat for each checkpoint (instead of RUN_DIR).",
        group="Input",
    ),
    option(
        "--step",
        "steps",
        multiple=True,
        type=int,
        help="The step of each --checkpoint, in the same order (default: from the folder).",
        group="Input",
    ),
    option("--adapter-name", default=None, help="Adapters saved under a name sit in <ckpt>/<name>/.", group="Input"),
]


with_inputs = stack(_input_options)


force_option = options_from(ExtrapolateOptions, only=["force"])

# --horizon and --device come from ExtrapolateOptions' fields, shared by every command that fits a predictor.


plot_overwrite_option = option("--overwrite", is_flag=True, help="Replace existing plot files.", group="Output")


with_fit_options = stack([options_from(FitOptions), options_from(ExtrapolateOptions, only=["horizon", "device"])])


with_relex_options = options_from(RelexConfig)


with_hub_options = options_from(HubOptions)


def next_config(params: dict[str, Any]) -> NExtConfig:
    """NExt's settings from the fit options: the preset, with the options given on top."""
    return FitOptions(**values_for(FitOptions, params)).to_config()


def _given(ctx: click.Context, cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``cls`` whose options were given on the command line (not left at their default)."""
    from click.core import ParameterSource

    values = values_for(cls, params)
    dest = {f.name: f.metadata["cli"].get("dest", f.name) for f in dataclasses.fields(cls) if "cli" in f.metadata}
    return {k: v for k, v in values.items() if ctx.get_parameter_source(dest[k]) is not ParameterSource.DEFAULT}


def rerun(ctx: click.Context, report: Path, params: dict[str, Any]) -> tuple[tuple, ExtrapolateOptions, OutputOptions]:
    """``--from-report``: the recorded job, with the options given on the command line on top."""
    from nextrap.ops.options import recorded_job

    job = recorded_job(report)
    if params["run_dir"] is not None or params["checkpoints"]:  # new inputs: all of them from the command line
        run = (params["run_dir"], list(params["checkpoints"]) or None, list(params["steps"]) or None, params["adapter_name"])
    elif params["steps"]:
        raise click.UsageError("--step goes with --checkpoint; with --from-report alone the recorded steps are used")
    else:  # the recorded inputs; an --adapter-name given replaces the recorded one
        adapter = params["adapter_name"] if params["adapter_name"] is not None else job.adapter_name
        run = (job.run, list(job.checkpoints) or None, list(job.steps) or None, adapter)
    fit = _given(ctx, FitOptions, params)
    preset = fit.pop("preset", None)
    predictor = (
        NExtConfig.from_preset(preset, **fit) if preset else dataclasses.replace(job.options.predictor, **fit)
    )
    relex = dataclasses.replace(job.options.relex, **_given(ctx, RelexConfig, params))
    changes = _given(ctx, ExtrapolateOptions, params)
    if "coefs" in changes or "to_steps" in changes:  # one replaces the other
        changes = {"coefs": None, "to_steps": (), **changes}
    options = dataclasses.replace(job.options, predictor=predictor, relex=relex, **changes)
    write = dataclasses.replace(job.write, **_given(ctx, OutputOptions, params))
    return run, options, write
