"""`jaxjac importance` from the shell: the report, the plots, bad input and interruption."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxjac
from jaxjac.cli import main
from jaxjac.example import load_example_data, load_example_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("importance")
    X, y = load_example_data()
    model = jaxjac.convert(load_example_model(), X[:1], check=False)
    jaxjac.save(model, folder / "net.jaxjac")
    np.save(folder / "X.npy", X)
    np.save(folder / "y.npy", y)
    (folder / "names.txt").write_text("\n".join(f"band{i}" for i in range(224)) + "\n")
    return folder, model, X, y


def run_cli(folder, *args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "jaxjac", "importance", *map(str, args)],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def test_full_run_writes_report_and_plots(files):
    folder, _, _, _ = files
    done = run_cli(
        folder, "net.jaxjac", "X.npy", "--labels", "y.npy", "--top-k", "10", "-o", "imp.json",
        "--plot", "imp.png", "--feature-names", "names.txt", "--eval-samples", "90", "--random-rankings", "3",
        "--bootstrap", "20", "--json", "--per-class",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # with --json, stdout is the JSON alone
    report = json.loads((folder / "imp.json").read_text())
    assert summary["top_k"] == report["top_k"] and report["top_k"]["k"] == 10
    assert report["top_k"]["names"] == [f"band{i}" for i in report["top_k"]["features"]]
    assert report["evaluation"]["n_samples"] == 90 and report["evaluation"]["n_random"] == 3
    assert report["evaluation"]["deletion"]["ranked_auc"] < report["evaluation"]["deletion"]["random_auc"]
    assert report["randomization"]["passed"] is True
    assert report["confidence"]["replicates"] == 20
    for name in ("imp", "imp-heatmap", "imp-curves"):
        for suffix in (".png", ".svg"):
            assert (folder / f"{name}{suffix}").stat().st_size > 1000, name + suffix
    assert "true class 2 (n=100)" in done.stderr  # --per-class, on stderr beside --json


def test_cli_matches_the_python_api(files, capsys):
    folder, model, X, y = files
    out = folder / "ig.json"
    code = main(
        ["importance", str(folder / "net.jaxjac"), str(folder / "X.npy"), "--labels", str(folder / "y.npy"),
         "--method", "integrated-gradients", "--baseline", "mean", "--steps", "8", "--rule", "gauss-legendre",
         "--no-evaluate", "--no-randomization", "--bootstrap", "0", "-o", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    cli = json.loads(out.read_text())
    api = jaxjac.importance(
        model, X, labels=y, method="integrated-gradients", baseline="mean", steps=8, rule="gauss-legendre",
        bootstrap=0, evaluate=False, randomization=False,
    ).data  # fmt: skip
    assert cli["method_options"] == api["method_options"] == {
        "output": "logits", "precision": "float32", "steps": 8, "rule": "gauss-legendre"
    }  # fmt: skip
    assert cli["baseline"] == "mean" and cli["ranking"] == api["ranking"]
    np.testing.assert_allclose(cli["scores"], api["scores"], rtol=1e-6)


def bad_input_cases(folder):
    np.save(folder / "y_short.npy", np.zeros(10, np.int64))
    np.save(folder / "baseline_bad.npy", np.zeros(7, np.float32))
    (folder / "w_short.txt").write_text("400 410 420\n")
    (folder / "existing.json").write_text("precious")
    (folder / "not_a_model.jaxjac").write_bytes(b"hello")
    return [
        (["missing.npy"], "missing.npy"),
        (["X.npy", "--labels", "y_short.npy"], "holds 10 labels; the data holds 300 samples"),
        (["X.npy", "-o", "existing.json"], "existing.json already exists; pass --force"),
        (["X.npy", "--plot", "nowhere/imp.png"], "folder nowhere does not exist"),
        (["X.npy", "--wavelengths", "w_short.txt"], "wavelengths (--wavelengths): 3 given; the model's samples"),
        (["X.npy", "--target", "label"], "--target label needs --labels"),
        (["X.npy", "--method", "integrated-gradients", "--baseline", "baseline_bad.npy"], "baseline must have one"),
        (["X.npy", "--target", "7"], "target class 7 is out of range"),
    ]


def test_bad_input_is_one_line_and_touches_nothing(files, capsys, monkeypatch):
    folder, _, _, _ = files
    monkeypatch.chdir(folder)
    for args, match in bad_input_cases(folder):
        code = main(["importance", "net.jaxjac", *args, "--no-evaluate", "--no-randomization"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("jaxjac: error:")]
        assert code == 2 and len(lines) == 1 and match in lines[0], (args, err)
        assert "Traceback" not in err
    assert (folder / "existing.json").read_text() == "precious"
    code = main(["importance", "not_a_model.jaxjac", "X.npy"])
    assert code == 2 and "not_a_model.jaxjac" in capsys.readouterr().err


def test_sigint_stops_cleanly_and_writes_nothing(files):
    folder, _, _, _ = files
    command = [sys.executable, "-m", "jaxjac", "importance", "net.jaxjac", "X.npy", "-o", "stopped.json",
               "--batch-size", "8", "--no-evaluate", "--no-randomization"]  # fmt: skip
    env = {**os.environ, "JAXJAC_TEST_BATCH_DELAY": "0.3"}
    process = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    line = ""
    while "reduced on the devices" not in line and time.monotonic() < deadline:
        line = process.stderr.readline()
    time.sleep(3)  # into the streamed pass: compiled, a few batches done
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted after" in err and "nothing was written" in err and "SIGINT" in err
    assert not (folder / "stopped.json").exists()
