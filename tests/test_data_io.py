"""Streaming dataset readers and Jacobian writers (jaxjac._data)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zipfile

import h5py
import ml_dtypes
import numpy as np
import pytest
import scipy.io
import torch
import zarr

from jaxjac import JaxjacError
from jaxjac._data import (
    check_free_space,
    create_writer,
    open_reader,
    open_writer_for_resume,
    partial_path,
    required_bytes,
)

N, L = 50, 16
SLICES = [(0, 7), (30, 50), (7, 30), (13, 14), (49, 50), (5, 5), (0, 50)]  # out of order on purpose


def _data(shape=(N, 1, L), dtype=np.float32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def _save(fmt: str, folder, x: np.ndarray, key: str = "x"):
    """Write `x` in format `fmt` under `folder`; return (path, key to pass)."""
    if fmt == "npy":
        np.save(p := folder / "X.npy", x)
        return p, None
    if fmt == "npz":
        np.savez(p := folder / "X.npz", **{key: x, "y": np.arange(3)})
        return p, key
    if fmt == "npz-compressed":
        np.savez_compressed(p := folder / "X.npz", **{key: x})
        return p, None
    if fmt == "pt":
        torch.save(torch.from_numpy(x), p := folder / "X.pt")
        return p, None
    if fmt == "pt-dict":
        torch.save({key: torch.from_numpy(x), "y": torch.zeros(3)}, p := folder / "X.pth")
        return p, key
    if fmt == "h5":
        with h5py.File(p := folder / "X.h5", "w") as f:
            f.create_dataset(f"group/{key}", data=x, chunks=(min(7, len(x)), *x.shape[1:]))
            f.create_dataset("labels", data=np.arange(3))
        return p, f"group/{key}"
    if fmt == "zarr":
        zarr.create_array(p := folder / "X.zarr", data=x, chunks=(8, *x.shape[1:]))
        return p, None
    if fmt == "mat5":
        scipy.io.savemat(p := folder / "X.mat", {key: x, "y": np.arange(3.0)})
        return p, key
    if fmt == "mat73":
        _save_mat73(p := folder / "X.mat", {key: x, "y": np.arange(3.0)})
        return p, key
    if fmt == "zarr-group":
        g = zarr.open_group(p := folder / "G.zarr", mode="w")
        g.create_array(key, data=x, chunks=(8, *x.shape[1:]))
        g.create_array("y", data=np.arange(3))
        return p, key
    raise AssertionError(fmt)


def _save_mat73(path, arrays: dict) -> None:
    """Write `arrays` as MATLAB -v7.3 does: HDF5 behind a 512-byte text header, each array column-major."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=np.asarray(array).T).attrs["MATLAB_class"] = np.bytes_("double")
        f.create_dataset("#refs#/a", data=np.zeros(2))  # MATLAB's store for cell contents: not a variable
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Sun Nov 29 2026 HDF5 schema 1.00 .".ljust(128))


