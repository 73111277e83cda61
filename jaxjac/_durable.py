"""Making writes durable: fsync of files and of the folders that hold renamed files."""

from __future__ import annotations

import os


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
