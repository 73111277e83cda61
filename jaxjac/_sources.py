"""Row-sliceable array sources, one per input format, that never load a file whole.

A source has `.shape`, `.dtype`, `.notes`, `.get(lo, hi)` (rows `lo:hi` along axis 0 as a
NumPy array, in the file's own dtype) and `.close()`. `jaxjac._readers` picks one by sniffing
the file and adds sample-shape matching and dtype conversion on top.

h5py, zarr and torch are imported only when a file of that format is opened.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib

import numpy as np

from ._errors import JaxjacError, first_line

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"  # the first 8 bytes of an HDF5 superblock
BF16_ATTR = "jaxjac_dtype"  # zarr attribute marking uint16 bit patterns as bfloat16 (see `_writers`)


def need(module: str, what: str):
    """Import an optional dependency, or explain how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise JaxjacError(f"{what} needs the `{module}` package; install it with `pip install 'jaxjac[io]'`") from None


_NPY_VERSIONS = ((1, 0), (2, 0), (3, 0))


def npy_header(f, where: str, size: int, start: int = 0):
    """Parse the .npy header at `start` of the open binary file `f`; check the data fits in `size` bytes.

    **Returns:** `(shape, fortran_order, dtype, data_offset)`, with `data_offset` absolute.
    """
    fmt = np.lib.format
    f.seek(start)
    try:
        version = fmt.read_magic(f)
        if version not in _NPY_VERSIONS:
            raise ValueError(f"format version {version}; numpy writes {', '.join(map(str, _NPY_VERSIONS))}")
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(f, max_header_size=1 << 20)
    except Exception as e:  # any failure to parse untrusted header bytes, tokenize's included
        raise JaxjacError(f"{where} is not a valid .npy file ({type(e).__name__}: {first_line(e)})") from None
    if any(d < 0 for d in shape):
        raise JaxjacError(f"{where} is not a valid .npy file: its header gives the negative shape {tuple(shape)}")
    if dtype.hasobject:
        raise JaxjacError(f"{where} holds Python objects (dtype {dtype}); expected a numeric array")
    offset = f.tell()
    need_bytes = math.prod(shape) * dtype.itemsize  # Python ints: a forged shape cannot wrap around
    have = size - (offset - start)
    if have < need_bytes:
        raise JaxjacError(
            f"{where} is truncated: its header promises a {tuple(shape)} {dtype} array ({need_bytes:,} bytes of data) "
            f"but only {max(have, 0):,} bytes follow (an interrupted copy or download?)"
        )
    return tuple(shape), fortran, dtype, offset


class ArraySource:
    """An array already sliceable along axis 0 (a memmap, an h5py/zarr array, a tensor)."""

    def __init__(self, array, *, shape=None, dtype=None, notes=(), get=None, close=None, sequential=False) -> None:
        self.array = array
        self.sequential = sequential  # True when only in-order reads are cheap
        self.shape = tuple(array.shape if shape is None else shape)
        self.dtype = np.dtype(dtype if dtype is not None else array.dtype)
        self.notes = list(notes)
        self._get = get or (lambda lo, hi: np.asarray(array[lo:hi]))
        self._close = close

    def get(self, lo: int, hi: int) -> np.ndarray:
        return self._get(lo, hi)

    def close(self) -> None:
        if self._close is not None:
            self._close()
        self.array = self._get = None


def open_npy(path: str, where: str) -> ArraySource:
    with open(path, "rb") as f:
        shape, _, dtype, _ = npy_header(f, where, os.fstat(f.fileno()).st_size)
    if 0 in shape:
        return ArraySource(np.load(path))
    return ArraySource(np.load(path, mmap_mode="r"))


def open_npz(path: str, where: str, key: str | None) -> ArraySource:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise JaxjacError(f"{where} is not a readable .npz archive ({e})") from None
    names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    name = pick_key(names, key, where, "arrays")
    info = zf.getinfo(name + ".npy")
    label = f"{where} (array `{name}`)"
    try:
        if info.compress_type == zipfile.ZIP_STORED:
            zf.close()
            return _npz_stored(path, label, info)
        return _npz_compressed(zf, label, info, name, where)
    except JaxjacError:
        zf.close()
        raise


def _npz_stored(path: str, label: str, info: zipfile.ZipInfo) -> ArraySource:
    # An uncompressed member is a plain .npy at a fixed offset: memory-map it in place.
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise JaxjacError(f"{label} is corrupt (bad zip local header)")
        n_name, n_extra = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + n_name + n_extra
        shape, fortran, dtype, offset = npy_header(f, label, info.file_size, start)
    if 0 in shape:
        return ArraySource(np.zeros(shape, dtype))
    mm = np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset, order="F" if fortran else "C")
    return ArraySource(mm)


