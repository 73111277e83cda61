"""The streaming Jacobian engine: a reader in, fixed-size sharded batches, a writer out.

Three threads overlap the work. A reader thread reads and pads the next
batches into a bounded queue; the main thread puts each batch on the devices
and dispatches the one compiled program (asynchronously, and starts its
device-to-host copy at once); a writer thread waits for each result in order,
writes its rows and, at most every `checkpoint_seconds`, flushes the writer
and reports the completed-row watermark. Batches have one fixed size, the
last one zero-padded, so there is exactly one compilation.

`run_jacobian` is the library entry point; `jaxjac jacobian` is a thin face on it.
"""

from __future__ import annotations

import collections
import functools
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _distributed as dist
from ._errors import JaxjacError
from ._formulations import batch_jacobian_core, check_labels
from ._graph_model import check_dtype_enabled
from ._interpret import with_default_numpy_rules
from ._program_cache import cache_folder, load_or_compile, program_key
from ._xla_options import compiler_options

if TYPE_CHECKING:
    from ._model import ConvertedModel

# Test-only: seconds to sleep before dispatching each batch, so that tests can
# interrupt a run reliably. Not a user setting.
_TEST_DELAY_ENV = "JAXJAC_TEST_BATCH_DELAY"
# Where a row program leaves its results: "device" memory, copied to the host
# batch by batch, or "pinned_host", page-locked host memory that the program
# writes itself. On an H100 the second streamed 10M predicted rows 1.34x faster
# and full Jacobians 1.02-1.10x (bench/results/2026-11-27-nvidia-h100-*), so it
# is the default on GPUs that offer it; the variable overrides the choice.
_OUTPUT_MEMORY_ENV = "JAXJAC_OUTPUT_MEMORY"
_END = object()
FIRST_BAD_ROWS = 10
ROW_INDEX_MODULUS = 2**31


@dataclass
class RunResult:
    """What `run_jacobian` did, for this process."""

    completed_rows: int  # rows of this process's slice on disk (the watermark)
    slice_rows: int  # rows this process owns
    computed_rows: int  # rows computed by this call (a resumed run skips the rest)
    seconds: float  # wall time of the streaming loop, compilation excluded
    compile_seconds: float  # tracing, lowering and compiling, or loading the cached program
    batch_size: int  # global batch size (all devices, all processes)
    devices: int
    processes: int
    nonfinite_count: int = 0
    nonfinite_first: list[int] = field(default_factory=list)  # absolute row indices
    # Rows whose inputs were finite but whose results hold NaN or Inf (log of 0, overflow).
    nonfinite_output_count: int = 0
    nonfinite_output_first: list[int] = field(default_factory=list)
    interrupted: bool = False
    program_cached: bool = False  # the compiled program came from the program cache (see `_program_cache`)

    @property
    def samples_per_second(self) -> float:
        return self.computed_rows / self.seconds if self.seconds > 0 else 0.0


def output_shape(model: ConvertedModel, n: int, target: Any) -> tuple[int, ...]:
    """The output array shape for `n` samples: `(n, K, *sample)` for ``"all"``, else `(n, *sample)`."""
    if isinstance(target, str) and target == "all":
        return (n, model.n_outputs, *model.sample_shape)
    return (n, *model.sample_shape)


