"""Scaling curves: time against the number of samples N, and against model width.

Runs in one process (memory is not measured here). Every point is one timed
pass after a warm-up batch; outputs are copied to the host and dropped, so the
curve measures compute plus transfer, not the cost of holding N Jacobians.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .baselines import BASELINES, Context
from .worker import dataset

TORCH_BUDGET_S = 30.0  # stop timing torch at larger N once one pass takes this long (it is linear)


def _time_pass(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, n: int, batch: int) -> float:
    start = time.perf_counter()
    for s in range(0, n, batch):
        np.asarray(run(x[s % len(x) : s % len(x) + batch]))  # cycle through a fixed pool of inputs
    return time.perf_counter() - start


def _runs(net: Any, device: str) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    import jaxjac

    model = jaxjac.convert(net.cpu(), dataset(4), check=False)
    if device == "gpu":
        net = net.cuda()
    torch_ctx, jax_ctx = Context(device, net=net), Context(device, model=model)
    return {
        "jaxjac full": BASELINES["jaxjac vmap-jacrev"].make(jax_ctx),
        "jaxjac predicted": BASELINES["jaxjac vmap-jacrev (predicted)"].make(jax_ctx),
        "jaxjac forward": BASELINES["jaxjac forward"].make(jax_ctx),
        "torch best full": BASELINES["torch best"].make(torch_ctx),
    }


def scaling(device: str, max_n: int, batch: int, width_n: int, widths: tuple[int, ...], log=print) -> dict[str, Any]:
    from .models import build, build_width

    ns = [n for n in (1024 * 4**i for i in range(11)) if n <= max_n]
    ns = [*ns, max_n] if ns and ns[-1] < max_n else ns
    pool = dataset(max(batch, min(max_n, 65536)))
    out: dict[str, Any] = {"n": {"ns": ns, "batch_size": batch, "seconds": {}}, "width": {"widths": list(widths)}}
    runs = _runs(build("seed-cnn"), device)
    for label, run in runs.items():
        run(pool[:batch])  # warm-up and compile
        series, skipped = [], False
        for n in ns:
            b = min(batch, n)
            if skipped:
                series.append(None)
                continue
            seconds = _time_pass(run, pool, n, b) if b == batch else None
            series.append(seconds)
            log(f"[scaling N] {label} N={n}: {seconds if seconds is None else f'{seconds:.2f} s'}")
            skipped = label.startswith("torch") and seconds is not None and seconds > TORCH_BUDGET_S
        out["n"]["seconds"][label] = series
    width_seconds: dict[str, list[float]] = {label: [] for label in runs}
    for w in widths:
        for label, run in _runs(build_width(w), device).items():
            run(pool[:batch])
            seconds = _time_pass(run, pool, width_n, batch)
            width_seconds[label].append(seconds / width_n)
            log(f"[scaling width] width x{w} {label}: {width_n / seconds:.0f} samples/s")
    out["width"]["seconds_per_sample"] = width_seconds
    out["width"]["n"] = width_n
    return out


def plot(data: dict[str, Any], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    ns = data["n"]["ns"]
    for label, series in data["n"]["seconds"].items():
        pts = [(n, s) for n, s in zip(ns, series, strict=True) if s is not None]
        if pts:
            left.loglog(*zip(*pts, strict=True), marker="o", label=label)
    left.set_xlabel("samples N")
    left.set_ylabel("wall time (s)")
    left.set_title("time against N (seed CNN)")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    widths = data["width"]["widths"]
    for label, series in data["width"]["seconds_per_sample"].items():
        right.loglog([8 * w for w in widths], [s * 1e6 for s in series], marker="o", label=label)
    right.set_xlabel("first-layer channels (seed CNN ×width; channels 8w/16w/16w)")
    right.set_ylabel("µs per sample")
    right.set_title(f"time against width (N = {data['width']['n']})")
    right.grid(True, which="both", alpha=0.3)
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
