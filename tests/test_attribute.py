"""`jaxjac.attribute` and `jaxjac.attribution_fn` against captum and torch autograd on the original torch model.

Every method is checked against an independent computation on the torch
module it was converted from: captum's `Saliency`, `InputXGradient` and
`IntegratedGradients` for the deterministic methods, and torch gradients at
the very same noisy inputs (`jaxjac._methods.noise_draws`) for the SmoothGrad
family. Float64 runs must agree to rounding, float32 runs to `RTOL["float32"]`.
Each `attribute` call compiles one program, so the cases cover the
method x target x output x baseline matrix rather than enumerate it.
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
from architectures import ARCHITECTURES, randomize_batchnorm
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from helpers import TORCH_DTYPES, assert_close, assert_same_rows, precision

import jaxjac
from jaxjac._methods import AttributionOptions, noise_draws

SAMPLE = (2, 32)
N, K = 6, 4
LABELS = np.array([0, 1, 2, 3, 3, 1])
TRANSFORMS = {
    "logits": lambda y: y,
    "probs": lambda y: y.softmax(-1),
    "log_probs": lambda y: y.log_softmax(-1),
}
CAPTUM_RULES = {"riemann": "riemann_middle", "gauss-legendre": "gausslegendre"}
# captum's IntegratedGradients casts its step sizes to float32 (and takes alphas
# from a float32 linspace), so in float64 it agrees to ~1e-7 relative only.
CAPTUM_IG_RTOL = {"float32": 1e-4, "float64": 1e-6}


def simple_net() -> nn.Module:
    """Conv-BN-ReLU-MaxPool-Conv-Tanh-Linear: `(N, 2, 32)` -> `(N, 4)` logits."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(2, 6, 5, padding=2),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(6, 4, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 14, K),
    )
    return randomize_batchnorm(net).eval()


def smooth_net() -> nn.Module:
    """An analytic conv net (tanh, softplus), on which quadrature converges fast."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv1d(2, 4, 5, padding=2),
        nn.Tanh(),
        nn.Conv1d(4, 4, 3),
        nn.Softplus(),
        nn.Flatten(),
        nn.Linear(4 * 30, K),
    )
    return net.eval()


def convert(net: nn.Module, x: np.ndarray, dtype: str) -> tuple[nn.Module, jaxjac.ConvertedModel]:
    """A `dtype` copy of `net` and its conversion (call inside `precision(dtype)`)."""
    net = copy.deepcopy(net).to(TORCH_DTYPES[dtype]).eval()
    return net, jaxjac.convert(net, torch.as_tensor(x[:1]).to(TORCH_DTYPES[dtype]), dtype=dtype, check=False)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((N, *SAMPLE))


@pytest.fixture(scope="module")
def baseline_array() -> np.ndarray:
    return 0.3 * np.random.default_rng(2).standard_normal(SAMPLE)


@pytest.fixture(scope="module")
def models(data) -> dict[str, tuple[nn.Module, jaxjac.ConvertedModel]]:
    """The simple net and its conversion, in each dtype."""
    out = {}
    for dtype in TORCH_DTYPES:
        with precision(dtype):
            out[dtype] = convert(simple_net(), data, dtype)
    return out


@pytest.fixture(scope="module")
def arch_models():
    """`(torch net, float64 conversion, inputs (3, *sample_shape))` of a zoo architecture, converted once."""
    cache = {}

    def get(arch: str):
        if arch not in cache:
            build, sample_shape = ARCHITECTURES[arch]
            x = np.random.default_rng(3).standard_normal((3, *sample_shape))
            with precision("float64"):
                cache[arch] = (*convert(build(), x, "float64"), x)
        return cache[arch]

    return get


# --- torch references -----------------------------------------------------------


def head(net: nn.Module, output: str):
    """The function of the input that jaxjac differentiates for `output`."""
    return lambda x: TRANSFORMS[output](net(x))


def target_classes(net: nn.Module, x: torch.Tensor, target, labels) -> list[int] | None:
    """Each row's explained class (`None` for every class): the predicted one is argmax of the logits at `x`."""
    if target == "all":
        return None
    if target == "predicted":
        with torch.no_grad():
            return net(x).argmax(-1).tolist()
    if target == "label":
        return [int(v) for v in labels]
    return [int(target)] * x.shape[0]