def run_jacobian(
    model: ConvertedModel,
    reader: Any,
    writer: Any,
    *,
    target: str | int = "all",
    labels: np.ndarray | None = None,
    output: str = "logits",
    dtype: Any = None,
    method: str = "vmap-jacrev",
    precision: str = "float32",
    batch_size: int = 256,
    start_row: int = 0,
    stop_event: threading.Event | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    on_rows: Callable[[int], None] | None = None,
    checkpoint_seconds: float = 2.0,
    prefetch: int = 2,
) -> RunResult:
    """Stream the Jacobians of every row of `reader` into `writer`.

    **Arguments:**

    - `model`: a converted model.
    - `reader`: `n_samples`, `sample_shape`, `read(start, stop)` -> `(stop - start, *sample_shape)`.
    - `writer`: `write(start, rows)` and `flush()`, indexed from this process's first row
      (`dist.process_rows(n, process, processes)`); shape `output_shape(model, rows, target)`.
    - `target`: ``"all"``, ``"predicted"`` or a class index; `labels` (`(N,)` ints) overrides it.
    - `output`, `method`, `precision`: as for `jaxjac.jacobian`.
    - `dtype`: the written dtype (default the model's); the cast happens on the device.
    - `batch_size`: samples per compiled call over all devices of all processes; a
      multiple of the device count.
    - `start_row`: rows of this process's slice already written (a resume watermark,
      a multiple of the per-process batch); the batch boundaries do not move.
    - `stop_event`: set it (e.g. from a signal handler) to stop taking new batches;
      batches in flight are finished and written.
    - `on_checkpoint(completed_rows)`: called after each flush of the writer.
    - `on_rows(n)`: called as rows are written (progress bars).

    **Returns:** a `RunResult`. Rows whose input holds NaN or Inf are written as NaN
    and counted; every other row equals `jaxjac.jacobian(model, X, batch_size=batch_size)`.
    """
    labels = None if labels is None else np.asarray(labels)  # run_stream validates them
    core, tensors = batch_jacobian_core(
        model,
        target=target if labels is None else labels[:0],
        output=output,
        method=method,
        precision=precision,
    )
    out_dtype = jnp.dtype(dtype or model.dtype)
    program = _jacobian_program(core, out_dtype)
    description = {
        "program": "jacobian",
        "graph": model.graph.to_json(),
        "spec": [model.sample_shape, model.output_shape, model.spec.dtype],
        "tensors": {name: [np.shape(v), str(np.asarray(v).dtype)] for name, v in tensors.items()},
        "target": target if labels is None else None,
        "output": output,
        "method": method,
        "precision": precision,
        "dtype": str(out_dtype),
    }

    return run_stream(
        model,
        reader,
        writer,
        program,
        tensors,
        labels=labels,
        batch_size=batch_size,
        start_row=start_row,
        stop_event=stop_event,
        on_checkpoint=on_checkpoint,
        on_rows=on_rows,
        checkpoint_seconds=checkpoint_seconds,
        prefetch=prefetch,
        description=description,
    )


@functools.lru_cache(maxsize=64)
def _jacobian_program(core: Callable, out_dtype: np.dtype) -> Callable:
    # One function object per core and dtype, so that `_compile` can reuse its compilation.
    # A float64 output from a float32 run (64-bit JAX off) is widened by the writer on
    # the host: asking JAX for it would only warn that it truncates.
    device_dtype = jax.dtypes.canonicalize_dtype(out_dtype)

    def program(consts, x, batch_labels, rows):
        return core(consts, x, batch_labels).astype(device_dtype)

    return program


