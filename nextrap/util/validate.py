"""Options dataclasses check the types of their fields at construction, so misuse is one nextrap error.

``ExtrapolateOptions(horizon="5")`` or ``NExtConfig(epochs=None)`` would otherwise fail later as a bare
``TypeError`` deep inside a comparison (or, worse, work by accident: ``coefs="12"`` iterates characters).
:func:`check_types` compares each field's value with its annotation (``int``, ``float``, ``bool``, ``str``,
``X | None``, ``tuple[X, ...]``, nested dataclasses) and raises :class:`ConfigError` naming the class,
the field, the value and the type expected. A number is accepted for ``float``; ``bool`` is not an ``int``
here; a list is accepted for a tuple (the constructor converts it).
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from typing import Any

from nextrap.errors import ConfigError

__all__ = ["check_types"]


def check_types(obj: Any) -> None:
    """Raise :class:`ConfigError` when a field of the dataclass instance ``obj`` holds a value of another type."""
    try:
        hints = typing.get_type_hints(type(obj))
    except (NameError, TypeError):  # an annotation only importable for type checkers: nothing to check against
        return
    for f in dataclasses.fields(obj):
        if not f.init or f.name not in hints:
            continue
        value = getattr(obj, f.name)
        if not _matches(value, hints[f.name]):
            raise ConfigError(
                f"{type(obj).__name__}.{f.name} = {value!r}: expected {_describe(hints[f.name])}, "
                f"got {type(value).__name__}"
            )


def _matches(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:  # numbers' ABCs: numpy's integers and floats count too
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, tuple | list):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
    if origin is not None:  # dict[...], Mapping[...], list[...]: the container's type only
        container = origin if isinstance(origin, type) else None
        return container is None or isinstance(value, container)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # anything else (a Literal, a TypeVar): not checked here


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if tp is type(None):
        return "None"
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a tuple of {_describe(args[0])}"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp)
