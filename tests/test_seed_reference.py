"""jaxjac against the user's own reference: the slow per-sample torch loop.

The researcher computed, for each row i,
`M = torch.autograd.functional.jacobian(net.forward, X[i:i+1])`, of shape
`(1, 3, 1, 1, 224)`: (batch out, class, batch in, channel, length). jaxjac's
promise is that row `J[i]` of `jaxjac.jacobian(model, X)` is `M[0, :, 0]`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from architectures import ARCHITECTURES
from helpers import TORCH_DTYPES, assert_close, precision

import jaxjac

DTYPES = ("float32", "float64")
ROWS = (0, 3, 6)  # a few rows, not only the first: batching must not mix samples up


def _user_net_and_data(source: str) -> tuple[torch.nn.Module, np.ndarray]:
    """The user-shaped net `(N, 1, 224) -> (N, 3)` and a batch `(7, 1, 224)` of inputs."""
    if source == "bundled-example":
        from jaxjac.example import load_example_data, load_example_model

        X, _ = load_example_data()
        return load_example_model(), X[::40][:7]  # rows from all three classes
    build, sample_shape = ARCHITECTURES["spectra-cnn"]
    return build(), np.random.default_rng(0).standard_normal((7, *sample_shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("source", ["zoo-spectra-cnn", "bundled-example"])
def test_rows_equal_the_seed_loop(source: str, dtype: str) -> None:
    net, X = _user_net_and_data(source)
    net = net.to(TORCH_DTYPES[dtype]).eval()
    Xt = torch.as_tensor(X).to(TORCH_DTYPES[dtype])
    assert Xt.shape == (7, 1, 224)

    with precision(dtype):
        model = jaxjac.convert(net, Xt, dtype=dtype, check=False)
        J = jaxjac.jacobian(model, Xt.numpy())
    assert J.shape == (7, 3, 1, 224)
    assert J.dtype == np.dtype(dtype)

    for i in ROWS:
        M = torch.autograd.functional.jacobian(net.forward, Xt[i : i + 1])  # the seed's call, verbatim
        assert M.shape == (1, 3, 1, 1, 224)
        assert_close(J[i], M[0, :, 0].numpy(), dtype, f"J[{i}] vs the seed's M[0, :, 0]")
