"""The library API keeps its promises however it is called.

Fresh weights after fine-tuning, labels checked or NaN, exactly one sample
per `sample_fn` call, a clear error for a float64 model outside 64-bit JAX,
every array type users hold, and compilations that are reused.
"""

from __future__ import annotations

import copy
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import assert_close, assert_same_rows, torch_reference

import jaxjac
from jaxjac import _run

SAMPLE = (2, 24)


def small_net(outputs: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 4, 5, padding=2), nn.Tanh(), nn.Flatten(), nn.Linear(4 * SAMPLE[1], outputs)
    ).eval()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((5, *SAMPLE)).astype(np.float32)


@pytest.fixture()
def pair(x):
    net = small_net()
    return net, jaxjac.convert(net, x[:1], check=False)


def test_fine_tuned_weights_are_seen_by_functions_made_before(pair, x):
    net, model = pair
    jac = jaxjac.jacobian_fn(model)
    attr = jaxjac.attribution_fn(model, "gradient", target=1)
    fn, _ = model.sample_fn()
    jac(x), attr(x)  # compiled with the old weights
    with torch.no_grad():
        net[0].weight.mul_(-2.0)
    model.variable("0.weight")[...] = jnp.asarray(net[0].weight.detach().numpy())
    _, expected = torch_reference(net, torch.as_tensor(x))
    assert_close(jac(x), expected, "float32", "jacobian_fn after fine-tuning")
    assert_close(attr(x), expected[:, 1], "float32", "attribution_fn after fine-tuning")
    assert_close(jaxjac.jacobian(model, x), expected, "float32", "jacobian after fine-tuning")
    # sample_fn returns a snapshot of the tensors, by design; read them again.
    assert_close(jax.vmap(jax.jacrev(fn, argnums=1), (None, 0))(model.tensors(), x), expected, "float32", "sample_fn")


def test_labels_that_are_not_classes_raise_eagerly_and_give_nan_rows_under_jit(pair, x):
    _, model = pair
    labels = np.array([0, 2, 1, 0, 2])
    bad = np.array([0, 3, 1, -1, 2])
    for fn in (jaxjac.jacobian_fn(model, target=labels), jaxjac.attribution_fn(model, target="label")):
        good = np.asarray(fn(x, labels))
        with pytest.raises(jaxjac.JaxjacError, match=r"labels\[1\] = 3 is not a class of a model with 3 outputs"):
            fn(x, bad)
        rows = np.asarray(jax.jit(fn)(x, bad))
        assert np.isnan(rows[[1, 3]]).all()
        np.testing.assert_allclose(rows[[0, 2, 4]], good[[0, 2, 4]], rtol=1e-6, atol=1e-7)


def test_sample_fn_takes_exactly_one_sample(pair, x):
    _, model = pair
    fn, tensors = model.sample_fn()
    assert fn(tensors, x[0]).shape == model.output_shape
    for wrong in (x[0].reshape(-1), x[:1], x[0].T):
        with pytest.raises(jaxjac.JaxjacError, match=r"a sample has shape .*; the model expects \(2, 24\)"):
            fn(tensors, wrong)


def test_sample_fn_traces_true_float32_products_unless_asked_otherwise(pair, x):
    _, model = pair

    def precisions(precision):
        fn, tensors = model.sample_fn(precision)
        text = str(jax.make_jaxpr(fn)(tensors, x[0]))
        return set(re.findall(r"Precision\.(\w+)", text)), text

    found, text = precisions("float32")
    assert found == {"HIGHEST"}, text
    found, text = precisions("tf32")
    assert "HIGH" in found, text  # TF32; the tiled convolution's weight regrouping stays exact
    with pytest.raises(jaxjac.JaxjacError, match="precision must be one of float32, tf32, bfloat16, default"):
        model.sample_fn("fp8")


def test_a_float64_model_outside_64_bit_jax_is_refused_clearly(x):
    net = small_net().double()
    with jax.enable_x64(True):
        model = jaxjac.convert(net, x[:1].astype(np.float64), dtype="float64", check=False)
        inside = jaxjac.jacobian(model, x.astype(np.float64))
    _, expected = torch_reference(net, torch.as_tensor(x, dtype=torch.float64))
    assert_close(inside, expected, "float64")
    fn, tensors = model.sample_fn()
    calls = {
        "jacobian": lambda: jaxjac.jacobian(model, x),
        "jacobian_fn": lambda: jaxjac.jacobian_fn(model)(x),
        "attribute": lambda: jaxjac.attribute(model, x),
        # More rows than one CPU batch: the batch size comes from a probe compilation first.
        "attribute, sized by a probe": lambda: jaxjac.attribute(model, np.repeat(x, 40, axis=0)),
        "attribution_fn": lambda: jaxjac.attribution_fn(model)(x),
        "forward": lambda: model(x),
        "sample_fn": lambda: fn(tensors, x[0]),
    }
    for name, call in calls.items():
        with pytest.raises(jaxjac.JaxjacError, match="computes in float64 but 64-bit JAX is off"):
            call()
            pytest.fail(f"{name} computed a float64 model without 64-bit JAX")


