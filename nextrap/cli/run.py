"""Commands that read a run and report on it: ``scan``, ``inspect``, ``backtest``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from nextrap.cli.options import (
    force_option,
    next_config,
    plot_overwrite_option,
    with_fit_options,
    with_inputs,
    with_relex_options,
)
from nextrap.cli.support import GroupedCommand, handle_errors, option, options_from, values_for
from nextrap.ops.options import ExtrapolateOptions
from nextrap.predictors.config import RelexConfig
from nextrap.predictors.registry import METHODS

__all__ = ["backtest", "inspect", "scan"]


@click.command(cls=GroupedCommand)
@with_inputs
@option("--json", "as_json", is_flag=True, help="Print the summary as JSON.", group="Output")
@click.pass_context
@handle_errors
def scan(
    ctx: click.Context,
    run_dir: Path | None,
    checkpoints: tuple[Path, ...],
    steps: tuple[int, ...],
    adapter_name: str | None,
    as_json: bool,
) -> None:
    """Show what RUN_DIR holds: layout, steps, modules, rank, dtype."""
    from nextrap.run.scan import scan as scan_run  # headers only: no torch for a safetensors run

    summary = scan_run(run_dir, list(checkpoints) or None, list(steps) or None, adapter_name)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    steps_s = summary["steps"]
    shown = (
        ", ".join(map(str, steps_s))
        if len(steps_s) <= 12
        else (f"{', '.join(map(str, steps_s[:5]))}, ..., {', '.join(map(str, steps_s[-3:]))}")
    )
    spacing = summary["spacing"]
    lines = [
        f"run:          {summary['root'] or '(explicit checkpoints)'}",
        f"layout:       {summary['layout']}",
        f"checkpoints:  {summary['checkpoints']} (steps {shown})",
        f"spacing:      every {spacing['median']:g} steps"
        + (f" (uneven: {spacing['spread']:.0%})" if spacing["spread"] > 0.1 else ""),
        f"modules:      {summary['modules']} LoRA modules ({', '.join(summary['module_kinds'])}) in "
        f"{len(summary['shape_groups'])} shape groups",
        f"rank:         {summary['rank']}, scaling {', '.join(f'{s:g}' for s in summary['scalings'])}"
        + (" (rsLoRA)" if summary["use_rslora"] else "")
        + (" (DoRA)" if summary["use_dora"] else ""),
        f"dtype:        {summary['dtype']}",
        f"parameters:   {summary['lora_parameters']:,} LoRA + {len(summary['raw_tensors'])} other trainable tensors",
        f"base model:   {summary['base_model'] or 'unknown'}",
    ]
    lines += [f"note:         {n}" for n in summary["notes"]]
    click.echo("\n".join(lines))


@click.command(cls=GroupedCommand)
@with_inputs
@option(
    "--holdout",
    type=click.IntRange(min=1),
    default=None,
    help="Checkpoints held out at the end [default: one horizon's worth, so the coefficient reaches 1].",
    group="How far",
)
@option(
    "--observe-until",
    type=int,
    default=None,
    help="Fit on the checkpoints up to this step and score every later one, to the end of the run "
    "(RELEX's protocol) instead of --holdout.",
    group="How far",
)
@option(
    "--method",
    "methods",
    multiple=True,
    type=click.Choice(METHODS),
    help="Methods to compare (repeatable) [default: all].",
    group="What to compute",
)
@with_fit_options
@with_relex_options
@option("--json", "as_json", is_flag=True, help="Print the scores as JSON.", group="Output")
@option("--plot", type=click.Path(path_type=Path), default=None, help="Write a PNG of the scores here.", group="Output")
@plot_overwrite_option
@force_option
@click.pass_context
@handle_errors
def backtest(
    ctx: click.Context,
    run_dir: Path | None,
    checkpoints: tuple[Path, ...],
    steps: tuple[int, ...],
    adapter_name: str | None,
    holdout: int | None,
    observe_until: int | None,
    methods: tuple[str, ...],
    as_json: bool,
    plot: Path | None,
    overwrite: bool,
    **params: Any,
) -> None:
    """Hold out the last checkpoints, fit each method on the rest, score it, and recommend one."""
    from nextrap.ops.backtest import BacktestOptions
    from nextrap.ops.backtest import backtest as run_backtest
    from nextrap.run.open import open_run
    from nextrap.util.devices import resolve_device
    from nextrap.util.progress import progress_bar

    options = BacktestOptions(
        holdout=holdout,
        observe_until=observe_until,
        relex=RelexConfig(**values_for(RelexConfig, params)),
        methods=methods or METHODS,
        horizon=params["horizon"],
        predictor=next_config(params),
    )
    if plot is not None:
        from nextrap.ops.plots import check_plot_path

        check_plot_path(plot, overwrite=overwrite)
    traj = open_run(run_dir, list(checkpoints) or None, list(steps) or None, adapter_name, verify=False)
    if plot is not None:
        check_plot_path(plot, traj.discovery.input_paths, overwrite)
    device = resolve_device(params["device"])
    traj = open_run(traj, force=params["force"], progress=progress_bar(ctx.obj["progress"]), device=device)
    result = run_backtest(traj, options, device, progress_bar(ctx.obj["progress"]))
    if plot is not None:
        from nextrap.ops.plots import plot_backtest

        plot_backtest(result, plot, overwrite)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(result.table())
    if plot is not None:
        click.echo(f"plot: {plot}")


@click.command(cls=GroupedCommand)
@with_inputs
@option("--plot", type=click.Path(path_type=Path), default=None, help="Write PNG plots into this folder.", group="Output")
@options_from(ExtrapolateOptions, only=["device"])
@option("--json", "as_json", is_flag=True, help="Print per-kind medians as JSON.", group="Output")
@plot_overwrite_option
@force_option
@click.pass_context
@handle_errors
def inspect(
    ctx: click.Context,
    run_dir: Path | None,
    checkpoints: tuple[Path, ...],
    steps: tuple[int, ...],
    adapter_name: str | None,
    plot: Path | None,
    device: str,
    as_json: bool,
    overwrite: bool,
    force: bool,
) -> None:
    """How rank-1 the run's updates are, and how straight their rank-1 coefficient moves."""
    from nextrap.ops.diagnostics import diagnose
    from nextrap.run.open import open_run
    from nextrap.util.devices import resolve_device
    from nextrap.util.progress import progress_bar

    traj = open_run(run_dir, list(checkpoints) or None, list(steps) or None, adapter_name, verify=False)
    if plot is not None:
        from nextrap.ops.plots import check_plot_folder, require_matplotlib

        check_plot_folder(plot, traj.discovery.input_paths, overwrite)
        require_matplotlib()  # fail before the work when matplotlib is missing
    on = resolve_device(device)
    traj = open_run(traj, force=force, progress=progress_bar(ctx.obj["progress"]), device=on)
    diag = diagnose(traj, on, progress=progress_bar(ctx.obj["progress"]))
    paths = []
    if plot is not None:
        from nextrap.ops.plots import plot_diagnostics

        paths = plot_diagnostics(diag, plot, overwrite)
    if as_json:
        click.echo(json.dumps({"steps": list(diag.steps), "summary": diag.summary()}, indent=2))
        return
    click.echo(diag.table())
    for p in paths:
        click.echo(f"plot: {p}")
