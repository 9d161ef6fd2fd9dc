"""Command-line options from the option dataclasses' field metadata, and the CLI's one-line error handling.

An options dataclass declares, per field, how it appears on the command line, with
:func:`nextrap.util.cli_spec.cli` (which imports no click)::

    method: str = field(default="linear", metadata=cli("--method", "How to predict.", choices=METHODS))

and a command takes them all with ``@options_from(ExtrapolateOptions)`` and builds the dataclass back
with ``ExtrapolateOptions(**values_for(ExtrapolateOptions, params))``. One source for the name, type,
default and help (the pattern mergekit uses for its merge options). This module imports no torch and the
option dataclasses neither torch nor click, so ``nextrap --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
from collections.abc import Callable, Sequence
from typing import Any

import click

from nextrap.errors import NextrapError

__all__ = [
    "GROUPS",
    "GroupedCommand",
    "GroupedOption",
    "Terminated",
    "error_line",
    "handle_errors",
    "option",
    "options_from",
    "raise_on_termination",
    "stack",
    "values_for",
]

_Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _spec(f: dataclasses.Field) -> dict[str, Any] | None:
    spec = f.metadata.get("cli")
    return dict(spec) if spec is not None else None


# The sections of a command's --help, in the order they are shown; an option names its own (``group=``).
GROUPS = ("Input", "What to compute", "How far", "NExt fit", "Output", "Publishing", "Options")


class GroupedOption(click.Option):
    """A click option that knows its ``--help`` section (``group``, one of :data:`GROUPS`)."""

    def __init__(self, *args: Any, group: str = "Options", **kwargs: Any) -> None:
        if group not in GROUPS:
            raise ValueError(f"option group {group!r}: expected one of {GROUPS}")
        super().__init__(*args, **kwargs)
        self.group = group


class GroupedCommand(click.Command):
    """A command whose ``--help`` lists its options by section (what to compute, how far, output...),
    as mergekit groups its merge options, instead of one list of thirty."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            if not isinstance(param, click.Option):  # arguments are in the usage line
                continue
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "group", "Options"), []).append(record)
        for name in sorted(sections, key=GROUPS.index):
            with formatter.section(name):
                formatter.write_dl(sections[name])


def option(*decls: str, group: str = "Options", **kwargs: Any) -> _Decorator:
    """``click.option`` in a ``--help`` section (for the few options no dataclass field declares)."""
    return click.option(*decls, cls=GroupedOption, group=group, **kwargs)


def _option(f: dataclasses.Field, spec: dict[str, Any]) -> _Decorator:
    parts = spec.pop("flag").split("/")
    # "--x/--no-x" is one on/off switch; "-o/--output" two names of one option
    flags = ["/".join(parts)] if len(parts) == 2 and all(p.startswith("--") for p in parts) else parts
    dest = spec.pop("dest", f.name)
    spec.pop("invert", None)
    spec.pop("empty_is_none", None)
    choices = spec.pop("choices", None)
    if choices is not None:
        spec["type"] = click.Choice(list(choices))
    low, high = spec.pop("min", None), spec.pop("max", None)
    if low is not None or high is not None:
        kind = click.FloatRange if spec.get("type") is float else click.IntRange
        spec["type"] = kind(min=low, max=high, min_open=spec.pop("min_open", False))
    if not spec.get("is_flag") and not spec.get("multiple") and "default" not in spec:
        default = f.default if f.default is not dataclasses.MISSING else None
        spec["default"] = default
        spec.setdefault("show_default", default is not None)
    return option(*flags, dest, **spec)


def stack(decorators: Sequence[_Decorator]) -> _Decorator:
    """One decorator applying ``decorators`` in the order listed (the first is the first in ``--help``)."""

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for deco in reversed(decorators):
            fn = deco(fn)
        return fn

    return apply


def options_from(cls: type, only: Sequence[str] | None = None, skip: Sequence[str] = ()) -> _Decorator:
    """Click options for the fields of dataclass ``cls`` that carry :func:`cli` metadata (``only`` those)."""
    chosen = []
    for f in dataclasses.fields(cls):
        spec = _spec(f)
        if spec is None or f.name in skip or (only is not None and f.name not in only):
            continue
        chosen.append(_option(f, spec))
    return stack(chosen)


def values_for(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``cls`` that the command's ``params`` hold (fields with :func:`cli` metadata)."""
    values = {}
    for f in dataclasses.fields(cls):
        spec = _spec(f)
        if spec is None or spec.get("dest", f.name) not in params:
            continue
        value = params[spec.get("dest", f.name)]
        if spec.get("invert"):
            value = not value
        if spec.get("multiple"):
            value = tuple(value) if value or not spec.get("empty_is_none") else None
        values[f.name] = value
    return values


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
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
        except KeyboardInterrupt as exc:
            click.echo(f"{'terminated' if isinstance(exc, Terminated) else 'interrupted'}: nothing was written", err=True)
            ctx.exit(128 + exc.signum if isinstance(exc, Terminated) else 130)

    return wrapper


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so that it unwinds as on Ctrl-C: every ``finally`` and
    ``except BaseException`` runs, and temporary folders and locks are removed."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def raise_on_termination(ctx: click.Context) -> None:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` while the command runs (restored when it ends).

    Their default action kills the process where it stands, leaving ``.NAME.tmp-*`` folders and the lock
    behind; a ``KeyboardInterrupt`` unwinds instead. Only the main thread may set handlers.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is None:
            continue
        previous = signal.signal(number, handler)
        ctx.call_on_close(lambda number=number, previous=previous: signal.signal(number, previous))


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
