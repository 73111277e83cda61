"""Deletion/insertion curves and the model-randomisation check, on the bundled example."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flax import nnx

import jaxjac
from jaxjac._evaluate import SPEARMAN_THRESHOLD, randomization_check, randomized_model, selection_curves
from jaxjac.example import load_example_data, load_example_model

CURVE_KEYS = {"ranked", "random_mean", "random_std", "ranked_auc", "random_auc"}


@pytest.fixture(scope="module")
def example() -> tuple[jaxjac.ConvertedModel, np.ndarray, np.ndarray]:
    """The bundled SpectraNet converted (unchecked: other tests check the conversion), with its data."""
    X, y = load_example_data()
    return jaxjac.convert(load_example_model(), X[:1], check=False), X, y


@pytest.fixture(scope="module")
def ranking(example) -> np.ndarray:
    """Features `(224,)` ranked by mean |d logit_label / dx| over the data, most important first."""
    model, X, y = example
    scores = np.abs(jaxjac.jacobian(model, X, target=y)).mean(0).ravel()
    return np.argsort(-scores, kind="stable")


@pytest.fixture(scope="module")
def curves(example, ranking) -> dict:
    model, X, y = example
    return selection_curves(model, X, ranking, labels=y, baseline=X.mean(0), n_steps=8, n_random=8)


def auc_spread(curve: dict, k: list[int]) -> float:
    """An upper bound on the std of the random rankings' AUC: the area under their per-k std."""
    # std(sum w_i a_i) <= sum w_i std(a_i) for weights w_i >= 0, whatever the correlations.
    return float(np.trapezoid(curve["random_std"], np.asarray(k) / k[-1]))


def test_gradient_ranking_beats_random_rankings(curves) -> None:
    deletion, insertion = curves["deletion"], curves["insertion"]
    spread = auc_spread(deletion, curves["k"])
    assert deletion["ranked_auc"] < deletion["random_auc"] - 2 * spread, curves
    spread = auc_spread(insertion, curves["k"])
    assert insertion["ranked_auc"] > insertion["random_auc"] + 2 * spread, curves
    # Removing a tenth of the features by gradient rank costs far more than removing them at random.
    assert deletion["ranked"][1] < deletion["random_mean"][1] - 0.1


def test_curve_endpoints_are_the_full_and_the_baseline_model(example, curves) -> None:
    model, X, y = example
    full = float((np.asarray(model(X)).argmax(1) == y).mean())
    base = float((np.asarray(model(X.mean(0)[None])).argmax(1)[0] == y).mean())
    deletion, insertion = curves["deletion"], curves["insertion"]
    assert curves["metric"] == "accuracy" and full >= 0.9
    assert deletion["ranked"][0] == insertion["ranked"][-1] == deletion["random_mean"][0] == full
    assert deletion["ranked"][-1] == insertion["ranked"][0] == insertion["random_mean"][0] == base
    # Every ranking gives the same inputs at k = 0 and k = F: no spread there, exactly.
    for curve in (deletion, insertion):
        assert curve["random_std"][0] == curve["random_std"][-1] == 0.0
        assert max(curve["random_std"]) > 0


def test_one_point_matches_torch(example, ranking, curves) -> None:
    model, X, y = example
    net = load_example_model()
    i = 2
    k = curves["k"][i]
    baseline = X.mean(0).ravel()
    top = ranking[:k]
    deleted = X.reshape(len(X), -1).copy()
    deleted[:, top] = baseline[top]
    inserted = np.broadcast_to(baseline, deleted.shape).copy()
    inserted[:, top] = X.reshape(len(X), -1)[:, top]
    for name, inputs in (("deletion", deleted), ("insertion", inserted)):
        with torch.no_grad():
            predicted = net(torch.from_numpy(inputs.reshape(X.shape))).argmax(1).numpy()
        correct = int((predicted == y).sum())
        assert round(curves[name]["ranked"][i] * len(X)) == correct, name


def test_agreement_without_labels(example, ranking) -> None:
    model, X, _ = example
    result = selection_curves(model, X[:40], ranking, baseline=np.zeros((1, 224)), n_steps=4, n_random=2)
    assert result["metric"] == "agreement" and result["n_samples"] == 40
    assert result["deletion"]["ranked"][0] == result["insertion"]["ranked"][-1] == 1.0
    assert result["deletion"]["random_mean"][0] == 1.0
    assert result["deletion"]["ranked"][-1] < 1.0, "all-zero spectra should not look like every sample"


def test_result_keys_shapes_and_json(curves) -> None:
    assert set(curves) == {"metric", "n_samples", "n_random", "k", "deletion", "insertion"}
    assert curves["n_samples"] == 300 and curves["n_random"] == 8
    k = curves["k"]
    assert k == sorted(set(k)) and k[0] == 0 and k[-1] == 224 and len(k) == 9
    assert all(type(v) is int for v in k)
    for name in ("deletion", "insertion"):
        curve = curves[name]
        assert set(curve) == CURVE_KEYS
        for key in ("ranked", "random_mean", "random_std"):
            assert len(curve[key]) == len(k) and all(type(v) is float for v in curve[key])
            assert all(0.0 <= v <= 1.0 for v in curve[key])
        assert type(curve["ranked_auc"]) is float and type(curve["random_auc"]) is float
    assert json.loads(json.dumps(curves)) == curves


