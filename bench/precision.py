"""Speed and accuracy of jaxjac's matmul/convolution precisions against a float64 reference.

The reference is the same model converted in float64 and run with 64-bit JAX;
the error of a precision is `max|J - J64| / max|J64|` over the first rows, and
the median over those rows of `||J_i - J64_i|| / ||J64_i||`: the max catches a
row whose max-pool or ReLU choice flipped, the median shows the typical row.
On CPUs TF32 computes as float32 does; bfloat16 rounds the operands of every
product and convolution on every backend; on GPUs TF32 and bfloat16 trade
accuracy for speed. One batch size serves: the spec's largest.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

PRECISIONS = ("float32", "tf32", "bfloat16")
ERROR_ROWS = 64


def median_row_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """The median over rows of `||actual_i - expected_i|| / ||expected_i||`, in float64."""
    a = np.asarray(actual, np.float64).reshape(len(actual), -1)
    e = np.asarray(expected, np.float64).reshape(len(expected), -1)
    return float(np.median(np.linalg.norm(a - e, axis=1) / np.maximum(np.linalg.norm(e, axis=1), 1e-300)))


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    import jax

    import jaxjac

    from .worker import batch_sizes, dataset, relative_error

    n, batch = spec["n"], max(batch_sizes(spec))
    x = dataset(max(n, batch), spec["seed"])
    rows = min(ERROR_ROWS, batch)
    with jax.enable_x64(True):
        model64 = jaxjac.load(spec["artifact64"])
        reference = np.asarray(jaxjac.jacobian_fn(model64)(x[:rows].astype(np.float64)))
    model = jaxjac.load(spec["artifact"])
    out: dict[str, Any] = {"status": "ok", "n": n, "precisions": {}}
    for precision in PRECISIONS:
        fn = jaxjac.jacobian_fn(model, precision=precision)
        first = np.asarray(fn(x[:batch]))
        rows_out = np.empty((n, *first.shape[1:]), first.dtype)  # as the batched baselines: rows into one array
        best = float("inf")
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            for s in range(0, n, batch):
                rows_out[s : s + batch] = fn(x[s : s + batch])
            best = min(best, time.perf_counter() - start)
        out["precisions"][precision] = {
            "samples_per_s": n / best,
            "max_rel_err_vs_f64": relative_error(first[:rows], reference),
            "median_row_rel_err_vs_f64": median_row_error(first[:rows], reference),
        }
    return out