def _npz_compressed(zf: zipfile.ZipFile, label: str, info, name: str, where: str) -> ArraySource:
    # A compressed member can't be memory-mapped; decompress it as a stream. `ZipExtFile.seek`
    # is cheap going forward, while a backward seek restarts decompression from the beginning.
    stream = zf.open(info)
    shape, fortran, dtype, offset = npy_header(stream, label, info.file_size)
    if fortran and len(shape) > 1:
        raise JaxjacError(
            f"{label} is compressed and Fortran-ordered, so it can't be read in row slices; "
            "re-save it with np.save (or np.savez without compression)"
        )
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def get(lo: int, hi: int) -> np.ndarray:
        try:
            stream.seek(offset + lo * row_bytes)
            buf = stream.read((hi - lo) * row_bytes)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
            raise JaxjacError(f"{label} is corrupt: decompressing rows {lo}:{hi} failed ({e})") from None
        if len(buf) != (hi - lo) * row_bytes:
            raise JaxjacError(f"{label} is truncated: rows {lo}:{hi} are missing")
        return np.frombuffer(buf, dtype).reshape((hi - lo, *shape[1:]))

    def close() -> None:
        stream.close()
        zf.close()

    note = (
        f"{where}: array `{name}` is compressed, so it can't be memory-mapped; it is decompressed "
        "as a stream (fast in order, an out-of-order read restarts from the start)"
    )
    return ArraySource(None, shape=shape, dtype=dtype, notes=[note], get=get, close=close, sequential=True)


def pick_key(names: list[str], key: str | None, where: str, what: str) -> str:
    """Choose `key` among `names`, or the only name when `key` is None."""
    listing = ", ".join(f"`{n}`" for n in names[:20]) + (" ..." if len(names) > 20 else "") or "none"
    if key is None:
        if len(names) == 1:
            return names[0]
        raise JaxjacError(f"{where} holds {len(names)} {what} ({listing}); choose one with --key")
    if key not in names:
        raise JaxjacError(f"--key `{key}` is not in {where}; available {what}: {listing}")
    return key


def open_hdf5(path: str, where: str, key: str | None, *, matlab: bool = False) -> ArraySource:
    """An HDF5 dataset; with `matlab`, one of a MATLAB v7.3 file, whose axes are read in MATLAB's order.

    MATLAB stores arrays column-major, so HDF5 sees an `(H, W, B)` cube as
    `(B, W, H)`: the source reverses the axes back, reading rows along the
    stored last axis.
    """
    h5py = need("h5py", f"reading HDF5 file {path}")
    try:
        f = h5py.File(path, "r")
        names: list[str] = []
        f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise JaxjacError(f"{where} is not a readable HDF5 file ({first_line(e)})") from None
    if matlab:  # MATLAB's own bookkeeping: the targets of cell and struct references
        names = [n for n in names if not n.startswith(("#refs#", "#subsystem#"))]
    key = key.strip("/") if key else key
    try:
        if key is not None and key not in names and _links_to_a_dataset(h5py, f, key, where):
            names.append(key)  # visititems does not follow links
        ds = f[pick_key(names, key, where, "datasets")]
        if ds.dtype.kind not in "biuf":
            raise JaxjacError(f"{where} dataset `{ds.name}` holds {ds.dtype}; expected a numeric array")
    except JaxjacError:
        f.close()
        raise
    notes = []
    if ds.size and not ds.is_virtual and ds.id.get_storage_size() == 0:
        notes.append(
            f"{where} dataset `{ds.name}` has no data written (its storage is empty): every sample reads as the "
            f"fill value {ds.fillvalue}"
        )

    def get(lo: int, hi: int) -> np.ndarray:
        try:
            return np.transpose(ds[..., lo:hi]) if matlab else ds[lo:hi]
        except (OSError, RuntimeError, ValueError) as e:
            raise JaxjacError(f"{where} is corrupt: reading rows {lo}:{hi} failed ({first_line(e)})") from None

    return ArraySource(ds, shape=ds.shape[::-1] if matlab else None, get=get, close=f.close, notes=notes)


# MATLAB writes a v7.3 file as HDF5 behind a 512-byte header of its own.
_MAT73_HDF5_OFFSET = 512

# MATLAB classes that hold numbers (`scipy.io.whosmat` names them so); logical reads as uint8.
_MAT_NUMERIC = frozenset(
    {"double", "single", "logical", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}
)


def open_mat(path: str, where: str, key: str | None) -> ArraySource:
    """A variable of a MATLAB `.mat` file, in the shape MATLAB shows it.

    A v7.3 file is HDF5 and is streamed (`open_hdf5`); v4 to v7 files, which
    cannot be sliced, are read whole by SciPy (their format caps them at 2 GB).
    """
    with open(path, "rb") as f:
        f.seek(_MAT73_HDF5_OFFSET)
        if f.read(len(HDF5_MAGIC)) == HDF5_MAGIC:
            return open_hdf5(path, where, key, matlab=True)
    import scipy.io

    try:
        listing = scipy.io.whosmat(path)
    except Exception as e:  # scipy raises many types on bytes it cannot parse
        raise JaxjacError(f"{where} is not a readable MATLAB file ({first_line(e)})") from None
    numeric = [name for name, _, kind in listing if kind in _MAT_NUMERIC]
    name = pick_key(numeric, key, where, "numeric arrays")
    try:
        array = np.asarray(scipy.io.loadmat(path, variable_names=[name])[name])
    except Exception as e:  # as above
        raise JaxjacError(f"{where} is corrupt: reading array `{name}` failed ({first_line(e)})") from None
    note = (
        f"{where}: MATLAB files before v7.3 cannot be read in slices, so array `{name}` ({array.nbytes / 2**20:,.1f} "
        "MiB) was read whole; save with -v7.3 (HDF5) or as .npy to stream it"
    )
    return ArraySource(array, notes=[note])


