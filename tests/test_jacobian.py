"""The Jacobian engine: targets, outputs, formulations and batching, against torch autograd."""

from __future__ import annotations

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import REDUCED_RTOL, TORCH_DTYPES, assert_close, assert_same_rows, precision

import jaxjac
import jaxjac._jacobian

DTYPES = ("float32", "float64")
SAMPLE = (2, 40)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(2, 6, 5, padding=2),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(6, 4, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 18, 4),
    )
    bn = net[1]
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def torch_jacobians(net: nn.Module, x: torch.Tensor, output: str = "logits") -> np.ndarray:
    """Per-sample Jacobians `(N, K, *sample)` of the chosen output, the seed's loop way."""
    transform = {"logits": lambda y: y, "probs": lambda y: y.softmax(-1), "log_probs": lambda y: y.log_softmax(-1)}
    rows = [
        torch.autograd.functional.jacobian(lambda r: transform[output](net(r)), x[i : i + 1])[0, :, 0].numpy()
        for i in range(len(x))
    ]
    return np.stack(rows)


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(1).standard_normal((7, *SAMPLE))


def _setup(dtype, data):
    net = small_net().to(TORCH_DTYPES[dtype])
    x = torch.as_tensor(data).to(TORCH_DTYPES[dtype])
    model = jaxjac.convert(net, x, dtype=dtype, check=False)
    return net, x, model


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", jaxjac._jacobian.METHODS)
@pytest.mark.parametrize("output", ["logits", "probs", "log_probs"])
def test_all_rows_match_torch(dtype, method, output, data):
    with precision(dtype):
        net, x, model = _setup(dtype, data)
        expected = torch_jacobians(net, x, output)
        actual = jaxjac.jacobian(model, x.numpy(), output=output, method=method, batch_size=3)
        assert actual.shape == (7, 4, *SAMPLE)
        assert_close(actual, expected, dtype, f"{output} Jacobians")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", jaxjac._jacobian.METHODS)
def test_single_targets_pick_rows(dtype, method, data):
    with precision(dtype):
        net, x, model = _setup(dtype, data)
        full = torch_jacobians(net, x)
        with torch.no_grad():
            predicted = net(x).argmax(-1).numpy()
        labels = np.array([0, 1, 2, 3, 3, 2, 1])
        rows = np.arange(len(x))
        cases = {
            "predicted": ("predicted", full[rows, predicted]),
            "index": (2, full[:, 2]),
            "labels": (labels, full[rows, labels]),
        }
        for name, (target, expected) in cases.items():
            actual = jaxjac.jacobian(model, x.numpy(), target=target, method=method, batch_size=4)
            assert actual.shape == (7, *SAMPLE)
            assert_close(actual, expected, dtype, f"target={name}")


def test_formulations_agree_to_rounding(data):
    with precision("float64"):
        _, x, model = _setup("float64", data)
        a = jaxjac.jacobian(model, x.numpy(), method="vmap-jacrev")
        b = jaxjac.jacobian(model, x.numpy(), method="batched-vjp")
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13 * np.abs(a).max())


def test_batch_size_does_not_change_results(data):
    _, x, model = _setup("float32", data)
    whole = jaxjac.jacobian(model, x.numpy(), batch_size=7)
    for batch_size in (1, 3, 5, 100):
        assert_same_rows(jaxjac.jacobian(model, x.numpy(), batch_size=batch_size), whole, f"batch_size={batch_size}")


def test_jacobian_fn_is_pure_and_jittable(data):
    _, x, model = _setup("float32", data)
    fn = jaxjac.jacobian_fn(model, target="predicted")
    eager = fn(x.numpy())
    jitted = jax.jit(fn)(x.numpy())
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6, atol=1e-7)
    assert eager.shape == (7, *SAMPLE)


def test_precision_option_is_accepted(data):
    _, x, model = _setup("float32", data)
    exact = jaxjac.jacobian(model, x.numpy(), precision="float32")
    for name in ("tf32", "default"):
        approx = jaxjac.jacobian(model, x.numpy(), precision=name)
        if jax.default_backend() == "cpu":  # XLA's CPU products are float32 at any precision setting
            assert_close(approx, exact, "float32", f"precision={name}")
        else:
            err = np.max(np.abs(approx - exact)) / np.max(np.abs(exact))
            assert err <= REDUCED_RTOL[name], f"precision={name}: relative error {err:.3g}"