FORMATS = ["npy", "npz", "npz-compressed", "pt", "pt-dict", "h5", "mat5", "mat73", "zarr", "zarr-group"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_slices(tmp_path, fmt):
    x = _data()
    path, key = _save(fmt, tmp_path, x)
    with open_reader(path, sample_shape=(1, L), dtype=np.float32, key=key) as r:
        assert (r.n_samples, r.sample_shape, r.source_dtype) == (N, (1, L), np.float32)
        assert r.path == str(path)
        for a, b in SLICES:
            got = r.read(a, b)
            assert got.dtype == np.float32 and got.flags.c_contiguous
            np.testing.assert_array_equal(got, x[a:b])
        with pytest.raises(ValueError, match="outside"):
            r.read(40, 51)
    if fmt == "npz-compressed":
        assert any("compressed" in n and "memory-mapped" in n for n in r.notes)
    elif fmt == "mat5":
        assert r.notes == [
            f"DATA {path}: MATLAB files before v7.3 cannot be read in slices, so array `x` (0.0 MiB) was read whole; "
            "save with -v7.3 (HDF5) or as .npy to stream it"
        ]
    else:
        assert r.notes == []


@pytest.mark.parametrize("fmt", ["npy", "h5", "zarr"])
def test_nl_samples_reshaped_to_model_shape(tmp_path, fmt):
    x = _data((N, L))
    path, key = _save(fmt, tmp_path, x)
    r = open_reader(path, sample_shape=(1, L), dtype="float32", key=key)
    np.testing.assert_array_equal(r.read(3, 9), x[3:9, None, :])
    assert r.notes == [f"DATA {path}: {N} samples of shape ({L},) reshaped to (1, {L})"]
    r.close()
    # ...and the other way round: (N, 1, L) data for a model of sample shape (L,)
    (sub := tmp_path / "sub").mkdir()
    path, key = _save(fmt, sub, _data())
    r = open_reader(path, sample_shape=(L,), dtype="float32", key=key)
    assert r.read(0, 2).shape == (2, L)
    r.close()


def test_wrong_sample_shape(tmp_path):
    np.save(tmp_path / "X.npy", np.zeros((4, 3, 100), np.float32))
    msg = r"X\.npy holds samples of shape \(3, 100\); the model expects \(1, 224\)$"
    with pytest.raises(JaxjacError, match=msg):
        open_reader(tmp_path / "X.npy", sample_shape=(1, 224), dtype="float32")
    np.save(tmp_path / "V.npy", np.zeros((224,), np.float32))
    with pytest.raises(JaxjacError, match=r"V\.npy holds an array of shape \(224,\); expected \(N, \*\(1, 224\)\)"):
        open_reader(tmp_path / "V.npy", sample_shape=(1, 224), dtype="float32")


@pytest.mark.parametrize("fmt", ["npy", "h5", "mat5", "mat73", "zarr"])
def test_cube_read_as_pixel_spectra(tmp_path, fmt):
    cube = _data((5, 7, L))
    path, key = _save(fmt, tmp_path, cube)
    r = open_reader(path, sample_shape=(1, L), dtype="float32", key=key, cube=True)
    assert r.n_samples == 35
    pixels = cube.reshape(35, 1, L)
    for a, b in [(0, 35), (3, 4), (6, 15), (20, 35), (13, 13)]:
        np.testing.assert_array_equal(r.read(a, b), pixels[a:b])
    assert r.notes[-1] == f"DATA {path}: 5x7 pixels pixel spectra of {L} bands reshaped to (1, {L})"
    assert len(r.notes) == (2 if fmt == "mat5" else 1)  # and the note that it was read whole
    with pytest.raises(JaxjacError, match=rf"pixel spectra of {L} bands; the model expects \(1, 8\)"):
        open_reader(path, sample_shape=(1, 8), dtype="float32", key=key, cube=True)
    with pytest.raises(JaxjacError, match=r"expects \(1, 16\) \(is it an \(H, W, bands\) cube\? pass --cube\)"):
        open_reader(path, sample_shape=(1, L), dtype="float32", key=key)


def test_cube_must_be_3d(tmp_path):
    np.save(tmp_path / "X.npy", _data((N, L)))
    with pytest.raises(
        JaxjacError, match=r"X\.npy holds an array of shape \(50, 16\); a cube must be \(H, W, bands\)$"
    ):
        open_reader(tmp_path / "X.npy", sample_shape=(1, L), dtype="float32", cube=True)


@pytest.mark.parametrize("dtype", [np.float64, np.int16, np.uint8, np.float16])
def test_dtype_converted_with_note(tmp_path, dtype):
    x = (_data() * 50).astype(dtype)
    np.save(tmp_path / "X.npy", x)
    r = open_reader(tmp_path / "X.npy", sample_shape=(1, L), dtype="float32", flag="--data")
    assert r.source_dtype == dtype
    beyond = " (values beyond float32's range, ±3.4e+38, become Inf: their rows are NaN)" if dtype == np.float64 else ""
    assert r.notes == [
        f"--data {tmp_path / 'X.npy'} holds {np.dtype(dtype)}; converting to float32 batch by batch{beyond}"
    ]
    got = r.read(10, 20)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x[10:20].astype(np.float32))


def test_bfloat16_torch_tensor(tmp_path):
    t = torch.from_numpy(_data()).to(torch.bfloat16)
    torch.save(t, tmp_path / "X.pt")
    r = open_reader(tmp_path / "X.pt", sample_shape=(1, L), dtype="float32")
    assert r.source_dtype == ml_dtypes.bfloat16 and "bfloat16" in r.notes[0]
    np.testing.assert_array_equal(r.read(0, N), t.float().numpy())


