"""Write a file atomically, and never replace anything but a regular file.

`forecast report -o PATH` used to rename its temporary file over whatever PATH was: a device
node (as root, `-o /dev/full` replaced the system's /dev/full), a FIFO or a symlink became a
regular file (issue 21). Every file the engine writes for a user (reports, prior profiles, run
folders) goes through here:

- `write_bytes(path, data)` / `write_text(path, text)`: refuse unless PATH is absent or a
  regular file (`UnsafeTarget`, naming what it is); write a temporary file beside it (created
  exclusively, so nothing is followed or truncated), fsync it, check PATH again, rename it over.
- `check_target(path)`: the same refusal, without writing.
- `check_absent(path)`: refuse if anything at all is at PATH (a run folder's final name).
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path


class UnsafeTarget(OSError):
    """The path holds something that is not a regular file; nothing was written."""


_NOT_REGULAR = ((stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO (named pipe)"),
                (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def _kind(mode: int) -> str:
    """What a file mode that is not a regular file's is, in words."""
    return next((name for test, name in _NOT_REGULAR if test(mode)), "special file")


def check_target(path: Path) -> None:
    """Raise UnsafeTarget unless `path` is absent or a regular file (a symlink is refused, not followed)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise UnsafeTarget(f"{path} is a {_kind(mode)}; refusing to replace it (only a regular file is "
                           "overwritten): give another path")


def check_absent(path: Path) -> None:
    """Raise UnsafeTarget if anything exists at `path`."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    raise UnsafeTarget(f"{path} already exists (a {'file' if stat.S_ISREG(mode) else _kind(mode)}); "
                       "refusing to replace it")


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (see the module docstring); returns the path."""
    path = Path(path)
    check_target(path)
    tmp = path.with_name(f".{path.name[:80]}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        check_target(path)  # again, just before the rename
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes(path, text.encode(encoding))
