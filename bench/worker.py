"""Time one baseline on one model, in a process of its own: `python -m bench.worker SPEC.json`.

A fresh process per baseline makes the peak resident memory (`ru_maxrss`) that
baseline's own. The worker builds its inputs from the seed (so every baseline
sees the same data), checks its first rows against jaxjac's reference rows
(saved by the parent), times it, and writes one JSON result.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from typing import Any

import numpy as np

from .baselines import BASELINES, Context

VERIFY_ROWS = 4
RTOL = 1e-4


def dataset(n: int, seed: int = 0) -> np.ndarray:
    """The benchmark inputs: `n` standard-normal float32 samples `(n, 1, 224)`, the same for every seed."""
    return np.random.default_rng(seed).standard_normal((n, 1, 224), dtype=np.float32)


def max_rss_mb() -> float:
    """This process's peak resident memory in MB.

    Linux carries `ru_maxrss` across fork+exec (a child starts at its parent's
    peak), so prefer `VmHWM`, the high-water mark of this address space.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """`max|actual - expected| / max|expected|`, in float64."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"output shape {actual.shape} differs from jaxjac's reference {expected.shape}")
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), 1e-30))


def build_context(spec: dict[str, Any], backend: str) -> Context:
    """The baseline's torch net or jaxjac model, on the spec's device, at its first batch size."""
    if backend == "torch":
        import torch

        from .models import build

        if spec["device"] == "gpu":  # true float32, as jaxjac's default precision
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        net = build(spec["model"]).to("cuda" if spec["device"] == "gpu" else "cpu")
        return Context(spec["device"], batch_sizes(spec)[0], net=net)
    import jaxjac

    return Context(spec["device"], batch_sizes(spec)[0], model=jaxjac.load(spec["artifact"]))


def batch_sizes(spec: dict[str, Any]) -> list[int]:
    """The batch sizes a spec asks to time, smallest first."""
    return sorted(spec["batch_sizes"])


def to_device(backend: str, device: str, x: np.ndarray) -> Any:
    """A batch placed on the device (`"gpu"` or `"cpu"`), for the ``"resident"`` baselines."""
    if backend == "torch":
        import torch

        return torch.from_numpy(x).to("cuda" if device == "gpu" else "cpu")
    import jax

    return jax.device_put(x)


def wait(backend: str, results: list[Any]) -> None:
    """Block until the device has computed `results`."""
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    else:
        import jax

        jax.block_until_ready(results)


def to_host(y: Any) -> np.ndarray:
    return y.detach().cpu().numpy() if hasattr(y, "detach") else np.asarray(y)


def device_peak_mb(backend: str, device: str) -> float | None:
    if device != "gpu":
        return None
    if backend == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Verify, then time one baseline at each of the spec's batch sizes; see `bench/README.md`.

    The result is the fastest batch size's, with `batch_size` naming it and
    `rates_by_batch` giving every size's rate. Per-sample baselines and
    whole-dataset calls (which choose their own batches) run once.
    """
    baseline = BASELINES[spec["baseline"]]
    sweep = not (baseline.per_sample or baseline.mode == "stream")
    sizes = batch_sizes(spec) if sweep else batch_sizes(spec)[:1]
    ctx = build_context(spec, baseline.backend)
    results = {}
    for batch in sizes:
        ctx.batch_size = batch
        results[batch] = _measure_at(spec, baseline, ctx)
        if results[batch]["status"] != "ok":
            return results[batch]
    best = max(results, key=lambda b: results[b]["samples_per_s"])
    result = {**results[best], "peak_rss_mb": max_rss_mb()}
    if sweep:
        result["batch_size"] = best
        result["rates_by_batch"] = {str(b): r["samples_per_s"] for b, r in results.items()}
    return result


def _measure_at(spec: dict[str, Any], baseline: Any, ctx: Context) -> dict[str, Any]:
    """Verify, then time `baseline` at `ctx.batch_size` rows per call."""
    batch = ctx.batch_size
    n = spec["loop_n"] if baseline.per_sample else spec["n"]
    # A whole-dataset call warms up on all of it, so as to compile the batch size it will use.
    first_rows = VERIFY_ROWS if baseline.per_sample else n if baseline.mode == "stream" else batch
    x = dataset(max(n, first_rows), spec["seed"])
    run = baseline.make(ctx)
    rss_setup = max_rss_mb()

    start = time.perf_counter()
    if baseline.mode == "resident":
        batches = [to_device(baseline.backend, spec["device"], x[s : s + batch]) for s in range(0, n, batch)]
        wait(baseline.backend, batches)
        start = time.perf_counter()
        first = to_host(run(batches[0]))
        run = _resident_pass(baseline.backend, run, batches)
    else:
        first = run(x[:first_rows])
    first_s = time.perf_counter() - start
    reference = np.load(spec["reference"])[baseline.target]
    error = relative_error(first[:VERIFY_ROWS], reference[:VERIFY_ROWS])
    result: dict[str, Any] = {
        "target": baseline.target,
        "backend": baseline.backend,
        "mode": baseline.mode,
        "n": n,
        "max_rel_err": error,
    }
    if getattr(run, "note", ""):
        result["note"] = run.note
    if not error <= RTOL:
        return {**result, "status": "mismatch", "reason": f"max relative error {error:.3g} > {RTOL:g} vs jaxjac"}

    # Every batched baseline writes its rows into one host array, allocated once.
    out = np.empty((n, *first.shape[1:]), first.dtype) if baseline.mode == "batch" else None
    best = min(_timed_pass(run, x[:n], batch, out) for _ in range(spec["repeats"]))
    return {
        **result,
        "status": "ok",
        "samples_per_s": n / best,
        "seconds": best,
        "compile_s": max(0.0, first_s - best * first_rows / n),
        "peak_rss_mb": max_rss_mb(),
        "setup_rss_mb": rss_setup,
        "device_peak_mb": device_peak_mb(baseline.backend, spec["device"]),
    }


def _resident_pass(backend: str, run: Any, batches: list[Any]) -> Any:
    """`run` over every device batch, the results kept on the device, waited for."""

    def all_batches(_: np.ndarray) -> None:
        results = [run(b) for b in batches]
        wait(backend, results)

    return all_batches


def _timed_pass(run: Any, x: np.ndarray, batch: int, out: np.ndarray | None) -> float:
    """Seconds for one pass over `x`: batch by batch into `out`, or (`out` None) one call on all of `x`.

    A whole-data call is a streaming library call, which allocates its own
    output, or a resident pass, whose results stay on the device.
    """
    start = time.perf_counter()
    if out is None:
        run(x)
    else:
        for s in range(0, len(x), batch):
            out[s : s + batch] = run(x[s : s + batch])
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    spec = json.loads(open(argv[0]).read())
    try:
        if spec["baseline"] == "precision":
            from .precision import measure as measure_precision

            result = measure_precision(spec)
        else:
            result = measure(spec)
    except Exception as error:  # a baseline that cannot run (e.g. torch.compile) is reported, not fatal
        traceback.print_exc()
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        result = {"status": "n/a", "reason": reason[:300]}
    with open(spec["out"], "w") as f:
        json.dump(result, f)
    sys.stdout.flush()
    os._exit(0)  # skip slow interpreter teardown (torch/XLA thread pools)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
