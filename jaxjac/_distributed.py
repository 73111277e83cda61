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
    """Reassemble the full output `(N, ...)` of a multi-process run from its `OUT.index.json`."""
    from ._data import open_reader

    index = Path(index)
    meta = json.loads(index.read_text())
    if meta.get("format") != INDEX_FORMAT:
        raise JaxjacError(f"{index} is not a jaxjac shard index")
    shape = tuple(meta["shape"])
    dtype = np.dtype(_numpy_dtype(meta["dtype"]))
    out = np.empty(shape, dtype)
    for shard in meta["shards"]:
        if shard["stop"] > shard["start"]:
            reader = open_reader(index.parent / shard["path"], sample_shape=shape[1:], dtype=dtype)
            out[shard["start"] : shard["stop"]] = reader.read(0, shard["stop"] - shard["start"])
            reader.close()
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
