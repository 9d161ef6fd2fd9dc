"""The ``nextrap`` command: each subcommand parses options, calls one library function, prints a summary.

Errors on bad input print one line (``error: ...``) and exit with code 1 (2 for usage errors);
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import sys
import warnings

import click

from nextrap.cli import reference as reference_cli
from nextrap.cli.demo import demo
from nextrap.cli.extrapolate import extrapolate, truncate
from nextrap.cli.publish import push
from nextrap.cli.run import backtest, inspect, scan
from nextrap.cli.support import (
    GroupedCommand,
    error_line,
    raise_on_termination,
)
from nextrap.errors import ConfigError
from nextrap.util.allocator import keep_freed_memory
from nextrap.util.threads import apply_threads, choose_threads
from nextrap.version import __version__

__all__ = ["error_line", "main"]

logger = logging.getLogger("nextrap")


class _Commands(click.Group):
    """The command group: the reference trainer's commands are there only with its extra installed;
    asked for without it, they say how to install it instead of "No such command"."""

    command_class = GroupedCommand

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
    """Extrapolate LoRA checkpoints of an RLVR run: predict where the adapter is going and jump there.

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
    keep_freed_memory()  # a command's chunks reuse freed memory instead of page-faulting it in anew


def _quiet_transformers_progress() -> None:
    """transformers' own bars ("Writing model shards", "Loading weights") would cut through ours."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


for _command in (scan, inspect, backtest, extrapolate, truncate, push):
    main.add_command(_command)
if reference_cli.installed():  # train-reference, evaluate-reference, fetch-policy, demo
    for _command in [*reference_cli.COMMANDS, demo]:
        main.add_command(_command)
