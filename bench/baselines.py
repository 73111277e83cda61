"""The compared implementations: each turns a batch `(B, 1, 224)` into its Jacobians.

A baseline's `make(ctx)` returns `run(x)`, mapping a float32 numpy batch `x`
`(B, *sample_shape)` to a numpy array: `(B, K, *sample_shape)` for target
``"all"``, `(B, *sample_shape)` for ``"predicted"`` and ``"vjp"`` (the row
of class 0), `(B, K)` for ``"forward"``. Every `run` returns host (numpy)
arrays, so every baseline pays for the same transfers.

Two other modes (`Baseline.mode`) say how the worker calls `run`:

- ``"stream"``: `run` gets the whole dataset at once and returns all its
  rows, as a user calls `jaxjac.jacobian(model, X)`; the library streams it in
  batches of its own default size, overlapping transfers with compute.
- ``"resident"`` (GPU only): the inputs are put on the device before the
  clock starts, and `run` maps a device batch to a device result, so the rate
  is the computation alone, without host transfers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Run = Callable[[np.ndarray], np.ndarray]


@dataclass
class Context:
    """What a baseline is built from: the torch net or the converted model, and the device."""

    device: str  # "cpu" or "gpu"
    batch_size: int = 256
    net: Any = None  # torch.nn.Module in eval mode, on the device (torch baselines)
    model: Any = None  # jaxjac.ConvertedModel (jax baselines)
    n_outputs: int = 3


@dataclass(frozen=True)
class Baseline:
    """One compared implementation.

    `target` is the Jacobian it computes (``"all"``, ``"predicted"``) or a
    helper measurement (``"forward"``, ``"vjp"``); `per_sample` marks the
    seed's loop, timed on `--loop-n` samples only; `mode` is ``"batch"``,
    ``"stream"`` or ``"resident"`` (module docstring); `devices` where it runs.
    `batch_size_of` names an earlier baseline at whose fastest batch size
    alone this one is timed (torch.compile compiles anew for each size, which
    takes minutes on a few cores).
    """

    name: str
    backend: str  # "torch" or "jax"
    target: str
    make: Callable[[Context], Run]
    per_sample: bool = False
    mode: str = "batch"
    devices: tuple[str, ...] = ("cpu", "gpu")
    batch_size_of: str | None = None


def _torch_device(ctx: Context) -> Any:
    import torch

    return torch.device("cuda" if ctx.device == "gpu" else "cpu")


def _to_torch(ctx: Context, x: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(x).to(_torch_device(ctx))


def _seed_loop(ctx: Context) -> Run:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        xt = _to_torch(ctx, x)
        rows = [torch.autograd.functional.jacobian(ctx.net.forward, xt[i : i + 1])[0, :, 0] for i in range(len(x))]
        return torch.stack(rows).cpu().numpy()

    return run


def _torch_func_vmap_jacrev(ctx: Context) -> Run:
    import torch

    def f(xs: Any) -> Any:
        return ctx.net(xs.unsqueeze(0)).squeeze(0)

    jac = torch.func.vmap(torch.func.jacrev(f))

    def run(x: np.ndarray) -> np.ndarray:
        return jac(_to_torch(ctx, x)).detach().cpu().numpy()

    return run


def _hand_written(forward: Callable[[Any], Any], target: str) -> Callable[[Any], Any]:
    """One batched forward with `requires_grad`, then one `autograd.grad` per output row: tensor to tensor."""
    import torch

    def grads(xt: Any) -> Any:
        xt = xt.detach().requires_grad_(True)
        y = forward(xt)
        if target == "predicted":
            selected = y.gather(1, y.argmax(1, keepdim=True)).sum()
            return torch.autograd.grad(selected, xt)[0]
        k = y.shape[1]
        rows = [torch.autograd.grad(y[:, i].sum(), xt, retain_graph=i < k - 1)[0] for i in range(k)]
        return torch.stack(rows, dim=1)

    return grads


def _on_host(ctx: Context, grads: Callable[[Any], Any]) -> Run:
    return lambda x: grads(_to_torch(ctx, x)).cpu().numpy()


def _torch_best(target: str) -> Callable[[Context], Run]:
    return lambda ctx: _on_host(ctx, _hand_written(ctx.net, target))


def _torch_compiled(target: str) -> Callable[[Context], Run]:
    def make(ctx: Context) -> Run:
        import torch

        # Static shapes: one compilation per batch size, as a single-size run would make. After a
        # second size, dynamo would otherwise switch to dynamic shapes, whose compiled backward
        # donates buffers and so refuses the `retain_graph=True` of one gradient per class.
        return _on_host(ctx, _hand_written(torch.compile(ctx.net, dynamic=False), target))

    return make


def _saliency(ctx: Context) -> Run:
    """captum's Saliency (abs=False) on each sample's predicted class, as a captum user calls it."""
    import torch

    try:
        from captum.attr import Saliency

        attribute = Saliency(ctx.net).attribute
        note = ""
    except ImportError:  # the same computation captum performs: gradient of the selected logit

        def attribute(xt: Any, target: Any, abs: bool) -> Any:
            xt = xt.clone().requires_grad_(True)
            return torch.autograd.grad(ctx.net(xt).gather(1, target[:, None]).sum(), xt)[0]

        note = "captum not installed: the equivalent torch code (forward, argmax, forward+backward)"

    def run(x: np.ndarray) -> np.ndarray:
        xt = _to_torch(ctx, x)
        with torch.no_grad():
            predicted = ctx.net(xt).argmax(1)
        return attribute(xt.requires_grad_(True), target=predicted, abs=False).detach().cpu().numpy()

    run.note = note  # type: ignore[attr-defined]
    return run


def _jaxjac(target: str, method: str, precision: str = "float32") -> Callable[[Context], Run]:
    def make(ctx: Context) -> Run:
        import jaxjac

        fn = jaxjac.jacobian_fn(ctx.model, target=0 if target == "vjp" else target, method=method, precision=precision)
        return lambda x: np.asarray(fn(x))

    return make


def _torch_best_pinned(ctx: Context) -> Run:
    """torch best with page-locked host buffers, allocated once, for both copies: what a CUDA expert writes."""
    import torch

    grads, buffers = _hand_written(ctx.net, "all"), {}

    def pinned(key: str, like: Any) -> Any:
        if key not in buffers or buffers[key].shape != like.shape:
            buffers[key] = torch.empty(like.shape, dtype=like.dtype, pin_memory=True)
        return buffers[key]

    def run(x: np.ndarray) -> np.ndarray:
        host_x = torch.from_numpy(x)
        staged = pinned("x", host_x).copy_(host_x)
        y = grads(staged.to("cuda", non_blocking=True))
        return pinned("y", y).copy_(y).numpy()  # the caller copies the rows out before the next call

    return run


def _jaxjac_pinned(ctx: Context) -> Run:
    """jaxjac's default method, its result moved to page-locked host memory before the host copy."""
    import jax

    import jaxjac

    fn = jaxjac.jacobian_fn(ctx.model)
    host = jax.sharding.SingleDeviceSharding(jax.local_devices()[0], memory_kind="pinned_host")
    return lambda x: np.asarray(jax.device_put(fn(x), host))