def test_a_softmax_over_a_single_output_is_refused():
    net = small_net(outputs=1)
    model = jaxjac.convert(net, torch.zeros(1, *SAMPLE), check=False)
    for output in ("probs", "log_probs"):
        with pytest.raises(jaxjac.JaxjacError, match="single output, whose softmax is constantly 1"):
            jaxjac.jacobian_fn(model, output=output)
        with pytest.raises(jaxjac.JaxjacError, match="single output"):
            jaxjac.attribute(model, np.zeros((2, *SAMPLE), np.float32), output=output)


def test_class_targets_of_a_multidimensional_output_are_refused():
    """A segmentation-style output `(C, L)` has no predicted class: its flattened argmax would be one position's."""
    net = nn.Sequential(nn.Conv1d(SAMPLE[0], 3, 3, padding=1), nn.Tanh()).eval()
    model = jaxjac.convert(net, torch.zeros(1, *SAMPLE), check=False)
    x = np.zeros((2, *SAMPLE), np.float32)
    for target, what in (("predicted", "target='predicted'"), (np.array([0, 1]), "labels")):
        with pytest.raises(jaxjac.JaxjacError, match=rf"{what} .*per-sample output has shape \(3, {SAMPLE[1]}\); use"):
            jaxjac.jacobian(model, x, target=target)
        with pytest.raises(jaxjac.JaxjacError, match=rf"{what} .*per-sample output has shape"):
            jaxjac.attribute(model, x, target=target)
    assert jaxjac.jacobian(model, x, target=5).shape == (2, *SAMPLE)  # an index into the flattened outputs


def test_every_array_type_users_hold_is_taken(pair, x):
    _, model = pair
    labels = np.array([0, 2, 1, 0, 2])
    expected = jaxjac.jacobian(model, x, target=labels)
    leaf = torch.as_tensor(x).requires_grad_(True)
    as_torch = torch.as_tensor(labels)
    np.testing.assert_array_equal(jaxjac.jacobian(model, x.tolist(), target=labels.tolist()), expected)
    np.testing.assert_array_equal(jaxjac.jacobian(model, jnp.asarray(x), target=as_torch), expected)
    fn = jaxjac.jacobian_fn(model, target=labels)
    np.testing.assert_allclose(fn(leaf, as_torch), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fn(x.tolist(), labels.tolist()), expected, rtol=1e-6, atol=1e-7)
    # attribute and importance take the labels as `target`, like jacobian, or as `labels`.
    for target in (labels, as_torch, labels.tolist()):
        np.testing.assert_allclose(jaxjac.attribute(model, leaf, target=target), expected, rtol=1e-6, atol=1e-7)
    report = jaxjac.importance(model, x, target=as_torch, evaluate=False, randomization=False, bootstrap=0)
    assert report.data["target"] == "label"


def test_nan_and_inf_rows_are_nan_and_the_rest_computed(pair, x):
    _, model = pair
    x = x.copy()
    x[1, 0, 3], x[3, 1, 0] = np.nan, -np.inf
    got = jaxjac.jacobian(model, x)
    assert np.isnan(got[[1, 3]]).all()
    clean = jaxjac.jacobian(model, x[[0, 2, 4]])
    assert_same_rows(got[[0, 2, 4]], clean)


def test_labels_reach_the_compiled_program_as_int32(pair, x, monkeypatch):
    """jax 0.11 warns at an int64 argument spec outside 64-bit mode; int64 labels failed 5 tests on a GPU there."""
    _, model = pair
    seen = []
    real = _run._compile
    monkeypatch.setattr(_run, "_compile", lambda *a, **k: seen.append(a[4]) or real(*a, **k))
    labels = np.array([0, 1, 2, 0, 1], np.int64)
    got = jaxjac.jacobian(model, x, target=labels)
    assert seen[0].dtype == np.int32
    np.testing.assert_array_equal(got[3], jaxjac.jacobian(model, x, target=0)[3])