def test_a_tensor_saved_with_requires_grad_reads_like_any_other(tmp_path):
    t = torch.from_numpy(_data()).requires_grad_(True)
    torch.save(t, tmp_path / "X.pt")
    r = open_reader(tmp_path / "X.pt", sample_shape=(1, L), dtype="float32")
    np.testing.assert_array_equal(r.read(0, N), _data())


@pytest.mark.parametrize("x", [np.zeros((4, 1, L), np.complex64), np.full((4, 1, L), "a")])
def test_non_numeric_refused(tmp_path, x):
    np.save(tmp_path / "X.npy", x)
    with pytest.raises(
        JaxjacError, match=rf"X\.npy holds {x.dtype} data; expected real numbers convertible to float32"
    ):
        open_reader(tmp_path / "X.npy", sample_shape=(1, L), dtype="float32")


def test_missing_and_unreadable_files(tmp_path, monkeypatch):
    with pytest.raises(JaxjacError, match=r"^DATA .*nope\.npy does not exist$"):
        open_reader(tmp_path / "nope.npy", sample_shape=(1, L), dtype="float32")
    np.save(tmp_path / "X.npy", _data())
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p).endswith("X.npy") else real_access(p, m))
    with pytest.raises(JaxjacError, match=r"^--data .*X\.npy is not readable \(permission denied\)$"):
        open_reader(tmp_path / "X.npy", sample_shape=(1, L), dtype="float32", flag="--data")
    (tmp_path / "X.csv").write_text("1,2\n")
    with pytest.raises(JaxjacError, match=r"X\.csv is not in a format jaxjac reads \(\.h5, .*zarr folder\)"):
        open_reader(tmp_path / "X.csv", sample_shape=(1, L), dtype="float32")
    (tmp_path / "folder").mkdir()
    with pytest.raises(JaxjacError, match=r"folder is a folder but not a zarr store"):
        open_reader(tmp_path / "folder", sample_shape=(1, L), dtype="float32")


def test_truncated_and_corrupt_npy(tmp_path):
    np.save(p := tmp_path / "X.npy", _data())
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    with pytest.raises(JaxjacError, match=r"X\.npy is truncated: its header promises a \(50, 1, 16\) float32 array"):
        open_reader(p, sample_shape=(1, L), dtype="float32")
    p.write_bytes(data[:40])
    with pytest.raises(JaxjacError, match=r"X\.npy is not a valid \.npy file"):
        open_reader(p, sample_shape=(1, L), dtype="float32")
    p.write_bytes(b"garbage" * 20)
    with pytest.raises(JaxjacError, match=r"X\.npy is not a valid npy file \(140 bytes, unrecognised signature"):
        open_reader(p, sample_shape=(1, L), dtype="float32")


def _forged_npy(path, header: str, version: tuple[int, int] = (1, 0)) -> None:
    """A .npy file whose header says `header`, padded as numpy pads it, with no data."""
    text = header.encode("latin1")
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY" + bytes(version) + struct.pack("<H", len(text)) + text)


@pytest.mark.parametrize(
    ("shape", "version", "message"),
    [
        ("(-3, 1, 16)", (1, 0), r"is not a valid \.npy file: its header gives the negative shape \(-3, 1, 16\)"),
        ("(2**40, 2**40, 16)", (1, 0), r"is truncated: its header promises a \(1099511627776, 1099511627776, 16\)"),
        ("(3, 1, 16)", (9, 0), r"is not a valid \.npy file \(ValueError: format version \(9, 0\)"),
        ("(3, 1", (1, 0), r"is not a valid \.npy file \(TokenError"),
    ],
    ids=["negative", "overflowing", "version-9", "cut-header"],
)
def test_forged_npy_headers_are_refused_in_one_line(tmp_path, shape, version, message):
    from pathlib import Path

    from jaxjac.cli._common import load_npy

    shape = shape.replace("2**40", str(2**40))
    tail = "" if shape.endswith("1") else ", }"
    _forged_npy(p := tmp_path / "X.npy", f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}{tail}", version)
    with pytest.raises(JaxjacError, match=message):
        open_reader(p, sample_shape=(1, L), dtype="float32")
    with pytest.raises(JaxjacError, match=r"--labels \S+X\.npy " + message):
        load_npy(Path(p), "--labels", "integer labels (N,)")


