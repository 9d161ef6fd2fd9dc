"""``push``: publish an adapter folder (and its model card) to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from nextrap.cli.options import with_hub_options
from nextrap.cli.support import GroupedCommand, handle_errors

__all__ = ["echo_push", "push"]


def echo_push(result: Any) -> None:
    verb = "would upload" if result.dry_run else "uploaded"
    target = result.plan.repo_id + (f"@{result.plan.revision}" if result.plan.revision else "")
    click.echo(f"{verb} to {target}{' (private)' if result.plan.private else ''}:")
    for row in result.plan.describe():
        click.echo(f"  {row}")
    if result.commit_url:
        click.echo(f"commit: {result.commit_url}")


@click.command(cls=GroupedCommand)
@click.argument("adapter_dir", type=click.Path(path_type=Path))
@click.argument("repo_id")
@with_hub_options
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
    echo_push(result)
