"""Memory of `jaxjac importance` against the row count: it must not grow with N.

The attributions are reduced on the device, so only O(features) numbers per
batch reach the host. This runs `jaxjac importance` (gradient, 100 bootstrap
replicates, labels, no evaluation subset) in a fresh process on synthetic
`(N, 1, 224)` data of growing N and records the process's peak anonymous
memory (heap: `RssAnon` in /proc/self/status, sampled every 20 ms). The
memory-mapped input's file pages are left out on purpose: they are page
cache, which the kernel reclaims, not memory the program holds.

Run: `python -m bench.importance_memory [--rows 100000 1000000]`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def _anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def child(argv: list[str]) -> None:
    """Run the CLI in this process and print the peak anonymous memory as JSON."""
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _anon_kib())
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    from jaxjac.cli import main

    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    print(json.dumps({"code": code, "peak_anon_mib": peak[0] / 1024, "seconds": seconds}))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return {}
    import jaxjac

    from .models import SAMPLE_SHAPE, build

    runs = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        net = build("seed-cnn")
        example = np.random.default_rng(0).normal(size=(1, *SAMPLE_SHAPE)).astype(np.float32)
        jaxjac.save(jaxjac.convert(net, example, check=False), work / "net.jaxjac")
        for n in args.rows:
            data = np.lib.format.open_memmap(work / "X.npy", mode="w+", dtype=np.float32, shape=(n, *SAMPLE_SHAPE))
            rng = np.random.default_rng(1)
            for start in range(0, n, 100_000):
                stop = min(start + 100_000, n)
                data[start:stop] = rng.normal(size=(stop - start, *SAMPLE_SHAPE)).astype(np.float32)
            data.flush()
            del data
            np.save(work / "y.npy", np.arange(n, dtype=np.int64) % 3)
            command = [sys.executable, "-m", "bench.importance_memory", "--child", "importance",
                       str(work / "net.jaxjac"), str(work / "X.npy"), "--labels", str(work / "y.npy"),
                       "--no-evaluate", "--no-randomization", "--bootstrap", "100", "--batch-size", "512",
                       "--quiet", "-o", str(work / f"imp-{n}.json")]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result.update(rows=n, rows_per_second=n / result["seconds"])
            print(json.dumps(result))
            runs.append(result)
    growth = runs[-1]["peak_anon_mib"] / runs[0]["peak_anon_mib"]
    report = {
        "date": datetime.date.today().isoformat(),
        "model": "seed-cnn",
        "sample_shape": list(SAMPLE_SHAPE),
        "command": "jaxjac importance net.jaxjac X.npy --labels y.npy --bootstrap 100 --no-evaluate --no-randomization",
        "runs": runs,
        "peak_growth": growth,
        "input_bytes_largest": runs[-1]["rows"] * int(np.prod(SAMPLE_SHAPE)) * 4,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cpu-importance-memory.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"peak anonymous memory grows {growth:.2f}x from {runs[0]['rows']:,} to {runs[-1]['rows']:,} rows")
    return report


if __name__ == "__main__":
    main()
