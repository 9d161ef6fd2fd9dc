"""Opening files safely: read only regular files of bounded size; create files only anew, never through a link.

Two rules every module that touches the disk follows:

* A file nextrap reads as a record (``trainer_state.json``, ``adapter_config.json``, a report) is read
  with :func:`read_regular`: a FIFO, a device (``/dev/zero``) or a folder under that name is refused
  with an :class:`OSError` naming the path, and so is a file past the size limit, instead of hanging or
  reading without end. Links are followed: users link checkpoints into place.
* A file nextrap creates (a lock's owner record, a report, a run's settings) is created with
  :func:`create_new` (``O_CREAT | O_EXCL | O_NOFOLLOW``): if anything already has that name, even a
  link planted there, the call fails instead of writing through it. :func:`replace_file` builds on it:
  a new file beside the destination, renamed over it (a rename replaces a link, never its target).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

__all__ = ["RECORD_LIMIT", "create_new", "read_regular", "replace_file", "write_new"]

# The most bytes a JSON record (trainer state, adapter config, report) may have: far above any real one.
RECORD_LIMIT = 64 << 20

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def read_regular(path: str | os.PathLike, limit: int = RECORD_LIMIT) -> bytes:
    """The bytes of the regular file ``path`` (links followed), at most ``limit`` of them.

    Raises :class:`OSError` with the path: ``EINVAL`` when ``path`` is not a regular file (a FIFO is
    opened without blocking, so it cannot hang the caller), ``EFBIG`` when it holds more than ``limit``.
    """
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"not a regular file ({_kind(st.st_mode)})", str(path))
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit:,} bytes", str(path))
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:  # grew while being read
            raise OSError(errno.EFBIG, f"larger than {limit:,} bytes", str(path))
        return data
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return name
    return "not a plain file"


def create_new(path: str | os.PathLike, mode: int = 0o666) -> int:
    """A descriptor of the new, empty file ``path``; fails (``EEXIST``/``ELOOP``) if anything has that name."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode)


def write_new(path: str | os.PathLike, data: bytes | str) -> Path:
    """Create ``path`` anew (see :func:`create_new`) holding ``data``; on failure nothing is left."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd = create_new(path)
    try:
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return path


def replace_file(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to a new hidden file beside ``path`` and rename it over ``path`` (atomic, link-safe)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name[:100]}.new-{secrets.token_hex(6)}")
    write_new(tmp, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
