"""Is an end-to-end `jaxjac jacobian` run bound by I/O? Its time against three lower bounds.

    python -m bench.io_bound prepare DIR N            # DIR/seed-cnn.jaxjac and DIR/X.npy, N x (1, 224)
    jaxjac jacobian DIR/seed-cnn.jaxjac DIR/X.npy -o DIR/J.npy --target predicted --json > DIR/cli.json
    python -m bench.io_bound summarize DIR OUT.json   # the bounds, measured now, and the verdict

The bounds, each measured on this machine right after the run:

- **disk**: copying X.npy to a new file of the same size in 64 MiB chunks
  (`readinto` a reused buffer, `os.pwrite`, then fsync), as the command reads
  its input and writes (and syncs) its output;
- **PCIe**: X's bytes host-to-device plus the output's bytes device-to-host, at
  the rates `jax.device_put` and `np.asarray` reach on a 1 GiB array;
- **compute**: the same compiled Jacobian on batches already on the device, at
  the command's batch size.

Each bound is a time the run cannot beat by overlapping work; the run is
bound by the one its streaming phase comes closest to (a ratio near 1), and
nothing but that resource is left to win.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 1 << 20
SAMPLE_SHAPE = (1, 224)


def prepare(folder: Path, n: int) -> dict[str, Any]:
    """Write the seed CNN's artifact and `n` float32 samples as X.npy.

    One seeded block of 2**20 standard-normal samples repeats through the
    file: drawing 10M samples would take longer than the run it feeds, and
    neither the Jacobian's cost nor the file's bytes on disk depend on them.
    """
    import jaxjac

    from .models import build

    folder.mkdir(parents=True, exist_ok=True)
    net = build("seed-cnn")
    jaxjac.save(jaxjac.convert(net, np.zeros((1, *SAMPLE_SHAPE), np.float32)), folder / "seed-cnn.jaxjac")
    start = time.perf_counter()
    x = np.lib.format.open_memmap(folder / "X.npy", mode="w+", dtype=np.float32, shape=(n, *SAMPLE_SHAPE))
    block = np.random.default_rng(0).standard_normal((min(CHUNK, n), *SAMPLE_SHAPE), dtype=np.float32)
    for s in range(0, n, CHUNK):
        x[s : s + CHUNK] = block[: min(CHUNK, n - s)]
    x.flush()
    return {"samples": n, "gb": x.nbytes / 1e9, "seconds": time.perf_counter() - start}


def disk_copy_seconds(source: Path, target: Path, chunk: int = 64 << 20) -> float:
    """Seconds to copy the file at `source` to a new file at `target` through one reused buffer, synced."""
    buffer = memoryview(bytearray(chunk))
    start = time.perf_counter()
    with open(source, "rb", buffering=0) as src, open(target, "wb", buffering=0) as dst:
        offset = 0
        while n := src.readinto(buffer):
            offset += os.pwrite(dst.fileno(), buffer[:n], offset)
        os.fsync(dst.fileno())
    seconds = time.perf_counter() - start
    target.unlink()
    return seconds


def transfer_rates(gib: float = 1.0, repeats: int = 3) -> dict[str, float]:
    """Host-to-device and device-to-host GB/s of one pageable `gib`-GiB float32 array, best of `repeats`."""
    import jax

    host = np.random.default_rng(0).standard_normal(int(gib * 2**28), dtype=np.float32)
    up = down = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        device = jax.block_until_ready(jax.device_put(host))
        up = min(up, time.perf_counter() - start)
        start = time.perf_counter()
        np.asarray(device)
        down = min(down, time.perf_counter() - start)
        device.delete()
    return {"host_to_device_gb_s": host.nbytes / 1e9 / up, "device_to_host_gb_s": host.nbytes / 1e9 / down}


def compute_rate(model: Any, batch_size: int, target: str, steps: int = 20) -> float:
    """Samples/s of the compiled Jacobian on a batch already on the device, results left there."""
    import jax

    import jaxjac

    fn = jaxjac.jacobian_fn(model, target=target)
    x = jax.device_put(np.random.default_rng(1).standard_normal((batch_size, *SAMPLE_SHAPE), dtype=np.float32))
    jax.block_until_ready(fn(x))
    start = time.perf_counter()
    jax.block_until_ready([fn(x) for _ in range(steps)])
    return steps * batch_size / (time.perf_counter() - start)


def summarize(folder: Path, target: str = "predicted") -> dict[str, Any]:
    """The run's rate and bandwidth from `folder/cli.json`, the three bounds measured now, and the verdict."""
    import jaxjac

    cli = json.loads((folder / "cli.json").read_text().strip().splitlines()[-1])
    x_path, j_path = folder / "X.npy", folder / "J.npy"
    n = len(np.load(x_path, mmap_mode="r"))
    x_bytes, j_bytes = x_path.stat().st_size, j_path.stat().st_size
    seconds, streaming = cli["phases"]["total"], cli["phases"]["stream"]
    rates = transfer_rates()
    bounds = {
        "disk": disk_copy_seconds(x_path, folder / "copy.npy"),
        "pcie": x_bytes / 1e9 / rates["host_to_device_gb_s"] + j_bytes / 1e9 / rates["device_to_host_gb_s"],
        "compute": n / compute_rate(jaxjac.load(folder / "seed-cnn.jaxjac"), cli["batch_size"], target),
    }
    return {
        "samples": n,
        "batch_size": cli["batch_size"],
        "seconds": seconds,
        "stream_seconds": streaming,
        "phases": cli["phases"],
        "samples_per_s": n / seconds,
        "read_gb": x_bytes / 1e9,
        "written_gb": j_bytes / 1e9,
        "bandwidth_gb_s": (x_bytes + j_bytes) / 1e9 / seconds,
        "stream_bandwidth_gb_s": (x_bytes + j_bytes) / 1e9 / streaming,
        "disk_reference": "readinto a reused 64 MiB buffer, os.pwrite, fsync",
        "bound_seconds": bounds,
        "transfer_rates": rates,
        **verdict(streaming, bounds),
    }


def verdict(streaming: float, bounds: dict[str, float]) -> dict[str, Any]:
    """The streaming phase's time over each bound, and the bound it comes closest to.

    Streaming is where reading, computing and writing overlap; set-up
    (compilation) is apart from it.
    """
    ratios = {name: streaming / seconds for name, seconds in bounds.items()}
    nearest = min(ratios, key=lambda name: abs(np.log(ratios[name])))
    return {"stream_over_bounds": ratios, "bound_by": nearest, "stream_over_bound": ratios[nearest]}


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "prepare":
        info = prepare(Path(argv[1]), int(argv[2]))
        print(f"wrote {info['samples']:,} samples, {info['gb']:.2f} GB, in {info['seconds']:.1f} s")
        return 0
    if len(argv) == 3 and argv[0] == "summarize":
        result = summarize(Path(argv[1]))
        Path(argv[2]).write_text(json.dumps(result, indent=1))
        b = result["bound_seconds"]
        print(
            f"e2e: {result['samples']:,} samples in {result['seconds']:.1f} s = {result['samples_per_s']:,.0f} "
            f"samples/s, {result['bandwidth_gb_s']:.2f} GB/s read+write (batch {result['batch_size']}); streaming "
            f"{result['stream_seconds']:.1f} s = {result['stream_bandwidth_gb_s']:.2f} GB/s; bounds: disk copy "
            f"{b['disk']:.1f} s, PCIe {b['pcie']:.1f} s, compute {b['compute']:.1f} s; bound by "
            f"{result['bound_by']}, streaming/bound {result['stream_over_bound']:.2f}"
        )
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
