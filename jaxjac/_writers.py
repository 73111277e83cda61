"""Writers that store Jacobian rows as they are computed, into `.npy` or zarr outputs.

**Partial files.** A writer never writes into `OUT` while a run is in progress. It writes into
`OUT + ".partial"` (a file for `.npy`, a folder for zarr) in the same folder, and
`close(complete=True)` (the default) flushes it and renames it onto `OUT`; only then is an
existing `OUT` replaced (which `create_writer` allows only with `overwrite=True`).
`close(complete=False)` flushes and keeps the partial file, which `open_writer_for_resume(OUT)`
finds again. So a file named `OUT` is always a finished output, a pre-existing `OUT` survives
any failed or interrupted run, and which rows of a partial file are done is the runner's
business (its `OUT + ".progress.json"`). Resuming when only a finished `OUT` exists opens it in
place.

**`.npy`** outputs are created with `np.lib.format.open_memmap`: the final header is written
first and rows are written in place with `os.pwrite`; `flush()` fsyncs. On Linux each write also
starts the rows' write-back to disk at once (`sync_file_range`, without waiting for it), so the
disk works while the next batches compute and `flush()` finds little left to wait for (a run's
checkpoint fsyncs, which hold up the writer thread, went from about 50 ms each to a few ms).
The file is sparse until written, so check free space first (`required_bytes`, `check_free_space`).

**zarr** outputs (zarr v3 format) are chunked along rows only, `chunk_rows` rows per chunk
(default: about 8 MiB per chunk, a multiple of 64 rows). Writers of disjoint row ranges may run
in parallel when the ranges start and end on chunk boundaries. A chunk's rows wait in memory
until it is complete, since zarr rewrites a whole chunk to store part of it; `flush()` stores
the chunks in progress and fsyncs the chunk files written since the last flush.

**Output dtypes** are float64, float32, float16 and bfloat16. Neither the `.npy` format nor zarr has a
bfloat16 type, so `.npy` refuses bfloat16 (np.load could not read it back as bfloat16), and
zarr stores its bit patterns as uint16 with the array attribute `"jaxjac_dtype": "bfloat16"`;
read it back with `z[:].view(ml_dtypes.bfloat16)` (jaxjac's own readers do this themselves).
float16 overflow (|x| > 65504) stores inf and adds a note to `Writer.notes`.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import os
import shutil
import sys

import numpy as np

from ._durable import folder_problem, fsync_path
from ._errors import JaxjacError
from ._sources import BF16_ATTR, need, npy_header

DTYPES = ("float64", "float32", "float16", "bfloat16")
_OVERWRITE = "pass --force to replace it"


def partial_path(path) -> str:
    """Where an unfinished output for `path` is kept: `path + ".partial"`."""
    return os.fspath(path) + ".partial"


def required_bytes(shape, dtype: str) -> int:
    """Bytes an output of `shape` and `dtype` needs: the data plus 4 KiB for headers and metadata."""
    return math.prod(shape) * _dtype(dtype).itemsize + 4096


def check_free_space(path, needed_bytes: int) -> None:
    """Raise `JaxjacError` if the folder that will hold `path` has less than `needed_bytes` free."""
    folder = _folder(path)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise JaxjacError(
            f"not enough free disk space in {folder} for {os.path.basename(os.fspath(path))}: "
            f"it needs {_human(needed_bytes)}, only {_human(free)} is free"
        )


class Writer:
    """Rows `start:start + n` of an `(N, ...)` output, written in any order.

    **Attributes:** `path` (the finished output's name), `partial_path` (where the rows are
    written now), `shape`, `dtype` (the name), `chunk_rows` (zarr: rows per chunk; `.npy`: 1),
    `notes`.
    """

    chunk_rows = 1

    def __init__(self, path: str, work: str, shape, dtype: str) -> None:
        self.path, self.partial_path = path, work
        self.shape, self.dtype = tuple(shape), dtype
        self.notes: list[str] = []
        self._np_dtype = _dtype(dtype)
        self._closed = False

    def write(self, start: int, rows) -> None:
        """Store `rows` (shape `(n, *shape[1:])`, any float dtype) as rows `start:start + n`."""
        rows = np.asarray(rows)
        n = rows.shape[0] if rows.ndim else 0
        if rows.shape[1:] != self.shape[1:] or not 0 <= start <= start + n <= self.shape[0]:
            raise ValueError(f"rows of shape {rows.shape} at {start} don't fit {self.path} of shape {self.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            cast = rows.astype(self._np_dtype, copy=False)
        if self.dtype == "float16" and not self.notes and np.isinf(cast).any() and not np.isinf(rows).any():
            self.notes.append(f"{self.path}: some values exceed the float16 range (65504) and were stored as inf")
        self._store(start, cast)

    def close(self, complete: bool = True) -> None:
        """Flush; if `complete`, rename the partial output onto `path` (replacing any old one)."""
        if self._closed:
            return
        self.flush()
        self._release()
        self._closed = True
        if complete and self.partial_path != self.path:
            _replace(self.partial_path, self.path)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(complete=exc_type is None)


class NpyWriter(Writer):
    def __init__(self, path: str, work: str, shape, dtype: str, mode: str) -> None:
        super().__init__(path, work, shape, dtype)
        # open_memmap writes the final header (and sizes the file); rows then go
        # in with pwrite, one system call per batch, which costs a quarter of
        # the CPU time of page-faulting them into a memory map.
        mm = np.lib.format.open_memmap(work, mode=mode, dtype=self._np_dtype, shape=self.shape)
        self._offset = mm.offset
        self._row_bytes = self._np_dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        del mm
        self._fd: int | None = os.open(work, os.O_RDWR)
        if mode == "w+":
            self.flush()

    def _store(self, start: int, rows: np.ndarray) -> None:
        view = memoryview(np.ascontiguousarray(rows)).cast("B")
        first = position = self._offset + start * self._row_bytes
        while view:  # pwrite may write less than asked (above 2 GiB per call on Linux)
            written = os.pwrite(self._fd, view, position)
            view, position = view[written:], position + written
        _start_writeback(self._fd, first, position - first)

    def flush(self) -> None:
        """fsync the file: durable once this returns."""
        if self._fd is not None:
            os.fsync(self._fd)

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ZarrWriter(Writer):
    """Rows gathered into whole chunks before they are stored.

    A write of part of a chunk makes zarr read, recompress and rewrite the whole
    chunk, so batches smaller than a chunk (the 32-64 rows of CPU batches, against
    8 MiB chunks of thousands) rewrote each chunk once per batch: 20x slower than
    `.npy` at 16 rows. A chunk's rows wait in memory until it is complete, or
    until `flush`, which stores the chunks in progress as they stand.
    """

    def __init__(self, path: str, work: str, shape, dtype: str, array) -> None:
        super().__init__(path, work, shape, dtype)
        self._z = array
        self.chunk_rows = array.chunks[0]
        self._dirty: set[int] = set()
        self._pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # chunk -> (its rows, which are written)

    def _store(self, start: int, rows: np.ndarray) -> None:
        if self.dtype == "bfloat16":
            rows = rows.view(np.uint16)
        stop, position = start + rows.shape[0], start
        while position < stop:
            chunk = position // self.chunk_rows
            low, high = chunk * self.chunk_rows, min((chunk + 1) * self.chunk_rows, self.shape[0])
            end = min(stop, high)
            part = rows[position - start : end - start]
            if (position, end) == (low, high) and chunk not in self._pending:
                self._store_chunk(chunk, part)
            else:
                if chunk not in self._pending:
                    # The rows already stored (before a resume, say) stay as they are.
                    self._pending[chunk] = (np.asarray(self._z[low:high]), np.zeros(high - low, bool))
                buffer, written = self._pending[chunk]
                buffer[position - low : end - low] = part
                written[position - low : end - low] = True
                if written.all():
                    self._store_chunk(chunk, self._pending.pop(chunk)[0])
            position = end

    def _store_chunk(self, chunk: int, rows: np.ndarray) -> None:
        low = chunk * self.chunk_rows
        self._z[low : low + rows.shape[0]] = rows
        self._dirty.add(chunk)

    def flush(self) -> None:
        """Store the chunks in progress, then fsync the chunk files written since the last flush."""
        for chunk, (rows, _) in self._pending.items():
            self._store_chunk(chunk, rows)
        zeros = (0,) * (len(self.shape) - 1)
        folders = set()
        for i in sorted(self._dirty):
            chunk = os.path.join(self.partial_path, self._z.metadata.encode_chunk_key((i, *zeros)))
            if os.path.exists(chunk):  # all-zero chunks are not stored
                fsync_path(chunk)
                folders.add(os.path.dirname(chunk))
        for folder in folders:
            fsync_path(folder)
        self._dirty.clear()

    def _release(self) -> None:
        self._z = None
        self._pending.clear()


def create_writer(path, *, shape, dtype: str, overwrite: bool, chunk_rows: int | None = None) -> Writer:
    """Start a new output for `path` (see the module docstring for partial files).

    Refuses if `path` or a partial output for it exists, unless `overwrite`; even then the old
    `path` stays until the new output is closed complete.
    """
    path, shape = os.fspath(path), tuple(int(d) for d in shape)
    kind = _kind(path, dtype)
    _folder(path)
    work = partial_path(path)
    if os.path.isdir(path) and not os.path.islink(path):
        refuse_foreign_folder(path)  # before any work, not when the finished output replaces it
    if not overwrite:
        if os.path.lexists(path):
            raise JaxjacError(f"output {path} already exists; {_OVERWRITE}")
        if os.path.lexists(work):
            raise JaxjacError(
                f"output {path} has a partial file {work} from an interrupted run; resume it, or {_OVERWRITE}"
            )
    try:
        _remove(work)
        if kind == "npy":
            return NpyWriter(path, work, shape, dtype, "w+")
        zarr = need("zarr", f"writing {path}")
        rows = chunk_rows or _default_chunk_rows(shape, _dtype(dtype).itemsize)
        stored = "uint16" if dtype == "bfloat16" else dtype
        attrs = {BF16_ATTR: "bfloat16"} if dtype == "bfloat16" else {}
        z = zarr.create_array(
            work, shape=shape, chunks=(max(1, rows), *shape[1:]), dtype=stored, fill_value=0, attributes=attrs
        )
        fsync_path(os.path.join(work, "zarr.json"))
        return ZarrWriter(path, work, shape, dtype, z)
    except OSError as e:
        _remove(work)
        raise JaxjacError(f"could not create output {work} ({e.strerror or e})") from None


def open_writer_for_resume(path, *, shape, dtype: str) -> Writer:
    """Reopen the partial output for `path` (or a finished `path`, in place) to write more rows.

    Raises `JaxjacError` if there is none, or if its shape or dtype differ from `shape` and `dtype`.
    """
    path, shape = os.fspath(path), tuple(int(d) for d in shape)
    kind = _kind(path, dtype)
    work = partial_path(path)
    if not os.path.exists(work):
        if not os.path.exists(path):
            raise JaxjacError(f"cannot resume {path}: neither it nor its partial file {work} exists")
        work = path
    if not os.access(work, os.R_OK | os.W_OK):
        raise JaxjacError(f"cannot resume {work}: it is not writable (permission denied)")
    want = f"{shape} {dtype}"
    if kind == "npy":
        with open(work, "rb") as f:
            found_shape, fortran, found, _ = npy_header(f, f"output {work}", os.fstat(f.fileno()).st_size)
        if found_shape != shape or found != _dtype(dtype) or fortran:
            raise JaxjacError(f"cannot resume {work}: it holds {found_shape} {found}; this run writes {want}")
        return NpyWriter(path, work, shape, dtype, "r+")
    zarr = need("zarr", f"writing {path}")
    try:
        z = zarr.open_array(work, mode="r+")
    except Exception as e:
        raise JaxjacError(f"cannot resume {work}: not a readable zarr array ({type(e).__name__}: {e})") from None
    found = "bfloat16" if z.attrs.get(BF16_ATTR) == "bfloat16" else str(z.dtype)
    if tuple(z.shape) != shape or found != dtype or z.chunks[1:] != shape[1:]:
        raise JaxjacError(f"cannot resume {work}: it holds {tuple(z.shape)} {found}; this run writes {want}")
    return ZarrWriter(path, work, shape, dtype, z)


_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start write-out of the range's dirty pages, don't wait


@functools.cache
def _sync_file_range():
    """libc's `sync_file_range` (Linux only; None elsewhere or if libc lacks it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing bytes `offset:offset + nbytes` of `fd` to disk without waiting for it (a hint)."""
    fn = _sync_file_range()
    if fn is not None and nbytes > 0:
        fn(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # an error return changes nothing: `flush()` still fsyncs


def _dtype(name: str) -> np.dtype:
    if name not in DTYPES:
        raise JaxjacError(f"output dtype `{name}` is not supported; choose one of {', '.join(DTYPES)}")
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _kind(path: str, dtype: str) -> str:
    _dtype(dtype)
    ext = os.path.splitext(path.rstrip("/"))[1].lower()
    if ext == ".npy":
        if dtype == "bfloat16":
            raise JaxjacError(
                f"output {path}: .npy can't store bfloat16 so that np.load reads it back; "
                "write a .zarr output, or use float16 (same size)"
            )
        return "npy"
    if ext == ".zarr":
        return "zarr"
    raise JaxjacError(f"output {path} must end in .npy or .zarr (found `{ext or 'no extension'}`)")


def _folder(path) -> str:
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    problem = folder_problem(folder)
    if problem:
        raise JaxjacError(f"cannot write output {path}: {problem}")
    return folder


def _default_chunk_rows(shape, itemsize: int) -> int:
    row = max(1, math.prod(shape[1:]) * itemsize)
    rows = max(64, (8 << 20) // row // 64 * 64)
    return min(rows, max(1, shape[0]))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        refuse_foreign_folder(path)
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def refuse_foreign_folder(path: str) -> None:
    """Refuse to delete a folder that is not a zarr array: `--force` replaces old outputs, not folders of files."""
    try:
        with open(os.path.join(path, "zarr.json")) as f:
            is_array = json.load(f).get("node_type") == "array"
    except (OSError, ValueError, AttributeError):
        is_array = False
    if not is_array:
        raise JaxjacError(
            f"output {path} is an existing folder that is not a zarr array; jaxjac will not delete it, "
            "even with --force: choose another -o"
        )


def _replace(src: str, dst: str) -> None:
    if os.path.isdir(dst) and not os.path.islink(dst):  # can't rename over a folder: move it aside
        refuse_foreign_folder(dst)
        aside = f"{dst}.old-{os.getpid()}"
        os.rename(dst, aside)
        os.rename(src, dst)
        shutil.rmtree(aside)
    else:
        os.replace(src, dst)
    fsync_path(os.path.dirname(os.path.abspath(dst)), best_effort=True)


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError
