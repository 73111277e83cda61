"""XLA compiler options: jaxjac's compilations avoid XLA CPU's float32 reduce-fusion miscompilation.

With XLA's CPU defaults (jaxlib 0.10.2), YNNPACK's fused reductions make the
float32 Jacobians of LayerNorm models 15-60% wrong from a batch of 4 rows on.
These tests fail there without `jaxjac.compiler_options()`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import assert_close, torch_reference

import jaxjac
import jaxjac._jacobian

SAMPLE = (3, 224)  # 224 steps of 3 channels, each step a token


class Tokens(nn.Module):
    """The model of a transformer's front: each time step embedded and layer-normalised, then averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(SAMPLE[0], 64)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = nn.functional.gelu(self.norm(self.embed(x.transpose(1, 2))))
        return self.head(tokens.mean(1))


def layer_norm_net() -> nn.Module:
    torch.manual_seed(0)
    return Tokens().eval()


@pytest.fixture(scope="module")
def net_and_data():
    net = layer_norm_net()
    x = torch.as_tensor(np.random.default_rng(0).standard_normal((8, *SAMPLE)), dtype=torch.float32)
    return net, x, torch_reference(net, x)


@pytest.mark.parametrize("method", jaxjac._jacobian.METHODS)
def test_float32_layer_norm_jacobians_of_a_batch_match_torch(net_and_data, method):
    net, x, (outputs, jacobians) = net_and_data
    model = jaxjac.convert(net, x)  # the conversion check runs its probes as one batch too
    assert_close(model(x.numpy()), outputs, "float32", "outputs")
    assert_close(jaxjac.jacobian(model, x.numpy(), method=method), jacobians, "float32", f"jacobian ({method})")
    fn = jaxjac.jacobian_fn(model, method=method)
    assert_close(fn(x.numpy()), jacobians, "float32", f"jacobian_fn ({method})")


def test_your_own_jit_takes_the_options(net_and_data):
    net, x, (_, jacobians) = net_and_data
    model = jaxjac.convert(net, x, check=False)
    fn = jaxjac.jacobian_fn(model)
    jitted = jax.jit(lambda v: fn(v), compiler_options=jaxjac.compiler_options())
    assert_close(jitted(x.numpy()), jacobians, "float32", "jacobian_fn under your own jit")


def test_the_options_keep_a_plain_jax_batched_jacobian_exact():
    def f(x):
        return x * x.sum(-1, keepdims=True)

    x = np.random.default_rng(0).standard_normal((8, 4, 64)).astype(np.float32)
    per_sample = np.stack([np.asarray(jax.jacrev(f)(row)) for row in x])
    batched = jax.jit(jax.vmap(jax.jacrev(f)), compiler_options=jaxjac.compiler_options())
    np.testing.assert_allclose(np.asarray(batched(jnp.asarray(x))), per_sample, rtol=1e-5, atol=1e-5)


def test_options_are_only_for_cpus():
    assert jaxjac.compiler_options("gpu") == {}
    assert jaxjac.compiler_options("tpu") == {}
    options = jaxjac.compiler_options("cpu")
    assert options is not jaxjac.compiler_options("cpu")  # a fresh dict each call: the caller may change it
    # Whatever this XLA accepts, it compiles with.
    jax.jit(lambda v: v * 2, compiler_options=options)(jnp.ones(3))
