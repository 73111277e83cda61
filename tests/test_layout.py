"""Channels-last execution changes speed only: both layouts give the same numbers on every architecture."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from architectures import ARCHITECTURES
from helpers import precision

import jaxjac
from jaxjac._interpret import run_graph


def _jacobians(model: jaxjac.ConvertedModel, x: np.ndarray, layout: str) -> np.ndarray:
    def f(tensors, xi):
        (y,) = run_graph(model.graph, tensors, xi[None], model.dtype, layout)
        return y.reshape(-1)

    return np.asarray(jax.jit(jax.vmap(jax.jacrev(f, argnums=1), in_axes=(None, 0)))(model.tensors(), x))


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_layouts_agree(name):
    make, sample_shape = ARCHITECTURES[name]
    x = np.random.default_rng(0).standard_normal((3, *sample_shape))
    with precision("float64"):
        model = jaxjac.convert(make().double().eval(), torch.as_tensor(x), dtype="float64", check=False)
        first = _jacobians(model, x, "channels-first")
        last = _jacobians(model, x, "channels-last")
    np.testing.assert_allclose(last, first, rtol=0, atol=1e-12 * np.abs(first).max())


def test_channels_last_really_runs_channels_last():
    make, sample_shape = ARCHITECTURES["spectra-cnn"]
    model = jaxjac.convert(make().eval(), torch.zeros((1, *sample_shape)), check=False)
    jaxpr = str(
        jax.make_jaxpr(lambda t, x: run_graph(model.graph, t, x, jnp.float32, "channels-last"))(
            model.tensors(), jnp.zeros((1, *sample_shape))
        )
    )
    # The input is transposed once at the first convolution and the result
    # once before the flatten: no transposes around pools and activations.
    assert jaxpr.count("transpose[permutation=(0, 2, 1)]") == 2
