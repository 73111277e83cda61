"""Choosing the batch size, and the persistent compilation cache."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from ._errors import JaxjacError
from ._formulations import batch_jacobian_core
from ._graph_model import check_dtype_enabled
from ._interpret import with_default_numpy_rules
from ._xla_options import top_level_jit

if TYPE_CHECKING:
    from ._methods import AttributionOptions
    from ._model import ConvertedModel

_PROBE = 16  # per-device batch of the probe compilation
_IN_FLIGHT = 4  # result buffers alive per device: the queue, the one computing, the one copying
_MAX_BATCH = 1 << 16
# Bytes of one batch's result on the host. glibc serves a larger block with a fresh mmap each
# time (its mmap threshold stops rising at 32 MiB), and faulting in fresh pages, not the copy,
# then sets the pace: on an H100 host, batches of 64k full Jacobians ran at half the rate of 8k.
HOST_BATCH_BYTES = 24 << 20
# A CPU batch's working set (the program's temporaries) that keeps whole Jacobians fast. On a
# 2-core Xeon, for the four benchmark models and both targets, batches of 16 to 512 rows ran
# fastest at or just below it and up to 1.5x slower above it (wide-cnn: 2,751 samples/s at 64
# rows, 27 MiB; 1,918 at 128, 54 MiB), while 256 rows for every model cost up to a third.
CPU_BATCH_BYTES = 32 << 20
CPU_BATCH_RANGE = (8, 512)
# The share of the host's memory one CPU batch's temporaries may take.
_HOST_FRACTION = 0.5
_CPU_PROBE = 64  # rows of the CPU probe: per sample, 16 rows' temporaries run 3-8% above larger batches'
# Results (bytes) above which even data within one CPU probe is sized by a probe.
_SMALL_RESULTS = 16 << 20


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/jaxjac/xla`, by default `~/.cache/jaxjac/xla`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxjac" / "xla"


def enable_compile_cache(directory: str | os.PathLike | None) -> None:
    """Cache compiled programs in `directory` (None: no cache), however quick they were to compile.

    The same folder holds jaxjac's cache of whole compiled programs (`_program_cache`).
    """
    if directory is None:
        jax.config.update("jax_compilation_cache_dir", None)
        return
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        where = Path(directory)
        why = "is a file" if where.exists() and not where.is_dir() else f"cannot be made ({error.strerror or error})"
        raise JaxjacError(
            f"--compile-cache {directory}: {why}; expected a folder to keep compiled programs in, or 'off'"
        ) from error
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def round_to_devices(batch_size: int, devices: int) -> int:
    """The smallest multiple of `devices` that is at least `batch_size`."""
    if batch_size < 1:
        raise JaxjacError(f"--batch-size must be a positive integer or 'auto'; got {batch_size}")
    return -(-batch_size // devices) * devices


def platform() -> str:
    """The platform of the default devices: ``"cpu"``, ``"gpu"``, ``"tpu"``..."""
    return jax.devices()[0].platform


_LIBRARY_BATCH: dict[tuple, int] = {}


def library_batch_size(
    model: ConvertedModel, *, target: Any, output: str, method: str, precision: str, n_rows: int
) -> int:
    """The batch size of a library call that leaves it out: `auto_batch_size`'s choice for a large dataset.

    Found once per model structure and options (its probe compilation takes
    a second or more). Less data then takes a smaller batch
    (`batch_size_for`); `n_rows` that fit one CPU probe need no probe at
    all. A labels `target` (an array) sizes like ``"predicted"``: one row
    per sample.
    """
    target = "predicted" if isinstance(target, np.ndarray) else target
    if _one_small_cpu_batch(model, target, n_rows):
        return _rows_per_call(n_rows)
    # The graph and tensor shapes too: models of one input and output shape differ in everything else.
    key = (
        model.graph,
        model.spec,
        model.tensor_shapes,
        target,
        output,
        method,
        precision,
        jax.device_count(),
        platform(),
    )
    if key not in _LIBRARY_BATCH:
        _LIBRARY_BATCH[key] = auto_batch_size(
            model, target=target, output=output, method=method, precision=precision, n_rows=1 << 30
        )
    return _LIBRARY_BATCH[key]


def attribution_batch_size(model: ConvertedModel, options: AttributionOptions, n_rows: int) -> int:
    """The default batch size of attributions: the Jacobian's default batch of rows, shared by each sample's draws.

    A sample's attribution differentiates `options.draws` inputs (integrated
    gradients' path nodes, SmoothGrad's noise draws) in one batch with the
    others', so a batch of B samples is a Jacobian batch of B * draws rows.
    A power of two per device (at least 1), times the device count.
    """
    target = "all" if options.target == "all" else "predicted"
    rows = library_batch_size(
        model,
        target=target,
        output=options.output,
        method=options.formulation,
        precision=options.precision,
        n_rows=n_rows * options.draws,
    )
    return _power_of_two_per_device(max(rows // jax.device_count() // options.draws, 1))


def _host_memory() -> int | None:
    """The host's physical memory in bytes, where the system says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name
        return None


