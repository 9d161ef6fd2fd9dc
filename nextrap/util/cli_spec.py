"""How an option dataclass declares its command-line options: field metadata, with no click import.

An options dataclass declares, per field, how it appears on the command line::

    method: str = field(default="linear", metadata=cli("--method", "How to predict.", choices=METHODS))

and :mod:`nextrap.cli.support` builds the click options from it. One source for the name, type, default
and help (mergekit's pattern for its merge options); the dataclasses stay importable without click.
"""

from __future__ import annotations

from typing import Any

__all__ = ["cli"]


def cli(flag: str, help: str, **click_kwargs: Any) -> dict[str, Any]:
    """Field metadata for one command-line option.

    ``flag``: ``--name`` (``-o/--output`` style pairs as ``"-o/--output"``); ``help``: its text;
    the rest goes to :func:`click.option` (``type`` as a Python type, ``multiple``, ``is_flag``,
    ``metavar``...), plus:

    * ``min`` / ``max`` (and ``min_open``): bounds, made into ``click.IntRange`` (``click.FloatRange``
      for ``type=float``);
    * ``group``: the ``--help`` section it is listed in (``nextrap.cli.support.GROUPS``);
    * ``flag="--x/--no-x"`` is an on/off switch (``default=None``: neither given);
    * ``choices``: a sequence, made into ``click.Choice``;
    * ``dest``: the parameter name when it differs from the field's;
    * ``invert``: a flag that sets the field to False (``--no-hash`` for ``hash_inputs``);
    * ``empty_is_none``: a repeatable option given no value means None (``--coef``).
    """
    return {"cli": {"flag": flag, "help": help, **click_kwargs}}
