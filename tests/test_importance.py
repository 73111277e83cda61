"""`jaxjac.importance`: statistics reduced on the device, checked against torch autograd and numpy."""

import copy
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import jaxjac
from jaxjac._reduce import Accumulator, bootstrap_confidence, group_statistics
from jaxjac.example import load_example_bands, load_example_data, load_example_model

FAST = {"evaluate": False, "randomization": False}


@pytest.fixture(scope="module")
def example():
    X, y = load_example_data()
    net = load_example_model()
    model = jaxjac.convert(net, X[:1], check=False)
    # Flip a few labels so that the "wrong" group is not empty.
    noisy = y.copy()
    noisy[::17] = (noisy[::17] + 1) % 3
    return net, model, X, y, noisy


def torch_label_gradients(net: torch.nn.Module, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """d logit[label] / dx per sample, from torch autograd on the torch model in float64: `(N, F)`.

    Float64, because a float32 run may take the other side of a ReLU on a
    sample whose input to it is within rounding of zero (torch's batched
    float32 run does on one of the example's 300, on AMD EPYC).
    """
    x = torch.from_numpy(X.astype(np.float64)).requires_grad_(True)
    picked = copy.deepcopy(net).double()(x).gather(1, torch.from_numpy(labels)[:, None]).sum()
    (grad,) = torch.autograd.grad(picked, x)
    return grad.reshape(len(X), -1).numpy()


def numpy_group(a: np.ndarray) -> dict:
    """Reference means and standard errors of attributions `(n, F)`."""
    n = a.shape[0]
    out = {"n": n}
    for name, values in (("mean_abs", np.abs(a)), ("mean", a), ("mean_sq", a * a)):
        se = values.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.full(a.shape[1], np.nan)
        out[name] = {"mean": values.mean(axis=0), "se": se}
    return out


def assert_group(actual: dict, expected: dict, what: str) -> None:
    assert actual["n"] == expected["n"], what
    for name in ("mean_abs", "mean", "mean_sq"):
        for part in ("mean", "se"):
            got = np.array(actual[name][part], dtype=float)
            want = expected[name][part]
            scale = np.nanmax(np.abs(want)) or 1.0
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5 * scale, err_msg=f"{what} {name} {part}")


def test_statistics_match_torch_gradients_per_group(example):
    net, model, X, _, labels = example
    report = jaxjac.importance(model, X, labels=labels, bootstrap=0, **FAST)
    data = report.data
    a = torch_label_gradients(net, X, labels)
    predicted = net(torch.from_numpy(X)).argmax(1).numpy()
    assert_group(data["overall"], numpy_group(a), "overall")
    for c in range(3):
        assert_group(data["per_class"]["true"][str(c)], numpy_group(a[labels == c]), f"true class {c}")
        assert_group(data["per_class"]["predicted"][str(c)], numpy_group(a[predicted == c]), f"predicted {c}")
    correct = predicted == labels
    assert 0 < (~correct).sum() < len(X)
    assert_group(data["correct"], numpy_group(a[correct]), "correct")
    assert_group(data["wrong"], numpy_group(a[~correct]), "wrong")
    assert data["accuracy"] == pytest.approx(correct.mean())
    np.testing.assert_allclose(data["scores"], np.abs(a).mean(0), rtol=2e-4, atol=1e-6)
    assert data["ranking"] == np.argsort(-np.array(data["scores"]), kind="stable").tolist()
    assert data["n_samples"] == len(X) and data["target"] == "label" and data["method"] == "gradient"