def run_stream(
    model: ConvertedModel,
    reader: Any,
    sink: Any,
    program: Callable[..., Any],
    consts: Any,
    *,
    labels: np.ndarray | None = None,
    reduce: bool = False,
    batch_size: int = 256,
    start_row: int = 0,
    stop_event: threading.Event | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    on_rows: Callable[[int], None] | None = None,
    checkpoint_seconds: float = 2.0,
    prefetch: int = 2,
    description: dict[str, Any] | None = None,
) -> RunResult:
    """Stream every row of `reader` through one compiled batch program into `sink`.

    The engine under `run_jacobian`, `jaxjac.attribute` and `jaxjac.importance`.

    **Arguments:**

    - `program(consts, x, labels, rows)`: a pure function of the replicated
      pytree `consts`, a batch `x` `(B, *sample_shape)`, its `labels` `(B,)`
      (or `None` when `labels` is `None`) and `rows` `(B,)` int32: each row's
      absolute index in the data (modulo 2**31), or -1 for padding and for rows whose input
      holds NaN or Inf (their `x` is zeros). Row programs return `(B, ...)`
      per-row results; with `reduce=True` it returns a pytree of reduced
      arrays, summed over the batch inside the program (on the devices, so
      that only O(features) leaves them), and replicated.
    - `sink`: for row programs a writer (`write(start, rows)`, `flush()`, as for
      `run_jacobian`); with `reduce=True` anything with `add(result)`, called
      with each batch's reduced result as numpy arrays, in batch order.
    - `description`: a JSON-able account of everything `program` and `consts`
      depend on besides their shapes (model graph, options), for a row program:
      with it, the compiled program is kept in the program cache
      (`jaxjac._program_cache`), and a rerun loads it instead of tracing again.
    - the rest as for `run_jacobian`.
    """
    check_dtype_enabled(model.spec)
    mesh = dist.batch_mesh()
    devices, processes, process = mesh.devices.size, jax.process_count(), jax.process_index()
    if batch_size < 1 or batch_size % devices:
        raise JaxjacError(f"batch_size must be a positive multiple of the device count {devices}; got {batch_size}")
    local_batch = batch_size // processes
    n = reader.n_samples
    row0, row1 = dist.process_rows(n, process, processes)
    if labels is not None:
        labels = check_labels(labels, n, model.n_outputs)
    if start_row % local_batch and start_row != row1 - row0:
        raise JaxjacError(f"start_row {start_row} is not on a batch boundary of size {local_batch}")
    key = None
    # Kept on CPU only, where the start-up it saves is a noticeable part of a run and
    # where executables are known to round-trip; a GPU run is dominated by the data.
    # One process only: each process of a multi-process job compiles its own part.
    cacheable = processes == 1 and mesh.devices.flat[0].platform == "cpu" and cache_folder() is not None
    if description is not None and not reduce and cacheable:
        key = program_key(
            {**description, "batch_size": batch_size, "labels": _dtype_name(labels)}, list(mesh.devices.flat)
        )
    compiled, consts, compile_seconds, cached = _compile(model, mesh, program, consts, labels, reduce, batch_size, key)
    steps = math.ceil(dist.process_rows(n, 0, processes)[1] / local_batch)  # the same for every process
    first_step = min(dist.all_processes(start_row // local_batch))
    stop_event = stop_event or threading.Event()
    pipeline = _Pipeline(
        reader, sink, labels, model, row0, row1, local_batch, stop_event, on_rows, on_checkpoint, reduce
    )
    pipeline.start(first_step, steps, checkpoint_seconds, prefetch)
    to_devices = _batch_placer(dist.batch_sharding(mesh), processes)
    delay = float(os.environ.get(_TEST_DELAY_ENV, "0") or 0)
    t0 = time.perf_counter()
    failed = True
    try:
        while not stop_event.is_set():
            item = pipeline.next_batch()
            if item is _END:
                break
            if delay:
                time.sleep(delay)
            args = [consts, to_devices(item.x), to_devices(item.rows)]
            if labels is not None:
                args.append(to_devices(item.labels))
            y = compiled(*args)
            for leaf in jax.tree.leaves(y):
                if leaf.sharding.memory_kind != "pinned_host":  # there already
                    leaf.copy_to_host_async()  # the device-to-host copy of this batch overlaps the next one's compute
            pipeline.submit(item, y)
        failed = False
    finally:
        pipeline.finish(failed)
    seconds = time.perf_counter() - t0
    return RunResult(
        completed_rows=pipeline.completed,
        slice_rows=row1 - row0,
        computed_rows=pipeline.computed,
        seconds=seconds,
        compile_seconds=compile_seconds,
        batch_size=batch_size,
        devices=devices,
        processes=processes,
        nonfinite_count=pipeline.nonfinite_count,
        nonfinite_first=pipeline.nonfinite_first,
        nonfinite_output_count=pipeline.nonfinite_output_count,
        nonfinite_output_first=pipeline.nonfinite_output_first,
        interrupted=stop_event.is_set() and pipeline.completed < row1 - row0,
        program_cached=cached,
    )


def _compile(model, mesh, program, consts, labels, reduce, batch_size, key):
    """Lower and compile the sharded program once, or load it from the program cache by `key`.

    **Returns:** `(compiled, device consts, seconds, loaded from the cache)`.
    """
    t0 = time.perf_counter()
    rep, shard = dist.replicated(mesh), dist.batch_sharding(mesh)
    out_sharding = rep if reduce else _result_sharding(shard)
    consts = jax.tree.map(lambda v: _replicate(np.asarray(v), rep), consts)
    x_spec = jax.ShapeDtypeStruct((batch_size, *model.sample_shape), model.dtype, sharding=shard)
    rows_spec = jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=shard)
    c_spec = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=rep), consts)
    if labels is None:

        def fn(c, x, rows):
            return program(c, x, None, rows)

        specs = (c_spec, x_spec, rows_spec)
    else:

        def fn(c, x, rows, lab):
            return program(c, x, lab, rows)

        specs = (c_spec, x_spec, rows_spec, jax.ShapeDtypeStruct((batch_size,), labels.dtype, sharding=shard))
    # Without a program-cache key (library calls, with JAX's cache off), keep the
    # compilation in memory instead, for the next call on equal work.
    memo_key = None
    if key is None:
        memo_key = (program, out_sharding, tuple(mesh.devices.flat), jax.tree.structure(specs), *jax.tree.leaves(specs))
        memo_key += (bool(jax.config.jax_enable_x64), str(jax.config.jax_default_matmul_precision))
        if memo_key in _COMPILED:
            _COMPILED.move_to_end(memo_key)
            return _COMPILED[memo_key], consts, time.perf_counter() - t0, False
    # The input shardings come from the specs: batch arrays split over "batch", consts replicated.
    compiled, cached = load_or_compile(
        key,
        lambda: (
            jax.jit(with_default_numpy_rules(fn), out_shardings=out_sharding)
            .lower(*specs)
            .compile(compiler_options(mesh.devices.flat[0].platform))
        ),
        in_tree=jax.tree.structure((specs, {})),
        out_tree=jax.tree.structure(0),  # a row program's one result array (reduce programs have no key)
        probe_args=lambda: _probe_args(specs, consts),
    )
    if memo_key is not None:
        _COMPILED[memo_key] = compiled
        while len(_COMPILED) > _COMPILED_KEPT:
            _COMPILED.popitem(last=False)
    return compiled, consts, time.perf_counter() - t0, cached