def per_class(fn, f, x: torch.Tensor, classes: list[int] | None) -> np.ndarray:
    """`fn(classes)` `(N, *S)`, or `fn(k)` for every class `k` of `f(x)`, stacked to `(N, K, *S)`."""
    if classes is not None:
        return fn(classes)
    with torch.no_grad():
        k = f(x[:1]).shape[-1]
    return np.stack([fn(c) for c in range(k)], axis=1)


def captum_attribution(net, x, method, classes, output, baseline=None, steps=None, rule=None) -> np.ndarray:
    """captum's attribution of `method` on the torch model, for rows `x` (a tensor)."""
    f = head(net, output)

    def one(target) -> np.ndarray:
        inputs = x.clone().requires_grad_()
        if method == "gradient":
            result = Saliency(f).attribute(inputs, target=target, abs=False)
        elif method == "grad-x-input":
            result = InputXGradient(f).attribute(inputs, target=target)
        else:
            b = torch.as_tensor(baseline, dtype=x.dtype)[None]
            result = IntegratedGradients(f).attribute(
                inputs, baselines=b, target=target, n_steps=steps, method=CAPTUM_RULES[rule]
            )
        return result.detach().numpy()

    return per_class(one, f, x, classes)


def torch_gradients(f, x: torch.Tensor, classes) -> np.ndarray:
    """Plain torch autograd: `d f(x)[i, classes[i]] / d x[i]` per row, `(N, *S)` or `(N, K, *S)`."""

    def one(target) -> np.ndarray:
        inputs = x.detach().clone().requires_grad_()
        index = torch.as_tensor(target).reshape(-1, 1).expand(x.shape[0], 1)
        (grad,) = torch.autograd.grad(f(inputs).gather(1, index).sum(), inputs)
        return grad.numpy()

    return per_class(one, f, x, classes)


def torch_integrated_gradients(f, x: torch.Tensor, classes, baseline, steps: int, rule: str) -> np.ndarray:
    """Integrated gradients from torch gradients at the quadrature nodes, all in `x`'s dtype.

    captum rounds its alphas and step sizes to float32, so in float64 it is a
    reference to about 1e-7 only; this one is exact to rounding.
    """
    if rule == "riemann":
        nodes, weights = (np.arange(steps) + 0.5) / steps, np.full(steps, 1 / steps)
    else:
        t, w = np.polynomial.legendre.leggauss(steps)
        nodes, weights = (t + 1) / 2, w / 2
    b = torch.as_tensor(baseline, dtype=x.dtype)
    total = sum(w * torch_gradients(f, b + a * (x - b), classes) for a, w in zip(nodes, weights, strict=True))
    delta = (x - b).numpy()
    return (delta if classes is not None else delta[:, None]) * total


def assert_matches_torch(actual, net, x, good, kwargs, target, labels, dtype, what) -> None:
    """Check `attribute`'s rows against captum on `net` (and, for IG, the exact torch quadrature).

    `x` are all inputs, `good` the rows without NaN or Inf, whose results must be NaN.
    """
    xt = torch.as_tensor(x[good]).to(TORCH_DTYPES[dtype])
    classes = target_classes(net, xt, target, labels[good])
    method, output = kwargs["method"], kwargs.get("output", "logits")
    baseline = kwargs.get("baseline", "zeros")
    if isinstance(baseline, str):  # "mean" is the per-feature mean of the finite rows
        baseline = np.zeros(x.shape[1:]) if baseline == "zeros" else x[good].mean(axis=0)
    steps, rule = kwargs.get("steps", 32), kwargs.get("rule", "riemann")
    captum = with_bad_rows(captum_attribution(net, xt, method, classes, output, baseline, steps, rule), good)
    if method != "integrated-gradients":
        assert_close(actual, captum, dtype, what)
        return
    scale = np.nanmax(np.abs(captum))
    np.testing.assert_allclose(actual, captum, rtol=0, atol=CAPTUM_IG_RTOL[dtype] * scale, err_msg=what)
    exact = torch_integrated_gradients(head(net, output), xt, classes, baseline, steps, rule)
    assert_close(actual, with_bad_rows(exact, good), dtype, f"{what} (torch quadrature)")


