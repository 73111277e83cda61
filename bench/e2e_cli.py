"""End-to-end `jaxjac jacobian` from the shell against the pure compute time of the same model.

The user's case: 194,109 samples of shape (1, 224), every Jacobian row of the
seed-shaped CNN. Pure compute is `jaxjac.jacobian_fn` over in-memory batches
of the same size (results brought back to host memory, nothing read or
written); end to end is the `jaxjac jacobian` command in a fresh process,
from start to exit, reading `X.npy` and writing `J.npy`. The first CLI run
fills the persistent compilation cache; the second shows a rerun.

Run: `python -m bench.e2e_cli [--n 194109] [--batch-size 512]`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import jaxjac

from .models import SAMPLE_SHAPE, build

RESULTS = Path(__file__).parent / "results"


def pure_compute_seconds(model: jaxjac.ConvertedModel, x: np.ndarray, batch_size: int) -> float:
    """Seconds to compute every Jacobian of `x` in fixed-size batches, after compilation."""
    fn = jaxjac.jacobian_fn(model)
    pad = -len(x) % batch_size
    padded = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    np.asarray(fn(padded[:batch_size]))  # compile
    start = time.perf_counter()
    for i in range(0, len(padded), batch_size):
        np.asarray(fn(padded[i : i + batch_size]))
    return time.perf_counter() - start


def cli_seconds(artifact: Path, data: Path, out: Path, batch_size: int, cache: Path) -> tuple[float, dict]:
    """Wall seconds of one `jaxjac jacobian` process, and its JSON summary."""
    command = [sys.executable, "-m", "jaxjac", "jacobian", str(artifact), str(data), "-o", str(out)]
    command += ["--batch-size", str(batch_size), "--compile-cache", str(cache), "--json", "--force"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=out.parent)
    return time.perf_counter() - start, json.loads(done.stdout)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=194_109)
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args(argv)

    net = build("seed-cnn")
    x = np.random.default_rng(0).standard_normal((args.n, *SAMPLE_SHAPE)).astype(np.float32)
    model = jaxjac.convert(net, torch.as_tensor(x[:8]))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jaxjac.save(model, tmp / "net.jaxjac")
        np.save(tmp / "X.npy", x)
        compute = pure_compute_seconds(model, x, args.batch_size)
        cold, _ = cli_seconds(tmp / "net.jaxjac", tmp / "X.npy", tmp / "J.npy", args.batch_size, tmp / "xla")
        warm, summary = cli_seconds(tmp / "net.jaxjac", tmp / "X.npy", tmp / "J.npy", args.batch_size, tmp / "xla")
        agree = np.array_equal(np.load(tmp / "J.npy", mmap_mode="r")[:64], jaxjac.jacobian(model, x[:64]))
    result = {
        "date": datetime.date.today().isoformat(),
        "model": "seed-cnn",
        "n_samples": args.n,
        "sample_shape": list(SAMPLE_SHAPE),
        "batch_size": args.batch_size,
        "pure_compute_s": round(compute, 2),
        "cli_first_run_s": round(cold, 2),
        "cli_rerun_s": round(warm, 2),
        "cli_rerun_over_compute": round(warm / compute, 3),
        "cli_summary": summary,
        "cli_output_equals_library": bool(agree),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{result['date']}-cpu-e2e-cli.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.n} x {SAMPLE_SHAPE}: pure compute {compute:.1f} s; `jaxjac jacobian` {cold:.1f} s first run, "
        f"{warm:.1f} s rerun ({warm / compute:.2f}x compute); output equals the library's: {agree}; -> {path}"
    )
    return result


if __name__ == "__main__":
    main()
