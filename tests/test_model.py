"""The converted model is a real Flax NNX module: torch names, pure split, jit/grad/vmap/shard_map."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as nn
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

import jaxjac


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU())
        self.head = nn.Linear(4 * 16, 3)
        self.register_buffer("band_mean", torch.linspace(-1, 1, 16))

    def forward(self, x):
        return self.head(self.features(x - self.band_mean).flatten(1))


def convert():
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(5, 1, 16)
    return net, x, jaxjac.convert(net, x)


def test_tree_mirrors_torch_names_and_kinds():
    net, _, model = convert()
    assert isinstance(model, nnx.Module)
    np.testing.assert_array_equal(np.asarray(model.features[0].weight[...]), net.features[0].weight.detach().numpy())
    np.testing.assert_array_equal(np.asarray(model.features[1].running_var[...]), net.features[1].running_var.numpy())
    assert isinstance(model.features[0].weight, nnx.Param)
    assert isinstance(model.features[1].running_mean, jaxjac.Buffer)
    assert isinstance(model.band_mean, jaxjac.Buffer)
    params = nnx.state(model, nnx.Param)
    names = {".".join(map(str, path)) for path, _ in nnx.to_flat_state(params)}
    assert names == {name for name, _ in net.named_parameters()}
    assert model.sample_shape == (1, 16) and model.output_shape == (3,) and model.n_outputs == 3


def test_split_gives_pure_functions_for_jit_grad_and_vmap():
    net, x, model = convert()
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    expected = net(x).detach().numpy()
    np.testing.assert_allclose(np.asarray(forward(state, x.numpy())), expected, rtol=1e-5, atol=1e-6)

    per_sample = jax.vmap(lambda s, xi: forward(s, xi[None])[0], in_axes=(None, 0))
    np.testing.assert_allclose(np.asarray(per_sample(state, x.numpy())), expected, rtol=1e-5, atol=1e-6)

    # Fine-tuning differentiates the parameters only; buffers include integers.
    graphdef_p, params, buffers = nnx.split(model, nnx.Param, ...)

    def loss(params):
        return jnp.sum(nnx.merge(graphdef_p, params, buffers)(x.numpy()) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    torch_loss = (net(x) ** 2).sum()
    torch_loss.backward()
    np.testing.assert_allclose(
        np.asarray(grads["head"]["weight"][...]), net.head.weight.grad.numpy(), rtol=1e-4, atol=1e-6
    )


def test_fine_tuning_a_parameter_changes_the_output():
    _, x, model = convert()
    before = np.asarray(model(x.numpy()))
    model.head.bias[...] = model.head.bias[...] + 1.0
    np.testing.assert_allclose(np.asarray(model(x.numpy())), before + 1.0, rtol=1e-5)


def test_shard_map_over_a_batch_mesh():
    net, x, model = convert()
    graphdef, state = nnx.split(model)
    mesh = Mesh(np.array(jax.devices()), ("batch",))

    def local(state, xb):
        return nnx.merge(graphdef, state)(xb)

    sharded = jax.jit(
        jax.shard_map(
            local, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec("batch")), out_specs=PartitionSpec("batch")
        )
    )
    n = len(jax.devices()) * 2
    xb = np.random.default_rng(0).standard_normal((n, 1, 16)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(sharded(state, xb)), net(torch.as_tensor(xb)).detach().numpy(), rtol=1e-5, atol=1e-6
    )
