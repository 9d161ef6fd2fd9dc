"""``python -m nextrap``: the same command line as the ``nextrap`` script."""

from nextrap.cli.main import main

main()
