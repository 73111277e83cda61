"""Devices, processes and the multi-process output layout.

One 1-D mesh (axis ``"batch"``) spans every device of every process; JAX's
SPMD runs the jitted Jacobian over it. Process `p` of `P` owns the contiguous
rows `process_rows(n, p, P)` of the data: it reads only those rows and writes
them to its own shard. With `P > 1` the output `J.npy` becomes the shards

    J.00000-of-00002.npy, J.00001-of-00002.npy    (rows [0, r1) and [r1, N))
    J.npy.index.json                               the shard list, written by process 0 at the end

so processes never write to the same file; `read_sharded("J.npy.index.json")`
reassembles the full array. The same holds for `.zarr` and `.h5` outputs.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._errors import JaxjacError

AXIS = "batch"
INDEX_FORMAT = "jaxjac-shards"


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Join a multi-process JAX job, from the flags or from the standard JAX env variables.

    Does nothing for a single process (no flags and no `JAX_COORDINATOR_ADDRESS`).
    On CPU the cross-process collectives use gloo.
    """
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise JaxjacError("--coordinator, --num-processes and --process-id go together; pass all three or none")
    if not any(given) and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise JaxjacError(f"--process-id must be in [0, {num_processes}); got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def batch_mesh() -> Mesh:
    """A 1-D mesh over all devices of all processes, axis ``"batch"``."""
    return Mesh(np.array(jax.devices()), (AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def process_rows(n: int, process: int, processes: int) -> tuple[int, int]:
    """The contiguous rows `[start, stop)` of `n` that `process` owns (ceil-sized blocks)."""
    per = math.ceil(n / processes) if n else 0
    return min(process * per, n), min((process + 1) * per, n)


def shard_path(out: Path, process: int, processes: int) -> Path:
    """`J.npy` -> `J.00001-of-00004.npy`; `out` itself for a single process."""
    out = Path(out)
    if processes == 1:
        return out
    return out.with_name(f"{out.stem}.{process:05d}-of-{processes:05d}{out.suffix}")


def index_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.index.json")


def write_index(out: Path, *, n: int, processes: int, shape: tuple[int, ...], dtype: str) -> Path:
    """Write `OUT.index.json` describing the shards of a multi-process output; returns its path."""
    shards = []
    for p in range(processes):
        start, stop = process_rows(n, p, processes)
        shards.append({"path": shard_path(out, p, processes).name, "start": start, "stop": stop})
    index = {"format": INDEX_FORMAT, "version": 1, "shape": list(shape), "dtype": dtype, "shards": shards}
    path = index_path(out)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, path)
    return path


def read_sharded(index: str | os.PathLike) -> np.ndarray:
    """Reassemble the full output of a multi-process `jaxjac jacobian` run from its `OUT.index.json`.

    **Arguments:** `index`, the index file process 0 wrote beside the shards.

    **Returns:** the `(N, ...)` array the run would have written as one file,
    read into memory (for larger outputs, open each shard with `numpy.load(...,
    mmap_mode="r")` and use the index's `start`/`stop` rows instead). The shards
    must lie beside the index, cover rows `0..N` in order, and hold the rows
    the index gives them; anything else is a one-line `JaxjacError`.
    """
    from ._data import open_reader

    index = Path(index)
    try:
        meta = json.loads(index.read_text())
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
            raise JaxjacError(f"{index} is not a jaxjac shard index (expected format {INDEX_FORMAT!r})")
        shape = tuple(int(d) for d in meta["shape"])
        dtype = np.dtype(_numpy_dtype(meta["dtype"]))
        shards = [(str(s["path"]), int(s["start"]), int(s["stop"])) for s in meta["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise JaxjacError(f"{index}: cannot read the shard index ({type(error).__name__}: {error})") from None
    row = 0
    for name, start, stop in shards:
        if Path(name).name != name or start != row or stop < start:
            raise JaxjacError(
                f"{index}: shard {name!r} (rows {start}:{stop}) breaks the index: shards must be files beside it "
                f"covering the rows in order, and the next one should start at row {row}"
            )
        row = stop
    if not shape or row != shape[0]:
        raise JaxjacError(f"{index}: the shards cover {row} rows; the index's shape {shape} says {shape[:1]}")
    out = np.empty(shape, dtype)
    for name, start, stop in shards:
        if stop == start:
            continue
        with open_reader(index.parent / name, sample_shape=shape[1:], dtype=dtype, flag="shard") as reader:
            if reader.n_samples != stop - start:
                raise JaxjacError(
                    f"shard {index.parent / name} holds {reader.n_samples} rows; {index} gives it {stop - start}"
                )
            out[start:stop] = reader.read(0, stop - start)
    return out


def _numpy_dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return name


def all_processes(value: int) -> list[int]:
    """`value` from every process, in process order (one small collective)."""
    if jax.process_count() == 1:
        return [int(value)]
    from jax.experimental import multihost_utils

    return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.int64(value))).reshape(-1)]


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
