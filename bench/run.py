"""The comparison: for every model, convert once, save jaxjac's reference rows, then time
each baseline in a fresh subprocess (`bench.worker`) and collect the results."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .baselines import BASELINES
from .worker import VERIFY_ROWS, dataset

# Samples per timed pass, by device: sized so that the slowest batched torch
# baseline takes a few seconds per pass on 2 CPU cores.
DEFAULT_N = {
    "cpu": {"seed-cnn": 1024, "resnet1d": 512, "inceptiontime": 512, "wide-cnn": 512},
    "gpu": {"seed-cnn": 262144, "resnet1d": 65536, "inceptiontime": 32768, "wide-cnn": 65536},
}
# Every batched baseline, torch's and jaxjac's, is timed at each of these batch sizes and
# reported at its fastest: on CPUs jaxjac's whole Jacobians run fastest at 32 to 256 rows
# (by model, as their working set fits the caches) and torch's at 128 to 512.
DEFAULT_BATCHES = {"cpu": (32, 64, 256), "gpu": (8192,)}
PRECISION_MODELS = ("seed-cnn", "wide-cnn")


def prepare_model(name: str, workdir: Path, device: str, precision: bool) -> dict[str, Any]:
    """Convert the model (float32, and float64 for the precision reference), save jaxjac's reference rows."""
    import jax
    import torch

    import jaxjac

    from .models import MODELS, build, n_parameters

    net = build(name)
    x = dataset(VERIFY_ROWS)
    start = time.perf_counter()
    model = jaxjac.convert(net, x, check=False)
    convert_s = time.perf_counter() - start
    paths = {"artifact": str(workdir / f"{name}.jaxjac"), "reference": str(workdir / f"{name}-reference.npz")}
    jaxjac.save(model, paths["artifact"])
    if precision:
        paths["artifact64"] = str(workdir / f"{name}-f64.jaxjac")
        with jax.enable_x64(True):
            jaxjac.save(
                jaxjac.convert(net.to(torch.float64), x.astype(np.float64), dtype="float64", check=False),
                paths["artifact64"],
            )
    np.savez(
        paths["reference"],
        all=np.asarray(jaxjac.jacobian_fn(model)(x)),
        predicted=np.asarray(jaxjac.jacobian_fn(model, target="predicted")(x)),
        vjp=np.asarray(jaxjac.jacobian_fn(model, target=0)(x)),
        forward=np.asarray(model(x)),
    )
    return {
        "paths": paths,
        "parameters": n_parameters(net),
        "description": MODELS[name].description,
        "convert_s": convert_s,
    }


def run_worker(spec: dict[str, Any], workdir: Path, timeout: float, inprocess: bool) -> dict[str, Any]:
    """Run one measurement in a fresh Python process (or in this one, for the smoke test)."""
    fd, out = tempfile.mkstemp(suffix=".json", dir=workdir)
    os.close(fd)
    spec = {**spec, "out": out}
    if inprocess:
        from .precision import measure as measure_precision
        from .worker import measure

        return measure_precision(spec) if spec["baseline"] == "precision" else measure(spec)
    spec_path = Path(out).with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    if spec["device"] == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # so the device peak is the baseline's own
    cmd = [sys.executable, "-m", "bench.worker", str(spec_path)]
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).resolve().parent.parent
        )
    except subprocess.TimeoutExpired:
        return {"status": "n/a", "reason": f"timed out after {timeout:.0f} s"}
    text = Path(out).read_text()
    if not text:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        return {"status": "n/a", "reason": f"worker exited {proc.returncode}: {tail[0][:300]}"}
    result = json.loads(text)
    if result.get("status") == "n/a" and proc.stderr:
        (workdir / f"{Path(out).stem}.stderr.txt").write_text(proc.stderr)
    return result


def run_comparison(
    models: Sequence[str],
    baselines: Sequence[str],
    *,
    device: str = "cpu",
    n: int | None = None,
    batch_sizes: Sequence[int] | None = None,
    loop_n: int = 200,
    repeats: int = 3,
    seed: int = 0,
    precision_models: Sequence[str] = PRECISION_MODELS,
    timeout: float = 600.0,
    inprocess: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every (model, baseline) measurement; the raw material of `bench.report`."""
    sizes = sorted(batch_sizes or DEFAULT_BATCHES[device])
    batch = math.lcm(*sizes)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="jaxjac-bench-") as tmp:
        workdir = Path(tmp)
        for name in models:
            n_model = n or DEFAULT_N[device].get(name, 1024)
            n_model = max(batch, -(-n_model // batch) * batch)  # whole batches of every size: one compilation each
            precision = name in precision_models
            log(f"[{name}] converting")
            info = prepare_model(name, workdir, device, precision)
            entry: dict[str, Any] = {k: v for k, v in info.items() if k != "paths"}
            model_sizes = [min(b, n_model) for b in sizes]
            entry.update(n=n_model, batch_sizes=model_sizes, baselines={})
            spec = {
                "model": name,
                "device": device,
                "n": n_model,
                "batch_sizes": model_sizes,
                "loop_n": loop_n,
                "repeats": repeats,
                "seed": seed,
                **info["paths"],
            }
            for baseline in (b for b in baselines if device in BASELINES[b].devices):
                start = time.perf_counter()
                spec_b = {**spec, "repeats": 1 if BASELINES[baseline].per_sample else repeats}
                fastest_of = entry["baselines"].get(BASELINES[baseline].batch_size_of, {}).get("batch_size")
                if fastest_of is not None:
                    spec_b["batch_sizes"] = [fastest_of]
                result = run_worker({**spec_b, "baseline": baseline}, workdir, timeout, inprocess)
                entry["baselines"][baseline] = result
                rate = f"{result['samples_per_s']:.0f} samples/s" if result["status"] == "ok" else result["reason"]
                log(f"[{name}] {baseline}: {result['status']}, {rate} ({time.perf_counter() - start:.0f} s)")
            if precision:
                entry["precision"] = run_worker({**spec, "baseline": "precision"}, workdir, timeout, inprocess)
                log(f"[{name}] precision: {entry['precision']['status']}")
            results[name] = entry
    return results