def test_repeated_calls_compile_once(pair, x, monkeypatch):
    net, model = pair
    compiles = []
    real = _run.load_or_compile
    monkeypatch.setattr(_run, "load_or_compile", lambda *a, **k: compiles.append(1) or real(*a, **k))
    _run._COMPILED.clear()
    many = np.concatenate([x] * 8)
    for n in (40, 37, 33, 40):  # sizes within one rounding step share a program
        jaxjac.jacobian(model, many[:n])
    assert len(compiles) == 1
    for _ in range(2):
        jaxjac.attribute(model, x, "integrated-gradients", steps=4)
    assert len(compiles) == 2
    # A second conversion of the same architecture has another check report, but the same program.
    twin = jaxjac.convert(copy.deepcopy(net), x[:2], check=True)
    assert twin.metadata != model.metadata
    compiles.clear()
    jaxjac.jacobian(twin, many[:40])
    assert not compiles


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed": None}, "seed must be an integer; got None"),
        ({"seed": 1.5}, "seed must be an integer; got 1.5"),
        ({"noise": "big"}, "noise must be a non-negative fraction of each sample's range; got 'big'"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer; got 2.5"),
        ({"output": None}, "output must be one of"),
        ({"method": 3}, "method must be one of"),
        ({"target": [[0, 1]]}, "expected a 1-D integer array of class labels"),
    ],
)
def test_attribute_names_bad_argument_types(pair, x, kwargs, match):
    _, model = pair
    with pytest.raises(jaxjac.JaxjacError, match=match):
        jaxjac.attribute(model, x, **{"method": "smoothgrad", **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 2.5}, "top-k must be a positive integer; got 2.5"),
        ({"top_k": 0}, "top-k must be a positive integer; got 0"),
        ({"bootstrap": 1.5}, "bootstrap must be 0 .* got 1.5"),
        ({"level": "high"}, "level must be between 0 and 1; got 'high'"),
        ({"eval_samples": 0}, "eval_samples must be a positive integer; got 0"),
    ],
)
def test_importance_names_bad_arguments_before_any_work(pair, x, kwargs, match, monkeypatch):
    _, model = pair
    from jaxjac import _importance  # patched where it is used, so the patch cannot outlive the test

    monkeypatch.setattr(_importance, "run_stream", lambda *a, **k: pytest.fail("work started before the check"))
    with pytest.raises(jaxjac.JaxjacError, match=match):
        jaxjac.importance(model, x, **kwargs)


def test_importance_of_fewer_features_than_the_default_top_k_ranks_them_all():
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 2)).eval()
    x = np.random.default_rng(0).standard_normal((20, 1, 6)).astype(np.float32)
    model = jaxjac.convert(net, x[:1], check=False)
    report = jaxjac.importance(model, x, n_random=2, eval_samples=8, bootstrap=10)
    assert report.data["top_k"]["k"] == 6
    assert sorted(report.top()) == list(range(6))


def test_strict_jax_settings_of_the_caller_do_not_break_the_lowerings(x):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.AvgPool1d(2), nn.Flatten(), nn.Linear(48, 3)
    ).eval()
    model = jaxjac.convert(net, x[:1], check=False)
    calls = {
        "jacobian": lambda: jaxjac.jacobian(model, x, target="predicted", output="log_probs"),
        "jacobian_fn": lambda: jaxjac.jacobian_fn(model, method="batched-vjp")(x),
        "forward": lambda: model(x),
        "integrated-gradients": lambda: jaxjac.attribute(model, x, "integrated-gradients", steps=4),
        "smoothgrad": lambda: jaxjac.attribute(model, x, "smoothgrad", samples=3),
    }
    # Strict first: the programs compiled here must be traced under the strict settings.
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        strict = {name: np.asarray(call()) for name, call in calls.items()}
    for name, call in calls.items():
        np.testing.assert_allclose(strict[name], np.asarray(call()), rtol=1e-6, atol=1e-7, err_msg=name)


def test_the_default_batch_size_is_the_auto_size_found_once_per_model_and_options(pair, x, monkeypatch):
    from jaxjac import _batching, _jacobian

    _, model = pair
    monkeypatch.setattr(_batching, "_LIBRARY_BATCH", {})  # earlier tests may have sized this model
    sizes, probes = [], []
    real = _jacobian.run_jacobian
    monkeypatch.setattr(_jacobian, "run_jacobian", lambda *a, **k: sizes.append(k["batch_size"]) or real(*a, **k))
    auto = _batching.auto_batch_size
    monkeypatch.setattr(_batching, "auto_batch_size", lambda *a, **k: probes.append(k["target"]) or auto(*a, **k))
    many = np.repeat(x, 400, axis=0)  # 2000 rows
    labels = np.zeros(len(many), np.int64)
    for _ in range(2):
        jaxjac.jacobian(model, many, target="predicted")
        jaxjac.jacobian(model, many, target=labels)
    expected = auto(model, target="predicted", output="logits", method="vmap-jacrev", precision="float32", n_rows=2000)
    # One probe per model and options: labels size like "predicted".
    assert sizes == [expected] * 4 and probes == ["predicted"]
    other = "tpu" if _batching.platform() != "tpu" else "gpu"
    monkeypatch.setattr(_batching, "platform", lambda: other)  # another platform, another probe
    monkeypatch.setattr(_batching, "auto_batch_size", lambda *a, **k: probes.append(k["target"]) or 512)
    jaxjac.jacobian(model, many, target=labels)
    assert sizes[-1] == 512 and probes == ["predicted", "predicted"]
