"""`convert`: a torch module and an example batch in, a checked Flax NNX module out."""

from __future__ import annotations

import json
import warnings
from typing import Any

import jax
import numpy as np
import torch

from ._check import DEFAULT_ATOL, DEFAULT_RTOL, check_conversion
from ._errors import JaxjacError
from ._export import export_one_sample
from ._graph import DType
from ._graph_model import ModelSpec, output_shape_of, warn_float64_without_x64
from ._lower import lower_program, output_position
from ._model import ConvertedModel
from ._module_state import before_forward, state_kept
from ._torch_dtypes import in_dtype
from ._torchscript import from_torchscript
from ._versions import versions

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _unwrapped(net: torch.nn.Module) -> torch.nn.Module:
    """The network inside wrappers that only forward to it: DataParallel, DistributedDataParallel, torch.compile.

    The wrapper's own train-mode flag (a new DataParallel trains) and name
    prefix (`module.`) would otherwise reach the conversion.
    """
    parallel = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    while True:
        if isinstance(net, parallel):
            net = net.module
        elif type(net).__name__ == "OptimizedModule" and isinstance(getattr(net, "_orig_mod", None), torch.nn.Module):
            net = net._orig_mod
        else:
            return net


def _sample_batch(example_input: Any) -> torch.Tensor:
    # A copy: a JAX array's (or a read-only memmap's) buffer is not writable, and torch warns about sharing it.
    x = example_input if isinstance(example_input, torch.Tensor) else torch.as_tensor(np.array(example_input))
    if x.ndim < 1 or x.shape[0] < 1:
        raise JaxjacError(f"example_input must be a batch (N, *sample_shape) with N >= 1; got shape {tuple(x.shape)}")
    return x[:1].detach()


def default_probes(example_input: Any, n_probes: int, seed: int = 0) -> np.ndarray:
    """Probe inputs `(n_probes, *sample_shape)` for the conversion check, like the user's samples.

    The example's rows (evenly spaced, up to `n_probes`), then copies of them
    with each value scaled by `1 + 0.1 N(0, 1)`: that keeps every sign and
    order of magnitude, so a model that takes `log` of positive reflectances
    is probed where it is defined. An example without spread (a batch of
    zeros, one constant row) says nothing about the data, and the probes are
    standard normal instead.
    """
    if isinstance(example_input, torch.Tensor):  # bfloat16 has no numpy dtype: widen in torch first
        example_input = example_input.detach().cpu().to(torch.float64).numpy()
    x = np.asarray(example_input, np.float64)
    rng = np.random.default_rng(seed)
    if not np.all(np.isfinite(x)) or np.ptp(x) == 0:
        return rng.standard_normal((n_probes, *x.shape[1:]))
    rows = x[np.linspace(0, len(x) - 1, min(len(x), n_probes)).round().astype(int)]
    extra = rows[rng.integers(0, len(rows), n_probes - len(rows))]
    return np.concatenate([rows, extra * (1 + 0.1 * rng.standard_normal(extra.shape))])


def convert(
    net: torch.nn.Module,
    example_input: Any,
    *,
    dtype: str = "float32",
    output_index: int | str | None = None,
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
      mode is converted as if in eval mode, with a warning. A TorchScript
      module (`torch.jit.script`, `trace` or `load`) is first rebuilt by
      torch's TorchScript-to-export converter.
    - `example_input`: a batch `(N, *sample_shape)`; only its first row's
      shape is used to trace.
    - `dtype`: ``"float32"`` or ``"float64"`` (the latter needs
      `jax.config.update("jax_enable_x64", True)` or `jax.enable_x64()`).
    - `output_index`: which output to keep when `forward` returns several:
      its position among the tensors forward returns, or its name, a dict
      key (``"logits"``) or path (``"out[1]['pred']"``).
    - `check`: compare outputs and Jacobians with torch on probe inputs.
    - `check_data`: probe inputs `(P, *sample_shape)`; default:
      `default_probes(example_input, n_probes, seed)`, samples like the
      example's.
    - `rtol`, `atol`: the check's tolerance. In float32, a miss that float32
      rounding and kinks explain, against torch in float64, passes (see
      `_check.float64_verdict`).
    - `metadata`: extra entries for `model.metadata`.

    **Returns:** a `ConvertedModel`; `model.metadata["check"]` holds the report
    (`{"passed": None, "skipped": True}` without the check).
    """
    if not isinstance(net, torch.nn.Module):
        raise JaxjacError(f"expected a torch.nn.Module to convert, got {type(net).__name__}")
    if dtype not in _TORCH_DTYPES:
        raise JaxjacError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise JaxjacError(
            "dtype='float64' needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) "
            "first, or convert inside `with jax.enable_x64(True):`"
        )
    sample = _sample_batch(example_input)
    net = _unwrapped(net)
    if isinstance(net, torch.jit.ScriptModule):
        net = from_torchscript(net, tuple(sample.shape[1:]), "the TorchScript module")
    with in_dtype(net, _TORCH_DTYPES[dtype]) as net, state_kept():
        sample = sample.to(_TORCH_DTYPES[dtype])
        before_forward(net)  # the state the graph computes from, whatever tracing does to it
        program = export_one_sample(net, sample)
        output_index = output_position(program, output_index)
        graph, tensors = lower_program(program, float_dtype=np.dtype(dtype), output_index=output_index)
        _warn_float64_steps(graph, tensors)
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
                probes = default_probes(example_input, n_probes, seed)
            else:
                probes = np.asarray(check_data)
                if tuple(probes.shape[1:]) != sample_shape:
                    raise JaxjacError(
                        f"check data holds samples of shape {tuple(probes.shape[1:])}; the model expects {sample_shape}"
                    )
            info["check"] = check_conversion(net, model, probes, rtol=rtol, atol=atol, output_index=output_index)
        else:  # recorded, so that whoever loads the artifact can tell
            info["check"] = {"passed": None, "skipped": True}
        return build(info)


def _makes_a_0_dim_tensor(node) -> bool:  # noqa: ANN001
    return node.op == "aten.scalar_tensor.default" or (node.op == "aten.full.default" and node.args[:1] == ((),))


def _warn_float64_steps(graph, tensors: dict[str, np.ndarray]) -> None:
    """Warn when forward casts to float64, or holds float64 tensors, but JAX can only compute float32 (64-bit JAX off)."""
    if jax.config.jax_enable_x64 or warn_float64_without_x64(tensors, "the model"):
        return
    for node in graph.nodes:
        if _makes_a_0_dim_tensor(node):  # it does not widen the tensors it meets (pinv's float64 tolerances)
            continue
        values = [*node.args, *(value for _, value in node.kwargs)]
        if any(isinstance(v, DType) and v.name in ("float64", "complex128") for v in values):
            warnings.warn(
                f"{node.where()} computes in float64 inside forward, but 64-bit JAX is off, so jaxjac computes that "
                "step in float32, unlike torch; enable it (jax.config.update('jax_enable_x64', True)) before "
                "converting and computing, or convert with dtype='float64'",
                UserWarning,
                stacklevel=3,
            )
            return
