"""Readers that stream a dataset's samples in row ranges, in the model's sample shape and dtype.

Formats, detected by content first and by extension second:

- `.npy`: memory-mapped (`np.load(mmap_mode="r")`); the header is checked against the file size
  up front, so a truncated copy is reported before any work is done.
- `.npz`: the array named by `key`, or the only one. Uncompressed members are memory-mapped in
  place; compressed ones (`np.savez_compressed`) are decompressed as a stream, which is fast when
  rows are read in order (a note says so).
- `.pt` / `.pth`: `torch.load(weights_only=True, mmap=True)` of a tensor, or a dict of tensors
  with `key`. Needs torch; nothing else does.
- HDF5 (`.h5`, `.hdf5`, ...): the dataset named by `key` (or the only one), sliced by h5py.
- zarr (a directory store, usually `.zarr`): an array, or a group with `key`.
- MATLAB `.mat`: the variable named by `key` (or the only numeric one), in MATLAB's axis order.
  A v7.3 file (HDF5) is streamed; older ones are read whole (a note says so).

The file holds `(N, *S)` samples. `S` equal to the model's sample shape is used as is; `S` with
the same sizes apart from size-1 axes (`(N, 224)` for `(1, 224)`) is reshaped, with a note. With
`cube=True` an `(H, W, B)` hyperspectral cube is read as `H * W` pixel spectra in row-major order.
Any real numeric dtype is converted to the model dtype batch by batch, with a note.
"""

from __future__ import annotations

import math
import os

import numpy as np

from . import _sources
from ._durable import path_kind
from ._errors import JaxjacError

_EXTENSIONS = {".npy": "npy", ".npz": "npz", ".pt": "torch", ".pth": "torch", ".zarr": "zarr", ".mat": "mat"}
_EXTENSIONS.update(dict.fromkeys((".h5", ".hdf5", ".hdf", ".he5", ".nc"), "hdf5"))


