"""Opening files that input names: regular files only, never blocking, never unbounded.

A campaign file, a recipient file or a `*_FILE` credential variable can name anything
the process can open: a FIFO (open() blocks until a writer comes, forever in CI), a
device (`/dev/zero` never ends), a folder. Each is refused here, before a byte is read,
with a reason that names the kind of file and never its content.

The file is looked at with `stat` before it is opened (opening some devices has side
effects), then opened with O_NONBLOCK (so a FIFO swapped in between cannot block) and
looked at again with `fstat`, which is what is actually read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from hashlib import _Hash as Hash

# Writing failed for a reason of the machine, not of the input nor a bug: disk full,
# quota, file too large for the file system, a device error.
WRITE_FAILURE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # absent on Windows, where FIFOs do not arise this way
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class FileRefused(Exception):
    """A file that cannot or must not be read; `reason` is one plain phrase without the path."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FileTooLarge(FileRefused):
    def __init__(self, limit: int, size: int | None = None) -> None:
        said = f"it is {size:,} bytes" if size is not None else "it holds more"
        super().__init__(f"{said}; the limit is {limit:,} bytes")
        self.size = size
        self.limit = limit


def os_reason(error: OSError) -> str:
    """The short reason for an OSError, without the path that `str(error)` repeats."""
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, IsADirectoryError):
        return "it is a directory"
    if isinstance(error, PermissionError):
        return "permission denied"
    return error.strerror or type(error).__name__


def kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _refuse_unless_regular(mode: int) -> None:
    if stat.S_ISDIR(mode):  # the OS's own error, so callers word it as they always have
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    if not stat.S_ISREG(mode):
        kind = kind_of(mode)
        raise FileRefused(kind if kind == "not a regular file" else f"it is {kind}, not a regular file")


def open_regular(path: Path, *, max_bytes: int | None = None) -> BinaryIO:
    """`path` opened for binary reading. Raises OSError as open() does (a folder too),
    FileRefused for anything else that is not a regular file, and FileTooLarge when
    `max_bytes` is given and the file is larger: by its size, before anything is read."""
    try:
        _refuse_unless_regular(os.stat(path).st_mode)
        descriptor = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    except ValueError:  # a NUL byte in the path
        raise FileRefused("the path holds a NUL byte") from None
    try:
        status = os.fstat(descriptor)
        _refuse_unless_regular(status.st_mode)
        if max_bytes is not None and status.st_size > max_bytes:
            raise FileTooLarge(max_bytes, status.st_size)
        if _NONBLOCK:
            os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The whole of a regular file of at most `max_bytes` bytes; raises as `open_regular`.

    The size is checked before reading and again while reading, since a file that
    grows, or a /proc file that reports size 0, can hold more than `stat` said.
    """
    with open_regular(path, max_bytes=max_bytes) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLarge(max_bytes)
    return data


def hash_file(digest: Hash, path: Path) -> None:
    """Feed a file's bytes to `digest` in 1 MiB chunks (a million-row audience is never
    held whole); an unreadable file is a CampaignError naming it."""
    from .errors import CampaignError

    try:
        with path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as error:
        raise CampaignError(f"{path}: cannot read: {error.strerror or error}") from None
