"""The ``nextrap`` command: each subcommand parses options, calls one library function, prints a summary.

Errors on bad input print one line (``error: ...``) and exit with code 1 (2 for usage errors);
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from nextrap.cli import reference as reference_cli
from nextrap.cli.support import (
    GroupedCommand,
    error_line,
    handle_errors,
    option,
    options_from,
    raise_on_termination,
    stack,
    values_for,
)
from nextrap.errors import ConfigError
from nextrap.ops.options import ExtrapolateOptions
from nextrap.output.writers import OutputOptions
from nextrap.predictors.config import FitOptions, NExtConfig, RelexConfig
from nextrap.predictors.registry import METHODS
from nextrap.publish.options import HubOptions
from nextrap.util.threads import apply_threads, choose_threads
from nextrap.version import __version__

__all__ = ["error_line", "main"]

logger = logging.getLogger("nextrap")


class _Commands(click.Group):
    command_class = GroupedCommand

    """The command group: the reference trainer's commands are there only with its extra installed;
    asked for without it, they say how to install it instead of "No such command"."""

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in reference_cli.NAMES and not reference_cli.installed():
            return _needs_reference_extra(name)
        return command


def _needs_reference_extra(name: str) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, hidden=True)
    def needs_extra() -> None:
        click.echo(
            f"error: '{name}' is part of the bundled reference trainer, which is not installed; "
            "pip install 'nextrap[reference]'",
            err=True,
        )
        raise SystemExit(1)

    return needs_extra


@click.group(
    cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.version_option(__version__, prog_name="nextrap")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug messages).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no progress bars.")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Intra-op threads for torch [default: NEXTRAP_THREADS, else OMP_NUM_THREADS, else one per free core "
    "(cores minus the load average): torch's one per core collapses on a busy machine].",
)
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool, debug: bool, threads: int | None) -> None:
    """Extrapolate LoRA checkpoints of an RLVR run along their rank-1 trajectory (NExt).

    Typical use: `nextrap scan RUN_DIR`, then `nextrap extrapolate RUN_DIR -o OUT --coef 1 --coef 2`,
    then resume training with your own trainer from OUT/coef-2.0.
    """
    ctx.ensure_object(dict)
    ctx.obj.update(debug=debug, progress=not quiet and sys.stderr.isatty())
    raise_on_termination(ctx)  # SIGTERM/SIGHUP clean up like Ctrl-C
    if verbose < 2 and ctx.invoked_subcommand != "push":
        _quiet_transformers_progress()
    if verbose < 2:
        # deprecation chatter between peft and transformers versions says nothing to a user of this CLI
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)(\.|$)")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(transformers|peft)(\.|$)")
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("nextrap")
    root.handlers = [h for h in root.handlers if isinstance(h, logging.NullHandler)] + [handler]
    root.setLevel(level)
    try:
        choice = choose_threads(threads)
    except ConfigError as exc:  # a bad NEXTRAP_THREADS / OMP_NUM_THREADS is a usage error: one line, exit 2
        raise click.UsageError(str(exc)) from None
    apply_threads(choice)
    logger.info("%d intra-op thread(s) (%s)", choice.threads, choice.source)


def _quiet_transformers_progress() -> None:
    """transformers' own bars ("Writing model shards", "Loading weights") would cut through ours."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


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


_with_inputs = stack(_input_options)

_force_option = options_from(ExtrapolateOptions, only=["force"])

# --horizon and --device come from ExtrapolateOptions' fields, shared by every command that fits a predictor.
_plot_overwrite_option = option("--overwrite", is_flag=True, help="Replace existing plot files.", group="Output")

_with_fit_options = stack([options_from(FitOptions), options_from(ExtrapolateOptions, only=["horizon", "device"])])

_with_relex_options = options_from(RelexConfig)

_with_hub_options = options_from(HubOptions)


def _echo_push(result: Any) -> None:
    verb = "would upload" if result.dry_run else "uploaded"
    target = result.plan.repo_id + (f"@{result.plan.revision}" if result.plan.revision else "")
    click.echo(f"{verb} to {target}{' (private)' if result.plan.private else ''}:")
    for row in result.plan.describe():
        click.echo(f"  {row}")
    if result.commit_url:
        click.echo(f"commit: {result.commit_url}")


