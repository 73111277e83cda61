"""Smoke test of the benchmark harness: tiny N, in-process, seed CNN.

Every baseline's first rows are checked against jaxjac's reference inside the
harness (a mismatch is reported, never timed); this test makes sure that check
runs and bites, and that the JSON and Markdown carry every section.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

# bench/ is not installed; append the checkout so the installed jaxjac stays first on the path.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.append(ROOT)

from bench import baselines as bl  # noqa: E402
from bench.__main__ import main  # noqa: E402
from bench.report import TARGETS  # noqa: E402

# torch.compile takes ~30 s on two cores; the full run verifies it like every other baseline.
# The on-device rows run on GPUs only.
FAST = [name for name, b in bl.BASELINES.items() if "compile" not in name and "cpu" in b.devices]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = [
        "--models",
        "seed-cnn",
        "--baselines",
        ",".join(FAST),
        "--n",
        "64",
        "--batch-size",
        "16,32",
        "--loop-n",
        "4",
        "--repeats",
        "1",
        "--inprocess",
        "--out-dir",
        str(out),
        "--tag",
        "smoke",
    ]
    assert main(args) == 0
    (json_path,) = out.glob("*-smoke.json")
    (md_path,) = out.glob("*-smoke.md")
    return json.loads(json_path.read_text()), md_path.read_text()


def test_every_baseline_ran_and_agrees_with_jaxjac(report):
    data, _ = report
    results = data["models"]["seed-cnn"]["baselines"]
    assert list(results) == FAST
    for name, r in results.items():
        assert r["status"] == "ok", f"{name}: {r}"
        assert r["max_rel_err"] <= 1e-4, name
        assert r["samples_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["compile_s"] >= 0, name
        if r["target"] in ("all", "predicted"):
            assert r["jaxjac_ratio"] > 0, name


def test_every_batched_baseline_is_timed_at_each_batch_size_and_reported_at_its_fastest(report):
    data, md = report
    for name, r in data["models"]["seed-cnn"]["baselines"].items():
        baseline = bl.BASELINES[name]
        if baseline.per_sample or baseline.mode == "stream":  # a loop of samples; the library's own batches
            assert "rates_by_batch" not in r, name
            continue
        rates = r["rates_by_batch"]
        assert set(rates) == {"16", "32"}, name
        assert rates[str(r["batch_size"])] == r["samples_per_s"] == max(rates.values()), name
        assert f"| seed-cnn | {name} | {r['target']} | {r['batch_size']} |" in md
    assert "| seed-cnn | jaxjac.jacobian (streamed) | all | auto |" in md


def test_json_and_markdown_sections(report):
    data, md = report
    assert {"date", "machine", "settings", "models"} <= set(data)
    assert data["machine"]["device_kind"] and data["machine"]["cpu_model"]
    entry = data["models"]["seed-cnn"]
    assert {"jaxjac vmap-jacrev", "jaxjac batched-vjp"} <= set(entry["limit"])
    assert set(entry["precision"]["precisions"]) == {"float32", "tf32", "bfloat16"}
    assert [t["target"] for t in entry["targets"]] == [t[0] for t in TARGETS if "cpu" in t[1]]
    assert all(t["status"] in ("PASS", "FAIL") for t in entry["targets"])
    faster = {bl.JAXJAC_STREAMED, bl.JAXJAC_ALL, bl.JAXJAC_STREAMED_PREDICTED, bl.JAXJAC_PREDICTED}
    assert {t["jaxjac"] for t in entry["targets"]} <= faster
    for heading in ("| model | baseline |", "## Closeness to the limit", "## Precision", "## Targets"):
        assert heading in md
    for name in FAST:
        assert f"| seed-cnn | {name} |" in md or f"| seed-cnn | {name} † |" in md


def test_a_wrong_baseline_is_reported_not_timed(monkeypatch, tmp_path):
    from bench.run import prepare_model
    from bench.worker import measure

    def wrong(ctx):
        right = bl.BASELINES["torch best"].make(ctx)
        return lambda x: right(x) * np.float32(1.001)

    monkeypatch.setitem(bl.BASELINES, "wrong", bl.Baseline("wrong", "torch", "all", wrong))
    paths = prepare_model("seed-cnn", tmp_path, "cpu", precision=False)["paths"]
    spec = {
        "model": "seed-cnn",
        "device": "cpu",
        "n": 8,
        "batch_sizes": [8],
        "loop_n": 4,
        "repeats": 1,
        "seed": 0,
        "baseline": "wrong",
        **paths,
    }
    result = measure(spec)
    assert result["status"] == "mismatch"
    assert "samples_per_s" not in result


def test_a_baseline_timed_at_another_s_fastest_batch_size_runs_at_that_size_alone(monkeypatch):
    from bench.run import run_comparison

    follower = bl.Baseline("follower", "torch", "all", bl.BASELINES["torch best"].make, batch_size_of="torch best")
    monkeypatch.setitem(bl.BASELINES, "follower", follower)
    results = run_comparison(
        ["seed-cnn"],
        ["torch best", "follower"],
        n=32,
        batch_sizes=(8, 16),
        repeats=1,
        precision_models=(),
        inprocess=True,
        log=lambda _: None,
    )["seed-cnn"]["baselines"]
    assert set(results["torch best"]["rates_by_batch"]) == {"8", "16"}
    assert list(results["follower"]["rates_by_batch"]) == [str(results["torch best"]["batch_size"])]
    assert bl.BASELINES["torch best + compile"].batch_size_of == "torch best"


# torch pins host memory only with CUDA; the rest of the GPU-only rows run the same code on the CPU device.
GPU_ROWS = [n for n, b in bl.BASELINES.items() if "cpu" not in b.devices and n != "torch best (pinned host)"]


@pytest.mark.parametrize("name", GPU_ROWS)
def test_a_gpu_only_baseline_is_verified_and_timed(tmp_path, name):
    """The on-device and pinned-host rows run on GPUs only; on the CPU device their code path is the same."""
    from bench.run import prepare_model
    from bench.worker import measure

    paths = prepare_model("seed-cnn", tmp_path, "cpu", precision=False)["paths"]
    spec = {"model": "seed-cnn", "device": "cpu", "n": 16, "batch_sizes": [8], "loop_n": 4, "repeats": 1, "seed": 0}
    result = measure({**spec, "baseline": name, **paths})
    assert result["status"] == "ok" and result["mode"] == bl.BASELINES[name].mode, result
    assert result["max_rel_err"] <= 1e-4 and result["samples_per_s"] > 0


def test_an_end_to_end_run_is_bound_by_the_bound_its_time_comes_closest_to():
    from bench.io_bound import verdict

    result = verdict(6.4, {"disk": 9.6, "pcie": 6.4, "compute": 2.0})
    assert result["bound_by"] == "pcie" and result["stream_over_bound"] == 1.0
    assert result["stream_over_bounds"]["compute"] == 3.2


def test_the_attribution_bench_times_both_sides_and_they_compute_the_same(tmp_path):
    from bench import attribution_speed

    report = attribution_speed.main(["--models", "seed-cnn", "--n", "16", "--repeats", "1", "--out-dir", str(tmp_path)])
    assert [(r["method"], r["captum"] > 0, r["jaxjac"] > 0) for r in report["rows"]] == [
        ("integrated-gradients", True, True),
        ("smoothgrad", True, True),
    ]
    assert report["rows"][0]["max_rel_difference"] < 1e-4
    (md,) = tmp_path.glob("*-attributions.md")
    assert "| seed-cnn | smoothgrad |" in md.read_text()