def test_target_all_keeps_one_profile_per_output(example):
    net, model, X, _, _ = example
    data = jaxjac.importance(model, X[:60], target="all", bootstrap=0, **FAST).data
    rows = []
    x = torch.from_numpy(X[:60].astype(np.float64)).requires_grad_(True)
    logits = copy.deepcopy(net).double()(x)
    for k in range(3):
        (g,) = torch.autograd.grad(logits[:, k].sum(), x, retain_graph=True)
        rows.append(g.reshape(60, -1).numpy())
    a = np.stack(rows, axis=1)  # (N, K, F)
    mean_abs = np.array(data["overall"]["mean_abs"]["mean"])
    assert mean_abs.shape == (3, 224)
    np.testing.assert_allclose(mean_abs, np.abs(a).mean(0), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(data["scores"], np.abs(a).mean((0, 1)), rtol=2e-4, atol=1e-6)


def test_planted_bands_rank_first_per_class(example):
    _, model, X, y, _ = example
    data = jaxjac.importance(model, X, labels=y, bootstrap=20, **FAST).data
    for c, bands in load_example_bands().items():
        top = data["per_class"]["true"][str(c)]["ranking"][:6]
        for band in bands:
            assert any(abs(band - f) <= 4 for f in top), (c, band, top)


def test_poisson_bootstrap_spread_matches_the_standard_error(example):
    _, model, X, y, _ = example
    data = jaxjac.importance(model, X, labels=y, bootstrap=200, level=0.95, **FAST).data
    confidence = data["confidence"]
    low, high = np.array(confidence["score_low"]), np.array(confidence["score_high"])
    scores, se = np.array(data["scores"]), np.array(data["overall"]["mean_abs"]["se"])
    assert (low <= scores + 1e-9).mean() > 0.95 and (high >= scores - 1e-9).mean() > 0.95
    # A 95% percentile interval is about 2 x 1.96 standard errors wide.
    ratio = np.median((high - low) / (2 * 1.96 * se))
    assert 0.8 < ratio < 1.25, ratio
    freq = np.array(confidence["top_k_frequency"])
    assert freq.min() >= 0 and freq.max() <= 1 and freq.sum() == pytest.approx(20, abs=1e-6)
    assert 0 < confidence["top_k_stability"] <= 1 and 0.9 < confidence["spearman_mean"] <= 1
    ranks = np.argsort(np.argsort(-scores, kind="stable"), kind="stable")
    inside = (np.array(confidence["rank_low"]) <= ranks) & (ranks <= np.array(confidence["rank_high"]))
    assert inside.mean() > 0.9


def test_bootstrap_confidence_of_a_clear_ranking_is_certain():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    boot = np.tile(scores, (10, 1)) * np.arange(1, 11)[:, None]
    confidence = bootstrap_confidence(scores, boot, np.arange(1, 11, dtype=float), top_k=2)
    assert confidence["top_k_stability"] == 1.0 and confidence["spearman_mean"] == pytest.approx(1.0)
    assert confidence["rank_low"].tolist() == confidence["rank_high"].tolist() == [0, 1, 2, 3, 4]


def test_group_statistics_from_sums():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 7))
    sums = np.stack([a.sum(0), np.abs(a).sum(0), (a * a).sum(0), (a**4).sum(0)])
    stats = group_statistics(50.0, sums, 1)
    expected = numpy_group(a)
    for name in ("mean_abs", "mean", "mean_sq"):
        np.testing.assert_allclose(stats[name]["mean"][0], expected[name]["mean"], rtol=1e-12)
        np.testing.assert_allclose(stats[name]["se"][0], expected[name]["se"], rtol=1e-9)
    empty = group_statistics(0.0, np.zeros((4, 7)), 1)
    assert empty["n"] == 0 and np.isnan(empty["mean"]["mean"]).all()


def test_batch_size_and_nonfinite_rows(example):
    _, model, X, y, _ = example
    reference = jaxjac.importance(model, X[:100], labels=y[:100], bootstrap=0, batch_size=256, **FAST).data
    small = jaxjac.importance(model, X[:100], labels=y[:100], bootstrap=0, batch_size=24, **FAST).data
    np.testing.assert_allclose(small["scores"], reference["scores"], rtol=1e-5)
    bad = np.concatenate([X[:100], X[:3]]).copy()
    bad[100, 0, 5], bad[101, 0, 0], bad[102, 0, 9] = np.nan, np.inf, -np.inf
    with_bad = jaxjac.importance(model, bad, labels=np.concatenate([y[:100], y[:3]]), bootstrap=0, **FAST).data
    assert with_bad["n_samples"] == 100 and with_bad["n_nonfinite"] == 3
    assert with_bad["nonfinite_first"] == [100, 101, 102]
    np.testing.assert_allclose(with_bad["scores"], reference["scores"], rtol=1e-5)


def test_memory_is_independent_of_the_row_count(example):
    _, model, X, y, _ = example
    sizes = []
    for n in (50, 300):
        report = jaxjac.importance(model, X[:n], labels=y[:n], bootstrap=30, **FAST)
        assert report.run.computed_rows == n
        sizes.append(report.data["n_features"])
    # What leaves the device per batch is O(groups x features), not O(rows).
    accumulator = Accumulator()
    accumulator.add({"count": np.ones(3), "sums": np.ones((4, 3, 224)), "boot": np.ones((30, 224))})
    assert sum(v.size for v in accumulator.totals.values()) < 10 * 224 * 8
    assert sizes[0] == sizes[1] == 224


def test_report_is_json_with_the_documented_schema(example, tmp_path):
    _, model, X, y, _ = example
    wavelengths = np.linspace(400, 2500, 224)
    report = jaxjac.importance(model, X[:50], labels=y[:50], top_k=5, bootstrap=10, wavelengths=wavelengths, **FAST)
    data = json.loads(report.to_json())
    for key in (
        "schema", "method", "method_options", "target", "output", "score", "n_samples", "feature_shape",
        "n_features", "ranking", "scores", "top_k", "overall", "per_class", "confidence", "evaluation",
        "randomization", "feature_names", "wavelengths", "accuracy", "versions",
    ):  # fmt: skip
        assert key in data, key
    assert data["schema"] == "jaxjac.importance/1"
    assert sorted(data["ranking"]) == list(range(224))
    assert data["top_k"]["names"] == [f"{wavelengths[i]:g}" for i in data["top_k"]["features"]]
    path = report.save(tmp_path / "imp.json")
    assert json.loads(path.read_text())["ranking"] == data["ranking"]
    path.write_text("keep")
    with pytest.raises(jaxjac.JaxjacError, match="already exists"):
        report.save(path)
    assert path.read_text() == "keep"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"feature_names": ["a"] * 3}, r"feature_names \(--feature-names\): 3 given; the model's samples"),
        ({"wavelengths": np.arange(10.0)}, r"wavelengths \(--wavelengths\): 10 given"),
        ({"class_names": ["a", "b"]}, r"class_names \(--class-names\): 2 given; the model has 3"),
        ({"score": "median"}, "score must be one of"),
        ({"top_k": 0}, "top-k must be a positive integer"),
        ({"method": "deeplift"}, "method must be one of"),
        ({"target": "label"}, "target 'label' needs labels"),
        ({"bootstrap": -1}, "bootstrap must be 0"),
    ],
)
def test_bad_arguments_are_named(example, kwargs, match):
    _, model, X, _, _ = example
    with pytest.raises(jaxjac.JaxjacError, match=match):
        jaxjac.importance(model, X[:10], **FAST, **kwargs)


def test_four_devices_give_the_single_device_statistics(example, tmp_path):
    _, model, X, y, _ = example
    jaxjac.save(model, tmp_path / "net.jaxjac")
    np.save(tmp_path / "X.npy", X[:90])
    np.save(tmp_path / "y.npy", y[:90])
    script = (
        "import json, sys, numpy as np, jax, jaxjac\n"
        "m = jaxjac.load('net.jaxjac')\n"
        "r = jaxjac.importance(m, np.load('X.npy'), labels=np.load('y.npy'), method='smoothgrad', samples=4,\n"
        "                      bootstrap=8, batch_size=32, evaluate=False, randomization=False)\n"
        "json.dump({'devices': jax.device_count(), 'data': r.data}, open(sys.argv[1], 'w'))\n"
    )
    results = []
    for count in (1, 4):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}
        out = tmp_path / f"{count}.json"
        subprocess.run([sys.executable, "-c", script, str(out)], cwd=tmp_path, env=env, check=True, timeout=300)
        results.append(json.loads(out.read_text()))
    assert [r["devices"] for r in results] == [1, 4]
    one, four = (r["data"] for r in results)
    assert one["n_samples"] == four["n_samples"] == 90
    np.testing.assert_allclose(four["scores"], one["scores"], rtol=1e-5)
    np.testing.assert_allclose(four["confidence"]["score_low"], one["confidence"]["score_low"], rtol=1e-5)
    assert four["per_class"]["true"]["1"]["n"] == one["per_class"]["true"]["1"]["n"]


def test_a_model_with_one_output_skips_the_selection_curves_and_says_why():
    torch.manual_seed(0)
    regressor = torch.nn.Sequential(
        torch.nn.Conv1d(1, 2, 5), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(40, 1)
    )
    X = np.random.default_rng(0).standard_normal((30, 1, 24)).astype(np.float32)
    model = jaxjac.convert(regressor.eval(), X[:2], check=False)
    report = jaxjac.importance(model, X, randomization=False, bootstrap=0)
    assert report.data["evaluation"] is None
    assert report.data["evaluation_skipped"] == (
        "deletion and insertion curves skipped: the model has one output, so no predicted class for removed "
        "features to change"
    )
    from jaxjac._evaluate import selection_curves

    with pytest.raises(jaxjac.JaxjacError, match=r"no selection curves: the model has one output"):
        selection_curves(model, X, np.arange(24), baseline=np.zeros((1, 24), np.float32))
