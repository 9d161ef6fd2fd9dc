"""Exceptions raised by nextrap.

Every error nextrap raises on bad input derives from :class:`NextrapError`, so callers can catch one
type; each subclass also derives from the builtin it refines, so ``except FileNotFoundError`` keeps
working for people who do not know about nextrap. Messages are one line: what was wrong, where
(path, key, step), what was expected and how to fix it. The CLI prints them as they are.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DeviceError",
    "HubError",
    "InputNotFoundError",
    "LayoutError",
    "MismatchError",
    "NextrapError",
    "NonFiniteError",
    "OutputExistsError",
    "OutputLockedError",
    "UnsafeOutputError",
]


class NextrapError(Exception):
    """Base class of every error nextrap raises on bad input or an impossible request."""


class InputNotFoundError(NextrapError, FileNotFoundError):
    """A path the user gave does not exist, or is empty."""


class LayoutError(NextrapError, ValueError):
    """No checkpoints could be found, or the ones found are ambiguous (several runs, duplicate steps)."""


class CheckpointError(NextrapError, ValueError):
    """One checkpoint is unreadable or invalid: corrupt file, ZeRO-3 placeholder, NaN/Inf, bad config."""


class MismatchError(NextrapError, ValueError):
    """Checkpoints of one run disagree (module sets, ranks, shapes, scalings)."""


class ConfigError(NextrapError, ValueError):
    """An option has an invalid value, or options contradict each other or the run."""


class OutputExistsError(NextrapError, FileExistsError):
    """The output path exists and ``overwrite`` was not requested."""


class OutputLockedError(NextrapError, RuntimeError):
    """Another process is writing the same output right now (it holds the output's lock)."""


class NonFiniteError(NextrapError, ArithmeticError):
    """A computed tensor overflowed to Inf or became NaN (a coefficient or scaling too large or too small)."""


class UnsafeOutputError(NextrapError, ValueError):
    """The output path equals, contains or lies inside one of the inputs: writing there could destroy them."""


class DeviceError(NextrapError, ValueError):
    """The requested device is unknown or not available on this machine."""


class HubError(NextrapError, RuntimeError):
    """Publishing failed: no token, no permission, no network, offline mode, a revision conflict."""
