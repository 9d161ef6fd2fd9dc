"""The one rule about inputs and outputs: no output may be, contain or lie inside anything a command reads.

A command's inputs are every path it reads: the run folder, each checkpoint, each checkpoint's parent
folder (a new folder there would be scanned as a checkpoint), the weights files, the base model, a
recorder's folder, an adapter to start from, a report. :func:`check_outside_inputs` refuses an output
that

* **is** an input (same file or folder),
* **lies inside** one (one of the output's folders is an input), or
* **contains** one (the output, when it exists, is one of an input's folders: replacing it deletes it).

Folders are compared by identity, device and inode, after every symbolic link is resolved, so a second
name for the same folder (a link to it, a link to one of its parents, a bind mount, a hard link to a
file) counts as the same folder. Every writing command and library function goes through this module
(via :mod:`nextrap.output.atomic`); nothing else decides what is an input.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from nextrap.errors import UnsafeOutputError

__all__ = ["check_outside_inputs", "real_path"]

_Identity = tuple[int, int]


def real_path(path: str | os.PathLike) -> Path:
    """``path`` made absolute (``..`` taken as written, as the writers do) with every link resolved.

    A link whose target does not exist is followed to that target, and the part that does not exist yet
    is appended as given, so the result is where the kernel would go. A link loop, or a path through a
    file, raises :class:`UnsafeOutputError` (one line), never a traceback.
    """
    absolute = os.path.abspath(path)
    try:
        return Path(os.path.realpath(absolute, strict=True))
    except (FileNotFoundError, PermissionError):
        return Path(os.path.realpath(absolute))  # the missing or unreadable rest as written
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeOutputError(
                f"{path}: goes through a loop of symbolic links; fix or remove the link, or choose another path"
            ) from None
        if exc.errno == errno.ENOTDIR:
            raise UnsafeOutputError(f"{path}: a part of it is a file, not a folder; choose another path") from None
        raise


def _identity(path: Path) -> _Identity | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def _folders_above(real: Path) -> set[_Identity]:
    """Identities of the folders ``real`` (a resolved path) lies in, the root included."""
    return {ident for parent in real.parents if (ident := _identity(parent)) is not None}


def check_outside_inputs(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Raise :class:`UnsafeOutputError` when ``output`` is, lies inside or contains one of ``inputs``.

    ``inputs`` that do not exist on disk (a Hub id given as the base model, ``None``) are skipped.
    """
    out_real = real_path(output)
    out_id = _identity(out_real)
    out_above = _folders_above(out_real)
    seen: set[str] = set()
    for given in inputs:
        if given is None or str(given) in seen:
            continue
        seen.add(str(given))
        try:
            source = real_path(given)
        except UnsafeOutputError:
            continue  # an input that cannot be resolved was not read either
        source_id = _identity(source)
        if source_id is None:
            continue
        if out_id is not None and out_id == source_id:
            where = "is"
        elif source_id in out_above:
            where = "lies inside"
        elif out_id is not None and out_id in _folders_above(source):
            where = "contains"
        else:
            continue
        raise UnsafeOutputError(
            f"{output}: {where} the input {given}; writing there could destroy or pollute the run, "
            "choose an output folder outside it"
        )
