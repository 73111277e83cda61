"""Runs the torch model and its conversion side by side on probe inputs.

The reference is the per-sample loop users start from:
`torch.autograd.functional.jacobian(net, X[i:i+1])` on each probe row.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import torch

from ._errors import ConversionCheckError, JaxjacError, first_line
from ._export import checkpoints_inlined, eval_mode
from ._graph_model import batched_forward
from ._half_floats import half_floats_computed
from ._jacobian import jacobian
from ._model import ConvertedModel
from ._module_state import before_forward, restore_all, state_kept
from ._torch_dtypes import in_dtype
from ._xla_options import jit
from .converters.branches import branch_sites

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 0.0
# A forward that computes in a half float (after `.half()`, inside
# `torch.autocast`) agrees with torch no better than that float's rounding:
# torch's half-float kernels round where their CPU or GPU decides (a float16
# backward differed from jaxjac's by 1.8 roundings on an AMD EPYC, by less
# than 0.2 on an Intel Xeon). The check's rtol is at least this many unit
# roundoffs of the narrowest half float computed in: 3.9e-3 for float16,
# 3.1e-2 for bfloat16. A lowering bug is off by the order of the values.
HALF_FLOAT_ROUNDINGS = 8


def output_of(net: torch.nn.Module, x: torch.Tensor, output_index: int | None) -> torch.Tensor:
    """The output of `net(x)` that a conversion with `output_index` keeps.

    The graph's outputs are the leaves of whatever forward returns (a tensor,
    a tuple, a dict), in torch's pytree order; this picks the same one.
    """
    # A clone: a forward that edits its input in place (`x.nan_to_num_()`, `x[mask] = 0`) would
    # change the probes, and autograd refuses in-place edits of the leaf it differentiates.
    before_forward(net)
    leaves = torch.utils._pytree.tree_leaves(net(x.clone()))
    return leaves[0 if output_index is None else output_index]


def torch_outputs_and_jacobians(
    net: torch.nn.Module, x: torch.Tensor, output_index: int | None = None, cotangents: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Torch's outputs `(N, K)` and per-sample Jacobians `(N, K, *sample_shape)`, one sample at a time.

    With `cotangents` `(R, K)`, the Jacobians are `cotangents @ J` instead,
    `(N, R, *sample_shape)`: R reverse passes per sample rather than K.

    A forward whose in-place op overwrites a tensor its own gradient needs
    (`std.add_(mu)` after `exp`, `x /= stdev` after a mean: MONAI's
    VarAutoEncoder, neuralforecast's iTransformer) is run again with
    torch's `allow_mutation_on_saved_tensors`, which saves a copy of such a
    tensor before the op overwrites it.
    """
    try:
        return _torch_outputs_and_jacobians(net, x, output_index, cotangents)
    except RuntimeError as error:
        if _OVERWRITES_A_SAVED_TENSOR not in str(error):
            raise
    with torch.autograd.graph.allow_mutation_on_saved_tensors():
        return _torch_outputs_and_jacobians(net, x, output_index, cotangents)


_OVERWRITES_A_SAVED_TENSOR = "modified by an inplace operation"