@pytest.mark.parametrize("method", ["vmap-jacrev", "batched-vjp"])
def test_bfloat16_rounds_the_operands_on_every_backend(method):
    """A smooth model (no kink for rounding to flip), so the error is bfloat16's rounding alone."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(2, 8, 5, padding=2), nn.Tanh(), nn.Conv1d(8, 8, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 30, 3)
    ).eval()
    x = np.random.default_rng(0).standard_normal((16, 2, 32)).astype(np.float32)
    model = jaxjac.convert(net, x[:1], check=False)
    exact = jaxjac.jacobian(model, x, method=method)
    rounded = jaxjac.jacobian(model, x, method=method, precision="bfloat16")
    rows = np.linalg.norm((rounded - exact).reshape(16, -1), axis=1) / np.linalg.norm(exact.reshape(16, -1), axis=1)
    # bfloat16 keeps 8 significant bits (unit roundoff 2**-9); float32 products would be ~1e-7 off.
    assert 2**-12 < np.median(rows) < 2**-6, np.median(rows)
    with jax.enable_x64(True):  # a float64 model keeps its precision: only float32 operands are rounded
        model64 = jaxjac.convert(net.double(), x[:1].astype(np.float64), dtype="float64", check=False)
        x64 = x.astype(np.float64)
        np.testing.assert_array_equal(
            jaxjac.jacobian(model64, x64, precision="bfloat16"), jaxjac.jacobian(model64, x64)
        )


def test_empty_dataset(data):
    _, _, model = _setup("float32", data)
    assert jaxjac.jacobian(model, np.zeros((0, *SAMPLE), np.float32)).shape == (0, 4, *SAMPLE)
    assert jaxjac.jacobian(model, np.zeros((0, *SAMPLE), np.float32), target=1).shape == (0, *SAMPLE)


@pytest.mark.parametrize(
    ("kwargs", "x_shape", "match"),
    [
        ({}, (3, 1, 40), r"samples of shape \(1, 40\); the model expects \(2, 40\)"),
        ({"target": "biggest"}, (3, *SAMPLE), "target must be 'all', 'predicted'"),
        ({"target": True}, (3, *SAMPLE), "target must be .* got True"),
        ({"target": 4}, (3, *SAMPLE), "target class 4 is out of range for a model with 4 outputs"),
        ({"target": np.array([0, 1])}, (3, *SAMPLE), "labels holds 2 labels; the data holds 3 samples"),
        ({"output": "softmax"}, (3, *SAMPLE), "output must be one of"),
        ({"method": "finite-differences"}, (3, *SAMPLE), "method must be one of"),
        ({"precision": "fp8"}, (3, *SAMPLE), "precision must be one of"),
        ({"batch_size": 0}, (3, *SAMPLE), "batch_size must be a positive integer"),
        ({"batch_size": 2.5}, (3, *SAMPLE), r"batch_size must be a positive integer; got 2.5"),
        ({"batch_size": "auto"}, (3, *SAMPLE), "batch_size must be a positive integer; got 'auto'"),
        # A label that names no output would give a silent row of zeros.
        ({"target": np.array([0, 4, 1])}, (3, *SAMPLE), r"labels\[1\] = 4 is not a class of a model with 4 outputs"),
        ({"target": np.array([0, -1, 1])}, (3, *SAMPLE), r"labels\[1\] = -1 is not a class"),
        ({"target": np.array([0.0, 1.5, 1.0])}, (3, *SAMPLE), "expected a 1-D integer array of class labels"),
    ],
)
def test_bad_arguments_are_explained(kwargs, x_shape, match, data):
    _, _, model = _setup("float32", data)
    with pytest.raises(jaxjac.JaxjacError, match=match):
        jaxjac.jacobian(model, np.zeros(x_shape, np.float32), **kwargs)


def test_inputs_that_are_not_real_numbers_are_refused(data):
    _, _, model = _setup("float32", data)
    for x in (np.full((2, *SAMPLE), "a"), np.zeros((2, *SAMPLE), np.complex64)):
        with pytest.raises(jaxjac.JaxjacError, match=f"input must hold real numbers; got an array of dtype {x.dtype}"):
            jaxjac.jacobian(model, x)


def test_torch_tensors_that_require_grad_and_whole_number_float_labels_are_taken(data):
    _, x, model = _setup("float32", data)
    x = x.numpy()[:3]
    labels = np.array([0, 3, 1])
    expected = jaxjac.jacobian(model, x, target=labels)
    leaf = torch.as_tensor(x).requires_grad_(True)
    np.testing.assert_array_equal(jaxjac.jacobian(model, leaf, target=labels.astype(np.float32)), expected)


def test_bfloat16_inputs_are_taken_at_their_values(data):
    _, x, model = _setup("float32", data)
    half = x[:3].to(torch.bfloat16)
    expected = jaxjac.jacobian(model, half.float().numpy())
    np.testing.assert_array_equal(jaxjac.jacobian(model, half), expected)  # a torch tensor
    np.testing.assert_array_equal(jaxjac.jacobian(model, half.float().numpy().astype(ml_dtypes.bfloat16)), expected)
