"""How the seed question's two batched snippets relate to its list of per-sample Jacobians.

Each test proves one claim of `docs/jacobians-and-gradients.md` on the bundled,
trained `SpectraNet` (Conv-BatchNorm-ReLU-MaxPool blocks, `(N, 1, 224) -> (N, 3)`)
in float64, so identities hold to rounding (relative `1e-10`) and the zero
blocks of the batch Jacobian are exact zeros.

The snippets themselves are re-written below as `first_snippet` and
`second_snippet`: same autograd calls, same order, same reads of `.grad`.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import assert_close, precision

import jaxjac
from jaxjac.example import load_example_data, load_example_model

RTOL = 1e-10  # torch against torch, float64: the same arithmetic up to summation order
K = 3  # classes
L = 224  # bands


# --------------------------------------------------------------------------- fixtures


def _close(actual: torch.Tensor | np.ndarray, expected: torch.Tensor | np.ndarray, what: str) -> None:
    """`max|actual - expected| <= RTOL * max|expected|`, float64."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = float(np.abs(expected).max())
    err = float(np.abs(actual - expected).max())
    assert err <= RTOL * scale, f"{what}: max abs error {err:.3g} vs scale {scale:.3g}"


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    return load_example_model().double().eval()


@pytest.fixture(scope="module")
def X() -> torch.Tensor:
    """Six spectra `(6, 1, 224)`, two of each class, in dataset order."""
    data, labels = load_example_data()
    rows = np.sort(np.concatenate([np.flatnonzero(labels == c)[:2] for c in range(K)]))
    return torch.as_tensor(data[rows]).double()