def test_corrupt_npz(tmp_path):
    np.savez(p := tmp_path / "X.npz", x=_data())
    p.write_bytes(p.read_bytes()[:-500])
    with pytest.raises(JaxjacError, match=r"X\.npz is not a readable \.npz archive"):
        open_reader(p, sample_shape=(1, L), dtype="float32")
    # a compressed member whose stream is damaged: found by the first-row probe
    np.savez_compressed(p, x=_data((2000, 1, L)))
    with zipfile.ZipFile(p) as zf:
        offset = zf.getinfo("x.npy").header_offset + 200
    raw = bytearray(p.read_bytes())
    raw[offset : offset + 64] = b"\xff" * 64
    p.write_bytes(bytes(raw))
    with pytest.raises(JaxjacError, match=r"X\.npz \(array `x`\) (is corrupt|is not a valid \.npy)"):
        open_reader(p, sample_shape=(1, L), dtype="float32")


def test_corrupt_hdf5(tmp_path):
    (p := tmp_path / "X.h5").write_bytes(b"\x00" * 4096)
    with pytest.raises(JaxjacError, match=r"X\.h5 is not a valid hdf5 file \(4,096 bytes, unrecognised signature"):
        open_reader(p, sample_shape=(1, L), dtype="float32", key="x")
    path, key = _save("h5", tmp_path, _data((2000, 1, L)))
    path.write_bytes(path.read_bytes()[:60_000])
    with pytest.raises(JaxjacError, match=r"X\.h5 (is not a readable HDF5 file|is corrupt: reading rows)"):
        open_reader(path, sample_shape=(1, L), dtype="float32", key=key)


def test_hdf5_links_are_followed_and_a_dangling_one_says_where_it_points(tmp_path):
    x = _data()
    with h5py.File(p := tmp_path / "X.h5", "w") as f:
        f.create_dataset("spectra/train", data=x)
        f["train"] = h5py.SoftLink("/spectra/train")
        f["gone"] = h5py.SoftLink("/nowhere")
        f["elsewhere"] = h5py.ExternalLink("missing.h5", "/X")
    reader = open_reader(p, sample_shape=(1, L), dtype="float32", key="train")
    np.testing.assert_array_equal(reader.read(0, N), x)
    reader.close()
    with pytest.raises(JaxjacError, match=r"--key `gone` in DATA \S+X\.h5 is a link to `/nowhere`, which does not"):
        open_reader(p, sample_shape=(1, L), dtype="float32", key="gone")
    with pytest.raises(JaxjacError, match=r"--key `elsewhere` .* is a link to `/X` in the file missing\.h5, which can"):
        open_reader(p, sample_shape=(1, L), dtype="float32", key="elsewhere")
    with pytest.raises(JaxjacError, match=r"--key `absent` is not in DATA \S+X\.h5; available datasets: `spectra/"):
        open_reader(p, sample_shape=(1, L), dtype="float32", key="absent")


def test_an_hdf5_dataset_never_written_is_noted(tmp_path):
    with h5py.File(p := tmp_path / "X.h5", "w") as f:
        f.create_dataset("X", shape=(N, 1, L), dtype="f4")
        f.create_dataset("Y", data=_data())
    with open_reader(p, sample_shape=(1, L), dtype="float32", key="X") as reader:
        assert reader.notes == [
            f"DATA {p} dataset `/X` has no data written (its storage is empty): every sample reads as the fill value "
            "0.0"
        ]
    with open_reader(p, sample_shape=(1, L), dtype="float32", key="Y") as reader:
        assert reader.notes == []


@pytest.mark.parametrize(
    ("fmt", "listing"),
    [
        ("npz", "`x`, `y`"),
        ("pt-dict", "`x`, `y`"),
        ("h5", "`group/x`, `labels`"),
        ("zarr-group", "`x`, `y`"),
    ],
)
def test_missing_key_lists_available(tmp_path, fmt, listing):
    path, _ = _save(fmt, tmp_path, _data())
    what = "datasets" if fmt == "h5" else "tensors" if fmt == "pt-dict" else "arrays"
    with pytest.raises(JaxjacError, match=rf"^--key `nope` is not in DATA .*; available {what}: {listing}$"):
        open_reader(path, sample_shape=(1, L), dtype="float32", key="nope")
    with pytest.raises(JaxjacError, match=rf"holds 2 {what} \({listing}\); choose one with --key$"):
        open_reader(path, sample_shape=(1, L), dtype="float32")


