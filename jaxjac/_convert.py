"""`convert`: a torch module and an example batch in, a checked Flax NNX module out."""

from __future__ import annotations

import copy
import json
from typing import Any

import jax
import numpy as np
import torch

from ._check import DEFAULT_ATOL, DEFAULT_RTOL, check_conversion
from ._errors import JaxjacError
from ._export import export_one_sample
from ._graph_model import ModelSpec, output_shape_of
from ._lower import lower_program
from ._model import ConvertedModel
from ._versions import versions

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _sample_batch(example_input: Any) -> torch.Tensor:
    x = example_input if isinstance(example_input, torch.Tensor) else torch.as_tensor(np.asarray(example_input))
    if x.ndim < 1 or x.shape[0] < 1:
        raise JaxjacError(f"example_input must be a batch (N, *sample_shape) with N >= 1; got shape {tuple(x.shape)}")
    return x[:1].detach()


def convert(
    net: torch.nn.Module,
    example_input: Any,
    *,
    dtype: str = "float32",
    output_index: int | None = None,
    check: bool = True,
    check_data: np.ndarray | None = None,
    n_probes: int = 8,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
) -> ConvertedModel:
    """Convert a torch model into an equivalent Flax NNX module.

    **Arguments:**

    - `net`: a `torch.nn.Module`. It is traced in eval mode; a model in train
      mode is converted as if in eval mode, with a warning.
    - `example_input`: a batch `(N, *sample_shape)`; only its first row's
      shape is used to trace.
    - `dtype`: ``"float32"`` or ``"float64"`` (the latter needs
      `jax.config.update("jax_enable_x64", True)` or `jax.enable_x64()`).
    - `output_index`: which output to keep when `forward` returns several.
    - `check`: compare outputs and Jacobians with torch on probe inputs.
    - `check_data`: probe inputs `(P, *sample_shape)`; default: `n_probes`
      standard-normal samples drawn with `seed`.
    - `rtol`, `atol`: the check's tolerance.
    - `metadata`: extra entries for `model.metadata`.

    **Returns:** a `ConvertedModel`; `model.metadata["check"]` holds the report.
    """
    if dtype not in _TORCH_DTYPES:
        raise JaxjacError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise JaxjacError(
            "dtype='float64' needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) "
            "first, or convert inside `with jax.enable_x64(True):`"
        )
    sample = _sample_batch(example_input)
    net_dtype = next((p.dtype for p in net.parameters() if p.is_floating_point()), torch.float32)
    if net_dtype != _TORCH_DTYPES[dtype]:
        net = copy.deepcopy(net).to(_TORCH_DTYPES[dtype])
    sample = sample.to(_TORCH_DTYPES[dtype])
    program = export_one_sample(net, sample)
    graph, tensors = lower_program(program, float_dtype=np.dtype(dtype), output_index=output_index)
    parameters = frozenset(
        spec.target
        for spec in program.graph_signature.input_specs
        if spec.kind == torch.export.graph_signature.InputKind.PARAMETER
    )
    sample_shape = tuple(sample.shape[1:])
    info: dict[str, Any] = {"versions": versions(), **(metadata or {})}

    def build(info: dict[str, Any]) -> ConvertedModel:
        spec = ModelSpec(
            sample_shape=sample_shape,
            output_shape=output_shape_of(graph, tensors, sample_shape, dtype),
            dtype=dtype,
            metadata_json=json.dumps(info, sort_keys=True),
        )
        return ConvertedModel(graph, tensors, parameters, spec)

    model = build(info)
    if check:
        if check_data is None:
            probes = np.random.default_rng(seed).standard_normal((n_probes, *sample_shape))
        else:
            probes = np.asarray(check_data)
            if tuple(probes.shape[1:]) != sample_shape:
                raise JaxjacError(
                    f"check data holds samples of shape {tuple(probes.shape[1:])}; the model expects {sample_shape}"
                )
        info["check"] = check_conversion(net, model, probes, rtol=rtol, atol=atol, output_index=output_index)
        model = build(info)
    return model