def _jaxjac_on_device(ctx: Context) -> Callable[[Any], Any]:
    """jaxjac's default method, device batch to device result."""
    import jaxjac

    return jaxjac.jacobian_fn(ctx.model)


def _jaxjac_streamed(target: str) -> Callable[[Context], Run]:
    def make(ctx: Context) -> Run:
        import jaxjac

        return lambda x: jaxjac.jacobian(ctx.model, x, target=target)  # the library's own batch size

    return make


def _jaxjac_streamed_via_device_memory(ctx: Context) -> Run:
    """`jaxjac.jacobian` with its results left in device memory and copied out (its default off GPUs)."""
    import jaxjac
    from jaxjac import _run

    def run(x: np.ndarray) -> np.ndarray:
        previous = os.environ.get(_run._OUTPUT_MEMORY_ENV)
        os.environ[_run._OUTPUT_MEMORY_ENV] = "device"
        try:
            return jaxjac.jacobian(ctx.model, x)
        finally:
            os.environ.pop(_run._OUTPUT_MEMORY_ENV)
            if previous is not None:
                os.environ[_run._OUTPUT_MEMORY_ENV] = previous

    return run


def _jaxjac_forward(ctx: Context) -> Run:
    return lambda x: np.asarray(ctx.model(x))


JAXJAC_ON_DEVICE = "jaxjac vmap-jacrev (on device)"

BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in [
        Baseline("seed loop", "torch", "all", lambda ctx: _seed_loop(ctx), per_sample=True),
        Baseline("torch.func vmap(jacrev)", "torch", "all", _torch_func_vmap_jacrev),
        Baseline("torch best", "torch", "all", _torch_best("all")),
        Baseline("torch best + compile", "torch", "all", _torch_compiled("all"), batch_size_of="torch best"),
        Baseline("jaxjac vmap-jacrev", "jax", "all", _jaxjac("all", "vmap-jacrev")),
        Baseline("jaxjac batched-vjp", "jax", "all", _jaxjac("all", "batched-vjp")),
        Baseline("captum Saliency", "torch", "predicted", _saliency),
        Baseline("torch best (predicted)", "torch", "predicted", _torch_best("predicted")),
        Baseline("jaxjac vmap-jacrev (predicted)", "jax", "predicted", _jaxjac("predicted", "vmap-jacrev")),
        Baseline("jaxjac batched-vjp (predicted)", "jax", "predicted", _jaxjac("predicted", "batched-vjp")),
        Baseline("jaxjac.jacobian (streamed)", "jax", "all", _jaxjac_streamed("all"), mode="stream"),
        Baseline(
            "jaxjac.jacobian predicted (streamed)", "jax", "predicted", _jaxjac_streamed("predicted"), mode="stream"
        ),
        Baseline(
            "jaxjac.jacobian (streamed via device memory)",
            "jax",
            "all",
            _jaxjac_streamed_via_device_memory,
            mode="stream",
            devices=("gpu",),
        ),
        Baseline("torch best (pinned host)", "torch", "all", _torch_best_pinned, devices=("gpu",)),
        Baseline("jaxjac vmap-jacrev (pinned host)", "jax", "all", _jaxjac_pinned, devices=("gpu",)),
        Baseline(
            "torch best (on device)",
            "torch",
            "all",
            lambda ctx: _hand_written(ctx.net, "all"),
            mode="resident",
            devices=("gpu",),
        ),
        Baseline(
            JAXJAC_ON_DEVICE,
            "jax",
            "all",
            _jaxjac_on_device,
            mode="resident",
            devices=("gpu",),
        ),
        Baseline("jaxjac forward", "jax", "forward", _jaxjac_forward),
        Baseline("jaxjac one VJP", "jax", "vjp", _jaxjac("vjp", "batched-vjp")),
    ]
}

# jaxjac's default method: the rate every ratio and target is computed from.
JAXJAC_ALL = "jaxjac vmap-jacrev"
JAXJAC_PREDICTED = "jaxjac vmap-jacrev (predicted)"
# What a user runs on a whole dataset: the rate the targets count.
JAXJAC_STREAMED = "jaxjac.jacobian (streamed)"
JAXJAC_STREAMED_PREDICTED = "jaxjac.jacobian predicted (streamed)"