def test_key_on_single_array_refused(tmp_path):
    path, _ = _save("npy", tmp_path, _data())
    with pytest.raises(JaxjacError, match=r"is a \.npy file holding one array; --key `x` does not apply"):
        open_reader(path, sample_shape=(1, L), dtype="float32", key="x")


# ---------------------------------------------------------------- writers

OUT_SHAPE = (40, 3, 1, 8)


def _rows(start, stop):
    return np.random.default_rng(start).standard_normal((stop - start, *OUT_SHAPE[1:])).astype(np.float32)


def _read_output(path, dtype):
    if str(path).endswith(".npy"):
        return np.load(path)
    z = zarr.open_array(path, mode="r")[:]
    return z.view(ml_dtypes.bfloat16) if dtype == "bfloat16" else z


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("J.npy", "float64"),
        ("J.npy", "float32"),
        ("J.npy", "float16"),
        ("J.zarr", "float64"),
        ("J.zarr", "float32"),
        ("J.zarr", "bfloat16"),
    ],
)
def test_writer_out_of_order_flush_resume(tmp_path, name, dtype):
    out = tmp_path / name
    w = create_writer(out, shape=OUT_SHAPE, dtype=dtype, overwrite=False, chunk_rows=8 if "zarr" in name else None)
    assert w.shape == OUT_SHAPE and w.path == str(out)
    ranges = [(24, 40), (0, 8), (16, 24)]  # (8, 16) is left for the resumed run
    for a, b in ranges:
        w.write(a, _rows(a, b))
    w.flush()
    w.close(complete=False)
    assert not out.exists() and os.path.exists(partial_path(out))

    with pytest.raises(JaxjacError, match=r"cannot resume .*: it holds \(40, 3, 1, 8\) .*; this run writes \(41,"):
        open_writer_for_resume(out, shape=(41, *OUT_SHAPE[1:]), dtype=dtype)
    other = "float16" if dtype != "float16" else "float32"
    with pytest.raises(JaxjacError, match=rf"this run writes \(40, 3, 1, 8\) {other}$"):
        open_writer_for_resume(out, shape=OUT_SHAPE, dtype=other)
    with pytest.raises(JaxjacError, match=r"has a partial file .* from an interrupted run; resume it"):
        create_writer(out, shape=OUT_SHAPE, dtype=dtype, overwrite=False)

    w = open_writer_for_resume(out, shape=OUT_SHAPE, dtype=dtype)
    w.write(8, _rows(8, 16))
    w.close()
    assert out.exists() and not os.path.exists(partial_path(out))
    want = np.concatenate([_rows(a, b) for a, b in [(0, 8), (8, 16), (16, 24), (24, 40)]])
    got = _read_output(out, dtype)
    assert got.dtype == np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    np.testing.assert_array_equal(got, want.astype(got.dtype))
    # jaxjac's own reader reads the output back, bfloat16 included
    with open_reader(out, sample_shape=OUT_SHAPE[1:], dtype="float32") as r:
        np.testing.assert_array_equal(r.read(5, 30), want[5:30].astype(got.dtype).astype(np.float32))
    # a finished output can be resumed in place
    w = open_writer_for_resume(out, shape=OUT_SHAPE, dtype=dtype)
    assert w.partial_path == str(out)
    w.close(complete=False)
    assert out.exists()


