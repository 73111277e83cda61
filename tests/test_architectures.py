"""Whole architectures from the model zoo, converted and compared with torch autograd.

Checked against torch autograd, one sample at a time:

- every architecture, float32 and float64: outputs and all-class per-sample
  Jacobians, with both Jacobian formulations (`helpers.assert_converts`);
- every architecture in float64, and the user's CNN in float32 too: the two
  formulations agree with each other to rounding (in the same test, which
  has compiled both);
- the single-target modes (`target="predicted"`, an `int`, an array of
  labels) and the softmax outputs (`output="probs"`, `"log_probs"`): all of
  them on the user's CNN in both dtypes, and the common saliency call
  (predicted class, log-probabilities) on every architecture.

Each Jacobian call compiles anew, so the single-target grid is not the full
product of modes and architectures: the modes are engine features that do not
depend on the architecture once its all-class Jacobians match torch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from architectures import ARCHITECTURES
from helpers import RTOL, TORCH_DTYPES, assert_close, assert_converts, precision

import jaxjac

DTYPES = ("float32", "float64")
N_SAMPLES = 3
USER_ARCH = "spectra-cnn"
METHODS = ("vmap-jacrev", "batched-vjp")

# The two formulations run the same VJPs, batched differently, so they may
# differ only by float rounding of reordered sums: far below RTOL.
FORMULATION_RTOL = {"float32": 1e-5, "float64": 1e-12}

_TORCH_OUTPUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "logits": lambda y: y,
    "probs": lambda y: torch.softmax(y, dim=-1),
    "log_probs": lambda y: torch.log_softmax(y, dim=-1),
}


def _mode_id(mode: tuple[object, str]) -> str:
    target, output = mode
    return f"{'class' + str(target) if isinstance(target, int) else target}-{output}"


# (target, output) pairs for the single-target tests; "labels" stands for an
# array of one label per sample, built in the test.
SINGLE_TARGET_MODES = [
    ("predicted", "logits"),
    (2, "logits"),
    ("labels", "log_probs"),
    ("all", "probs"),
    ("all", "log_probs"),
    ("predicted", "probs"),
]
SALIENCY_MODE = ("predicted", "log_probs")

# The formulation alternates along each list, so that both see every mode and architecture.
SINGLE_TARGET_CASES = [
    pytest.param(USER_ARCH, dtype, mode, METHODS[(i + j) % 2], id=f"{USER_ARCH}-{dtype}-{_mode_id(mode)}")
    for j, dtype in enumerate(DTYPES)
    for i, mode in enumerate(SINGLE_TARGET_MODES)
] + [
    pytest.param(arch, "float32", SALIENCY_MODE, METHODS[i % 2], id=f"{arch}-float32-{_mode_id(SALIENCY_MODE)}")
    for i, arch in enumerate(ARCHITECTURES)
]
FORMULATION_CASES = [(arch, "float64") for arch in ARCHITECTURES] + [(USER_ARCH, "float32")]


def _inputs(arch: str, dtype: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The eval-mode net and `N_SAMPLES` standard-normal inputs `(N, *sample_shape)`, both in `dtype`."""
    build, sample_shape = ARCHITECTURES[arch]
    net = build().to(TORCH_DTYPES[dtype]).eval()
    x = np.random.default_rng(0).standard_normal((N_SAMPLES, *sample_shape))
    return net, torch.as_tensor(x).to(TORCH_DTYPES[dtype])


# Converting costs a torch.export; the tests of one (arch, dtype) share one conversion.
_CONVERTED: dict[tuple[str, str], jaxjac.ConvertedModel] = {}


def _converted(arch: str, dtype: str, net: torch.nn.Module, x: torch.Tensor) -> jaxjac.ConvertedModel:
    if (arch, dtype) not in _CONVERTED:
        _CONVERTED[arch, dtype] = jaxjac.convert(net, x, dtype=dtype, check=False)
    return _CONVERTED[arch, dtype]


def torch_jacobians(net: torch.nn.Module, x: torch.Tensor, output: str) -> tuple[np.ndarray, np.ndarray]:
    """Torch's logits `(N, K)` and per-sample Jacobians `(N, K, *sample_shape)` of `output`.

    The seed's loop: `torch.autograd.functional.jacobian` on each `x[i:i+1]`,
    with the softmax applied inside the differentiated function.
    """
    transform = _TORCH_OUTPUTS[output]
    logits, jacobians = [], []
    for i in range(len(x)):
        row = x[i : i + 1]
        with torch.no_grad():
            logits.append(net(row)[0].numpy())
        jac = torch.autograd.functional.jacobian(lambda r: transform(net(r)), row)  # (1, K, 1, *sample_shape)
        jacobians.append(jac[0, :, 0].numpy())
    return np.stack(logits), np.stack(jacobians)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_matches_torch_autograd(arch: str, dtype: str) -> None:
    build, sample_shape = ARCHITECTURES[arch]
    model = assert_converts(build(), sample_shape, dtype, n=N_SAMPLES, methods=METHODS)
    assert model.sample_shape == sample_shape
    assert model.output_shape == (3,)
    _CONVERTED[arch, dtype] = model
    if (arch, dtype) in FORMULATION_CASES:  # in the same test, so as to reuse its compiled programs
        _assert_formulations_agree(model, _inputs(arch, dtype)[1], dtype)


def _assert_formulations_agree(model: jaxjac.ConvertedModel, x: torch.Tensor, dtype: str) -> None:
    with precision(dtype):
        jacobians = {method: jaxjac.jacobian(model, x.numpy(), method=method) for method in METHODS}
    assert jacobians["vmap-jacrev"].shape == (N_SAMPLES, 3, *model.sample_shape)
    a, b = jacobians.values()
    scale = np.max(np.abs(a))
    assert scale > 0, "all-zero Jacobians would make this comparison vacuous"
    assert np.max(np.abs(a - b)) <= FORMULATION_RTOL[dtype] * scale, (
        f"formulations differ by {np.max(np.abs(a - b)) / scale:.3g} relative ({dtype})"
    )


@pytest.mark.parametrize(("arch", "dtype", "mode", "method"), SINGLE_TARGET_CASES)
def test_single_target_and_softmax_outputs(arch: str, dtype: str, mode: tuple[object, str], method: str) -> None:
    target, output = mode
    net, x = _inputs(arch, dtype)
    logits, expected_all = torch_jacobians(net, x, output)
    rows = np.arange(N_SAMPLES)
    if target == "all":
        expected = expected_all
    elif target == "predicted":
        # A near-tie would make "predicted" depend on rounding; the zoo's random inputs have none.
        top2 = np.sort(logits, axis=1)[:, -2:]
        assert np.all(top2[:, 1] - top2[:, 0] > 10 * RTOL[dtype] * np.abs(logits).max())
        expected = expected_all[rows, logits.argmax(axis=1)]
    elif target == "labels":
        target = np.array([2, 0, 1])  # int64, as users' label arrays usually are
        expected = expected_all[rows, target]
    else:
        expected = expected_all[:, target]
    with precision(dtype):
        model = _converted(arch, dtype, copy.deepcopy(net), x)
        actual = jaxjac.jacobian(model, x.numpy(), target=target, output=output, method=method)
    assert_close(actual, expected, dtype, f"Jacobians (target={mode[0]!r}, output={output!r}, {method})")