def _links_to_a_dataset(h5py, f, key: str, where: str) -> bool:
    """Whether `key` is a link to a dataset; a dangling link is an error that says where it points."""
    try:
        link = f.get(key, getlink=True)
    except (KeyError, ValueError, RuntimeError, OSError):
        return False
    try:
        if isinstance(f.get(key), h5py.Dataset):
            return True
    except (KeyError, ValueError, RuntimeError, OSError):
        pass
    if isinstance(link, h5py.SoftLink):
        raise JaxjacError(f"--key `{key}` in {where} is a link to `{link.path}`, which does not exist in the file")
    if isinstance(link, h5py.ExternalLink):
        raise JaxjacError(
            f"--key `{key}` in {where} is a link to `{link.path}` in the file {link.filename}, which cannot be "
            "opened (HDF5 looks for it beside the file and in the current folder)"
        )
    return False


def open_zarr(path: str, where: str, key: str | None) -> ArraySource:
    zarr = need("zarr", f"reading zarr store {path}")
    try:
        node = zarr.open(path, mode="r")
        if isinstance(node, zarr.Array):
            if key is not None:
                raise JaxjacError(f"{where} is a single zarr array; --key `{key}` does not apply")
            arr = node
        else:
            names = sorted(n for n, m in node.members(max_depth=None) if isinstance(m, zarr.Array))
            arr = node[pick_key(names, key.strip("/") if key else key, where, "arrays")]
    except JaxjacError:
        raise
    except Exception as e:  # zarr raises many types for a broken store
        raise JaxjacError(f"{where} is not a readable zarr store ({type(e).__name__}: {e})") from None
    notes = _missing_chunks(arr, where)
    dtype = arr.dtype
    if arr.attrs.get(BF16_ATTR) == "bfloat16" and dtype == np.uint16:
        import ml_dtypes

        dtype = np.dtype(ml_dtypes.bfloat16)

    def get(lo: int, hi: int) -> np.ndarray:
        try:
            return np.asarray(arr[lo:hi]).view(dtype)
        except Exception as e:
            raise JaxjacError(f"{where} is corrupt: reading rows {lo}:{hi} failed ({type(e).__name__}: {e})") from None

    return ArraySource(arr, dtype=dtype, get=get, notes=notes)


def _missing_chunks(arr, where: str) -> list[str]:
    """A note when chunks of the zarr array are not stored: zarr reads them as its fill value.

    That is how zarr stores chunks that hold only the fill value, and it is
    also what an unfinished copy looks like; the note lets the user tell.
    """
    try:
        stored, expected = arr.nchunks_initialized, arr.nchunks
    except Exception:  # a store that cannot list its keys: nothing to check against
        return []
    if stored >= expected:
        return []
    return [
        f"{where}: {expected - stored} of its {expected} chunks are not stored and read as the fill value "
        f"{arr.fill_value}; zarr leaves out chunks that hold only that value, but so does an unfinished copy"
    ]


def open_torch(path: str, where: str, key: str | None) -> ArraySource:
    torch = need("torch", f"reading {path}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format can't be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise JaxjacError(f"{where} could not be loaded with torch.load(weights_only=True) ({first_line(e)})") from None
    if isinstance(obj, dict):
        names = [str(k) for k, v in obj.items() if isinstance(v, torch.Tensor)]
        obj = obj[pick_key(names, key, where, "tensors")]
    elif key is not None:
        raise JaxjacError(f"{where} holds a single {type(obj).__name__}; --key `{key}` does not apply")
    if not isinstance(obj, torch.Tensor):
        raise JaxjacError(f"{where} holds a {type(obj).__name__}; expected a tensor or a dict of tensors")
    obj = obj.detach()  # a tensor saved with requires_grad=True reads like any other
    if obj.dtype == torch.bfloat16:
        import ml_dtypes

        return ArraySource(obj, dtype=ml_dtypes.bfloat16, get=lambda lo, hi: obj[lo:hi].float().numpy())
    try:
        dtype = obj[:0].numpy().dtype
    except (TypeError, RuntimeError):
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        raise JaxjacError(f"{where} holds a {obj.dtype} tensor; expected a real numeric tensor")
    return ArraySource(obj, dtype=dtype, get=lambda lo, hi: obj[lo:hi].numpy())