def test_zarr_chunks_along_rows(tmp_path):
    w = create_writer(tmp_path / "J.zarr", shape=(100_000, 3, 1, 224), dtype="float32", overwrite=False)
    assert w.chunk_rows % 64 == 0 and 1 << 20 < w.chunk_rows * 3 * 224 * 4 <= 8 << 20
    assert zarr.open_array(w.partial_path).chunks == (w.chunk_rows, 3, 1, 224)
    w.close()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_zarr_stores_each_chunk_once_from_batches_smaller_than_a_chunk(tmp_path, dtype):
    n = OUT_SHAPE[0]
    rows = _rows(0, n)
    out = tmp_path / "J.zarr"
    w = create_writer(out, shape=OUT_SHAPE, dtype=dtype, overwrite=False, chunk_rows=16)
    stores = []
    real = w._store_chunk
    w._store_chunk = lambda chunk, rows: stores.append(chunk) or real(chunk, rows)
    starts = np.random.default_rng(0).permutation(np.arange(0, n, 5))  # 5-row batches, in any order
    for start in starts[: len(starts) // 2]:
        w.write(int(start), rows[start : start + 5])
    w.flush()  # chunks in progress are stored as they stand, so the rows written so far are durable
    flushed = len(stores)
    for start in starts[len(starts) // 2 :]:
        w.write(int(start), rows[start : start + 5])
    w.close()
    chunks = -(-n // 16)
    assert len(stores[flushed:]) == chunks and sorted(set(stores)) == list(range(chunks))
    got = zarr.open_array(out, mode="r")[:]
    want = rows.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    np.testing.assert_array_equal(got.view(want.dtype) if dtype == "bfloat16" else got, want)


def test_resumed_zarr_chunks_keep_the_rows_stored_before(tmp_path):
    rows = _rows(0, OUT_SHAPE[0])
    out = tmp_path / "J.zarr"
    w = create_writer(out, shape=OUT_SHAPE, dtype="float32", overwrite=False, chunk_rows=16)
    w.write(0, rows[:21])  # a chunk and a part of the next
    w.close(complete=False)
    w = open_writer_for_resume(out, shape=OUT_SHAPE, dtype="float32")
    w.write(21, rows[21:])
    w.close()
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], rows)


def test_existing_output_untouched_unless_overwrite(tmp_path):
    for name in ("J.npy", "J.zarr"):
        out = tmp_path / name
        w = create_writer(out, shape=OUT_SHAPE, dtype="float32", overwrite=False)
        w.write(0, _rows(0, 40))
        w.close()
        before = {p: p.read_bytes() for p in [out, *out.rglob("*")] if p.is_file()}
        with pytest.raises(JaxjacError, match=rf"^output .*{name} already exists; pass --force to replace it$"):
            create_writer(out, shape=(5, 2), dtype="float16", overwrite=False)
        w = create_writer(out, shape=(5, 2), dtype="float16", overwrite=True)
        w.write(0, np.ones((5, 2)))
        w.close(complete=False)  # an interrupted overwrite leaves the old output alone
        assert {p: p.read_bytes() for p in before} == before
        w = open_writer_for_resume(out, shape=(5, 2), dtype="float16")
        w.close()
        np.testing.assert_array_equal(_read_output(out, "float16"), np.ones((5, 2), np.float16))
        assert not os.path.exists(partial_path(out))


def test_writer_refusals(tmp_path, monkeypatch):
    kw = {"shape": OUT_SHAPE, "dtype": "float32", "overwrite": False}
    with pytest.raises(JaxjacError, match=r"^cannot write output .*J\.npy: folder .*missing does not exist$"):
        create_writer(tmp_path / "missing" / "J.npy", **kw)
    (tmp_path / "a-file").write_text("precious")
    with pytest.raises(JaxjacError, match=r"^cannot write output .*J\.npy: .*a-file is a file, not a folder$"):
        create_writer(tmp_path / "a-file" / "sub" / "J.npy", **kw)
    assert (tmp_path / "a-file").read_text() == "precious"
    (tmp_path / "a-file").unlink()
    with pytest.raises(JaxjacError, match=r"\.npy can't store bfloat16 .*; write a \.zarr output, or use float16"):
        create_writer(tmp_path / "J.npy", **{**kw, "dtype": "bfloat16"})
    with pytest.raises(JaxjacError, match=r"output dtype `int8` is not supported; choose one of float64, float32, "):
        create_writer(tmp_path / "J.npy", **{**kw, "dtype": "int8"})
    with pytest.raises(JaxjacError, match=r"J\.h5 must end in \.npy or \.zarr \(found `\.h5`\)"):
        create_writer(tmp_path / "J.h5", **kw)
    with pytest.raises(JaxjacError, match=r"^cannot resume .*J\.npy: neither it nor its partial file"):
        open_writer_for_resume(tmp_path / "J.npy", shape=OUT_SHAPE, dtype="float32")
    real_open = os.open

    def refusing_open(p, *args, **kwargs):  # as an unwritable folder does, even to root on some file systems
        if os.path.dirname(os.fspath(p)) == str(tmp_path):
            raise PermissionError(13, "Permission denied", os.fspath(p))
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(
        JaxjacError, match=r"^cannot write output .*J\.npy: folder .* takes no new files \(Permission denied\)$"
    ):
        create_writer(tmp_path / "J.npy", **kw)
    assert list(tmp_path.iterdir()) == []


def test_free_space(tmp_path):
    assert required_bytes((10, 3, 1, 224), "float32") == 10 * 3 * 224 * 4 + 4096
    assert required_bytes((10, 3, 1, 224), "bfloat16") == 10 * 3 * 224 * 2 + 4096
    check_free_space(tmp_path / "J.npy", 1)
    with pytest.raises(
        JaxjacError,
        match=rf"^not enough free disk space in {tmp_path} for J\.npy: it needs 1,024\.0 TiB, only .* is free$",
    ):
        check_free_space(tmp_path / "J.npy", 1 << 50)
    with pytest.raises(JaxjacError, match=r"folder .*no does not exist"):
        check_free_space(tmp_path / "no" / "J.npy", 1)


def test_npy_writes_start_their_writeback(tmp_path, monkeypatch):
    import jaxjac._writers as writers

    started = []
    monkeypatch.setattr(writers, "_start_writeback", lambda fd, offset, n: started.append((offset, n)))
    w = create_writer(tmp_path / "J.npy", shape=OUT_SHAPE, dtype="float32", overwrite=False)
    w.write(24, _rows(24, 40))
    w.write(0, _rows(0, 24))
    w.close()
    row = 3 * 1 * 8 * 4
    header = os.path.getsize(tmp_path / "J.npy") - OUT_SHAPE[0] * row
    assert started == [(header + 24 * row, 16 * row), (header, 24 * row)]  # each write's own bytes, as written


def test_writeback_hint_never_fails(tmp_path):
    from jaxjac._writers import _start_writeback

    _start_writeback(-1, 0, 4096)  # a bad file descriptor: the hint is dropped, nothing raises
    r, w = os.pipe()  # sync_file_range refuses pipes (ESPIPE): the same
    try:
        _start_writeback(w, 0, 4096)
    finally:
        os.close(r)
        os.close(w)


def test_float16_overflow_noted(tmp_path):
    w = create_writer(tmp_path / "J.npy", shape=(2, 3), dtype="float16", overwrite=False)
    w.write(0, np.array([[1.0, 1e6, -1e6], [0, 0, 0]], np.float32))
    w.close()
    assert w.notes == [f"{tmp_path / 'J.npy'}: some values exceed the float16 range (65504) and were stored as inf"]
    assert np.load(tmp_path / "J.npy")[0].tolist() == [1.0, np.inf, -np.inf]


def test_imports_are_lazy(tmp_path):
    np.save(tmp_path / "X.npy", _data())
    code = (
        "import sys, numpy as np; from jaxjac._data import open_reader, create_writer\n"
        f"r = open_reader({str(tmp_path / 'X.npy')!r}, sample_shape=(1, {L}), dtype='float32'); r.read(0, 5)\n"
        f"w = create_writer({str(tmp_path / 'J.npy')!r}, shape=(5, 2), dtype='float32', overwrite=False); w.close()\n"
        "print(sorted(m for m in ('torch', 'h5py', 'zarr') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("make", "key", "message"),
    [
        (
            lambda p: scipy.io.savemat(p, {"x": np.zeros((3, 4)), "labels": np.arange(3.0), "name": "salinas"}),
            None,
            r"X\.mat holds 2 numeric arrays \(`x`, `labels`\); choose one with --key",
        ),
        (lambda p: scipy.io.savemat(p, {"meta": {"bands": 4}}), None, r"X\.mat holds 0 numeric arrays \(none\)"),
        (
            lambda p: _save_mat73(p, {"x": np.zeros((3, 4)), "y": np.zeros(3)}),
            "refs",
            r"--key `refs` is not in DATA .*X\.mat; available datasets: `x`, `y`$",
        ),
        (
            lambda p: p.write_bytes(b"MATLAB 5.0 MAT-file".ljust(128) + b"\x00" * 7),
            None,
            r"X\.mat is not a readable MATLAB file",
        ),
    ],
    ids=["several-arrays", "no-numbers", "v7.3-key", "corrupt"],
)
def test_mat_files_name_their_variables_in_errors(tmp_path, make, key, message):
    make(path := tmp_path / "X.mat")
    with pytest.raises(JaxjacError, match=message):
        open_reader(path, sample_shape=(4,), dtype="float32", key=key)
