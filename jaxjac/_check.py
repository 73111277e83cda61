"""Runs the torch model and its conversion side by side on probe inputs.

The reference is the per-sample loop users start from:
`torch.autograd.functional.jacobian(net, X[i:i+1])` on each probe row.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ._errors import ConversionCheckError, JaxjacError, first_line
from ._export import eval_mode
from ._jacobian import jacobian
from ._model import ConvertedModel

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 0.0


def torch_outputs_and_jacobians(
    net: torch.nn.Module, x: torch.Tensor, output_index: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Torch's outputs `(N, K)` and per-sample Jacobians `(N, K, *sample_shape)`, one sample at a time."""

    def forward(row: torch.Tensor) -> torch.Tensor:
        # The graph's outputs are the leaves of whatever forward returns (a tensor,
        # a tuple, a dict), in torch's pytree order; pick the same one.
        leaves = torch.utils._pytree.tree_leaves(net(row))
        return leaves[0 if output_index is None else output_index]

    outputs, jacobians = [], []
    with eval_mode(net, warn=False):  # `convert` has warned already, when it traced
        for i in range(x.shape[0]):
            row = x[i : i + 1]
            with torch.no_grad():
                outputs.append(forward(row).reshape(-1).numpy())
            jac = torch.autograd.functional.jacobian(forward, row)
            jacobians.append(jac.reshape(-1, *row.shape[1:]).numpy())
    return np.stack(outputs), np.stack(jacobians)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """`(max |actual - expected|, that divided by max |expected|)`."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    abs_err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    return abs_err, abs_err / scale if scale > 0 else abs_err


def check_conversion(
    net: torch.nn.Module,
    model: ConvertedModel,
    probes: np.ndarray,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    output_index: int | None = None,
) -> dict:
    """Compare outputs and Jacobians of `net` and `model` on `probes`.

    **Arguments:**

    - `net`: the torch model, in the dtype of `model`.
    - `model`: its conversion.
    - `probes`: inputs `(P, *sample_shape)`.
    - `rtol`, `atol`: an array passes when `max|jax - torch| <= atol + rtol * max|torch|`.
    - `output_index`: which of several outputs of `net` the model kept.

    **Returns:** the report, a JSON-serialisable dict.

    Raises `ConversionCheckError`, with the numbers, when either array fails.
    """
    # The model's dtype, which `net` is in: a net may hold no parameters to read it from.
    torch_dtype = getattr(torch, np.dtype(model.dtype).name)
    x = torch.as_tensor(np.asarray(probes)).to(torch_dtype)
    try:
        expected_out, expected_jac = torch_outputs_and_jacobians(net, x, output_index)
    except RuntimeError as error:  # torch's own failures, such as a dtype fixed inside the graph
        raise JaxjacError(
            f"torch could not run the model on the check's {model.dtype} probe inputs: {first_line(error)}. If "
            "forward (or an exported .pt2 graph) fixes a dtype inside, convert in that dtype"
        ) from error
    actual_out = np.asarray(model(x.numpy())).reshape(len(x), -1)
    actual_jac = jacobian(model, x.numpy(), batch_size=len(x))
    # Probes where torch itself is not finite (log of a negative, say) test nothing: left out.
    finite = np.isfinite(expected_out.reshape(len(x), -1)).all(1) & np.isfinite(expected_jac.reshape(len(x), -1)).all(1)
    if len(x) and not finite.any():
        raise JaxjacError(
            f"the torch model's outputs or Jacobians are not finite on any of the {len(x)} probe inputs, so "
            "the conversion cannot be checked; pass check_data (--check-data) with real samples"
        )
    report: dict = {"n_probes": int(finite.sum()), "dtype": str(model.dtype), "rtol": rtol, "atol": atol}
    if not finite.all():
        report["probes_left_out"] = int((~finite).sum())  # torch not finite there
    failed = []
    arrays = {
        "outputs": (actual_out[finite], expected_out[finite]),
        "jacobians": (actual_jac[finite], expected_jac[finite]),
    }
    for key, (actual, expected) in arrays.items():
        abs_err, rel_err = relative_error(actual, expected)
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
        report[f"{key}_max_abs_error"] = abs_err
        report[f"{key}_max_rel_error"] = rel_err
        if not (np.all(np.isfinite(actual)) and abs_err <= atol + rtol * scale):
            failed.append(key)
    if failed and np.dtype(model.dtype) == np.float32:
        failed = _unless_float32_rounding(net, x[torch.as_tensor(finite)], arrays, failed, output_index, report)
    failed = [
        f"{key}: max relative error {report[f'{key}_max_rel_error']:.3g} (absolute {report[f'{key}_max_abs_error']:.3g})"
        for key in failed
    ]
    report["passed"] = not failed
    if failed:
        raise ConversionCheckError(
            f"the converted model disagrees with torch beyond rtol={rtol:g}, atol={atol:g} on "
            f"{report['n_probes']} probe inputs: {'; '.join(failed)}. Unless forward computes in float64 without 64-bit JAX (see the warning) "
            "or on random numbers, this is a lowering bug: please report it; raise --rtol/--atol only if the "
            "difference is expected",
            report,
        )
    return report


# A float32 conversion passes a failed comparison when, against torch's own
# float64 Jacobians, it is off by at most this many times torch's float32: a
# deep or wide model (braindecode's EEGInceptionMI: 8.9M parameters) can sum
# rounding beyond any fixed tolerance, while a lowering bug is off by far more.
# Where torch's own float32 is off by more than MAX_FLOAT32_ROUNDING, rounding is
# not the story (a forward that changes its weights, or draws random numbers).
ROUNDING_FACTOR = 4.0
MAX_FLOAT32_ROUNDING = 1e-3


def _unless_float32_rounding(
    net: torch.nn.Module,
    x: torch.Tensor,
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    failed: list[str],
    output_index: int | None,
    report: dict,
) -> list[str]:
    """The `failed` keys that float32 rounding does not explain, measured against torch in float64.

    Where torch cannot run the model in float64 (a graph with a dtype fixed
    inside, say), nothing is explained and `failed` comes back whole.
    """
    try:
        net64 = copy.deepcopy(net)._apply(
            lambda t: t.double() if t.is_floating_point() else t.to(torch.complex128) if t.is_complex() else t
        )
        truth = dict(zip(arrays, torch_outputs_and_jacobians(net64, x.double(), output_index), strict=True))
    except Exception:  # torch raises many types for a model that cannot run in float64
        return failed
    if any(v.dtype != np.float64 for v in truth.values()):
        return failed
    still = []
    for key in failed:
        ours, theirs = (relative_error(a, truth[key])[1] for a in arrays[key])
        report[f"{key}_float64_reference"] = {"jaxjac_float32_rel_error": ours, "torch_float32_rel_error": theirs}
        if not (ours <= ROUNDING_FACTOR * theirs and theirs <= MAX_FLOAT32_ROUNDING):
            still.append(key)
    report["explained_by_float32_rounding"] = [key for key in failed if key not in still]
    return still


def format_report(report: dict) -> str:
    """One line summarising a conversion check."""
    verdict = "passed" if report["passed"] else "FAILED"
    return (
        f"conversion check {verdict} on {report['n_probes']} probes ({report['dtype']}): "
        f"outputs max rel error {report['outputs_max_rel_error']:.2e}, "
        f"Jacobians max rel error {report['jacobians_max_rel_error']:.2e} (rtol {report['rtol']:g})"
        + (
            f"; {report['probes_left_out']} probes left out, where torch is not finite"
            if "probes_left_out" in report
            else ""
        )
        + "".join(
            f"; {key} beyond rtol by float32 rounding alone: {ref['jaxjac_float32_rel_error']:.2e} from torch's "
            f"float64, torch's own float32 {ref['torch_float32_rel_error']:.2e}"
            for key in report.get("explained_by_float32_rounding", ())
            for ref in [report[f"{key}_float64_reference"]]
        )
    )