def _result_sharding(shard: jax.sharding.NamedSharding) -> jax.sharding.NamedSharding:
    """The batch sharding of a row program's results: in page-locked host memory on GPUs, else on the devices.

    `JAXJAC_OUTPUT_MEMORY` (``device`` or ``pinned_host``) overrides the
    choice; a device without that memory keeps its results on the device.
    """
    device = shard.mesh.devices.flat[0]
    kind = os.environ.get(_OUTPUT_MEMORY_ENV) or ("pinned_host" if device.platform == "gpu" else "device")
    if kind == "device" or device.platform == "cpu" or kind not in {m.kind for m in device.addressable_memories()}:
        return shard
    return shard.with_memory_kind(kind)


# Compiled programs of this process, by program and argument specs: repeated
# library calls (`jaxjac.jacobian`, `jaxjac.attribute` in a loop) compile once.
# `program` objects are cached per model structure and options, so equal work
# finds its entry; a few entries only, since each holds an executable.
_COMPILED: collections.OrderedDict = collections.OrderedDict()
_COMPILED_KEPT = 8


def _probe_args(specs, consts) -> list:
    """Arguments for one call of the compiled program: `consts`, then random batch arrays on the devices."""
    rng = np.random.default_rng(0)
    args = [consts]
    for spec in specs[1:]:
        value = rng.standard_normal(spec.shape) if np.issubdtype(spec.dtype, np.floating) else np.zeros(spec.shape)
        args.append(jax.device_put(value.astype(spec.dtype), spec.sharding))
    return args


def _dtype_name(array: np.ndarray | None) -> str | None:
    return None if array is None else str(array.dtype)


def _batch_placer(sharding, processes: int) -> Callable[[np.ndarray], jax.Array]:
    """Put this process's rows of a batch array on the devices, split along the batch axis."""
    if processes == 1:
        # The same array as below, for a fraction of the host time per batch: on
        # CPU that time is taken from the two cores that compute.
        return lambda local: jax.device_put(local, sharding)
    return lambda local: jax.make_array_from_process_local_data(
        sharding, local, (local.shape[0] * processes, *local.shape[1:])
    )


def _replicate(value: np.ndarray, sharding) -> jax.Array:
    """The same host array on every device of every process."""
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


@dataclass
class _Batch:
    step: int
    start: int  # absolute rows [start, stop) of the data; stop <= start for a pure-padding batch
    stop: int
    x: np.ndarray
    labels: np.ndarray | None
    bad: np.ndarray  # batch-relative indices of rows with NaN/Inf inputs
    rows: np.ndarray  # (local_batch,) int32 absolute row indices; -1 for padding and bad rows