def _next_config(params: dict[str, Any]) -> NExtConfig:
    """NExt's settings from the fit options: the preset, with the options given on top."""
    return FitOptions(**values_for(FitOptions, params)).to_config()


def _given(ctx: click.Context, cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``cls`` whose options were given on the command line (not left at their default)."""
    from click.core import ParameterSource

    values = values_for(cls, params)
    dest = {f.name: f.metadata["cli"].get("dest", f.name) for f in dataclasses.fields(cls) if "cli" in f.metadata}
    return {k: v for k, v in values.items() if ctx.get_parameter_source(dest[k]) is not ParameterSource.DEFAULT}


def _rerun(ctx: click.Context, report: Path, params: dict[str, Any]) -> tuple[tuple, ExtrapolateOptions, OutputOptions]:
    """``--from-report``: the recorded job, with the options given on the command line on top."""
    from nextrap.ops.options import recorded_job

    job = recorded_job(report)
    given_inputs = params["run_dir"] is not None or params["checkpoints"]
    run = (
        (params["run_dir"], list(params["checkpoints"]) or None, list(params["steps"]) or None, params["adapter_name"])
        if given_inputs
        else (job.run, list(job.checkpoints) or None, list(job.steps) or None, job.adapter_name)
    )
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


@main.command()
@_with_inputs
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
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


@main.command()
@_with_inputs
@option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Output folder: the adapter (one --coef) or coef-<c>/ (step-<N>/ with --to-step) subfolders, plus nextrap.json.",
    group="Output",
)
@options_from(ExtrapolateOptions, only=["coefs", "to_steps", "method"])
@_with_fit_options
@_with_relex_options
@options_from(ExtrapolateOptions, only=["rank_policy"])
@options_from(OutputOptions)
@_force_option
@option("--json", "as_json", is_flag=True, help="Print the report (nextrap.json) instead of a summary.", group="Output")
@option(
    "--push-to-hub", "push_to_hub", default=None, metavar="REPO_ID", help="Then publish the result there.", group="Publishing"
)
@_with_hub_options
@option(
    "--from-report",
    type=click.Path(path_type=Path),
    default=None,
    help="Run the job recorded in this nextrap.json (or its folder) again: its inputs and every option, "
    "except --overwrite; options given here replace the recorded ones.",
    group="Input",
)
@click.pass_context
@handle_errors
def extrapolate(
    ctx: click.Context, output: Path, as_json: bool, push_to_hub: str | None, from_report: Path | None, **params: Any
) -> None:
    """Predict where the run goes next and write adapters to resume from."""
    from nextrap.ops.extrapolate import extrapolate as run_extrapolate

    hub = {f.name: params.pop(f.name) for f in dataclasses.fields(HubOptions)}
    if push_to_hub:
        from nextrap.publish.hub import check_online, check_repo_id, check_revision, resolve_token

        check_repo_id(push_to_hub)  # a bad id or branch, offline mode, no token: fail before the work, not after it
        check_revision(hub["revision"])
        check_online()
        hub["token"] = resolve_token(hub["token"])
    if from_report is not None:
        run, options, write = _rerun(ctx, from_report, params)
    else:
        run = (params["run_dir"], list(params["checkpoints"]) or None, list(params["steps"]) or None, params["adapter_name"])
        options = ExtrapolateOptions(
            **values_for(ExtrapolateOptions, params),
            predictor=_next_config(params),
            relex=RelexConfig(**values_for(RelexConfig, params)),
        )
        write = OutputOptions(**values_for(OutputOptions, params))
    result = run_extrapolate(
        run[0], output, options, write, checkpoints=run[1], steps=run[2], adapter_name=run[3],
        progress=ctx.obj["progress"],
    )
    pushed = None
    if push_to_hub:
        from nextrap.publish.hub import push

        pushed = push(
            result.output, push_to_hub, private=hub["private"], revision=hub["revision"], token=hub["token"],
            endpoint=hub["hub_endpoint"],
        )
    if as_json:
        click.echo(result.report_path.read_text().rstrip())
        return
    click.echo(_summary(result))
    if pushed is not None:
        _echo_push(pushed)


@main.command()
@_with_inputs
@click.option(
    "--holdout",
    type=click.IntRange(min=1),
    default=None,
    help="Checkpoints held out at the end [default: one horizon's worth, so the coefficient reaches 1].",
)
@click.option(
    "--observe-until",
    type=int,
    default=None,
    help="Fit on the checkpoints up to this step and score every later one, to the end of the run "
    "(RELEX's protocol) instead of --holdout.",
)
@click.option(
    "--method",
    "methods",
    multiple=True,
    type=click.Choice(METHODS),
    help="Methods to compare (repeatable) [default: all].",
)
@_with_fit_options
@_with_relex_options
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Write a PNG of the scores here.")
@_plot_overwrite_option
@_force_option
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
        predictor=_next_config(params),
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


@main.command()
@_with_inputs
@click.option(
    "--plot", type=click.Path(path_type=Path), default=None, help="Write PNG plots into this folder."
)
@options_from(ExtrapolateOptions, only=["device"])
@click.option("--json", "as_json", is_flag=True, help="Print per-kind medians as JSON.")
@_plot_overwrite_option
@_force_option
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


@main.command()
@click.argument("adapter_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Where the new adapter goes.")
@click.option("--rank", "keep_rank", type=int, default=1, show_default=True, help="Directions kept per module.")
@click.option("--rescale", is_flag=True, help="Rescale the kept part to the full update's Frobenius norm (AlphaRL).")
@click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists.")
@handle_errors
def truncate(adapter_dir: Path, output: Path, keep_rank: int, rescale: bool, overwrite: bool) -> None:
    """Keep only the top-k part of each LoRA update (AlphaRL's test); evaluate the result with your harness."""
    from nextrap.ops.truncate import truncate_adapter

    result = truncate_adapter(adapter_dir, output, keep_rank, rescale, overwrite)
    rep = result.report
    click.echo(
        f"kept the top {keep_rank} direction(s) of {len(rep['modules'])} LoRA modules"
        + (" rescaled to the full update's norm" if rescale else "")
        + f": median energy kept {rep['median_energy_kept']:.1%}; "
        + f"{len(rep['raw_tensors_copied'])} other tensors copied unchanged"
    )
    click.echo(f"adapter: {result.output}")


def _summary(result: Any) -> str:
    """What ``nextrap extrapolate`` prints: the run read, the fit, one row per output, the notes."""
    rep = result.report
    hz, steps = rep.horizon, rep.checkpoint_steps
    lines = [
        f"read {len(steps)} checkpoints (steps {steps[0]}..{rep.last_step}, layout {rep.inputs['layout']}); "
        f"horizon {hz['intervals']} intervals = {hz['steps']} steps, {hz['training_pairs']} training pairs; "
        f"device {rep.device}; method {rep.method}",
    ]
    for g in rep.predictor.get("groups", []):  # only the NExt predictor trains networks
        lines.append(
            f"  predictor d={g['dim']:<6} {g['vectors']:>5} vectors  {g['epochs_run']:>5} epochs  "
            f"{g.get('seconds', 0.0):>6.1f} s ({g.get('stop_reason', '?')})  "
            f"loss {g['relative_loss']:.3f} of predicting zeros"
            # A held-out stop ends on purpose short of fitting the training pairs; only an exhausted budget warns.
            + ("  (ran out of epochs)" if g.get("stop_reason") == "max_epochs" else "")
        )
    if "median_explained_variance" in rep.predictor:
        p = rep.predictor
        lines.append(
            f"  relex ({p['mode']}, rank {p['rank']}, line over {p['window_checkpoints']} checkpoints): the kept "
            f"temporal components explain {p['median_explained_variance']:.1%} of the updates (median over modules)"
        )
    lines.append(f"{'coef':>8}  {'virtual step':>12}  {'x span':>6}  {'max trunc. err':>14}  output")
    for out in rep.outputs:
        ratio = out.jump_over_observed_span
        lines.append(
            f"{out.coef:>8.4g}  {out.virtual_step:>12g}  {'' if ratio is None else f'{ratio:.2f}':>6}  "
            f"{out.max_relative_truncation_error:>14.2e}  {rep.path_of(out)}"
        )
    lines += [f"note: {n}" for n in rep.notes]
    lines.append(f"report: {result.report_path}")
    return "\n".join(lines)


@main.command()
@click.argument("adapter_dir", type=click.Path(path_type=Path))
@click.argument("repo_id")
@_with_hub_options
@click.option("--dry-run", is_flag=True, help="List what would be uploaded; contact nothing.")
@click.option(
    "--any-adapter",
    is_flag=True,
    help="Publish an adapter folder nextrap did not write (no nextrap.json), e.g. a raw checkpoint.",
)
@handle_errors
def push(
    adapter_dir: Path,
    repo_id: str,
    private: bool,
    revision: str | None,
    token: str | None,
    hub_endpoint: str | None,
    dry_run: bool,
    any_adapter: bool,
) -> None:
    """Publish an extrapolated adapter (and a model card) to the Hugging Face Hub in one commit."""
    from nextrap.publish.hub import push as push_adapter

    result = push_adapter(
        adapter_dir,
        repo_id,
        private=private,
        revision=revision,
        token=token,
        dry_run=dry_run,
        endpoint=hub_endpoint,
        any_adapter=any_adapter,
    )
    _echo_push(result)


@click.command()
@click.option(
    "-o",
    "--output",
    default="nextrap-demo",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder for the plain run (plain/), the arms (arms/) and demo.json; rerunning resumes it.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=16),
    default=400,
    show_default=True,
    help="Length L of the plain run; the jump arm observes 3/8 L, jumps, and trains L/4 more.",
)
@click.option("--save-steps", type=click.IntRange(min=1), default=10, show_default=True, help="Checkpoint interval.")
@click.option(
    "--coef", type=float, default=2.0, show_default=True, help="Extending coefficient of the jump [the benchmark's best]."
)
@click.option(
    "--method",
    type=click.Choice([*METHODS, "auto"]),
    default="linear",
    show_default=True,
    help="Method of the jump [the benchmark's best] (auto: backtest the observed checkpoints, take the winner).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the RL runs.")
@click.option(
    "--eval-size",
    type=click.IntRange(min=16, max=2048),
    default=512,
    show_default=True,
    help="Held-out problems scored at every checkpoint.",
)
@click.option(
    "--synthetic", is_flag=True, help="Instead: extrapolate a planted run and score it (seconds, no RL)."
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo with other settings.")
@click.pass_context
@handle_errors
def demo(
    ctx: click.Context,
    output: Path,
    steps: int,
    save_steps: int,
    coef: float,
    method: str,
    seed: int,
    eval_size: int,
    synthetic: bool,
    overwrite: bool,
) -> None:
    """Train the reference policy, jump with nextrap, resume, and compare with the plain run (one seed)."""
    if synthetic:
        _synthetic_demo(ctx, output, coef, overwrite)
        return
    from nextrap.reference.demo import demo_config, run_demo, tiny_demo_grpo

    config = demo_config(tiny_demo_grpo(seed, steps, save_steps, eval_size), method, coef)
    click.echo(
        f"tiny reference policy, lr {config.grpo.lr:g}: plain run of {config.length} steps, then the restart control "
        f"and a {method} jump from step {config.observe} (a few minutes on 2 cores; rerunning resumes)",
        err=True,
    )
    result = run_demo(output, config, seed=seed, overwrite=overwrite, progress=ctx.obj["progress"])
    click.echo("\n".join(result.lines()))
    click.echo(f"details: {output}/demo.json, {output}/arms/")


def _synthetic_demo(ctx: click.Context, output: Path, coef: float, overwrite: bool) -> None:
    from nextrap.testing.demo import run_demo

    result, rows = run_demo(output, coefs=(coef,), overwrite=overwrite, progress=ctx.obj["progress"])
    click.echo(_summary(result))
    click.echo("\nerror against the planted future (relative Frobenius, all modules):")
    click.echo(f"{'coef':>6}  {'virtual step':>12}  {'stay at last':>12}  {'NExt jump':>10}  {'ratio':>6}")
    for r in rows:
        click.echo(
            f"{r.coef:>6g}  {r.virtual_step:>12g}  {r.error_stay:>12.4f}  {r.error_jump:>10.4f}  "
            f"{r.error_jump / r.error_stay:>6.2f}"
        )


if reference_cli.installed():  # train-reference, evaluate-reference, fetch-policy, demo
    for _command in [*reference_cli.COMMANDS, demo]:
        main.add_command(_command)
