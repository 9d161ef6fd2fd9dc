"""Write docs/cli.md, the command-line reference, from the click commands themselves.

    python docs/gen_cli.py            # regenerate docs/cli.md after changing a command or an option
    python docs/gen_cli.py --check    # exit 1 when docs/cli.md is not what the CLI says

Each command's page is click's own ``--help`` text at a fixed width of 100 columns, so the reference
says exactly what ``nextrap COMMAND --help`` prints. ``tests/test_docs.py`` fails when the committed file
differs from a fresh generation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

OUTPUT = Path(__file__).resolve().parent / "cli.md"
WIDTH = 100
HEADER = """# Command-line reference

Generated from the CLI by `python docs/gen_cli.py`; do not edit by hand. Each section is what
`nextrap COMMAND --help` prints. The [guide](guide.md) explains how the commands fit together.
"""


def _help(command: click.Command, name: str, parent: click.Context | None) -> tuple[str, click.Context]:
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    ctx = click.Context(command, info_name=name, parent=parent, **settings)
    return command.get_help(ctx), ctx


def render() -> str:
    """The whole reference, as markdown: the group's help, then every command's, in alphabetical order."""
    from nextrap.cli.main import main

    text, root = _help(main, "nextrap", None)
    sections = [HEADER, "## `nextrap`\n", f"```text\n{text}\n```\n"]
    for name in sorted(main.list_commands(root)):
        command = main.get_command(root, name)
        if command is None or command.hidden:
            continue
        text, _ = _help(command, name, root)
        sections += [f"## `nextrap {name}`\n", f"```text\n{text}\n```\n"]
    return "\n".join(sections)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python docs/gen_cli.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
