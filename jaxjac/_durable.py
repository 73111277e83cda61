"""Making writes durable: fsync of files and of the folders that hold renamed files."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_path(path: str | os.PathLike, *, best_effort: bool = False) -> None:
    """fsync the file or folder at `path`.

    fsync of a folder makes a rename inside it durable. Some platforms and
    file systems cannot fsync a folder; with `best_effort` that is ignored.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if best_effort:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not best_effort:
            raise
    finally:
        os.close(fd)


def replace_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` so that a crash leaves the old file or the new one, never a mix.

    The text goes to a temporary file beside `path`, which is fsynced, renamed
    over `path`, and the folder fsynced.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent, best_effort=True)
    return path
