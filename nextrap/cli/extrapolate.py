"""Commands that write adapters: ``extrapolate`` (and publish them with ``--push-to-hub``), ``truncate``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from nextrap.cli.options import (
    force_option,
    next_config,
    rerun,
    with_fit_options,
    with_hub_options,
    with_inputs,
    with_relex_options,
)
from nextrap.cli.publish import echo_push
from nextrap.cli.support import GroupedCommand, handle_errors, option, options_from, values_for
from nextrap.ops.options import ExtrapolateOptions
from nextrap.output.writers import OutputOptions
from nextrap.predictors.config import RelexConfig
from nextrap.publish.options import HubOptions

__all__ = ["extrapolate", "summary", "truncate"]


@click.command(cls=GroupedCommand)
@with_inputs
@option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Output folder: the adapter (one --coef) or coef-<c>/ (step-<N>/ with --to-step) subfolders, plus nextrap.json.",
    group="Output",
)
@options_from(ExtrapolateOptions, only=["coefs", "to_steps", "method"])
@with_fit_options
@with_relex_options
@options_from(ExtrapolateOptions, only=["rank_policy"])
@options_from(OutputOptions)
@force_option
@option("--json", "as_json", is_flag=True, help="Print the report (nextrap.json) instead of a summary.", group="Output")
@option(
    "--push-to-hub", "push_to_hub", default=None, metavar="REPO_ID", help="Then publish the result there.", group="Publishing"
)
@with_hub_options
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
        run, options, write = rerun(ctx, from_report, params)
    else:
        run = (params["run_dir"], list(params["checkpoints"]) or None, list(params["steps"]) or None, params["adapter_name"])
        options = ExtrapolateOptions(
            **values_for(ExtrapolateOptions, params),
            predictor=next_config(params),
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
    click.echo(summary(result))
    if pushed is not None:
        echo_push(pushed)


@click.command(cls=GroupedCommand)
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


def summary(result: Any) -> str:
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
