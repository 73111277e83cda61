"""The streaming engine `run_jacobian`: exact equality with `jaxjac.jacobian`, padding, labels, NaN rows."""

from __future__ import annotations

import threading

import jax
import ml_dtypes
import numpy as np
import pytest
import torch

import jaxjac
from jaxjac._data import create_writer, open_reader
from jaxjac._errors import JaxjacError
from jaxjac._run import check_labels, output_shape, run_jacobian

SAMPLE_SHAPE = (1, 32)
N_CLASSES = 3
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def make_artifact(directory) -> str:
    """A tiny torch Conv1d net, converted and saved; returns the artifact's path."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv1d(1, 4, 5, padding=2),
        torch.nn.ReLU(),
        torch.nn.Conv1d(4, 4, 3, stride=2, padding=1),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 16, N_CLASSES),
    ).eval()
    model = jaxjac.convert(net, torch.randn(2, *SAMPLE_SHAPE), n_probes=2)
    path = str(directory / "net.jaxjac")
    jaxjac.save(model, path)
    return path


def make_data(path, n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, *SAMPLE_SHAPE)).astype(np.float32)
    np.save(path, x)
    return x


def read_output(path) -> np.ndarray:
    path = str(path)
    if path.endswith(".zarr"):
        import zarr

        z = zarr.open_array(path, mode="r")
        data = z[:]
        return data.view(ml_dtypes.bfloat16) if z.attrs.get("jaxjac_dtype") == "bfloat16" else data
    return np.load(path)


@pytest.fixture(scope="module")
def model(artifact):
    return jaxjac.load(artifact)


def stream(model, data_path, out_path, *, dtype="float32", batch_size=8, labels=None, **kwargs):
    reader = open_reader(data_path, sample_shape=model.sample_shape, dtype=model.dtype)
    target = kwargs.get("target", "all") if labels is None else "labels"
    shape = output_shape(model, reader.n_samples, target)
    writer = create_writer(out_path, shape=shape, dtype=dtype, overwrite=False)
    result = run_jacobian(model, reader, writer, dtype=dtype, batch_size=batch_size, labels=labels, **kwargs)
    writer.close()
    reader.close()
    return result, read_output(out_path)


@pytest.mark.parametrize(
    ("target", "output", "dtype", "suffix"),
    [
        ("all", "logits", "float32", ".npy"),
        ("predicted", "probs", "float32", ".npy"),
        (1, "log_probs", "float16", ".npy"),
        ("all", "probs", "bfloat16", ".zarr"),
    ],
)
def test_stream_equals_jacobian_exactly(model, tmp_path, target, output, dtype, suffix):
    x = make_data(tmp_path / "X.npy", 37)  # 37 = 4 batches of 8 + a padded one
    result, actual = stream(
        model, tmp_path / "X.npy", tmp_path / f"J{suffix}", dtype=dtype, target=target, output=output
    )
    expected = jaxjac.jacobian(model, x, target=target, output=output, batch_size=8)
    np.testing.assert_array_equal(actual, expected.astype(NUMPY_DTYPES[dtype]))
    assert actual.dtype == NUMPY_DTYPES[dtype]
    assert (result.completed_rows, result.computed_rows, result.batch_size) == (37, 37, 8)
    assert not result.interrupted and result.nonfinite_count == 0


def test_results_written_into_page_locked_host_memory_are_the_same(model, tmp_path, monkeypatch):
    from jaxjac import _run

    # The GPU default, forced here on a CPU device's own page-locked memory: the engine's
    # path for such results (no separate device-to-host copy) gives the same rows.
    x = make_data(tmp_path / "X.npy", 37)
    monkeypatch.setattr(_run, "_result_sharding", lambda shard: shard.with_memory_kind("pinned_host"))
    monkeypatch.setattr(_run, "_COMPILED", type(_run._COMPILED)())
    _, actual = stream(model, tmp_path / "X.npy", tmp_path / "J.npy", target="all")
    np.testing.assert_array_equal(actual, jaxjac.jacobian(model, x, batch_size=8))


class _Memory:
    def __init__(self, kind):
        self.kind = kind


class _Device:
    def __init__(self, platform, kinds):
        self.platform, self.kinds = platform, kinds

    def addressable_memories(self):
        return [_Memory(kind) for kind in self.kinds]


class _Shard:
    """A stand-in batch sharding on one device of `platform` that offers memories `kinds`."""

    def __init__(self, platform, kinds=("device", "pinned_host")):
        self.mesh = type("Mesh", (), {"devices": np.array([_Device(platform, kinds)], dtype=object)})()
        self.memory_kind = "device"

    def with_memory_kind(self, kind):
        other = _Shard(self.mesh.devices.flat[0].platform, self.mesh.devices.flat[0].kinds)
        other.memory_kind = kind
        return other


@pytest.mark.parametrize(
    ("platform", "kinds", "setting", "expected"),
    [
        ("gpu", ("device", "pinned_host"), None, "pinned_host"),  # the GPU default
        ("gpu", ("device", "pinned_host"), "device", "device"),
        ("gpu", ("device",), None, "device"),  # a GPU without page-locked memory
        ("tpu", ("device", "pinned_host"), None, "device"),
        ("tpu", ("device", "pinned_host"), "pinned_host", "pinned_host"),
        ("cpu", ("device", "pinned_host"), "pinned_host", "device"),  # results are on the host already
    ],
)
def test_results_go_to_page_locked_host_memory_on_gpus(monkeypatch, platform, kinds, setting, expected):
    from jaxjac import _run

    if setting is None:
        monkeypatch.delenv(_run._OUTPUT_MEMORY_ENV, raising=False)
    else:
        monkeypatch.setenv(_run._OUTPUT_MEMORY_ENV, setting)
    assert _run._result_sharding(_Shard(platform, kinds)).memory_kind == expected


def test_labels_target_differentiates_each_rows_label(model, tmp_path):
    x = make_data(tmp_path / "X.npy", 21)
    labels = np.random.default_rng(1).integers(0, N_CLASSES, 21)
    _, actual = stream(model, tmp_path / "X.npy", tmp_path / "S.npy", labels=labels, batch_size=4)
    np.testing.assert_array_equal(actual, jaxjac.jacobian(model, x, target=labels, batch_size=4))


def test_nonfinite_rows_are_nan_and_reported_and_others_exact(model, tmp_path):
    x = np.random.default_rng(2).standard_normal((30, *SAMPLE_SHAPE)).astype(np.float32)
    bad = [3, 4, 17, 29]
    x[3, 0, 5], x[4, 0, 0], x[17, 0, 31], x[29, 0, 2] = np.nan, np.inf, -np.inf, np.nan
    np.save(tmp_path / "X.npy", x)
    result, actual = stream(model, tmp_path / "X.npy", tmp_path / "J.npy")
    assert result.nonfinite_count == 4 and result.nonfinite_first == bad
    assert np.isnan(actual[bad]).all()
    clean = x.copy()
    clean[bad] = 0
    good = np.setdiff1d(np.arange(30), bad)
    expected = jaxjac.jacobian(model, clean, batch_size=8)
    np.testing.assert_array_equal(actual[good], expected[good])


def test_start_row_resumes_on_the_same_batch_boundaries(model, tmp_path):
    x = make_data(tmp_path / "X.npy", 29)
    reader = open_reader(tmp_path / "X.npy", sample_shape=model.sample_shape, dtype=model.dtype)
    writer = create_writer(tmp_path / "J.npy", shape=(29, N_CLASSES, *SAMPLE_SHAPE), dtype="float32", overwrite=False)
    seen = []
    result = run_jacobian(model, reader, writer, batch_size=8, start_row=16, on_checkpoint=seen.append)
    writer.close()
    assert result.computed_rows == 13 and seen[-1] == 29
    actual = np.load(tmp_path / "J.npy")
    np.testing.assert_array_equal(actual[16:], jaxjac.jacobian(model, x, batch_size=8)[16:])
    assert not actual[:16].any()  # rows below the watermark are not touched


def test_stop_event_finishes_in_flight_and_records_the_watermark(model, tmp_path):
    make_data(tmp_path / "X.npy", 64)
    stop = threading.Event()
    seen = []

    def rows_done(n):
        stop.set()  # ask to stop as soon as the first batch is written

    reader = open_reader(tmp_path / "X.npy", sample_shape=model.sample_shape, dtype=model.dtype)
    writer = create_writer(tmp_path / "J.npy", shape=(64, N_CLASSES, *SAMPLE_SHAPE), dtype="float32", overwrite=False)
    result = run_jacobian(
        model, reader, writer, batch_size=4, stop_event=stop, on_rows=rows_done, on_checkpoint=seen.append
    )
    writer.close(complete=False)
    assert result.interrupted
    assert 4 <= result.completed_rows < 64 and result.completed_rows % 4 == 0
    assert seen[-1] == result.completed_rows


def test_check_labels_errors_name_the_problem():
    with pytest.raises(JaxjacError, match=r"holds 3 labels; the data holds 4 samples"):
        check_labels(np.array([0, 1, 2]), 4, 3)
    with pytest.raises(JaxjacError, match=r"labels\[1\] = 7 is not a class of a model with 3 outputs"):
        check_labels(np.array([0, 7, 1]), 3, 3)
    with pytest.raises(JaxjacError, match=r"expected a 1-D integer array"):
        check_labels(np.array([0.0, 1.5]), 2, 3)
    np.testing.assert_array_equal(check_labels(np.array([0.0, 2.0]), 2, 3), [0, 2])  # labels saved as floats


def test_batch_size_must_split_over_devices(model, tmp_path):
    make_data(tmp_path / "X.npy", 4)
    reader = open_reader(tmp_path / "X.npy", sample_shape=model.sample_shape, dtype=model.dtype)
    with pytest.raises(JaxjacError, match=r"batch_size must be a positive multiple of the device count 1; got 0"):
        run_jacobian(model, reader, None, batch_size=0)


def _auto(model, n_rows: int = 10**7, target: str = "all") -> int:
    from jaxjac._batching import auto_batch_size

    return auto_batch_size(
        model, target=target, output="logits", method="vmap-jacrev", precision="float32", n_rows=n_rows
    )


def _temp_bytes(model, batch: int, target: str = "all") -> int:
    """The temporaries of the compiled batch program at `batch` rows."""
    from jaxjac._formulations import batch_jacobian_core

    core, tensors = batch_jacobian_core(
        model, target=target, output="logits", method="vmap-jacrev", precision="float32"
    )
    x = jax.ShapeDtypeStruct((batch, *model.sample_shape), model.dtype)
    compiled = jax.jit(lambda t, x: core(t, x, None)).lower(tensors, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_auto_batch_size_is_a_power_of_two_capped_by_the_data(model):
    big = _auto(model)
    assert big & (big - 1) == 0 and 8 <= big <= 1024
    assert big > 128 and _auto(model, n_rows=100) == 128


def test_models_of_the_same_input_and_output_shapes_are_sized_each_on_its_own(monkeypatch):
    from jaxjac import _batching

    monkeypatch.setattr(_batching, "_LIBRARY_BATCH", {})
    probed = []
    monkeypatch.setattr(_batching, "auto_batch_size", lambda model, **kw: probed.append(model) or 8 * len(probed))
    x = np.zeros((2, 1, 16), np.float32)
    narrow, wide = (
        jaxjac.convert(
            torch.nn.Sequential(torch.nn.Conv1d(1, c, 3), torch.nn.Flatten(), torch.nn.Linear(c * 14, 3)).eval(), x
        )
        for c in (2, 16)
    )
    options = {"target": "all", "output": "logits", "method": "vmap-jacrev", "precision": "float32", "n_rows": 10**6}
    sizes = [_batching.library_batch_size(m, **options) for m in (narrow, wide, narrow)]
    assert sizes == [8, 16, 8]


def test_data_within_one_cpu_probe_runs_as_one_batch_without_a_probe(model, monkeypatch):
    from jaxjac import _batching

    def no_probe(*args, **kwargs):
        raise AssertionError("probed")

    monkeypatch.setattr(_batching, "batch_jacobian_core", no_probe)
    assert [_auto(model, n_rows=n) for n in (1, 5, 37, _batching._CPU_PROBE)] == [1, 8, 64, 64]
    monkeypatch.setattr(_batching, "_LIBRARY_BATCH", {})
    x = np.zeros((5, *model.sample_shape), model.dtype)
    assert jaxjac.jacobian(model, x).shape == (5, model.n_outputs, *model.sample_shape)
    with pytest.raises(AssertionError, match="probed"):
        _auto(model, n_rows=_batching._CPU_PROBE + 1)


@pytest.mark.parametrize("target", ["all", "predicted"])
def test_auto_batch_size_on_cpu_keeps_the_working_set_within_the_cache_budget(model, monkeypatch, target):
    from jaxjac import _batching

    budget = 3 * _temp_bytes(model, 64, target)  # room for 128 rows, not for 256
    monkeypatch.setattr(_batching, "CPU_BATCH_BYTES", budget)
    size = _auto(model, target=target)
    assert size == 128
    assert _temp_bytes(model, size, target) <= budget < _temp_bytes(model, 2 * size, target)
    monkeypatch.setattr(_batching, "CPU_BATCH_BYTES", 1)
    assert _auto(model, target=target) == _batching.CPU_BATCH_RANGE[0]
    monkeypatch.setattr(_batching, "CPU_BATCH_BYTES", 1 << 40)
    assert _auto(model, target=target) == _batching.CPU_BATCH_RANGE[1]


def test_auto_batch_size_on_cpu_goes_below_its_range_where_that_would_not_fit_half_the_host_memory(model, monkeypatch):
    from jaxjac import _batching

    monkeypatch.setattr(_batching, "CPU_BATCH_BYTES", 1)  # the range's floor, 8 rows, as for a huge float64 model
    per_row = _temp_bytes(model, 64) / 64
    monkeypatch.setattr(_batching, "_host_memory", lambda: int(2 * 3.5 * per_row))  # half of it holds 3 rows
    assert _auto(model) == 2
    monkeypatch.setattr(_batching, "_host_memory", lambda: 1)
    assert _auto(model) == 1


def test_small_data_with_large_results_is_probed_rather_than_run_as_one_batch(model, monkeypatch):
    from jaxjac import _batching

    row_bytes = model.n_outputs * int(np.prod(model.sample_shape)) * np.dtype(model.dtype).itemsize
    monkeypatch.setattr(_batching, "_SMALL_RESULTS", 8 * row_bytes)  # as 1024 float64 rows of 512 steps are
    monkeypatch.setattr(_batching, "_host_memory", lambda: int(2 * 4.5 * _temp_bytes(model, 64) / 64))
    assert _auto(model, n_rows=8) == 8  # results within the bound: one batch
    assert _auto(model, n_rows=16) == 4  # beyond it: probed, and half the host holds 4 rows
    assert _auto(model, n_rows=16, target="predicted") == 16  # one row per sample: small results


def test_auto_batch_size_on_accelerators_keeps_a_batch_of_results_within_the_host_budget(model, monkeypatch):
    from jaxjac import _batching

    monkeypatch.setattr(_batching, "memory_limit", lambda device: 16 << 30)  # as a 16 GiB accelerator
    row_bytes = model.n_outputs * int(np.prod(model.sample_shape)) * np.dtype(model.dtype).itemsize
    monkeypatch.setattr(_batching, "HOST_BATCH_BYTES", 2048 * row_bytes)
    assert _auto(model) == 2048
    monkeypatch.setattr(_batching, "HOST_BATCH_BYTES", 10 * row_bytes)  # never below 256 rows
    assert _auto(model) == 256