def with_bad_rows(expected: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Scatter the reference rows of the finite inputs into NaN rows for the rest."""
    full = np.full((len(good), *expected.shape[1:]), np.nan)
    full[good] = expected
    return full


def corrupted(x: np.ndarray, corrupt) -> tuple[np.ndarray, np.ndarray]:
    """`x` with `corrupt = (row, value)` written into one entry of row `row`, and the finite-row mask."""
    x = x.copy()
    if corrupt is not None:
        row, value = corrupt
        x[row, -1, 7] = value
    return x, np.isfinite(x.reshape(len(x), -1)).all(axis=1)


def options_for(case: dict, baseline_array: np.ndarray) -> tuple[dict, str | int]:
    """`attribute` keyword arguments from a case, and the target they mean."""
    kwargs = dict(case)
    kwargs.pop("corrupt", None)
    if kwargs.get("labels") is True:
        kwargs["labels"] = LABELS
    if isinstance(kwargs.get("baseline"), str) and kwargs["baseline"] == "array":
        kwargs["baseline"] = baseline_array
    target = kwargs.get("target", "label" if "labels" in kwargs else "predicted")
    return kwargs, target


# --- (1) the deterministic methods against captum --------------------------------

# `labels: True` passes LABELS (without a target they make "label" the target);
# `baseline: "array"` passes a random one-sample baseline; `corrupt` puts NaN or
# Inf into one row, which must come out NaN (and, for "mean", not be averaged).
CAPTUM_CASES = {
    "gradient-predicted-logits-nan": {"method": "gradient", "corrupt": (1, np.nan)},
    "gradient-label-probs": {"method": "gradient", "target": "label", "labels": True, "output": "probs"},
    "gradient-all-log_probs-bvjp": {
        "method": "gradient",
        "target": "all",
        "output": "log_probs",
        "formulation": "batched-vjp",
    },
    "gradient-int-probs": {"method": "gradient", "target": 3, "output": "probs"},
    "gxi-labels-log_probs": {"method": "grad-x-input", "labels": True, "output": "log_probs"},
    "gxi-all-probs": {"method": "grad-x-input", "target": "all", "output": "probs"},
    "gxi-int-logits-labels-ignored": {"method": "grad-x-input", "target": 0, "labels": True},
    "ig-riemann-zeros-predicted-logits": {"method": "integrated-gradients", "steps": 7},
    "ig-gl-mean-label-log_probs-inf": {
        "method": "integrated-gradients",
        "labels": True,
        "output": "log_probs",
        "rule": "gauss-legendre",
        "steps": 5,
        "baseline": "mean",
        "formulation": "batched-vjp",
        "corrupt": (4, np.inf),
    },
    "ig-riemann-array-int-probs": {
        "method": "integrated-gradients",
        "target": 2,
        "output": "probs",
        "steps": 6,
        "baseline": "array",
    },
    "ig-gl-array-all-logits": {
        "method": "integrated-gradients",
        "target": "all",
        "rule": "gauss-legendre",
        "steps": 4,
        "baseline": "array",
    },
}
FLOAT32_CASES = (
    "gradient-all-log_probs-bvjp",
    "gxi-labels-log_probs",
    "ig-gl-mean-label-log_probs-inf",
    "ig-riemann-array-int-probs",
)


@pytest.mark.parametrize(
    ("dtype", "name"),
    [("float64", name) for name in CAPTUM_CASES] + [("float32", name) for name in FLOAT32_CASES],
)
def test_matches_captum(dtype, name, models, data, baseline_array):
    case = CAPTUM_CASES[name]
    kwargs, target = options_for(case, baseline_array)
    x, good = corrupted(data, case.get("corrupt"))
    with precision(dtype):
        net, model = models[dtype]
        actual = jaxjac.attribute(model, x, batch_size=4, **kwargs)
    assert actual.dtype == np.dtype(dtype)
    assert actual.shape == ((N, K, *SAMPLE) if target == "all" else (N, *SAMPLE))
    assert_matches_torch(actual, net, x, good, kwargs, target, LABELS, dtype, name)


# --- (2) the SmoothGrad family against torch gradients at the same noisy inputs ---

# One noise setting throughout, so that the reference draws compile once per dtype.
NOISE = {"noise": 0.2, "samples": 5, "seed": 7}
NOISY_CASES = {
    "smoothgrad-predicted-logits-nan": {"method": "smoothgrad", "corrupt": (2, np.nan)},
    "smoothgrad-sq-labels-probs": {"method": "smoothgrad-sq", "labels": True, "output": "probs"},
    "vargrad-all-log_probs-bvjp": {
        "method": "vargrad",
        "target": "all",
        "output": "log_probs",
        "formulation": "batched-vjp",
    },
}

# Every draw `(samples, B, *S)` at once: one compilation instead of op-by-op dispatch per draw.
all_draws = jax.jit(jax.vmap(noise_draws, in_axes=(None, None, None, 0)), static_argnums=2)


def reference_draws(x: np.ndarray) -> np.ndarray:
    """`noise_draws` of rows `0..N-1` of `x` for `NOISE`, every draw: `(samples, N, *S)` in `x`'s dtype."""
    options = AttributionOptions(**NOISE)
    rows = jnp.arange(len(x), dtype=jnp.int32)
    draws = np.array(all_draws(jnp.asarray(x), rows, options, jnp.arange(NOISE["samples"])))
    assert draws.dtype == x.dtype
    return draws


def noisy_reference(net, x, draws, method, target, labels, output) -> np.ndarray:
    """Mean, mean of squares or variance over `draws` of torch gradients at `x + draw`."""
    xt = torch.as_tensor(x)
    classes = target_classes(net, xt, target, labels)  # chosen at the clean input
    grads = np.stack([torch_gradients(head(net, output), xt + torch.as_tensor(e), classes) for e in draws])
    if method == "smoothgrad":
        return grads.mean(axis=0)
    if method == "smoothgrad-sq":
        return (grads**2).mean(axis=0)
    return grads.var(axis=0)


@pytest.mark.parametrize("name", list(NOISY_CASES))
def test_smoothgrad_family_matches_torch_on_the_same_noise(name, models, data, baseline_array):
    case = NOISY_CASES[name]
    kwargs, target = options_for(case, baseline_array)
    x, good = corrupted(data, case.get("corrupt"))
    with precision("float64"):
        net, model = models["float64"]
        actual = jaxjac.attribute(model, x, batch_size=4, **NOISE, **kwargs)
        # Noise is seeded by the absolute row index, so the finite rows keep theirs.
        draws = reference_draws(x)[:, good]
    output = kwargs.get("output", "logits")
    expected = noisy_reference(net, x[good], draws, kwargs["method"], target, LABELS[good], output)
    assert actual.shape == ((N, K, *SAMPLE) if target == "all" else (N, *SAMPLE))
    assert_close(actual, with_bad_rows(expected, good), "float64", name)


def test_noise_draws_are_what_they_document(data):
    """The torch references trust `noise_draws`; check it against its docstring once."""
    x = data.astype(np.float32)
    draws = reference_draws(x)
    i, j = N - 1, 2  # std = noise * (max - min) of the row; key = fold_in(fold_in(PRNGKey(seed), row), draw)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(NOISE["seed"]), i), j)
    scale = np.float32(NOISE["noise"]) * (x[i].max() - x[i].min())
    np.testing.assert_allclose(draws[j, i], scale * np.asarray(jax.random.normal(key, SAMPLE)), rtol=1e-6)


# --- (3) other architectures -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "case"),
    [
        ("resnet1d", {"method": "gradient", "output": "probs"}),
        ("resnet1d", {"method": "integrated-gradients", "labels": True, "rule": "gauss-legendre", "steps": 6}),
        ("inception-time", {"method": "grad-x-input", "target": "all", "output": "log_probs"}),
    ],
    ids=["resnet1d-gradient-probs", "resnet1d-ig-gl-labels", "inception-gxi-all-log_probs"],
)
def test_architectures_match_captum(name, case, arch_models):
    net, model, x = arch_models(name)
    labels = np.array([2, 0, 1])
    kwargs, target = options_for({**case, "labels": labels} if case.get("labels") else case, None)
    with precision("float64"):
        actual = jaxjac.attribute(model, x, **kwargs)
    assert_matches_torch(actual, net, x, np.ones(len(x), bool), kwargs, target, labels, "float64", name)


