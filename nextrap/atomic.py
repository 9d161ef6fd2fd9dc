"""Atomic output folders: everything is written into a hidden sibling, then renamed into place.

A failure half-way (bad input found late, Ctrl-C, a full disk) leaves the destination as it was:
absent, or the old content when ``overwrite`` was asked for.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nextrap.errors import OutputExistsError, UnsafeOutputError

__all__ = ["atomic_directory", "check_output", "check_outside_inputs"]


def check_output(
    path: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike] = ()
) -> Path:
    """Fail early, before any work, when ``path`` exists and may not be replaced.

    ``inputs`` are the user's own files and folders (a run folder, its checkpoints, an adapter to start
    from). An output that equals, contains or lies inside one of them is refused whatever ``overwrite``
    says: replacing it would delete the run, and a new folder inside a run is picked up as one of its
    checkpoints by the next scan.
    """
    path = Path(path)
    check_outside_inputs(path, inputs)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists; choose another output folder or pass --overwrite")
    if path.exists() and not path.is_dir():
        raise OutputExistsError(
            f"{path}: exists and is not a folder; remove it or choose another output path"
        )
    return path


def check_outside_inputs(path: Path, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output ``path`` that equals, contains or lies inside any of ``inputs`` (links resolved)."""
    out = path.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if out == source or source in out.parents or out in source.parents:
            where = "is" if out == source else "lies inside" if source in out.parents else "contains"
            raise UnsafeOutputError(
                f"{path}: {where} the input {given}; writing there could destroy or pollute the run, "
                "choose an output folder outside it"
            )


@contextmanager
def atomic_directory(
    path: str | os.PathLike, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``path`` when the block ends without error.

    ``inputs``: see :func:`check_output`; checked again here, right before anything is written.
    """
    path = check_output(path, overwrite, inputs)
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
