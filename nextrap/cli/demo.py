"""``demo``: the reference RL loop, one seed (or ``--synthetic``: a planted run, seconds)."""

from __future__ import annotations

from pathlib import Path

import click

from nextrap.cli.extrapolate import summary
from nextrap.cli.support import GroupedCommand, handle_errors
from nextrap.predictors.registry import METHODS

__all__ = ["demo"]


@click.command(cls=GroupedCommand)
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
    click.echo(summary(result))
    click.echo("\nerror against the planted future (relative Frobenius, all modules):")
    click.echo(f"{'coef':>6}  {'virtual step':>12}  {'stay at last':>12}  {'NExt jump':>10}  {'ratio':>6}")
    for r in rows:
        click.echo(
            f"{r.coef:>6g}  {r.virtual_step:>12g}  {r.error_stay:>12.4f}  {r.error_jump:>10.4f}  "
            f"{r.error_jump / r.error_stay:>6.2f}"
        )