def _torch_outputs_and_jacobians(
    net: torch.nn.Module, x: torch.Tensor, output_index: int | None, cotangents: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:

    def forward(row: torch.Tensor) -> torch.Tensor:
        return output_of(net, row, output_index)

    outputs, jacobians = [], []
    with eval_mode(net, warn=False), checkpoints_inlined():  # `convert` has warned already, when it traced
        for i in range(x.shape[0]):
            row = x[i : i + 1]
            with torch.no_grad():
                outputs.append(forward(row).reshape(-1).numpy())
            if cotangents is None:
                jac = torch.autograd.functional.jacobian(forward, row)
            else:
                jac = _torch_vjps(forward, row, cotangents)
            jacobians.append(jac.reshape(-1, *row.shape[1:]).numpy())
    return np.stack(outputs), np.stack(jacobians)


def _torch_vjps(forward, row: torch.Tensor, cotangents: np.ndarray) -> torch.Tensor:  # noqa: ANN001
    """`cotangents @ J` `(R, *row.shape)` of `forward` at `row`, one reverse pass per cotangent."""
    row = row.detach().requires_grad_()
    out = forward(row).reshape(-1)
    rows = []
    for v in torch.as_tensor(cotangents, dtype=out.dtype):
        (grad,) = (
            torch.autograd.grad(out, row, v, retain_graph=True, allow_unused=True) if out.requires_grad else (None,)
        )
        rows.append(torch.zeros_like(row) if grad is None else grad)
    return torch.stack(rows).detach()


# Beyond MAX_CHECKED_ROWS outputs (a sequence-to-sequence TCN has 800), the
# check compares that many of the Jacobian's rows, spread evenly, and one random
# combination of them all, so that torch makes MAX_CHECKED_ROWS + 1 reverse
# passes per probe rather than K: a lowering bug shows in nearly every row, and
# a bug in a row left out shows in the combination.
MAX_CHECKED_ROWS = 64


def model_vjps(model: ConvertedModel, x: np.ndarray, cotangents: np.ndarray) -> np.ndarray:
    """`cotangents @ J` `(N, R, *sample_shape)` of `model` at each sample of `x` `(N, *sample_shape)`.

    R reverse passes per sample, where the whole Jacobian would take K: a
    float64 model with 1024 outputs holds tens of GB for 8 samples' Jacobians.
    """
    forward = batched_forward(model.graph, model.spec)

    def pulled_back(tensors: dict, x: jax.Array, cotangents: jax.Array) -> jax.Array:
        out, pullback = jax.vjp(lambda batch: forward(tensors, batch).reshape(len(batch), -1), x)
        return jax.vmap(lambda row: pullback(jnp.broadcast_to(row, out.shape).astype(out.dtype))[0])(cotangents)

    rows = jit(pulled_back)(model.tensors(), jnp.asarray(x, model.dtype), jnp.asarray(cotangents))
    return np.swapaxes(np.asarray(rows), 0, 1)


def checked_rows(n_outputs: int, seed: int = 0) -> np.ndarray | None:
    """The cotangents `(R, K)` whose products with the Jacobian the check compares; None for every row."""
    if n_outputs <= MAX_CHECKED_ROWS:
        return None
    picked = np.unique(np.linspace(0, n_outputs - 1, MAX_CHECKED_ROWS).round().astype(int))
    cotangents = np.zeros((len(picked) + 1, n_outputs))
    cotangents[np.arange(len(picked)), picked] = 1.0
    cotangents[-1] = np.random.default_rng(seed).standard_normal(n_outputs) / np.sqrt(n_outputs)
    return cotangents


def relative_error(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """`(max |actual - expected|, that divided by max |expected|)`."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    abs_err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    return abs_err, abs_err / scale if scale > 0 else abs_err


def _why_torch_failed(error: RuntimeError) -> str:
    """What to do when torch itself cannot compute the check's reference."""
    if _OVERWRITES_A_SAVED_TENSOR in str(error):
        # jaxjac's graph is functional: the in-place op is an ordinary one there.
        return (
            "torch's autograd cannot differentiate this forward, even saving copies of the tensors its in-place "
            "ops overwrite, so there is no torch reference to check against; make that op out of place, or "
            "convert unchecked (check=False, --no-check): jaxjac computes it out of place"
        )
    if re.search(r"dtype|scalar type|Float|Double|Half", str(error)):
        return "If forward (or an exported .pt2 graph) fixes a dtype inside, convert in that dtype"
    return (
        "The check needs torch to run the model on its probe inputs: pass inputs it takes (check_data, "
        "--check-data), or convert unchecked (check=False, --no-check)"
    )


def _without_torch_hint(line: str) -> str:
    # torch's own advice (anomaly detection) is for debugging a training step, not this.
    return line.split(" Hint: ")[0].rstrip(".")


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
    cotangents = checked_rows(math.prod(model.output_shape))
    try:
        expected_out, expected_jac = torch_outputs_and_jacobians(net, x, output_index, cotangents)
    except RuntimeError as error:  # torch's own failures, such as a dtype fixed inside the graph
        raise JaxjacError(
            f"torch could not run the model on the check's {model.dtype} probe inputs: "
            f"{_without_torch_hint(first_line(error))}. {_why_torch_failed(error)}"
        ) from error
    half_floats = sorted(half_floats_computed(model, x.numpy()[:1]), key=lambda d: -jnp.finfo(d).eps)
    if half_floats:
        rtol = max(rtol, HALF_FLOAT_ROUNDINGS * float(jnp.finfo(half_floats[0]).eps) / 2)
    actual_out = np.asarray(model(x.numpy())).reshape(len(x), -1)
    if cotangents is None:
        actual_jac = jacobian(model, x.numpy(), batch_size=len(x))
    else:
        actual_jac = model_vjps(model, x.numpy(), cotangents)
    # Probes where torch itself is not finite (log of a negative, say) test nothing: left out.
    finite = np.isfinite(expected_out.reshape(len(x), -1)).all(1) & np.isfinite(expected_jac.reshape(len(x), -1)).all(1)
    if len(x) and not finite.any():
        raise JaxjacError(
            f"the torch model's outputs or Jacobians are not finite on any of the {len(x)} probe inputs, so "
            "the conversion cannot be checked; pass check_data (--check-data) with real samples"
        )
    report: dict = {"n_probes": int(finite.sum()), "dtype": str(model.dtype), "rtol": rtol, "atol": atol}
    if half_floats:
        report["computes_in"] = [str(d) for d in half_floats]
    if cotangents is not None:
        report["jacobian_rows_checked"] = (
            f"{len(cotangents) - 1} of {cotangents.shape[1]} rows and a random combination of all"
        )
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
    _refuse_probes_off_the_traced_branches(model, actual_out, finite, report)
    if failed and np.dtype(model.dtype) == np.float32:
        failed = _unless_explained_in_float64(
            net, x[torch.as_tensor(finite)], arrays, failed, output_index, cotangents, rtol, atol, report
        )
    failed = [
        f"{key}: max relative error {report[f'{key}_max_rel_error']:.3g} (absolute {report[f'{key}_max_abs_error']:.3g})"
        + _float64_note(report.get(f"{key}_float64_reference"), report["n_probes"])
        for key in failed
    ]
    report["passed"] = not failed
    if failed:
        spread = _torch_self_disagreement(net, x[torch.as_tensor(finite)], expected_out[finite], output_index)
        if spread is not None:
            report["torch_batch_vs_single_rel_error"] = spread
        message = (
            f"the converted model disagrees with torch beyond rtol={rtol:g}, atol={atol:g} on "
            f"{report['n_probes']} probe inputs: {'; '.join(failed)}. "
        )
        if spread is not None and spread > rtol:
            raise ConversionCheckError(
                message + f"But torch disagrees with itself by {spread:.3g} (relative) on these probes' outputs, "
                "run in one batch against one at a time, so it is no reference at this tolerance: its forward changes "
                "from call to call (it rescales its own weights, say) or mixes the samples of a batch, or the model "
                "is ill-conditioned at these inputs (untrained or exploding weights?). Check on real samples "
                "(check_data, --check-data), or raise --rtol/--atol",
                report,
            )
        raise ConversionCheckError(
            message + "Unless forward computes in float64 without 64-bit JAX, has a hand-written autograd "
            "backward (see the warnings) or computes on random numbers, this is a lowering bug: please report "
            "it; raise --rtol/--atol only if the difference is expected",
            report,
        )
    return report


def _refuse_probes_off_the_traced_branches(
    model: ConvertedModel, actual_out: np.ndarray, finite: np.ndarray, report: dict
) -> None:
    """Raise when probes take other branches on the data than the example did (`converters.branches`): NaN for them."""
    sites = branch_sites(model.graph.nodes)
    off = finite & ~np.isfinite(actual_out).all(1)
    if not (sites and off.any()):
        return
    report["passed"] = False
    report["probes_off_the_traced_branches"] = int(off.sum())
    raise ConversionCheckError(
        f"{int(off.sum())} of {len(off)} probe inputs take other branches than the example input the model was "
        f"traced on, where forward branches on the input's values (at {', '.join(sites)}); jaxjac gives NaN for "
        "them, as for any such sample. If your data takes one way there, convert with an example of it (the first "
        "row of example_input, or of --check-data, with real samples); otherwise that branch cannot be converted "
        "for every sample at once",
        report,
    )


def _torch_self_disagreement(
    net: torch.nn.Module, x: torch.Tensor, per_sample_out: np.ndarray, output_index: int | None
) -> float | None:
    """How far torch's outputs for `x` run as one batch are from its one-at-a-time `per_sample_out`, relative.

    In a well-conditioned model the two differ by rounding. `None` where
    torch cannot run the batch (a forward that takes one sample only, say).
    """
    try:
        with eval_mode(net, warn=False), torch.no_grad():
            batched = output_of(net, x, output_index).reshape(len(x), -1).numpy()
    except Exception:  # torch raises many types for a forward that takes no batch
        return None
    if batched.shape != per_sample_out.shape:
        return None
    return relative_error(batched, per_sample_out)[1]


# A float32 conversion that misses the tolerance against torch's float32 is
# judged again against torch in float64, probe by probe. Two things make
# correct float32 results miss: rounding, which deep or wide models sum beyond
# any fixed tolerance (braindecode's EEGInceptionMI, 8.9M parameters), and
# kinks, a ReLU input or a max tie within rounding of flipping, which change
# one probe's rows in either torch's float32 or jaxjac's (tsai's InceptionTime,
# braindecode's ContraWR). A probe passes within the tolerance, or within
# ROUNDING_FACTOR times torch's own typical (median) float32 error; at most
# KINK_FRACTION of the probes may miss, since a lowering bug shows in nearly all.
# A model dense in kinks (torch_ecg's Xception: torch's own float32 missed 3 of
# 8 probes) lets jaxjac miss as many more as torch's float32 missed, but only
# while that is at most half the probes: kinks are where rounding decides, and
# a torch float32 that misses most probes is off for another reason (a forward
# that rescales its own weights on each call, say), which excuses nothing.
# The float64 look takes torch's float64 as the truth only where it agrees
# with itself, run in one batch against one at a time, to FLOAT64_SELF_AGREEMENT
# (relative; 1e-16 to 1e-13 in the models swept): a forward that rescales its
# weights on each call, or one that rounding blows up, has no truth to judge by.
FLOAT64_SELF_AGREEMENT = 1e-8
ROUNDING_FACTOR = 4.0
KINK_FRACTION = 0.25


def _unless_explained_in_float64(
    net: torch.nn.Module,
    x: torch.Tensor,
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    failed: list[str],
    output_index: int | None,
    cotangents: np.ndarray | None,
    rtol: float,
    atol: float,
    report: dict,
) -> list[str]:
    """The `failed` keys that float32 rounding and kinks do not explain, measured against torch in float64.

    Where torch cannot run the model in float64 (a graph with a dtype fixed
    inside, say), nothing is explained and `failed` comes back whole.
    """
    try:
        restore_all()  # a copy of a model whose forward changes its state starts where the check's runs did
        # Its own block: a model that cannot be copied is cast in place, its buffers replaced.
        with in_dtype(net, torch.float64) as net64, state_kept():
            truth = dict(
                zip(arrays, torch_outputs_and_jacobians(net64, x.double(), output_index, cotangents), strict=True)
            )
            spread = _torch_self_disagreement(net64, x.double(), truth["outputs"], output_index)
    except Exception:  # torch raises many types for a model that cannot run in float64
        return failed
    if any(v.dtype != np.float64 for v in truth.values()):
        return failed
    if spread is not None:
        report["torch_float64_batch_vs_single_rel_error"] = spread
        if spread > FLOAT64_SELF_AGREEMENT:  # no truth to judge rounding against
            return failed
    verdicts = {key: float64_verdict(*arrays[key], truth[key], rtol, atol) for key in failed}
    for key, verdict in verdicts.items():
        report[f"{key}_float64_reference"] = verdict
    report["explained_in_float64"] = [key for key, verdict in verdicts.items() if verdict["explained"]]
    return [key for key, verdict in verdicts.items() if not verdict["explained"]]


def float64_verdict(ours: np.ndarray, theirs: np.ndarray, truth: np.ndarray, rtol: float, atol: float) -> dict:
    """Whether float32 rounding and kinks explain how jaxjac's float32 `ours` differs from torch's float32 `theirs`.

    **Arguments:** `ours`, `theirs` and torch's float64 `truth`, all
    `(P, ...)` for P probes; the check's `rtol` and `atol`.

    **Returns:** a JSON-serialisable dict: the tolerance each probe is held
    to (`rtol`, or `ROUNDING_FACTOR` times torch's median float32 error if
    larger), how many probes jaxjac's and torch's float32 missed it by, both
    float32 errors, and `explained`: jaxjac missed at most `KINK_FRACTION` of
    the probes, plus as many as torch's float32 missed where that is at most half.
    """
    scale = float(np.max(np.abs(truth))) if truth.size else 0.0
    ours_err, theirs_err = _per_probe_error(ours, truth, scale), _per_probe_error(theirs, truth, scale)
    tolerance = max(rtol, ROUNDING_FACTOR * float(np.median(theirs_err))) if len(truth) else rtol
    missed = int(np.sum(~(ours_err * scale <= atol + tolerance * scale)))
    torch_missed = int(np.sum(~(theirs_err * scale <= atol + tolerance * scale)))
    allowed = int(KINK_FRACTION * len(truth)) + (torch_missed if 2 * torch_missed <= len(truth) else 0)
    return {
        "jaxjac_float32_max_rel_error": float(np.max(ours_err, initial=0.0)),
        "torch_float32_max_rel_error": float(np.max(theirs_err, initial=0.0)),
        "tolerance": tolerance,
        "probes_missed": missed,
        "torch_float32_probes_missed": torch_missed,
        "explained": missed <= allowed,
    }


def _float64_note(verdict: dict | None, n_probes: int) -> str:
    if verdict is None:
        return ""
    return f", and against torch in float64 {verdict['probes_missed']} of {n_probes} probes miss {verdict['tolerance']:.2g}"


def _per_probe_error(actual: np.ndarray, expected: np.ndarray, scale: float) -> np.ndarray:
    """Each probe's max |actual - expected| over `scale`: `(P,)`; NaN where `expected` is finite counts as inf."""
    diff = np.abs(np.asarray(actual, np.float64) - expected).reshape(len(expected), -1)
    diff = np.where(np.isnan(diff), np.inf, diff)
    worst = diff.max(axis=1) if diff.size else np.zeros(len(expected))
    return worst / scale if scale > 0 else worst


def format_report(report: dict) -> str:
    """One line summarising a conversion check."""
    verdict = "passed" if report["passed"] else "FAILED"
    return (
        f"conversion check {verdict} on {report['n_probes']} probes ({report['dtype']}): "
        f"outputs max rel error {report['outputs_max_rel_error']:.2e}, "
        f"Jacobians max rel error {report['jacobians_max_rel_error']:.2e}"
        + (f" on {report['jacobian_rows_checked']}" if "jacobian_rows_checked" in report else "")
        + f" (rtol {report['rtol']:g}"
        + (f", for a forward computing in {' and '.join(report['computes_in'])}" if "computes_in" in report else "")
        + ")"
        + (
            f"; {report['probes_left_out']} probes left out, where torch is not finite"
            if "probes_left_out" in report
            else ""
        )
        + "".join(
            f"; {key} beyond rtol against torch's float32, but against torch in float64 within "
            f"{ref['tolerance']:.2g} on all but {ref['probes_missed']} of {report['n_probes']} probes (float32 "
            f"rounding and kinks; torch's own float32 is off by up to {ref['torch_float32_max_rel_error']:.2e})"
            for key in report.get("explained_in_float64", ())
            for ref in [report[f"{key}_float64_reference"]]
        )
    )