class _Pipeline:
    """The reader thread, the writer thread and their bounded queues."""

    def __init__(
        self, reader, writer, labels, model, row0, row1, local_batch, stop_event, on_rows, on_checkpoint, reduce
    ):
        self.reader, self.writer, self.labels, self.reduce = reader, writer, labels, reduce
        self.sample_shape, self.dtype = model.sample_shape, model.dtype
        self.row0, self.row1, self.local_batch = row0, row1, local_batch
        self.stop_event, self.on_rows, self.on_checkpoint = stop_event, on_rows, on_checkpoint
        self.completed = 0
        self.computed = 0
        self.nonfinite_count = 0
        self.nonfinite_first: list[int] = []
        self.nonfinite_output_count = 0
        self.nonfinite_output_first: list[int] = []
        self.error: BaseException | None = None
        self.halt = threading.Event()  # set on errors and when the main loop gives up: the reader stops

    def start(self, first_step: int, steps: int, checkpoint_seconds: float, prefetch: int) -> None:
        self.completed = min(first_step * self.local_batch, self.row1 - self.row0)
        self.inbox: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
        self.outbox: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
        self.threads = [
            threading.Thread(target=self._guard, args=(self._read, first_step, steps), daemon=True),
            threading.Thread(target=self._guard, args=(self._write, checkpoint_seconds), daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as error:  # surfaced in the main thread
            self.error = self.error or error
            self.halt.set()

    def _put(self, q: queue.Queue, item) -> bool:
        while True:
            if self.error is not None or (q is self.inbox and (self.stop_event.is_set() or self.halt.is_set())):
                return False
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue

    def _read(self, first_step: int, steps: int) -> None:
        for step in range(first_step, steps):
            start = self.row0 + step * self.local_batch
            stop = min(start + self.local_batch, self.row1)
            n = max(stop - start, 0)
            if n == self.local_batch:  # read as is: no zeroed buffer to copy into
                x = self.reader.read(start, stop)
            else:
                x = np.zeros((self.local_batch, *self.sample_shape), self.dtype)
                if n:
                    x[:n] = self.reader.read(start, stop)
            bad = np.flatnonzero(~np.isfinite(x[:n].reshape(n, -1)).all(axis=1)) if n else np.zeros(0, np.int64)
            if bad.size:  # NaN/Inf rows compute on zeros; their output rows become NaN
                x = x.copy() if n == self.local_batch else x  # a read may be a view of the caller's array
                x[bad] = 0
            rows = np.full(self.local_batch, -1, np.int32)
            # Modulo 2**31 keeps int32 (JAX's default) for datasets past two billion rows; only
            # per-row random streams (SmoothGrad noise, bootstrap weights) repeat that far apart.
            rows[: max(stop - start, 0)] = np.arange(start, max(stop, start), dtype=np.int64) % ROW_INDEX_MODULUS
            rows[bad] = -1
            labels = None
            if self.labels is not None:
                labels = np.zeros(self.local_batch, self.labels.dtype)
                labels[: max(stop - start, 0)] = self.labels[start:stop]
            if not self._put(self.inbox, _Batch(step, start, stop, x, labels, bad, rows)):
                return
        self._put(self.inbox, _END)

    def next_batch(self):
        while True:
            if self.error is not None:
                raise self.error
            try:
                return self.inbox.get(timeout=0.1)
            except queue.Empty:
                if self.stop_event.is_set() or self.halt.is_set():
                    return _END

    def submit(self, item: _Batch, y: jax.Array) -> None:
        if not self._put(self.outbox, (item, y)) and self.error is not None:
            raise self.error

    def _write(self, checkpoint_seconds: float) -> None:
        last = time.monotonic()
        while True:
            entry = self.outbox.get()
            if entry is _END:
                break
            item, y = entry
            count = item.stop - item.start
            if count <= 0:
                continue
            if item.bad.size:
                self.nonfinite_count += item.bad.size
                room = FIRST_BAD_ROWS - len(self.nonfinite_first)
                self.nonfinite_first += [int(item.start + i) for i in item.bad[:room]]
            if self.reduce:
                self.writer.add(jax.tree.map(np.asarray, y))
            else:
                rows = _local_rows(y)[:count]
                self._count_nonfinite_results(item, rows)
                if item.bad.size:
                    rows = np.array(rows)
                    rows[item.bad] = np.nan
                self.writer.write(item.start - self.row0, rows)
            self.completed = item.stop - self.row0
            self.computed += count
            if self.on_rows:
                self.on_rows(count)
            if time.monotonic() - last >= checkpoint_seconds:
                self._checkpoint()
                last = time.monotonic()
        self._checkpoint()

    def _count_nonfinite_results(self, item: _Batch, rows: np.ndarray) -> None:
        """Count the rows with finite inputs whose results hold NaN or Inf."""
        if np.isfinite(rows.sum(dtype=np.float32)):  # one cheap pass when every entry is finite
            return
        flags = ~np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
        flags[item.bad] = False  # already reported as NaN/Inf inputs
        found = np.flatnonzero(flags)
        self.nonfinite_output_count += found.size
        room = FIRST_BAD_ROWS - len(self.nonfinite_output_first)
        self.nonfinite_output_first += [int(item.start + i) for i in found[:room]]

    def _checkpoint(self) -> None:
        self.writer.flush()  # durable first, then recorded
        if self.on_checkpoint:
            self.on_checkpoint(self.completed)

    def finish(self, failed: bool) -> None:
        """Stop reading, let the writer drain what was dispatched, and join both threads."""
        self.halt.set()
        writer_thread = self.threads[1]
        while writer_thread.is_alive():
            try:
                self.outbox.put(_END, timeout=0.1)
                break
            except queue.Full:
                continue
        writer_thread.join()
        self.threads[0].join()
        if self.error is not None and not failed:
            raise self.error


def _local_rows(y: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded result, in order."""
    if jax.process_count() == 1:
        return np.asarray(y)
    shards = sorted(y.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])
