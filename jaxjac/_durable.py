"""Making writes durable: fsync of files and of the folders that hold renamed files."""

from __future__ import annotations

import os
import secrets
import stat
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


def replace_atomically(path: str | os.PathLike, data: str | bytes, *, mode: int = 0o666) -> Path:
    """Write `data` to `path` so that a crash leaves the old file or the new one, never a mix.

    The data goes to a temporary file beside `path` (created with `mode`, less
    the umask), which is fsynced, renamed over `path`, and the folder fsynced.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    payload = data.encode() if isinstance(data, str) else data
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent, best_effort=True)
    return path


def folder_problem(folder: str | os.PathLike) -> str | None:
    """Why new files cannot be written in `folder` (`"folder X does not exist"`, say), or `None` when they can.

    Tried by creating (and removing) an empty file: permission bits say
    nothing to root, and some file systems (/proc) take no files at all.
    """
    shown, folder = os.fspath(folder) or ".", os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        existing = folder
        while not os.path.exists(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        if os.path.exists(existing) and not os.path.isdir(existing):
            return f"{existing} is a file, not a folder"
        return f"folder {shown} does not exist"
    probe = os.path.join(folder, f".jaxjac-write-test.{secrets.token_hex(4)}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as error:
        return f"folder {shown} takes no new files ({error.strerror or error})"
    os.unlink(probe)
    return None


def path_kind(path: str | os.PathLike) -> str:
    """What is at `path`, for messages: "a file", "a folder", "a pipe", "a device", "a socket" or "no such file".

    Only "a file" can be read to its end: a FIFO waits for a writer, a device never ends.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as error:
        return f"nothing readable ({error.strerror or error})"
    for test, kind in (
        (stat.S_ISREG, "a file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a pipe"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "a special file"
