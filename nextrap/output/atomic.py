"""Safe output: checked, exclusive and atomic; everything is written into a hidden sibling, then renamed.

The rules, in one place:

* An output may not be, contain or lie inside one of the inputs (:mod:`nextrap.util.inputs`, checked by
  :func:`check_output`, and again right before writing).
* An existing output is replaced only with ``overwrite`` (:func:`check_output`).
* One writer at a time: :func:`output_lock` holds an advisory lock (``filelock``, i.e. ``flock``) on
  ``.NAME.lock`` next to the destination; a second writer fails at once with
  :class:`OutputLockedError`. The kernel drops the lock when its process dies (even on ``kill -9``), so
  a lock can never go stale. The lock file is opened with ``O_NOFOLLOW`` and never truncated through a
  name: a link planted under the lock's name is refused, its target untouched.
* Atomic: :func:`atomic_directory` / :func:`atomic_file` write into a private hidden folder
  ``.NAME.tmp-*`` (mode 0700: nobody else can plant a link in it) and rename the result into place; a
  failure half-way (bad input found late, Ctrl-C, SIGTERM, a full disk) leaves the destination as it
  was: absent, or the old content when ``overwrite`` was asked for.
* Clean: each hidden folder's name records the host and pid of its writer, and the folder holds a
  marker file nextrap wrote saying the same; folders of writers that died (``kill -9``, power loss) are
  removed by the next writer of the same name, which logs what it removed. A folder without the
  marker is never removed, whatever its name.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from nextrap.errors import OutputExistsError, OutputLockedError, UnsafeOutputError
from nextrap.util.files import read_regular, write_new
from nextrap.util.inputs import check_outside_inputs, real_path

__all__ = [
    "atomic_directory",
    "atomic_file",
    "check_output",
    "check_outside_inputs",
    "output_lock",
    "remove_stale",
]

logger = logging.getLogger(__name__)

# lock file -> [its FileLock, depth]: re-entrant within one process
_HELD: dict[Path, list] = {}
# Written into every hidden folder nextrap makes: only folders holding it are ever removed as stale.
MARKER = ".nextrap-writer.json"


def _absolute(path: str | os.PathLike) -> Path:
    """``path`` made absolute without resolving links, so ``-o .`` has a real name and parent."""
    return Path(os.path.abspath(path))


def check_output(path: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Fail early, before any work, when ``path`` exists and may not be replaced.

    ``inputs`` are the user's own files and folders (a run folder, its checkpoints, an adapter to start
    from): see :mod:`nextrap.util.inputs`. An output that is, contains or lies inside one of them is refused
    whatever ``overwrite`` says: replacing it would delete the run, and a new folder inside a run is
    picked up as one of its checkpoints by the next scan.
    """
    path = Path(path)
    check_outside_inputs(path, inputs)
    if not path.name and not _absolute(path).name:
        raise UnsafeOutputError(f"{path}: the root folder cannot be an output; choose a folder")
    exists = _absolute(path).exists() or _absolute(path).is_symlink()
    if exists and not overwrite:
        raise OutputExistsError(f"{path}: already exists; choose another output folder or pass --overwrite")
    if exists and not real_path(path).is_dir():
        raise OutputExistsError(
            f"{path}: exists and is not a folder; remove it or choose another output path"
        )
    return path


# ------------------------------------------------------------------------------------------ locking


def _owner() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _lock_path(dest: Path) -> Path:
    return dest.parent / f"{_stem(dest)}.lock"


def _write_owner(lock: Path, identity: list) -> Callable[[int], None]:
    """The callback ``filelock`` runs once it holds ``lock``: record who holds it, in the file it locked.

    Only a plain file with one name is written to (``filelock`` opened it without following links; a
    hard link planted under the lock's name would have two). A failed write (a full disk) removes the
    lock file and names it.
    """

    def write(fd: int) -> None:
        st = os.fstat(fd)
        identity[:] = [(st.st_dev, st.st_ino)]
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise UnsafeOutputError(
                f"{lock}: is not a lock file nextrap made (a special file or a second name of another file); "
                "remove it, then run again"
            )
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_owner()).encode(), 0)
        except OSError as exc:
            _unlink_if(lock, identity[0])
            raise OSError(exc.errno, exc.strerror, str(lock)) from None

    return write


def _unlink_if(path: Path, identity: tuple[int, int] | None) -> None:
    """Remove ``path`` if it is still the file of that identity (not a newer writer's lock)."""
    with suppress(OSError):
        st = os.lstat(path)
        if identity is not None and (st.st_dev, st.st_ino) == identity:
            path.unlink()


@contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock on the output ``path`` (re-entrant in one process); yields the lock file.

    Raises :class:`OutputLockedError` at once when another process holds it, and
    :class:`UnsafeOutputError` when something that is not nextrap's lock file (a link, a FIFO) has its
    name. The lock file is removed on release, while still held; a process that opened it meanwhile
    finds the name gone and tries again (``filelock`` checks that the file it locked is still on disk).
    """
    dest = _absolute(path)
    lock = _lock_path(dest)
    if lock in _HELD:
        _HELD[lock][1] += 1
        try:
            yield lock
        finally:
            _HELD[lock][1] -= 1
        return
    from filelock import FileLock, Timeout

    dest.parent.mkdir(parents=True, exist_ok=True)
    identity: list = []
    # filelock opens the lock file with O_NOFOLLOW, creates it with O_EXCL and never truncates it: a link
    # planted under the lock's name fails the open and its target is left alone (tests/test_attacks.py).
    held = FileLock(
        lock, blocking=False, thread_local=False, fallback_to_soft=False, on_acquired=_write_owner(lock, identity)
    )
    try:
        held.acquire()
    except Timeout:
        raise OutputLockedError(
            f"{path}: another nextrap process{_read_owner_text(lock)} is writing this output; wait for it to "
            "finish or choose another output folder"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(lock):
            raise UnsafeOutputError(
                f"{lock}: is a symbolic link, not nextrap's lock file; remove the link (nextrap never writes "
                "through one), then run again"
            ) from None
        raise
    _HELD[lock] = [held, 1]
    try:
        yield lock
    finally:
        del _HELD[lock]
        try:
            # Removed while still held: a process that opened it meanwhile sees a stale inode.
            _unlink_if(lock, identity[0] if identity else None)
        finally:
            held.release()


def _read_owner_text(lock: Path) -> str:
    try:
        owner = json.loads(read_regular(lock, limit=4096))
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


_SHORT_NAME_BYTES = 120


def _stem(dest: Path) -> str:
    """The output's name as used in hidden siblings (``.NAME``): unique per output, and short enough that
    the siblings' names stay under 255 bytes. A long name keeps its first 100 bytes plus a hash of all of it,
    so two outputs whose names share a long prefix never share a lock."""
    raw = os.fsencode(dest.name)
    if len(raw) <= _SHORT_NAME_BYTES:
        return f".{dest.name}"
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return f".{os.fsdecode(raw[:100]).encode('utf-8', 'ignore').decode('utf-8', 'ignore')}~{digest}"


def _make_hidden(dest: Path, kind: str) -> Path:
    """A new private ``.NAME.<kind>-<host>-<pid>-<random>`` folder next to ``dest``, holding the marker."""
    folder = Path(tempfile.mkdtemp(prefix=f"{_stem(dest)}.{kind}-{_host()}-{os.getpid()}-", dir=dest.parent))
    try:
        write_new(folder / MARKER, json.dumps({**_owner(), "host": _host(), "for": dest.name}))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


_HIDDEN = re.compile(r"^(?P<kind>tmp|old)-(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-[^-]+$")


def _marked_by(folder: Path, host: str, pid: int) -> bool:
    """Whether ``folder`` holds the marker nextrap wrote into it, naming that host and pid."""
    marker = folder / MARKER
    try:
        if not stat.S_ISREG(os.lstat(marker).st_mode):
            return False
        record = json.loads(read_regular(marker, limit=4096))
        return record.get("host") == host and int(record.get("pid")) == pid
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the ``.NAME.tmp-*`` / ``.NAME.old-*`` folders next to ``path`` whose writer died.

    Only folders whose name and marker file record a pid on this host that no longer runs are removed;
    a folder from another host, of another naming, or without the marker (a user's own folder that
    happens to have such a name) is left alone. Returns what was removed (also logged).
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
        if found is None or entry.is_symlink() or not entry.is_dir():
            continue
        pid = int(found["pid"])
        if found["host"] != host or _pid_alive(pid) or not _marked_by(entry, host, pid):
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
    before anything is written. The folder yielded lies in a private (0700) hidden folder, so nobody
    else can plant a link in it while it is written; it gets the permissions of a plain ``mkdir``.
    """
    given = path
    inputs = list(inputs)
    with output_lock(path):
        check_output(given, overwrite, inputs)
        path = _absolute(given)
        remove_stale(path)
        holder = _make_hidden(path, "tmp")
        tmp = holder / path.name
        old = None
        try:
            tmp.mkdir()
            yield tmp
            if path.exists() or path.is_symlink():
                old = _make_hidden(path, "old")
                os.replace(path, old / path.name)
            os.replace(tmp, path)
        except BaseException:
            if old is not None and (old / path.name).exists() and not path.exists():
                os.replace(old / path.name, path)  # put the old output back
            raise
        finally:
            shutil.rmtree(holder, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(
    path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = True
) -> Iterator[Path]:
    """Yield a temporary file path (same suffix) that replaces the file ``path`` when the block succeeds.

    For single-file outputs (plots). Refuses a ``path`` that is a folder or touches ``inputs``, and an
    existing file unless ``overwrite``.
    """
    path = Path(path)
    inputs = list(inputs)
    check_outside_inputs(path, inputs)
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a folder; give a file name (e.g. {path / 'plot.png'})")
    dest = _absolute(path)
    with output_lock(dest):
        check_outside_inputs(path, inputs)
        if not overwrite and (dest.exists() or dest.is_symlink()):
            raise OutputExistsError(f"{path}: already exists; choose another file name or pass --overwrite")
        remove_stale(dest)
        folder = _make_hidden(dest, "tmp")
        try:
            tmp = folder / f"file{dest.suffix}"
            yield tmp
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
