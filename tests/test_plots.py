"""The figures of an importance report: every variant writes a real PNG and an SVG with the expected text."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from jaxjac._errors import JaxjacError
from jaxjac._plots import plot_all, plot_curves, plot_heatmap, plot_profile

matplotlib_image = pytest.importorskip("matplotlib.image")

# Where each class of the bundled example spectra carries its signal.
BANDS = {0: (32, 148), 1: (70, 188), 2: (105, 126)}


def _peaks(n_features: int, centres, width: float = 2.5) -> np.ndarray:
    x = np.arange(n_features)[:, None]
    return np.exp(-0.5 * ((x - np.asarray(centres, dtype=float)) / width) ** 2).sum(axis=1)


def _group(rng, n: int, profile: np.ndarray, n_outputs: int = 0) -> dict:
    def stat(values):
        mean = values + 0.01 * rng.random(values.shape)
        se = 0.05 * mean / np.sqrt(max(n, 1))
        if n_outputs:  # target "all": one row per differentiated output
            scale = np.linspace(0.6, 1.4, n_outputs)[:, None]
            mean, se = mean * scale, se * scale
        return {"mean": mean.tolist(), "se": se.tolist()}

    return {"n": n, "mean_abs": stat(profile), "mean": stat(0.3 * profile), "mean_sq": stat(profile**2)}


def make_report(
    *,
    n_features: int = 224,
    feature_shape=None,
    labels: bool = True,
    confidence: bool = True,
    evaluation: bool = True,
    wavelengths: bool = False,
    names: bool = False,
    class_names: bool = False,
    target="label",
    empty_class: int | None = None,
    seed: int = 0,
) -> dict:
    """A jaxjac.importance/1 report of a 3-class spectra model with planted peaks."""
    rng = np.random.default_rng(seed)
    counts = {c: (0 if c == empty_class else 100) for c in BANDS}
    profiles = {
        c: 0.02 + 0.8 * _peaks(n_features, [b * n_features // 224 for b in bands]) for c, bands in BANDS.items()
    }
    n_outputs = 3 if target == "all" else 0
    groups = {str(c): _group(rng, counts[c], profiles[c] * (1 + 0.2 * c), n_outputs) for c in BANDS}
    total = sum(counts.values())
    scores = sum(counts[c] * profiles[c] * (1 + 0.2 * c) for c in BANDS) / total + 0.01 * rng.random(n_features)
    ranking = np.argsort(-scores, kind="stable")
    k = 20
    feature_names = [f"b{i:03d}" for i in range(n_features)] if names else None
    report = {
        "schema": "jaxjac.importance/1",
        "method": "integrated-gradients",
        "target": target,
        "output": "logits",
        "score": "mean_abs",
        "n_samples": total,
        "n_features": n_features,
        "feature_shape": list(feature_shape or [1, n_features]),
        "feature_names": feature_names,
        "wavelengths": np.linspace(400.0, 1000.0, n_features).round(2).tolist() if wavelengths else None,
        "ranking": ranking.tolist(),
        "scores": scores.tolist(),
        "top_k": {
            "k": k,
            "features": ranking[:k].tolist(),
            "names": [feature_names[i] if names else str(i) for i in ranking[:k]],
        },
        "overall": _group(rng, total, scores, n_outputs),
        "per_class": {"true": groups if labels else None, "predicted": groups},
        "confidence": None,
        "evaluation": None,
        "class_names": ["healthy", "stressed", "diseased"] if class_names else None,
    }
    if confidence:
        rank = np.empty(n_features, dtype=int)
        rank[ranking] = np.arange(n_features)
        report["confidence"] = {
            "method": "poisson-bootstrap",
            "replicates": 100,
            "level": 0.95,
            "score_low": (scores * 0.85 - 0.005).tolist(),
            "score_high": (scores * 1.15 + 0.005).tolist(),
            "rank_low": np.maximum(rank - 3, 0).tolist(),
            "rank_high": np.minimum(rank + 3, n_features - 1).tolist(),
            "top_k_frequency": np.clip(1.3 - rank / k, 0, 1).tolist(),
            "top_k_stability": 0.83,
            "spearman_mean": 0.91,
        }
    if evaluation:
        steps = np.linspace(0, n_features, 12).round().astype(int)
        frac = steps / n_features
        random_mean = 1 - 0.67 * frac
        report["evaluation"] = {
            "metric": "accuracy",
            "n_samples": total,
            "n_random": 10,
            "k": steps.tolist(),
            "deletion": {
                "ranked": (0.33 + 0.67 * np.exp(-frac / 0.05)).tolist(),
                "random_mean": random_mean.tolist(),
                "random_std": (0.04 * np.sin(np.pi * frac)).tolist(),
                "ranked_auc": 0.372,
                "random_auc": 0.665,
            },
            "insertion": {
                "ranked": (1 - 0.67 * np.exp(-frac / 0.04)).tolist(),
                "random_mean": (0.33 + 0.67 * frac).tolist(),
                "random_std": (0.05 * np.sin(np.pi * frac)).tolist(),
                "ranked_auc": 0.947,
                "random_auc": 0.665,
            },
        }
    return report


def make_attributions(report: dict, *, signed: bool = True, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """`(S, *feature_shape)` attributions with each class's peaks, and the classes, in shuffled order."""
    rng = np.random.default_rng(seed)
    n_features = report["n_features"]
    classes = rng.permutation(np.repeat(np.arange(3), 40))
    a = np.stack([_peaks(n_features, [b * n_features // 224 for b in BANDS[c]]) for c in classes])
    a = a * rng.uniform(0.5, 1.5, (len(classes), 1)) + 0.05 * rng.standard_normal(a.shape)
    if not signed:
        a = np.abs(a)
    return a.reshape(len(classes), *report["feature_shape"]), classes


def check_written(paths, *texts: str, absent: tuple[str, ...] = ()) -> str:
    """Both files exist; the PNG is a sizeable, non-blank image; the SVG is XML holding `texts`."""
    assert [p.suffix for p in paths] == [".png", ".svg"]
    png, svg = paths
    image = matplotlib_image.imread(png)
    assert image.ndim == 3 and image.shape[0] >= 500 and image.shape[1] >= 1000, image.shape
    assert image[..., :3].std() > 0.05
    ET.parse(svg)
    text = svg.read_text()
    for t in texts:
        assert t in text, t
    for t in absent:
        assert t not in text, t
    return text


PROFILE_VARIANTS = {
    "full": ({}, ("class 0 (n=100)", "class 2 (n=100)", "95% bootstrap band", "top 20", "top-k stability 0.83")),
    "no-labels": ({"labels": False}, ("per predicted class", "class 1 (n=100)")),
    "no-confidence": ({"confidence": False}, ("all samples (n=300)", "top 20")),
    "wavelengths": ({"wavelengths": True, "class_names": True}, ("wavelength", "healthy (n=100)")),
    "names": ({"names": True}, ("b148", "b032")),
    "target-all": ({"target": "all"}, ("averaged over every logit", "class 2 (n=100)")),
    "multi-channel": ({"n_features": 200, "feature_shape": [4, 50]}, ("channel", "mean over channels", "class 1")),
    "empty-class": ({"empty_class": 1}, ("class 0 (n=100)", "all samples (n=200)")),
}


@pytest.mark.parametrize("variant", PROFILE_VARIANTS)
def test_profile(tmp_path, variant):
    options, texts = PROFILE_VARIANTS[variant]
    paths = plot_profile(make_report(**options), tmp_path / "profile.png")
    assert paths == [tmp_path / "profile.png", tmp_path / "profile.svg"]
    check_written(paths, *texts, absent=("class 1 (n=0)",))


def test_profile_without_classes(tmp_path):
    text = check_written(plot_profile(make_report(), tmp_path / "p", per_class=False), "all samples (n=300)")
    assert "class 0 (n=100)" not in text


@pytest.mark.parametrize(
    ("options", "signed", "texts"),
    [
        ({}, True, ("class 0 (40)", "class 2 (40)", "sorted by true class", "clipped at ±")),
        ({"wavelengths": True, "class_names": True}, False, ("healthy (40)", "wavelength", "clipped at ")),
        ({"n_features": 200, "feature_shape": [4, 50]}, True, ("ch0", "ch3", "channel × position")),
    ],
    ids=["signed", "non-negative-wavelengths", "multi-channel"],
)
def test_heatmap(tmp_path, options, signed, texts):
    report = make_report(**options)
    a, classes = make_attributions(report, signed=signed)
    check_written(plot_heatmap(a, classes, tmp_path / "heat.svg", report=report), *texts)


def test_heatmap_many_samples_keeps_class_counts(tmp_path):
    # More samples than the heatmap has rows: evenly spaced rows are shown, the names keep the true counts.
    a = np.random.default_rng(0).standard_normal((4500, 16))
    classes = np.repeat([2, 0, 1], [1500, 2500, 500])
    check_written(
        plot_heatmap(a, classes, tmp_path / "heat"), "class 0 (2500)", "class 1 (500)", "4000 evenly spaced of 4500"
    )


def test_heatmap_without_report_or_classes(tmp_path):
    a = np.abs(np.random.default_rng(0).standard_normal((50, 16)))
    check_written(plot_heatmap(a, None, tmp_path / "heat"), "all samples", "feature index", "clipped at ")


def test_heatmap_rejects_mismatched_classes(tmp_path):
    a, classes = make_attributions(make_report())
    with pytest.raises(JaxjacError, match="`classes` holds 119 entries; `attributions` holds 120 samples"):
        plot_heatmap(a, classes[:-1], tmp_path / "heat")


def test_heatmap_rejects_wrong_width(tmp_path):
    a, classes = make_attributions(make_report())
    with pytest.raises(JaxjacError, match="has 224 features per sample; the report has 200"):
        plot_heatmap(a, classes, tmp_path / "heat", report=make_report(n_features=200))


def test_curves(tmp_path):
    paths = plot_curves(make_report(), tmp_path / "curves")
    check_written(
        paths, "ranked order (AUC 0.372)", "random order (AUC 0.665)", "ranked order (AUC 0.947)", "random ±2 std"
    )


def test_curves_need_an_evaluation(tmp_path):
    with pytest.raises(JaxjacError, match="no deletion/insertion evaluation"):
        plot_curves(make_report(evaluation=False), tmp_path / "curves")


def test_plot_all_writes_every_figure(tmp_path):
    report = make_report()
    a, classes = make_attributions(report)
    paths = plot_all(report, tmp_path / "out" / "importance.png", attributions=a, classes=classes)
    names = [p.name for p in paths]
    assert names == [f"importance{s}.{e}" for s in ("", "-heatmap", "-curves") for e in ("png", "svg")]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)


def test_plot_all_skips_what_it_lacks(tmp_path):
    paths = plot_all(make_report(evaluation=False), tmp_path / "importance.svg")
    assert [p.name for p in paths] == ["importance.png", "importance.svg"]


def test_rejects_a_report_that_is_not_one(tmp_path):
    with pytest.raises(JaxjacError, match="expected an importance.json report"):
        plot_profile({"ranking": [0]}, tmp_path / "p")


def test_missing_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(JaxjacError, match="pip install matplotlib"):
        plot_profile(make_report(), tmp_path / "p")
    assert not list(tmp_path.iterdir())