def memory_limit(device: jax.Device) -> int | None:
    """The bytes of memory `device` may allocate, or `None` where there is no such limit (CPUs)."""
    return (device.memory_stats() or {}).get("bytes_limit")


def _one_small_cpu_batch(model: ConvertedModel, target: Any, n_rows: int) -> bool:
    """Whether `n_rows` run on CPUs as one batch no larger than the CPU probe, with small results.

    Then the probe compilation would cost more than any batch size could
    save: a second or two against milliseconds of work. Large results
    (`_SMALL_RESULTS`) mean large temporaries, which a probe measures: 8
    samples of a float64 sequence-to-sequence model with 1024 outputs need
    tens of GB.
    """
    rows_per_sample = model.n_outputs if isinstance(target, str) and target == "all" else 1
    results = _rows_per_call(n_rows) * rows_per_sample * math.prod(model.sample_shape) * np.dtype(model.dtype).itemsize
    on_cpu = memory_limit(jax.local_devices()[0]) is None
    return on_cpu and _rows_per_device(n_rows) <= _CPU_PROBE and results <= _SMALL_RESULTS


def _rows_per_device(n_rows: int) -> int:
    return -(-max(n_rows, 1) // jax.device_count())


def _rows_per_call(n_rows: int) -> int:
    """`n_rows` per device rounded up to a power of two, times the device count."""
    return (1 << (_rows_per_device(n_rows) - 1).bit_length()) * jax.device_count()


def _power_of_two_per_device(per_device: int) -> int:
    """`per_device` (at least 1) rounded down to a power of two, times the device count."""
    return (1 << (per_device.bit_length() - 1)) * jax.device_count()


def auto_batch_size(
    model: ConvertedModel, *, target: Any, output: str, method: str, precision: str, n_rows: int
) -> int:
    """A power of two per device, times the device count, sized from a probe compilation's memory analysis.

    On accelerators: the largest that fits memory. The per-sample cost is
    the temporaries plus input and output buffers, the outputs counted once
    per result in flight, and the budget 70% of the device's `bytes_limit`.
    A batch's results on the host stay within `HOST_BATCH_BYTES` (at least
    256 rows per device).

    On CPUs: the largest whose temporaries stay within `CPU_BATCH_BYTES`
    (shared by the host's devices), within `CPU_BATCH_RANGE`, since larger
    batches run slower once their working set leaves the caches; below that
    range where its smallest batch's temporaries would take more than half
    the host's memory.

    Never more rows per device than `n_rows` needs (rounded up to a power of
    two); on CPUs, `n_rows` within one probe-sized batch, with small results,
    take that batch without a probe.
    """
    if _one_small_cpu_batch(model, target, n_rows):
        return _rows_per_call(n_rows)
    check_dtype_enabled(model.spec)  # the probe compiles in the model's dtype
    core, tensors = batch_jacobian_core(model, target=target, output=output, method=method, precision=precision)
    devices = jax.local_devices()
    limit = memory_limit(devices[0])
    probe = _PROBE if limit else _CPU_PROBE
    labels = isinstance(target, np.ndarray)
    x = jax.ShapeDtypeStruct((probe, *model.sample_shape), model.dtype)
    lab = jax.ShapeDtypeStruct((probe,), np.int32) if labels else None

    def fn(t, x, lab):
        return core(t, x, lab)

    stats = top_level_jit(with_default_numpy_rules(fn)).lower(tensors, x, lab).compile().memory_analysis()
    temp_bytes = stats.temp_size_in_bytes if stats else 0
    if limit:
        tensor_bytes = sum(np.asarray(v).nbytes for v in tensors.values())
        out_bytes = stats.output_size_in_bytes if stats else 0
        per_sample = max((temp_bytes + stats.argument_size_in_bytes - tensor_bytes) if stats else 0, 0)
        per_sample = (per_sample + out_bytes * _IN_FLIGHT) / probe or 1.0
        per_device = max(int((0.7 * limit - tensor_bytes) // per_sample), 1)
        host_rows = HOST_BATCH_BYTES // max(out_bytes / probe, 1) // len(devices)
        per_device = min(per_device, _MAX_BATCH, max(int(host_rows), 256))
    else:
        low, high = CPU_BATCH_RANGE
        # Devices of one host share its caches, and its memory.
        per_sample = max(temp_bytes / probe, 1.0)
        per_device = min(max(int(CPU_BATCH_BYTES / len(devices) // per_sample), low), high)
        host = _host_memory()
        if host is not None:  # below CPU_BATCH_RANGE where `low` rows would not fit (float64, 1024 outputs)
            per_device = max(min(per_device, int(_HOST_FRACTION * host / len(devices) // per_sample)), 1)
    return _power_of_two_per_device(min(per_device, _rows_per_call(n_rows) // jax.device_count()))
