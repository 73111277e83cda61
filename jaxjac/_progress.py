"""What a run shows: a tqdm bar on an interactive stderr, else one summary line."""

from __future__ import annotations

import sys
import threading
from typing import Any

from ._run import RunResult


class Progress:
    """A thread-safe tqdm bar (samples/s, ETA, devices) on stderr, or nothing.

    The bar shows only when `enabled` and stderr is a terminal; `update(n)` is
    called from the writer thread.
    """

    def __init__(self, *, total: int, initial: int, devices: int, enabled: bool, task: str = "jacobian") -> None:
        self._bar = None
        self._lock = threading.Lock()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                unit="sample",
                unit_scale=True,
                dynamic_ncols=True,
                file=sys.stderr,
                desc=f"{task} [{devices} device{'s' if devices != 1 else ''}]",
            )

    def update(self, n: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def summary(result: RunResult, *, output: str, platform: str, rows_total: int) -> dict[str, Any]:
    """A JSON-able summary of a run (the `--json` output)."""
    return {
        "status": "interrupted" if result.interrupted else "complete",
        "output": output,
        "rows": rows_total,
        "completed_rows": result.completed_rows,
        "computed_rows": result.computed_rows,
        "seconds": round(result.seconds, 3),
        "compile_seconds": round(result.compile_seconds, 3),
        "program_cached": result.program_cached,
        "samples_per_second": round(result.samples_per_second, 1),
        "batch_size": result.batch_size,
        "devices": result.devices,
        "processes": result.processes,
        "platform": platform,
        "nonfinite_rows": result.nonfinite_count,
        "nonfinite_first": result.nonfinite_first,
        "nonfinite_output_rows": result.nonfinite_output_count,
        "nonfinite_output_first": result.nonfinite_output_first,
    }


def summary_line(info: dict[str, Any]) -> str:
    """One line: rows, seconds, samples/s, devices, output path (and the NaN/Inf rows, if any)."""
    devices = f"{info['devices']} {info['platform']} device{'s' if info['devices'] != 1 else ''}"
    if info["processes"] > 1:
        devices += f" in {info['processes']} processes"
    verb = "computed" if info["status"] == "complete" else "interrupted after"
    line = (
        f"jaxjac: {verb} {info['computed_rows']} rows in {info['seconds']:.1f} s "
        f"({info['samples_per_second']:.0f} samples/s, batch {info['batch_size']}, {devices}, "
        f"compile {info['compile_seconds']:.1f} s) -> {info['output']}"
    )
    if info["nonfinite_rows"]:
        first = ", ".join(str(i) for i in info["nonfinite_first"])
        more = ", ..." if info["nonfinite_rows"] > len(info["nonfinite_first"]) else ""
        line += f"; {info['nonfinite_rows']} rows had NaN/Inf inputs (rows {first}{more}): their output rows are NaN"
    if info.get("nonfinite_output_rows"):
        first = ", ".join(str(i) for i in info["nonfinite_output_first"])
        more = ", ..." if info["nonfinite_output_rows"] > len(info["nonfinite_output_first"]) else ""
        line += (
            f"; {info['nonfinite_output_rows']} rows with finite inputs have NaN/Inf results (rows {first}{more}): "
            "the model itself is not finite there"
        )
    return line