# --- (4) streaming, batching, the pure function ---------------------------------------


def test_streaming_equals_the_jitted_function_at_any_batch_size(models, data):
    net, model = models["float32"]
    x = data.astype(np.float32)
    small = jaxjac.attribute(model, x, "smoothgrad", labels=LABELS, batch_size=4, **NOISE)
    whole = jaxjac.attribute(model, x, "smoothgrad", labels=LABELS, batch_size=300, **NOISE)
    # The noise is seeded by the row, not the batch: batch size changes nothing but the order of sums.
    assert_same_rows(small, whole)
    expected = noisy_reference(net, x, reference_draws(x), "smoothgrad", "label", LABELS, "logits")
    assert_close(whole, expected, "float32", "smoothgrad, float32")

    fn = jaxjac.attribution_fn(model, "smoothgrad", target="label", **NOISE)
    close = {"rtol": 1e-6, "atol": 1e-7 * np.abs(whole).max()}
    # Without `rows` a batch is rows 0..B-1; with them, any rows of the data.
    np.testing.assert_allclose(np.asarray(fn(x[:3], LABELS[:3])), whole[:3], **close)
    rows = np.arange(3, 6, dtype=np.int32)
    part = np.asarray(fn(x[3:], LABELS[3:], rows))
    np.testing.assert_allclose(part, whole[3:], **close)
    assert not np.allclose(np.asarray(fn(x[3:], LABELS[3:])), part)
    # Pure: it traces under an outer `jax.jit` with labels and rows as arguments.
    jitted = jax.jit(fn)(jnp.asarray(x[3:]), jnp.asarray(LABELS[3:]), jnp.asarray(rows))
    np.testing.assert_allclose(np.asarray(jitted), part, **close)