class Reader:
    """Row-range access to one input file's samples.

    **Attributes:** `path`; `n_samples` (rows, `H * W` for a cube); `sample_shape`, what `read`
    delivers per sample; `source_dtype`, the file's dtype; `notes`, human-readable remarks about
    conversions made.
    """

    def __init__(self, path: str, source, *, sample_shape, dtype, cube: bool, notes: list[str]) -> None:
        self.path = path
        self.sample_shape = tuple(sample_shape)
        self.dtype = np.dtype(dtype)
        self.source_dtype = source.dtype
        self.notes = notes
        self._source = source
        self._width = source.shape[1] if cube else 0
        self.n_samples = source.shape[0] * source.shape[1] if cube else source.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples `start:stop`, shaped `(stop - start, *sample_shape)`, C-contiguous, in the model dtype."""
        if not 0 <= start <= stop <= self.n_samples:
            raise ValueError(f"rows {start}:{stop} are outside 0:{self.n_samples} of {self.path}")
        n = stop - start
        if n == 0:
            return np.empty((0, *self.sample_shape), self.dtype)
        if self._width:
            w = self._width
            first, last = start // w, -(-stop // w)
            block = self._source.get(first, last)
            block = block.reshape(-1, block.shape[-1])[start - first * w : stop - first * w]
        else:
            block = self._source.get(start, stop)
        return np.ascontiguousarray(block, dtype=self.dtype).reshape((n, *self.sample_shape))

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_reader(
    path,
    *,
    sample_shape: tuple[int, ...],
    dtype,
    key: str | None = None,
    cube: bool = False,
    flag: str = "DATA",
) -> Reader:
    """Open an input file for streaming.

    **Arguments:**
    - `path`: the file (or zarr directory).
    - `sample_shape`: the model's sample shape, e.g. `(1, 224)`.
    - `dtype`: the model dtype that `read` returns.
    - `key`: the array inside an `.npz`, `.pt` dict, HDF5 file or zarr group.
    - `cube`: read an `(H, W, B)` cube as `H * W` samples of `B` values.
    - `flag`: how errors name the file (the CLI argument it came from).

    **Returns:** a `Reader`. Raises `JaxjacError` (one line) for any problem with the file.
    """
    path = os.fspath(path)
    where = f"{flag} {path}"
    kind = _detect(path, where)
    if kind == "npy" and key is not None:
        raise JaxjacError(f"{where} is a .npy file holding one array; --key `{key}` does not apply")
    opener = {
        "npy": lambda: _sources.open_npy(path, where),
        "npz": lambda: _sources.open_npz(path, where, key),
        "torch": lambda: _sources.open_torch(path, where, key),
        "hdf5": lambda: _sources.open_hdf5(path, where, key),
        "zarr": lambda: _sources.open_zarr(path, where, key),
        "mat": lambda: _sources.open_mat(path, where, key),
    }[kind]
    try:
        source = opener()
    except PermissionError:
        raise JaxjacError(f"{where} is not readable (permission denied)") from None
    try:
        notes = list(source.notes)
        notes += _check_dtype(source.dtype, np.dtype(dtype), where)
        notes += match_sample_shape(source.shape, tuple(sample_shape), where, cube)
        reader = Reader(path, source, sample_shape=sample_shape, dtype=dtype, cube=cube, notes=notes)
        if reader.n_samples:  # surface corrupt data now rather than hours into a run
            reader.read(0, 1)
            if not source.sequential:
                reader.read(reader.n_samples - 1, reader.n_samples)
    except BaseException:
        source.close()
        raise
    return reader


def _detect(path: str, where: str) -> str:
    found = path_kind(path)
    if found == "no such file":
        raise JaxjacError(f"{where} does not exist")
    if found == "a folder":
        if any(os.path.exists(os.path.join(path, m)) for m in ("zarr.json", ".zarray", ".zgroup")):
            return "zarr"
        raise JaxjacError(f"{where} is a folder but not a zarr store (no zarr.json, .zarray or .zgroup in it)")
    if found != "a file":  # reading a pipe or a device would never end
        raise JaxjacError(f"{where}: expected a data file (.npy, .npz, .h5, .mat, .zarr); found {found}")
    if not os.access(path, os.R_OK):
        raise JaxjacError(f"{where} is not readable (permission denied)")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise JaxjacError(f"{where} could not be read ({e.strerror or e})") from None
    ext = _EXTENSIONS.get(os.path.splitext(path)[1].lower())
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"MATLAB") or ext == "mat":  # v5 and v7.3 open with a text header; v4 has none
        return "mat"
    if head == _sources.HDF5_MAGIC:
        return "hdf5"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "torch" if ext == "torch" or _is_torch_zip(path) else "npz"
    if head[:1] == b"\x80" and ext == "torch":  # a legacy (pickle) torch file
        return "torch"
    if ext == "hdf5":
        h5py = _sources.need("h5py", f"reading HDF5 file {path}")
        if h5py.is_hdf5(path):  # an HDF5 file with a user block
            return "hdf5"
    if ext is None:
        known = ", ".join(sorted(_EXTENSIONS))
        raise JaxjacError(f"{where} is not in a format jaxjac reads ({known}, or a zarr folder)")
    size = os.path.getsize(path)
    raise JaxjacError(f"{where} is not a valid {ext} file ({size:,} bytes, unrecognised signature {head[:8]!r})")


def _is_torch_zip(path: str) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _check_dtype(source: np.dtype, target: np.dtype, where: str) -> list[str]:
    if source == target:
        return []
    if source.kind not in "biuf" and source.name != "bfloat16":
        raise JaxjacError(f"{where} holds {source} data; expected real numbers convertible to {target}")
    beyond = ""
    if source.kind == "f" and target.kind == "f" and source.itemsize > target.itemsize:
        beyond = f" (values beyond {target}'s range, ±{np.finfo(target).max:.3g}, become Inf: their rows are NaN)"
    return [f"{where} holds {source}; converting to {target} batch by batch{beyond}"]


def _squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def match_sample_shape(shape: tuple[int, ...], sample_shape: tuple[int, ...], where: str, cube: bool) -> list[str]:
    """Check that data of array shape `shape` holds samples of `sample_shape`, up to size-1 axes.

    **Returns:** notes on any reshaping needed. Raises `JaxjacError` naming
    `where`, both shapes, and `--cube` when that would fit.
    """
    if cube:
        if len(shape) != 3:
            raise JaxjacError(f"{where} holds an array of shape {shape}; a cube must be (H, W, bands)")
        sample, what = shape[2:], f"pixel spectra of {shape[2]} bands"
    else:
        if len(shape) < 2:
            raise JaxjacError(
                f"{where} holds an array of shape {shape}; expected (N, *{sample_shape}) samples"
                + (" (pass --cube for an (H, W, bands) cube)" if len(shape) == 3 else "")
            )
        sample, what = shape[1:], f"samples of shape {shape[1:]}"
    if sample == sample_shape:
        return []
    if math.prod(sample) == math.prod(sample_shape) and _squeeze(sample) == _squeeze(sample_shape):
        n = f"{shape[0]}x{shape[1]} pixels" if cube else f"{shape[0]}"
        return [f"{where}: {n} {what} reshaped to {sample_shape}"]
    as_cube = len(shape) == 3 and not cube and _squeeze(shape[2:]) == _squeeze(sample_shape)
    hint = " (is it an (H, W, bands) cube? pass --cube)" if as_cube else ""
    raise JaxjacError(f"{where} holds {what}; the model expects {sample_shape}{hint}")