def test_chunking_does_not_change_the_result(example, ranking) -> None:
    # 37 samples in calls of 16 inputs (3 chunks, padded) versus many masks per call of 1024.
    model, X, y = example
    kwargs = dict(labels=y[:37], baseline=X.mean(0), n_steps=6, n_random=3, seed=1)
    small = selection_curves(model, X[:37], ranking, batch_size=16, **kwargs)
    large = selection_curves(model, X[:37], ranking, batch_size=1024, **kwargs)
    assert small == large


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(ranking=np.arange(223)), r"ranking must hold all 224 feature indices .* got shape \(223,\)"),
        (dict(ranking=np.r_[0, np.arange(223)]), r"ranking must be a permutation of 0\.\.223"),
        (dict(ranking=np.arange(224.0)), r"ranking must hold integer feature indices; got dtype float64"),
        (dict(baseline=np.zeros(224)), r"baseline must have one sample's shape \(1, 224\); got \(224,\)"),
        (dict(labels=np.zeros(9, int)), r"labels have shape \(9,\); expected \(10,\)"),
        (dict(labels=np.full(10, 3)), r"labels must be integer classes in 0\.\.2; got values from 3 to 3"),
        (dict(labels=np.zeros(10)), r"labels must be integer classes in 0\.\.2; got dtype float64"),
        (dict(x=np.zeros((10, 224))), r"x must be samples \(S, \*\(1, 224\)\)"),
        (dict(n_random=1), r"n_random must be at least 2"),
        (dict(n_steps=0), r"n_steps must be at least 1"),
    ],
)
def test_bad_inputs_raise(example, change: dict, match: str) -> None:
    model, X, _ = example
    args = dict(x=X[:10], ranking=np.arange(224), baseline=np.zeros((1, 224)), labels=None, n_random=2, n_steps=2)
    args.update(change)
    with pytest.raises(jaxjac.JaxjacError, match=match):
        selection_curves(model, args.pop("x"), args.pop("ranking"), **args)


def test_randomized_model_redraws_parameters_and_keeps_buffers(example) -> None:
    model, X, _ = example
    before = {name: np.array(v) for name, v in model.tensors().items()}
    random = randomized_model(model, seed=0)
    params = {".".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert "features.0.weight" in params and "features.1.running_mean" not in params
    after = {name: np.asarray(v) for name, v in random.tensors().items()}
    for name, value in before.items():
        assert after[name].shape == value.shape and after[name].dtype == value.dtype, name
        if name in params:
            assert not np.any(after[name] == value), f"{name} kept some trained values"
            if value.size >= 16:  # each layer keeps its scale
                assert abs(after[name].std() / value.std() - 1) < 0.5, name
        else:
            np.testing.assert_array_equal(after[name], value, err_msg=name)
    for name, value in model.tensors().items():  # the input model is untouched
        np.testing.assert_array_equal(np.asarray(value), before[name], err_msg=name)
    assert not np.array_equal(np.asarray(random(X[:20])), np.asarray(model(X[:20])))
    again = randomized_model(model, seed=0).tensors()
    other = randomized_model(model, seed=1).tensors()
    assert all(np.array_equal(again[n], after[n]) for n in after)
    assert not np.array_equal(other["features.0.weight"], after["features.0.weight"])
    # Buffers are copies, not shared Variables: writing one leaves the original alone.
    random.features[1].running_mean[...] = 7.0
    np.testing.assert_array_equal(np.asarray(model.features[1].running_mean[...]), before["features.1.running_mean"])


def gradient_scores(model: jaxjac.ConvertedModel, x: np.ndarray) -> np.ndarray:
    """Mean |d logit_predicted / dx| per feature, `(224,)`."""
    return np.abs(jaxjac.jacobian(model, x, target="predicted")).mean(0).ravel()


def test_randomization_check_passes_for_gradients(example) -> None:
    model, X, _ = example
    report = randomization_check(model, X[:100], gradient_scores, top_k=20)
    assert set(report) == {"test", "spearman", "top_k", "top_k_overlap", "passed"}
    assert report["test"] == "model-randomisation" and report["top_k"] == 20
    assert report["passed"] is True and report["spearman"] < SPEARMAN_THRESHOLD == 0.5
    assert 0.0 <= report["top_k_overlap"] < 0.5
    assert json.loads(json.dumps(report)) == report


def test_randomization_check_fails_for_a_model_blind_score(example) -> None:
    # Scores that ignore the model (the data's mean magnitude) survive randomisation: the check must say so.
    model, X, _ = example
    report = randomization_check(model, X[:100], lambda m, x: np.abs(x).mean(0), top_k=10)
    assert report["spearman"] == pytest.approx(1.0) and report["top_k_overlap"] == 1.0
    assert report["passed"] is False
    with pytest.raises(jaxjac.JaxjacError, match=r"score_fn must return 224 scores, one per feature; got 3"):
        randomization_check(model, X[:10], lambda m, x: np.ones(3))
    with pytest.raises(jaxjac.JaxjacError, match=r"top_k must be between 1 and the number of features 224; got 0"):
        randomization_check(model, X[:10], gradient_scores, top_k=0)