@pytest.mark.parametrize("method", ["integrated-gradients", "smoothgrad"])
def test_each_samples_draws_run_in_one_batch_not_a_loop(models, data, method):
    # XLA's CPU backend runs convolutions in a loop body 10-25x slower (jax-ml/jax#12868).
    _, model = models["float32"]
    fn = jaxjac.attribution_fn(model, method, steps=8, samples=8)
    hlo = jax.jit(fn).lower(jnp.asarray(data[:4], jnp.float32)).compile().as_text()
    products = [line for line in hlo.splitlines() if re.search(r" (convolution|dot)\(", line)]
    assert products and not [line for line in products if "while/body" in line]


@pytest.mark.parametrize(
    ("method", "target", "expected_rows", "expected"),
    [
        ("gradient", "predicted", 50, 512),
        ("integrated-gradients", "all", 50 * 32, 16),
        ("smoothgrad", "label", 50 * 10, 32),  # 512 // 10 rounded down to a power of two
    ],
)
def test_the_default_batch_shares_the_jacobian_batch_among_each_samples_draws(
    models, data, monkeypatch, method, target, expected_rows, expected
):
    from jaxjac import _attribute, _batching

    _, model = models["float32"]
    asked = []
    monkeypatch.setattr(_batching, "library_batch_size", lambda m, **kw: asked.append(kw) or 512)
    options = AttributionOptions(method, target, samples=10)
    assert _batching.attribution_batch_size(model, options, 50) == expected
    jacobian_target = "all" if target == "all" else "predicted"
    assert asked[0]["target"] == jacobian_target and asked[0]["n_rows"] == expected_rows
    used = []
    real = _attribute.stream_attributions
    monkeypatch.setattr(_attribute, "stream_attributions", lambda *a, **kw: used.append(kw) or real(*a, **kw))
    monkeypatch.setattr(_attribute, "attribution_batch_size", lambda *a: 2)
    jaxjac.attribute(model, data.astype(np.float32), "gradient")
    assert used[0]["batch_size"] == 2


