"""Files: crash-safe writes (a reader sees the old file or the new one, never a torn one), the
checks of a path given as an input file, and a file's identity (name and SHA-256)."""
from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
from typing import Any, Callable

import torch

# Read once: os.umask can only be read by setting it, which would race with other threads.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` by calling ``write(file)`` on a temporary file in the same folder, flushing
    it to disk, then renaming it over ``path`` (``os.replace`` is atomic on POSIX and Windows).
    ``IsADirectoryError`` naming ``path`` when it is a directory."""
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "Is a directory (expected a file to write)", path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; give it a normal file's mode
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def require_file(path: str, what: str, example: str = "") -> None:
    """Raise unless ``path`` names an existing file (through symbolic links): ``FileNotFoundError``
    for a missing path or a link to one (named), ``ValueError`` for a symbolic link loop or a
    directory. ``what`` names the file in the message (e.g. "checkpoint"); ``example``: a file
    name the directory message suggests."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileNotFoundError(f"{what} not found: {path} is a symbolic link to "
                                    f"{os.readlink(path)}, which does not exist") from None
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{what} {path} is a symbolic link loop (its links never reach a "
                             "file)") from None
        raise
    if stat.S_ISDIR(mode):
        raise ValueError(f"{what} {path} is a directory, expected a file"
                         + (f" such as {example}" if example else ""))


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def file_identity(path: str) -> dict:
    """A file's name (no directory: no machine path is recorded) and the SHA-256 of its bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"file": os.path.basename(path), "sha256": digest.hexdigest()}
