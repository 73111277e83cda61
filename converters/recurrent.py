"""Recurrent layers: `nn.LSTM`, `nn.GRU` and `nn.RNN` as one `lax.scan` per layer and direction.

torch's decomposition unrolls a recurrence into its steps, so a model's graph,
and its compilation, grew with the sequence length (a two-layer
bidirectional LSTM over 224 steps did not convert in 300 s). jaxjac keeps
`aten.lstm`/`gru`/`rnn_*` whole (see `jaxjac._export`) and scans the step
here: one step's program, whatever the length.

The input projection of every step is one product before the scan; the
scan carries the state and applies the recurrent product. Gates follow
torch's layout: LSTM `i, f, g, o`, GRU `r, z, n`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .linear import linear
from .registry import ModelError, register

Step = Callable[[tuple[jax.Array, ...], jax.Array], tuple[tuple[jax.Array, ...], jax.Array]]
MakeStep = Callable[[list], Step]


def _layers(
    x: jax.Array,
    states: Sequence[jax.Array],
    params: Sequence[jax.Array],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
    *,
    make_step: MakeStep,
) -> tuple[jax.Array, list[tuple[jax.Array, ...]]]:
    """Run the stacked recurrence; returns the last layer's output and each (layer, direction)'s final state."""
    if train and dropout > 0 and num_layers > 1:
        raise ModelError("a recurrent layer with dropout between layers runs in training mode; call .eval()")
    directions = 2 if bidirectional else 1
    per_direction = len(params) // (num_layers * directions)
    # The scan's carry keeps one dtype: the states take the promoted dtype of the step's
    # operands, as the unrolled ops would (a float32 zero state in a float64 model).
    dtype = jnp.result_type(x, *params, *states)
    states = [s.astype(dtype) for s in states]
    sequence = jnp.swapaxes(x, 0, 1) if batch_first else x  # (T, B, C)
    finals = []
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            weights = _with_biases(params[index * per_direction : (index + 1) * per_direction], has_biases)
            step = make_step(weights)
            state = tuple(s[index] for s in states)
            inputs = linear(sequence, weights[0], weights[2])  # every step's input product at once
            state, ys = lax.scan(step, state, inputs, reverse=direction == 1)
            finals.append(state)
            outputs.append(ys)
        sequence = jnp.concatenate(outputs, axis=-1) if directions == 2 else outputs[0]
    return (jnp.swapaxes(sequence, 0, 1) if batch_first else sequence), finals


def _with_biases(weights: Sequence[jax.Array], has_biases: bool) -> list:
    """`[w_ih, w_hh, b_ih, b_hh, *rest]`, with `None` biases where the layer has none."""
    weights = list(weights)
    return weights if has_biases else [weights[0], weights[1], None, None, *weights[2:]]


def _lstm_step(weights: list) -> Step:
    w_hh, b_hh = weights[1], weights[3]
    w_hr = weights[4] if len(weights) > 4 else None  # a projection (`proj_size`)

    def step(state: tuple[jax.Array, ...], projected_input: jax.Array):
        h, c = state
        gates = projected_input + linear(h, w_hh, b_hh)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        if w_hr is not None:
            h = linear(h, w_hr)
        return (h, c), h

    return step


def _gru_step(weights: list) -> Step:
    w_hh, b_hh = weights[1], weights[3]

    def step(state: tuple[jax.Array, ...], projected_input: jax.Array):
        (h,) = state
        hidden = linear(h, w_hh, b_hh)
        x_r, x_z, x_n = jnp.split(projected_input, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(hidden, 3, axis=-1)
        r = jax.nn.sigmoid(x_r + h_r)
        z = jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * h
        return (h,), h

    return step


def _rnn_step(activation: Callable[[jax.Array], jax.Array]) -> MakeStep:
    def make(weights: list) -> Step:
        w_hh, b_hh = weights[1], weights[3]

        def step(state: tuple[jax.Array, ...], projected_input: jax.Array):
            (h,) = state
            h = activation(projected_input + linear(h, w_hh, b_hh))
            return (h,), h

        return step

    return make


# The ATen recurrences take `(x, states, params, has_biases, num_layers, dropout, train,
# bidirectional, batch_first)`; `options` below are the last six.


@register("aten.lstm.input")
def lstm(x: jax.Array, hx: Sequence[jax.Array], params: Sequence[jax.Array], *options: Any) -> tuple[jax.Array, ...]:
    """torch's LSTM of `x` `(T, B, C)` (`(B, T, C)` when `batch_first`) from states `hx = (h0, c0)`.

    **Returns:** `(output, h_n, c_n)`: output `(T, B, D * H_out)`, and the final
    states `(D * num_layers, B, H_out)` and `(D * num_layers, B, H)`.
    """
    output, finals = _layers(x, hx, params, *options, make_step=_lstm_step)
    return output, jnp.stack([h for h, _ in finals]), jnp.stack([c for _, c in finals])


def _single_state(make_step: MakeStep) -> Callable[..., tuple[jax.Array, jax.Array]]:
    def lowering(x: jax.Array, hx: jax.Array, params: Sequence[jax.Array], *options: Any) -> tuple[jax.Array, ...]:
        output, finals = _layers(x, (hx,), params, *options, make_step=make_step)
        return output, jnp.stack([h for (h,) in finals])

    return lowering


gru = register("aten.gru.input")(_single_state(_gru_step))
gru.__doc__ = """torch's GRU of `x` from the state `hx` `(D * num_layers, B, H)`: `(output, h_n)`."""
rnn_tanh = register("aten.rnn_tanh.input")(_single_state(_rnn_step(jnp.tanh)))
rnn_tanh.__doc__ = """torch's Elman RNN with tanh: `(output, h_n)`."""
rnn_relu = register("aten.rnn_relu.input")(_single_state(_rnn_step(jax.nn.relu)))
rnn_relu.__doc__ = """torch's Elman RNN with ReLU: `(output, h_n)`."""