def test_empty_dataset(models):
    _, model = models["float32"]
    empty = np.zeros((0, *SAMPLE), np.float32)
    assert jaxjac.attribute(model, empty, "grad-x-input", target="all").shape == (0, K, *SAMPLE)


# --- (5) integrated gradients' completeness ---------------------------------------------


def test_integrated_gradients_are_complete_on_a_smooth_model(data, baseline_array):
    with precision("float64"):
        net, model = convert(smooth_net(), data, "float64")
        fn = jaxjac.attribution_fn(
            model, "integrated-gradients", target="all", rule="gauss-legendre", steps=24, baseline=baseline_array
        )
        ig = np.asarray(fn(data))
    with torch.no_grad():
        gap = (net(torch.as_tensor(data)) - net(torch.as_tensor(baseline_array)[None])).numpy()
    # sum_features IG_k(x) = F_k(x) - F_k(baseline), for every class k.
    assert_close(ig.sum(axis=(2, 3)), gap, "float64", "sum of attributions vs F(x) - F(baseline)")


# --- (6) errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "x_shape", "match"),
    [
        ({"method": "deeplift"}, (3, *SAMPLE), "method must be one of gradient, grad-x-input"),
        ({"target": "biggest"}, (3, *SAMPLE), "target must be 'predicted', 'label', 'all' or a class index"),
        ({"target": 4}, (3, *SAMPLE), "target class 4 is out of range for a model with 4 outputs"),
        ({"target": -1}, (3, *SAMPLE), "target class -1 is out of range"),
        ({"target": "label"}, (3, *SAMPLE), "target 'label' needs labels: pass labels=y"),
        ({"labels": np.array([0, 1])}, (3, *SAMPLE), "labels holds 2 labels; the data holds 3 samples"),
        ({"labels": np.array([0, 4, 1])}, (3, *SAMPLE), r"labels\[1\] = 4 is not a class of a model with 4 outputs"),
        ({"output": "softmax"}, (3, *SAMPLE), "output must be one of"),
        (
            {"method": "integrated-gradients", "baseline": np.zeros((2, 31))},
            (3, *SAMPLE),
            r"baseline must have one sample's shape \(2, 32\)",
        ),
        ({"baseline": "ones"}, (3, *SAMPLE), "baseline must be 'zeros', 'mean' or an array"),
        ({"method": "integrated-gradients", "steps": 0}, (3, *SAMPLE), "steps must be a positive integer; got 0"),
        ({"rule": "simpson"}, (3, *SAMPLE), "rule must be one of riemann, gauss-legendre"),
        ({"method": "smoothgrad", "noise": -0.1}, (3, *SAMPLE), "noise must be a non-negative fraction"),
        ({"method": "smoothgrad", "samples": 0}, (3, *SAMPLE), "samples must be a positive integer; got 0"),
        ({"method": "smoothgrad", "samples": 2.5}, (3, *SAMPLE), "samples must be a positive integer; got 2.5"),
        ({"method": "integrated-gradients", "steps": 2.5}, (3, *SAMPLE), "steps must be a positive integer"),
        (
            {"method": "integrated-gradients", "baseline": np.full(SAMPLE, np.nan)},
            (3, *SAMPLE),
            "baseline holds NaN or Inf",
        ),
        ({"formulation": "finite-differences"}, (3, *SAMPLE), "method must be one of vmap-jacrev"),
        ({"batch_size": 0}, (3, *SAMPLE), "batch_size must be a positive integer"),
        ({}, (3, 1, 32), r"input has samples of shape \(1, 32\); the model expects \(2, 32\)"),
    ],
)
def test_attribute_explains_bad_arguments(kwargs, x_shape, match, models):
    _, model = models["float32"]
    with pytest.raises(jaxjac.JaxjacError, match=match):
        jaxjac.attribute(model, np.zeros(x_shape, np.float32), **kwargs)


