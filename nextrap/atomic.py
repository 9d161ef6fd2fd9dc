"""Atomic output folders: everything is written into a hidden sibling, then renamed into place.

A failure half-way (bad input found late, Ctrl-C, a full disk) leaves the destination as it was:
absent, or the old content when ``overwrite`` was asked for.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nextrap.errors import OutputExistsError

__all__ = ["atomic_directory", "check_output"]


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Fail early, before any work, when ``path`` exists and may not be replaced."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists; choose another output folder or pass --overwrite")
    if path.exists() and not path.is_dir():
        raise OutputExistsError(
            f"{path}: exists and is not a folder; remove it or choose another output path"
        )
    return path


@contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``path`` when the block ends without error."""
    path = check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    # mkdtemp makes the folder private (0700); the result should get the permissions of a plain mkdir
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / path.name)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
