"""Activation functions and (log-)softmax."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .registry import register


@register("aten.relu.default")
def relu(x):
    # jnp.maximum(x, 0) puts half the gradient on each side at 0; torch puts 0.
    return jnp.where(x > 0, x, jnp.zeros_like(x))


@register("aten.sigmoid.default")
def sigmoid(x):
    return jax.nn.sigmoid(x)


@register("aten.tanh.default")
def tanh(x):
    return jnp.tanh(x)


@register("aten._softmax.default")
def softmax(x, dim, half_to_float=False):
    return jax.nn.softmax(x, axis=dim)


@register("aten._log_softmax.default")
def log_softmax(x, dim, half_to_float=False):
    return jax.nn.log_softmax(x, axis=dim)