def test_attribution_fn_explains_bad_arguments(models):
    _, model = models["float32"]
    with pytest.raises(jaxjac.JaxjacError, match="baseline 'mean' needs the data to average over"):
        jaxjac.attribution_fn(model, "integrated-gradients", baseline="mean")
    with pytest.raises(jaxjac.JaxjacError, match="method must be one of"):
        jaxjac.attribution_fn(model, "lime")
    fn = jaxjac.attribution_fn(model, "gradient", target="label")
    with pytest.raises(jaxjac.JaxjacError, match=r"input batch has samples of shape \(2, 31\)"):
        fn(np.zeros((3, 2, 31), np.float32), np.zeros(3, np.int32))
    with pytest.raises(jaxjac.JaxjacError, match=r"target 'label' needs labels of shape \(3,\).*got none"):
        fn(np.zeros((3, *SAMPLE), np.float32))
    with pytest.raises(jaxjac.JaxjacError, match=r"labels have shape \(2,\); expected \(3,\)"):
        fn(np.zeros((3, *SAMPLE), np.float32), np.zeros(2, np.int32))
    with pytest.raises(jaxjac.JaxjacError, match=r"labels\[1\] = 7 is not a class of a model with 4 outputs"):
        fn(np.zeros((3, *SAMPLE), np.float32), np.array([0, 7, -3]))


def test_an_explicit_predicted_target_is_kept_when_labels_are_given(models, data):
    _, model = models["float32"]
    x = data.astype(np.float32)
    predicted = jaxjac.attribute(model, x, target="predicted")
    explicit = jaxjac.attribute(model, x, target="predicted", labels=LABELS)
    by_label = jaxjac.attribute(model, x, labels=LABELS)
    np.testing.assert_array_equal(explicit, predicted)
    np.testing.assert_array_equal(by_label, jaxjac.attribute(model, x, target="label", labels=LABELS))
    assert not np.array_equal(by_label, predicted)


def test_vargrad_stays_accurate_in_float32_with_small_noise(models, data):
    from jaxjac._methods import AttributionOptions, noise_draws

    _, model = models["float32"]
    x = data.astype(np.float32)
    options = AttributionOptions("vargrad", target=0, noise=1e-5, samples=8, seed=3)
    got = jaxjac.attribute(model, x, "vargrad", target=0, noise=1e-5, samples=8, seed=3)
    rows = np.arange(len(x), dtype=np.int32)
    draws = [np.asarray(noise_draws(x, rows, options, j)) for j in range(8)]
    grads = np.stack([jaxjac.attribute(model, x + d, target=0) for d in draws]).astype(np.float64)
    reference = grads.var(axis=0)  # two-pass, in float64, of the same float32 gradients
    # One-pass E[g^2] - E[g]^2 in float32 is off by orders of magnitude here; Welford is within 3%.
    np.testing.assert_allclose(got, reference, rtol=3e-2, atol=1e-4 * reference.max())