@pytest.fixture(scope="module")
def per_sample(net: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    """The seed's list: `jacobian(net.forward, X[i:i+1])` per row, each `(1, K, 1, 1, L)`, as `(N, K, 1, L)`."""
    jacobians = [torch.autograd.functional.jacobian(net.forward, X[i : i + 1]) for i in range(X.shape[0])]
    assert all(M.shape == (1, K, 1, 1, L) for M in jacobians)
    return torch.stack([M[0, :, 0] for M in jacobians])


@pytest.fixture(scope="module")
def predicted(net: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        k = net(X).argmax(dim=1)
    assert set(k.tolist()) == {0, 1, 2}, "the batch should exercise every predicted class"
    return k


# --------------------------------------------------------------------------- the snippets, re-written


def first_snippet(net: torch.nn.Module, X: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The first attempt: one all-ones backward, then one backward per class, never zeroing `.grad`.

    **Returns:** `(printed, kept)`: `printed[i]` a copy of what the print at
    step `i` showed; `kept` the list the snippet returns, `(N, L)` each.
    """
    inputs = X.clone().requires_grad_(True)
    outputs = net(inputs)
    outputs.backward(torch.ones_like(outputs), retain_graph=True)
    printed, kept = [], []
    for i in range(outputs.shape[1]):
        outputs[:, i].backward(torch.ones_like(outputs[:, i]), retain_graph=True)
        grads = inputs.grad.squeeze()  # as in the snippet: no clone
        kept.append(grads)
        printed.append(grads.clone())  # what the print showed at this step
    return printed, kept


def second_snippet(net: torch.nn.Module, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The second attempt: per sample, one backward of its predicted logit through the whole batch.

    **Returns:** `(saliency, grad)`: `saliency` `(N, L)` as the snippet fills
    it; `grad` the input's accumulated `.grad` `(N, 1, L)` after the loop.
    """
    inputs = X.clone().requires_grad_(True)
    outputs = net(inputs)
    classes = torch.argmax(outputs, dim=1).view(-1, 1)
    saliency = torch.zeros(X.shape[0], X.shape[-1], dtype=X.dtype)
    for i in range(saliency.shape[0]):
        k = classes[i, 0]
        outputs[i, k].backward(retain_graph=True)
        saliency[i, :] = inputs.grad.data.squeeze()[i, :]
    return saliency, inputs.grad


def batched_rows(net: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    """One forward, then one backward per class of `sum_n y[n, k]`: all rows `(N, K, 1, L)`."""
    inputs = X.clone().requires_grad_(True)
    outputs = net(inputs)
    rows = [torch.autograd.grad(outputs[:, k].sum(), inputs, retain_graph=True)[0] for k in range(outputs.shape[1])]
    return torch.stack(rows, dim=1)


def first_snippet_fixed(net: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    """The first snippet repaired: no all-ones pass, `.grad` reset before and cloned after each class."""
    inputs = X.clone().requires_grad_(True)
    outputs = net(inputs)
    rows = []
    for k in range(outputs.shape[1]):
        inputs.grad = None
        outputs[:, k].backward(torch.ones_like(outputs[:, k]), retain_graph=True)
        rows.append(inputs.grad.clone())
    return torch.stack(rows, dim=1)


class BackwardCounter:
    """Counts passes through the first layer: forwards, backwards, and the sample rows each carried."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.forward_rows: list[int] = []
        self.backward_rows: list[int] = []
        self._handle = layer.register_forward_hook(self._on_forward)

    def _on_forward(self, module, args, output) -> None:
        self.forward_rows.append(output.shape[0])
        if output.requires_grad:
            output.register_hook(lambda grad: self.backward_rows.append(grad.shape[0]))

    def remove(self) -> None:
        self._handle.remove()


# --------------------------------------------------------------------------- claim 1: block-diagonal


def test_batch_jacobian_is_block_diagonal_in_eval_mode(net, X, per_sample):
    full = torch.autograd.functional.jacobian(net.forward, X)  # d y[n, k] / d x[m]
    N = X.shape[0]
    assert full.shape == (N, K, N, 1, L)
    for n in range(N):
        for m in range(N):
            block = full[n, :, m]
            if n == m:
                _close(block, per_sample[n], f"diagonal block {n}")
            else:
                assert torch.count_nonzero(block) == 0, f"block ({n}, {m}) is not exactly zero"


def test_sum_over_batch_gives_every_samples_row(net, X, per_sample):
    _close(batched_rows(net, X), per_sample, "autograd.grad of sum_n y[n, k], k = 0..K-1")


def test_is_grads_batched_gives_all_rows_in_one_call(net, X, per_sample):
    inputs = X.clone().requires_grad_(True)
    outputs = net(inputs)
    N = X.shape[0]
    cotangents = torch.eye(K, dtype=outputs.dtype)[:, None, :].expand(K, N, K)  # (K, N, K): e_k for every sample
    (rows,) = torch.autograd.grad(outputs, inputs, grad_outputs=cotangents, is_grads_batched=True)
    assert rows.shape == (K, N, 1, L)
    _close(rows.transpose(0, 1), per_sample, "is_grads_batched rows")


# --------------------------------------------------------------------------- claim 2: the first snippet


def test_first_snippet_prints_sum_of_all_rows_plus_running_sum(net, X, per_sample):
    printed, _ = first_snippet(net, X)
    rows = per_sample[:, :, 0]  # (N, K, L)
    every_class = rows.sum(dim=1)
    running = rows.cumsum(dim=1)
    for i in range(K):
        _close(printed[i], every_class + running[:, i], f"printed at step {i}")
        assert not torch.allclose(printed[i], rows[:, i]), f"step {i} must not equal row {i}"


def test_first_snippet_list_holds_one_tensor_twice_the_sum(net, X, per_sample):
    _, kept = first_snippet(net, X)
    twice = 2 * per_sample[:, :, 0].sum(dim=1)
    for i in range(K):
        _close(kept[i], twice, f"gradient_list[{i}]")
    assert len({g.data_ptr() for g in kept}) == 1, "every entry should share the one .grad storage"


def test_squeeze_of_grad_is_a_view():
    x = torch.zeros(4, 1, L, dtype=torch.float64, requires_grad=True)
    (3 * x).sum().backward()
    view = x.grad.squeeze()
    assert view._base is x.grad
    assert view.data_ptr() == x.grad.data_ptr()
    (2 * x).sum().backward()  # accumulates into x.grad in place
    assert torch.equal(view, torch.full((4, L), 5.0, dtype=torch.float64))


@pytest.mark.parametrize("fix", ["autograd.grad", "zero-and-clone"])
def test_first_snippet_fixed_gives_per_sample_rows(net, X, per_sample, fix):
    rows = batched_rows(net, X) if fix == "autograd.grad" else first_snippet_fixed(net, X)
    _close(rows, per_sample, f"fixed first snippet ({fix})")


# --------------------------------------------------------------------------- claim 3: the second snippet


def test_second_snippet_gives_predicted_rows(net, X, per_sample, predicted):
    saliency, grad = second_snippet(net, X)
    expected = per_sample[torch.arange(X.shape[0]), predicted, 0]  # J[i, argmax_i], (N, L)
    _close(saliency, expected, "second snippet")
    # .grad accumulated over all N backwards, yet row i only ever received sample i's contribution.
    _close(grad[:, 0], expected, "accumulated .grad after the loop")


def test_second_snippet_costs_n_full_batch_backwards(net, X):
    rows_per_pass = {}
    for N in (3, 6):
        counter = BackwardCounter(net.features[0])
        try:
            second_snippet(net, X[:N])
        finally:
            counter.remove()
        assert counter.forward_rows == [N]
        assert counter.backward_rows == [N] * N, "one backward per sample, each through all N rows"
        rows_per_pass[N] = sum(counter.backward_rows)
    assert rows_per_pass == {3: 9, 6: 36}, "N^2 sample-rows of backward work: doubling N quadruples it"


def test_predicted_rows_in_one_backward(net, X, per_sample, predicted):
    counter = BackwardCounter(net.features[0])
    try:
        inputs = X.clone().requires_grad_(True)
        outputs = net(inputs)
        k = outputs.argmax(dim=1)
        (rows,) = torch.autograd.grad(outputs.gather(1, k[:, None]).sum(), inputs)
    finally:
        counter.remove()
    assert (counter.forward_rows, counter.backward_rows) == ([X.shape[0]], [X.shape[0]])
    _close(rows[:, 0], per_sample[torch.arange(X.shape[0]), predicted, 0], "predicted rows, one backward")


def test_batched_and_per_sample_costs(net, X):
    N = X.shape[0]
    counter = BackwardCounter(net.features[0])
    try:
        batched_rows(net, X)
        batched = (list(counter.forward_rows), list(counter.backward_rows))
        counter.forward_rows.clear()
        counter.backward_rows.clear()
        for i in range(N):
            torch.autograd.functional.jacobian(net.forward, X[i : i + 1])
        loop = (counter.forward_rows, counter.backward_rows)
    finally:
        counter.remove()
    assert batched == ([N], [N] * K), "batched: 1 forward, K backwards over the batch"
    assert loop == ([1] * N, [1] * (N * K)), "per-sample loop: N forwards, N*K backwards of batch 1"


# --------------------------------------------------------------------------- claim 4: train-mode BatchNorm


def _train_mode_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """`net` with BatchNorm using batch statistics and Dropout off, so only BatchNorm couples samples."""
    coupled = copy.deepcopy(net).train()
    for m in coupled.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    return coupled


def test_train_mode_batchnorm_couples_samples(net, X):
    coupled = _train_mode_batchnorm(net)
    full = torch.autograd.functional.jacobian(coupled.forward, X)  # (N, K, N, 1, L)
    N = X.shape[0]
    scale = full.abs().max().item()
    off_diagonal = max(full[n, :, m].abs().max().item() for n in range(N) for m in range(N) if n != m)
    assert off_diagonal > 1e-3 * scale, f"off-diagonal blocks {off_diagonal:.3g} vs scale {scale:.3g}"

    # The batched sum-trick still equals its definition, sum over n of d y[n, k] / d x[m] ...
    batched = batched_rows(coupled, X)
    _close(batched, full.sum(dim=0).transpose(0, 1), "batched rows = column sums of the full Jacobian")
    # ... but that is no longer the per-sample Jacobian: neither the diagonal blocks nor the batch-of-one loop.
    diagonal = torch.stack([full[n, :, n] for n in range(N)])
    loop = torch.stack([torch.autograd.functional.jacobian(coupled.forward, X[i : i + 1])[0, :, 0] for i in range(N)])
    for what, other in (("diagonal blocks", diagonal), ("batch-of-one loop", loop)):
        gap = (batched - other).abs().max().item()
        assert gap > 1e-3 * other.abs().max().item(), f"train-mode batched rows should differ from the {what}"


def test_jaxjac_converts_train_mode_as_eval_with_a_warning(net, X, per_sample):
    coupled = _train_mode_batchnorm(net)
    with precision("float64"):
        with pytest.warns(UserWarning, match="handed over in train mode"):
            model = jaxjac.convert(coupled, X.numpy(), dtype="float64", check=False)
        J = jaxjac.jacobian(model, X.numpy())
    assert coupled.training, "convert must restore the caller's train mode"
    _close(J, per_sample.numpy(), "jaxjac on a train-mode net vs the eval-mode per-sample list")


# --------------------------------------------------------------------------- claim 5: jaxjac in one call


@pytest.fixture(scope="module")
def jaxjac_results(net, X) -> dict[str, np.ndarray]:
    with precision("float64"):
        model = jaxjac.convert(net, X.numpy(), dtype="float64", check=False)
        return {
            "all": jaxjac.jacobian(model, X.numpy()),
            "predicted": jaxjac.jacobian(model, X.numpy(), target="predicted"),
            "probs": jaxjac.jacobian(model, X.numpy(), output="probs"),
        }


def test_jaxjac_all_equals_the_per_sample_list(jaxjac_results, per_sample):
    J = jaxjac_results["all"]
    assert J.shape == (6, K, 1, L)
    assert_close(J, per_sample.numpy(), "float64", "J vs the per-sample list")


def test_jaxjac_predicted_equals_the_second_snippet(jaxjac_results, net, X):
    saliency, _ = second_snippet(net, X)
    S = jaxjac_results["predicted"]
    assert S.shape == (6, 1, L)
    assert_close(S[:, 0], saliency.numpy(), "float64", "target='predicted' vs the second snippet")


def test_jaxjac_expresses_the_first_snippet(jaxjac_results, net, X):
    printed, kept = first_snippet(net, X)
    J = jaxjac_results["all"][:, :, 0]  # (N, K, L)
    every_class = J.sum(axis=1)
    running = np.cumsum(J, axis=1)
    for i in range(K):
        assert_close(printed[i].numpy(), every_class + running[:, i], "float64", f"printed at step {i}")
        assert_close(kept[i].numpy(), 2 * every_class, "float64", f"gradient_list[{i}]")


def test_probability_rows_sum_to_zero(jaxjac_results):
    # sum_k p_k = 1 for every input, so the class-summed Jacobian of the softmax vanishes.
    P = jaxjac_results["probs"]
    assert np.abs(P).max() > 1e-6, "the probability Jacobians themselves are not zero"
    assert np.abs(P.sum(axis=1)).max() <= RTOL * np.abs(P).max()
