"""`jaxjac jacobian`: outputs, --labels, --json, refusals with one-line errors, and neither torch nor Flax needed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_same_rows
from test_run import N_CLASSES, SAMPLE_SHAPE, make_data

import jaxjac
from jaxjac.cli import main


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("jaxjac: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["jacobian", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in ("examples:", "--target predicted", "--resume", "OUT.progress.json", "--num-processes", "NaN"):
        assert text in out


def test_writes_jacobians_with_json_summary(artifact, tmp_path, capsys, cache):
    x = make_data(tmp_path / "X.npy", 19)
    out = tmp_path / "J.npy"
    code = main(["jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(out), "--batch-size", "8", "--json", *cache])
    assert code == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    assert info["status"] == "complete" and info["rows"] == 19 and info["devices"] == 1 and info["batch_size"] == 8
    assert "computed 19 rows" in captured.err and str(out) in captured.err
    np.testing.assert_array_equal(np.load(out), jaxjac.jacobian(jaxjac.load(artifact), x, batch_size=8))
    assert not (tmp_path / "J.npy.progress.json").exists() and not (tmp_path / "J.npy.partial").exists()


def test_float64_output_of_a_float32_model_is_widened_without_a_warning(artifact, tmp_path, cache):
    x = make_data(tmp_path / "X.npy", 5)
    out = tmp_path / "J64.npy"
    # Warnings are errors in this suite: JAX's "truncated to float32" from a float64 request would fail it.
    assert main(["jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(out), "--dtype", "float64", *cache]) == 0
    assert np.load(out).dtype == np.float64
    # --batch-size auto picks its own batch: the same rows, summed perhaps in another order.
    assert_same_rows(np.load(out), jaxjac.jacobian(jaxjac.load(artifact), x).astype(np.float64))


def test_json_summary_times_the_phases(artifact, tmp_path, capsys, cache):
    make_data(tmp_path / "X.npy", 9)
    argv = ["jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(tmp_path / "J.npy"), "--json", *cache]
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    phases = info["phases"]
    parts = ("prepare", "setup", "stream", "finish")
    assert all(phases[name] >= 0 for name in parts)
    assert phases["stream"] == pytest.approx(info["seconds"], abs=1e-3)
    assert phases["setup"] >= info["compile_seconds"] - 1e-3
    assert sum(phases[name] for name in parts) == pytest.approx(phases["total"], abs=5e-3)
    assert phases["finished_at"] - phases["started_at"] == pytest.approx(phases["total"], abs=5e-3)


def test_command_line_exit_skips_the_last_collection(artifact, tmp_path):
    # main() run as the program (argv None) freezes the collector before the interpreter exits;
    # main([...]) called from Python (as in these tests) leaves it alone.
    make_data(tmp_path / "X.npy", 5)
    argv = ["jaxjac", "jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(tmp_path / "J.npy")]
    argv += ["--quiet", "--compile-cache", str(tmp_path / "xla")]
    code = (
        "import gc, sys\n"
        "from jaxjac.cli import main\n"
        f"argv = {argv!r}\n"
        "assert main(argv[1:] + ['--force']) == 0 and gc.get_freeze_count() == 0\n"
        "sys.argv = argv + ['--force']\n"
        "code = main()\n"
        "assert gc.get_freeze_count() > 0, 'not frozen'\n"
        "raise SystemExit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "J.npy").shape == (5, N_CLASSES, *SAMPLE_SHAPE)


def test_a_float64_model_writes_float64_jacobians_unless_told_otherwise(tmp_path):
    import jax
    import torch

    torch.manual_seed(0)
    features = 2 * (SAMPLE_SHAPE[-1] - 4)
    net = torch.nn.Sequential(
        torch.nn.Conv1d(1, 2, 5), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(features, 3)
    )
    x = make_data(tmp_path / "X.npy", 6).astype(np.float64)
    with jax.enable_x64(True):
        model = jaxjac.convert(net.double().eval(), x[:2], dtype="float64", check=False)
        jaxjac.save(model, tmp_path / "net.jaxjac")
        expected = jaxjac.jacobian(model, x)
    # In a child process: the command line turns on 64-bit JAX for a float64 model, for good.
    common = ["jacobian", str(tmp_path / "net.jaxjac"), str(tmp_path / "X.npy"), "--quiet", "--compile-cache", "off"]
    code = (
        "import sys\nfrom jaxjac.cli import main\n"
        f"assert main({[*common, '-o', 'J64.npy']!r}) == 0\n"
        f"sys.exit(main({[*common, '-o', 'J32.npy', '--dtype', 'float32']!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    J64, J32 = np.load(tmp_path / "J64.npy"), np.load(tmp_path / "J32.npy")
    assert (J64.dtype, J32.dtype) == (np.float64, np.float32)
    np.testing.assert_array_equal(J64, expected)
    np.testing.assert_array_equal(J32, expected.astype(np.float32))


def test_labels_and_log_probs(artifact, tmp_path, cache):
    x = make_data(tmp_path / "X.npy", 10)
    y = np.arange(10) % N_CLASSES
    np.save(tmp_path / "y.npy", y)
    argv = ["jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(tmp_path / "S.npy"), "--labels"]
    argv += [str(tmp_path / "y.npy"), "--output", "log-probs", "--batch-size", "4", "--quiet", *cache]
    assert main(argv) == 0
    expected = jaxjac.jacobian(jaxjac.load(artifact), x, target=y, output="log_probs", batch_size=4)
    np.testing.assert_array_equal(np.load(tmp_path / "S.npy"), expected)


def test_nan_rows_are_reported(artifact, tmp_path, capsys, cache):
    x = make_data(tmp_path / "X.npy", 12)
    x[[2, 9]] = np.nan
    np.save(tmp_path / "X.npy", x)
    assert main(["jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(tmp_path / "J.npy"), *cache]) == 0
    assert "2 rows had NaN/Inf inputs (rows 2, 9): their output rows are NaN" in capsys.readouterr().err
    assert np.isnan(np.load(tmp_path / "J.npy")[[2, 9]]).all()


def test_refuses_to_overwrite_and_force_replaces(artifact, tmp_path, capsys, cache):
    make_data(tmp_path / "X.npy", 5)
    out = tmp_path / "J.npy"
    out.write_bytes(b"precious")
    argv = ["jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(out), *cache]
    assert main(argv) == 2
    assert "J.npy already exists; pass --force to overwrite it" in one_error_line(capsys.readouterr().err)
    assert out.read_bytes() == b"precious"
    assert main([*argv, "--resume"]) == 2
    assert "is a finished output" in one_error_line(capsys.readouterr().err)
    assert main([*argv, "--force"]) == 0
    assert np.load(out).shape == (5, N_CLASSES, *SAMPLE_SHAPE)


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        ("not-artifact", [], r"is not a jaxjac artifact"),
        ("short-labels", ["--labels", "{tmp}/y.npy"], r"holds 3 labels; the data holds 6 samples"),
        ("wrong-shape", [], r"DATA .*X\.npy"),
        ("bad-target", ["--target", "7"], r"target class 7 is out of range for a model with 3 outputs"),
    ],
)
def test_bad_input_is_one_line_and_leaves_files(artifact, tmp_path, capsys, cache, setup, extra, message):
    make_data(tmp_path / "X.npy", 6)
    model = artifact
    if setup == "not-artifact":
        model = str(tmp_path / "fake.jaxjac")
        (tmp_path / "fake.jaxjac").write_bytes(b"not a model, just some bytes")
    if setup == "short-labels":
        np.save(tmp_path / "y.npy", np.array([0, 1, 2]))
    if setup == "wrong-shape":
        np.save(tmp_path / "X.npy", np.zeros((6, 2, 7), np.float32))
    extra = [e.format(tmp=tmp_path) for e in extra]
    out = tmp_path / "J.npy"
    assert main(["jacobian", model, str(tmp_path / "X.npy"), "-o", str(out), *extra, *cache]) == 2
    assert re.search(message, one_error_line(capsys.readouterr().err))
    assert not out.exists() and not (tmp_path / "J.npy.partial").exists()


def test_runs_without_torch_or_flax(artifact, tmp_path):
    # Neither is needed to compute from an artifact: torch may be absent, and
    # importing Flax would cost every run a third of a second.
    x = make_data(tmp_path / "X.npy", 9)
    out = tmp_path / "S.npy"
    argv = [artifact, str(tmp_path / "X.npy"), "-o", str(out), "--target", "predicted", "--batch-size", "4"]
    argv += ["--compile-cache", str(tmp_path / "xla")]
    code = (
        "import sys; sys.modules['torch'] = sys.modules['flax'] = None  # importing either now fails\n"
        "from jaxjac.cli import main\n"
        f"code = main(['jacobian', *{argv!r}])\n"
        "loaded = [m for m in sys.modules if sys.modules[m] is not None and m.split('.')[0] in ('torch', 'flax')]\n"
        "assert not loaded, f'imported {loaded}'\n"
        "raise SystemExit(code)\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    expected = jaxjac.jacobian(jaxjac.load(artifact), x, target="predicted", batch_size=4)
    np.testing.assert_array_equal(np.load(out), expected)


def _stderr_on_a_terminal(command: list[str], cwd) -> str:
    """Run `command` with stderr on a pseudo-terminal; returns what it wrote there."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, where tqdm draws nothing: make it 120.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=follower, cwd=cwd)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=120) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_a_progress_bar_on_a_terminal_and_one_summary_line_elsewhere(artifact, tmp_path):
    make_data(tmp_path / "X.npy", 300)
    command = [sys.executable, "-m", "jaxjac", "jacobian", artifact, "X.npy", "--batch-size", "16"]
    command += ["--compile-cache", "off"]
    on_terminal = _stderr_on_a_terminal([*command, "-o", "tty.npy"], tmp_path)
    # tqdm's bar: the device count in its label, the rate and the elapsed<remaining (ETA) times.
    assert "jacobian [1 device]" in on_terminal and "300/300" in on_terminal, on_terminal
    assert re.search(r"sample/s", on_terminal) and re.search(r"\d\d:\d\d<\d\d:\d\d", on_terminal), on_terminal
    quiet = _stderr_on_a_terminal([*command, "-o", "quiet.npy", "--quiet"], tmp_path)
    piped = subprocess.run([*command, "-o", "piped.npy"], cwd=tmp_path, capture_output=True, text=True, check=True)
    for err in (quiet, piped.stderr):
        assert "sample/s" not in err and "300/300" not in err, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and re.match(r"jaxjac: computed 300 rows in .* samples/s", lines[0]), err


def test_xla_running_out_of_memory_is_one_line_that_tells_the_fix(artifact, tmp_path, capsys, cache, monkeypatch):
    import jax

    import jaxjac._run

    def exhausted(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 40.00GiB.")

    monkeypatch.setattr(jaxjac._run, "run_jacobian", exhausted)
    make_data(tmp_path / "X.npy", 6)
    argv = ["jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(tmp_path / "J.npy"), *cache]
    assert main(argv) == 2
    message = one_error_line(capsys.readouterr().err)
    assert re.search(r"out of memory: XLA could not allocate .*40\.00GiB.*pass a smaller --batch-size", message)
    with pytest.raises(jax.errors.JaxRuntimeError):
        main([*argv, "--force", "--debug"])
