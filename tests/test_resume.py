"""Interrupting `jaxjac jacobian` in a real subprocess (SIGINT, SIGTERM, SIGKILL) and resuming it.

The runs are slowed with the test-only `JAXJAC_TEST_BATCH_DELAY` (seconds of sleep per
batch) so that the signal lands mid-run. Every resumed output must be bit-identical to an
uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_run import make_data

import jaxjac
from jaxjac.cli import main

N, BATCH = 240, 4
RUN = "from jaxjac.cli import main; raise SystemExit(main())"


def jaxjac_cmd(argv: list[str]) -> list[str]:
    return [sys.executable, "-c", RUN, *argv]


def env(tmp_path, delay: float) -> dict[str, str]:
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "JAXJAC_TEST_BATCH_DELAY": str(delay),
    }


def wait_for_progress(sidecar, proc, rows: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if json.loads(sidecar.read_text())["completed_rows"] >= rows:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no progress to {rows} rows within {timeout} s")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_interrupt_then_resume_is_bit_identical(artifact, tmp_path, capsys, sig):
    x = make_data(tmp_path / "X.npy", N)
    out, sidecar = tmp_path / "J.npy", tmp_path / "J.npy.progress.json"
    argv = ["jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(out), "--batch-size", str(BATCH)]
    proc = subprocess.Popen(
        jaxjac_cmd(argv),
        env=env(tmp_path, 0.04),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_progress(sidecar, proc, 2 * BATCH)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}[sig], err
    assert not out.exists()  # an unfinished run never produces OUT
    done = json.loads(sidecar.read_text())["completed_rows"]
    assert done % BATCH == 0 and done < N
    if sig == signal.SIGKILL:
        command = jaxjac_cmd([*argv, "--resume"])
    else:
        (line,) = [line for line in err.splitlines() if line.startswith("jaxjac: error: interrupted by")]
        assert f"interrupted by {sig.name} after {done} of {N} rows" in line and "continue with: jaxjac" in line
        command = jaxjac_cmd(shlex.split(line.split("continue with: ")[1])[1:])
        assert "--resume" in command
    if sig == signal.SIGINT:  # a resume with other arguments is refused, and changes nothing
        assert main([*argv, "--resume", "--target", "predicted"]) == 2
        assert "was written for target='all', this run has target='predicted'" in capsys.readouterr().err
        assert main([*argv]) == 2
        assert "has an unfinished run" in capsys.readouterr().err
    resumed = subprocess.run(
        [*command, "--json"], env=env(tmp_path, 0), capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    info = json.loads(resumed.stdout)
    assert info["computed_rows"] == N - done  # it continued from the watermark
    np.testing.assert_array_equal(np.load(out), jaxjac.jacobian(jaxjac.load(artifact), x, batch_size=BATCH))
    assert not sidecar.exists() and not (tmp_path / "J.npy.partial").exists()


def test_resume_with_a_changed_model_is_refused(artifact, tmp_path, capsys, monkeypatch):
    make_data(tmp_path / "X.npy", 8)
    model_path, out = tmp_path / "net.jaxjac", tmp_path / "J.npy"
    shutil.copy(artifact, model_path)
    argv = ["jacobian", str(model_path), str(tmp_path / "X.npy"), "-o", str(out), "--compile-cache", str(tmp_path)]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the run died right after it started

    monkeypatch.setattr("jaxjac._run.run_jacobian", killed)
    assert main(argv) == 130
    monkeypatch.undo()
    sidecar = tmp_path / "J.npy.progress.json"
    assert sidecar.exists() and (tmp_path / "J.npy.partial").exists()
    model = jaxjac.load(model_path)
    model[0].weight[...] = model[0].weight[...] + 1.0
    jaxjac.save(model, model_path, overwrite=True)
    before = sidecar.read_bytes()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert re.search(
        r"cannot --resume: \S+J\.npy\.progress\.json was written for model_sha256='[0-9a-f]{64}', this run "
        r"has model_sha256='[0-9a-f]{64}'; rerun with the original arguments, or pass --force",
        err,
    ), err
    assert sidecar.read_bytes() == before and (tmp_path / "J.npy.partial").exists()
    assert main([*argv, "--force"]) == 0 and not sidecar.exists()


def test_resume_from_a_progress_file_claiming_more_rows_than_the_data_is_refused(
    artifact, tmp_path, capsys, monkeypatch
):
    make_data(tmp_path / "X.npy", 8)
    out, sidecar = tmp_path / "J.npy", tmp_path / "J.npy.progress.json"
    argv = ["jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(out), "--compile-cache", str(tmp_path)]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("jaxjac._run.run_jacobian", killed)
    assert main(argv) == 130
    monkeypatch.undo()
    state = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**state, "completed_rows": 16}))  # a valid file, hand-edited, on a batch boundary
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2  # not exit 0 with no row computed
    assert "records 16 completed rows, but this run has 8; the progress file is damaged" in capsys.readouterr().err
    assert not out.exists() and (tmp_path / "J.npy.partial").exists()


def test_resume_with_data_regenerated_in_place_is_refused(artifact, tmp_path, capsys, monkeypatch):
    # Same path, shape and dtype, other values: resuming would mix rows of two datasets.
    x = tmp_path / "X.npy"
    make_data(x, 40)
    out = tmp_path / "J.npy"
    argv = ["jacobian", artifact, str(x), "-o", str(out), "--compile-cache", str(tmp_path)]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("jaxjac._run.run_jacobian", killed)
    assert main(argv) == 130
    monkeypatch.undo()
    make_data(x, 40, seed=1)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    assert "was written for data_rows_sha256=" in capsys.readouterr().err
