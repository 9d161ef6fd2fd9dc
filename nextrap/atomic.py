"""Safe output: checked, exclusive and atomic; everything is written into a hidden sibling, then renamed.

The rules, in one place:

* An output may not be, contain or lie inside one of the inputs (:func:`check_outside_inputs`).
* An existing output is replaced only with ``overwrite`` (:func:`check_output`).
* One writer at a time: :func:`output_lock` holds an advisory lock (``flock``) on ``.NAME.lock``
  next to the destination; a second writer fails at once with :class:`OutputLockedError`. The kernel
  drops the lock when its process dies (even on ``kill -9``), so a lock can never go stale.
* Atomic: :func:`atomic_directory` / :func:`atomic_file` write into ``.NAME.tmp-*`` and rename it
  into place; a failure half-way (bad input found late, Ctrl-C, a full disk) leaves the destination
  as it was: absent, or the old content when ``overwrite`` was asked for.
* Clean: each hidden folder's name records the host and pid of its writer; folders of writers that
  died (``kill -9``, power loss) are removed by the next writer of the same name, which logs what it
  removed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from nextrap.errors import OutputExistsError, OutputLockedError, UnsafeOutputError

__all__ = [
    "atomic_directory",
    "atomic_file",
    "check_output",
    "check_outside_inputs",
    "output_lock",
    "remove_stale",
]

logger = logging.getLogger(__name__)

_HELD: dict[Path, tuple[int, int]] = {}  # lock file -> (fd, depth): re-entrant within one process


def _absolute(path: str | os.PathLike) -> Path:
    """``path`` made absolute without resolving links, so ``-o .`` has a real name and parent."""
    return Path(os.path.abspath(path))


def check_output(path: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Fail early, before any work, when ``path`` exists and may not be replaced.

    ``inputs`` are the user's own files and folders (a run folder, its checkpoints, an adapter to start
    from). An output that equals, contains or lies inside one of them is refused whatever ``overwrite``
    says: replacing it would delete the run, and a new folder inside a run is picked up as one of its
    checkpoints by the next scan.
    """
    path = Path(path)
    check_outside_inputs(path, inputs)
    if not path.name and not _absolute(path).name:
        raise UnsafeOutputError(f"{path}: the root folder cannot be an output; choose a folder")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists; choose another output folder or pass --overwrite")
    if path.exists() and not path.is_dir():
        raise OutputExistsError(
            f"{path}: exists and is not a folder; remove it or choose another output path"
        )
    return path


def check_outside_inputs(path: Path, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output ``path`` that equals, contains or lies inside any of ``inputs`` (links resolved)."""
    out = Path(path).resolve()
    for given in inputs:
        source = Path(given).resolve()
        if out == source or source in out.parents or out in source.parents:
            where = "is" if out == source else "lies inside" if source in out.parents else "contains"
            raise UnsafeOutputError(
                f"{path}: {where} the input {given}; writing there could destroy or pollute the run, "
                "choose an output folder outside it"
            )


# ------------------------------------------------------------------------------------------ locking


def _owner() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _lock_path(dest: Path) -> Path:
    return dest.parent / f"{_stem(dest)}.lock"


@contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock on the output ``path`` (re-entrant in one process); yields the lock file.

    Raises :class:`OutputLockedError` at once when another process holds it. The lock file is removed
    on release; a waiting process that still opened the removed file notices and fails too (it checks
    that the file it locked is still the one on disk).
    """
    dest = _absolute(path)
    lock = _lock_path(dest)
    if lock in _HELD:
        fd, depth = _HELD[lock]
        _HELD[lock] = (fd, depth + 1)
        try:
            yield lock
        finally:
            fd, depth = _HELD[lock]
            _HELD[lock] = (fd, depth - 1)
        return
    try:
        import fcntl
    except ImportError:  # no flock (Windows): atomic renames still keep outputs whole
        yield lock
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(lock).st_ino:
                raise BlockingIOError(errno.EAGAIN, "lock file replaced")
        except (BlockingIOError, FileNotFoundError):
            holder = _read_owner_text(lock)
            raise OutputLockedError(
                f"{path}: another nextrap process{holder} is writing this output; wait for it to finish "
                "or choose another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_owner()).encode())
        _HELD[lock] = (fd, 1)
        try:
            yield lock
        finally:
            del _HELD[lock]
            # Unlink while still holding the lock: a process that opened it meanwhile sees a stale inode.
            with suppress(FileNotFoundError):
                lock.unlink()
    finally:
        os.close(fd)


def _read_owner_text(lock: Path) -> str:
    try:
        owner = json.loads(lock.read_text())
        return f" (pid {int(owner['pid'])} on {owner['host']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


# ------------------------------------------------------------------------------------------ cleanup


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def _stem(dest: Path) -> str:
    """The output's name as used in hidden siblings: short enough that they stay under 255 bytes."""
    return f".{dest.name[:120]}"


def _make_hidden(dest: Path, kind: str) -> Path:
    """A new ``.NAME.<kind>-<host>-<pid>-<random>`` folder next to ``dest``: its name records the writer."""
    return Path(tempfile.mkdtemp(prefix=f"{_stem(dest)}.{kind}-{_host()}-{os.getpid()}-", dir=dest.parent))


_HIDDEN = re.compile(r"^(?P<kind>tmp|old)-(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-[^-]+$")


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the ``.NAME.tmp-*`` / ``.NAME.old-*`` folders next to ``path`` whose writer died.

    Only folders whose name records a pid on this host that no longer runs are removed; a folder
    from another host, or of another naming, is left alone. Returns what was removed (also logged).
    """
    dest = _absolute(path)
    removed: list[Path] = []
    try:
        siblings = list(dest.parent.iterdir())
    except OSError:
        return removed
    stem, host = f"{_stem(dest)}.", _host()
    for entry in siblings:
        if not entry.name.startswith(stem):
            continue
        found = _HIDDEN.match(entry.name[len(stem) :])
        if found is None or not entry.is_dir() or entry.is_symlink():
            continue
        pid = int(found["pid"])
        if found["host"] != host or _pid_alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
            logger.warning("removed %s, left by an interrupted nextrap run (pid %d)", entry, pid)
    return removed


# ------------------------------------------------------------------------------------------ writing


@contextmanager
def atomic_directory(
    path: str | os.PathLike, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``path`` when the block ends without error.

    Holds :func:`output_lock` on ``path`` throughout, and removes hidden folders that interrupted
    writers of ``path`` left behind. ``inputs``: see :func:`check_output`; checked again here, right
    before anything is written.
    """
    given = path
    with output_lock(path):
        check_output(given, overwrite, inputs)
        path = _absolute(given)
        remove_stale(path)
        tmp = _make_hidden(path, "tmp")
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
        try:
            if path.exists():
                old = _make_hidden(path, "old")
                os.replace(path, old / path.name)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None and (old / path.name).exists() and not path.exists():
                os.replace(old / path.name, path)  # put the old output back
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary file path (same suffix) that replaces the file ``path`` when the block succeeds.

    For single-file outputs (plots). Refuses a ``path`` that is a folder or touches ``inputs``.
    """
    path = Path(path)
    check_outside_inputs(path, inputs)
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a folder; give a file name (e.g. {path / 'plot.png'})")
    dest = _absolute(path)
    with output_lock(dest):
        remove_stale(dest)
        folder = _make_hidden(dest, "tmp")
        try:
            tmp = folder / f"file{dest.suffix}"
            yield tmp
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
