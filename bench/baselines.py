"""The compared implementations: each turns a batch `(B, 1, 224)` into its Jacobians.

A baseline's `make(ctx)` returns `run(x)`, mapping a float32 numpy batch `x`
`(B, *sample_shape)` to a numpy array: `(B, K, *sample_shape)` for target
``"all"``, `(B, *sample_shape)` for ``"predicted"`` and ``"vjp"`` (the row
of class 0), `(B, K)` for ``"forward"``. Every `run` returns host (numpy)
arrays, so every baseline pays for the same transfers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Run = Callable[[np.ndarray], np.ndarray]


@dataclass
class Context:
    """What a baseline is built from: the torch net or the converted model, and the device."""

    device: str  # "cpu" or "gpu"
    net: Any = None  # torch.nn.Module in eval mode, on the device (torch baselines)
    model: Any = None  # jaxjac.ConvertedModel (jax baselines)
    n_outputs: int = 3


@dataclass(frozen=True)
class Baseline:
    """One compared implementation.

    `target` is the Jacobian it computes (``"all"``, ``"predicted"``) or a
    helper measurement (``"forward"``, ``"vjp"``); `per_sample` marks the
    seed's loop, timed on `--loop-n` samples only.
    """

    name: str
    backend: str  # "torch" or "jax"
    target: str
    make: Callable[[Context], Run]
    per_sample: bool = False


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


def _hand_written(forward: Callable[[Any], Any], ctx: Context, target: str) -> Run:
    """One batched forward with `requires_grad`, then one `autograd.grad` per output row."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        xt = _to_torch(ctx, x).requires_grad_(True)
        y = forward(xt)
        if target == "predicted":
            selected = y.gather(1, y.argmax(1, keepdim=True)).sum()
            return torch.autograd.grad(selected, xt)[0].cpu().numpy()
        k = y.shape[1]
        rows = [torch.autograd.grad(y[:, i].sum(), xt, retain_graph=i < k - 1)[0] for i in range(k)]
        return torch.stack(rows, dim=1).cpu().numpy()

    return run


def _torch_best(target: str) -> Callable[[Context], Run]:
    return lambda ctx: _hand_written(ctx.net, ctx, target)


def _torch_compiled(target: str) -> Callable[[Context], Run]:
    def make(ctx: Context) -> Run:
        import torch

        return _hand_written(torch.compile(ctx.net), ctx, target)

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


def _jaxjac_forward(ctx: Context) -> Run:
    return lambda x: np.asarray(ctx.model(x))


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in [
        Baseline("seed loop", "torch", "all", lambda ctx: _seed_loop(ctx), per_sample=True),
        Baseline("torch.func vmap(jacrev)", "torch", "all", _torch_func_vmap_jacrev),
        Baseline("torch best", "torch", "all", _torch_best("all")),
        Baseline("torch best + compile", "torch", "all", _torch_compiled("all")),
        Baseline("jaxjac vmap-jacrev", "jax", "all", _jaxjac("all", "vmap-jacrev")),
        Baseline("jaxjac batched-vjp", "jax", "all", _jaxjac("all", "batched-vjp")),
        Baseline("captum Saliency", "torch", "predicted", _saliency),
        Baseline("torch best (predicted)", "torch", "predicted", _torch_best("predicted")),
        Baseline("jaxjac vmap-jacrev (predicted)", "jax", "predicted", _jaxjac("predicted", "vmap-jacrev")),
        Baseline("jaxjac batched-vjp (predicted)", "jax", "predicted", _jaxjac("predicted", "batched-vjp")),
        Baseline("jaxjac forward", "jax", "forward", _jaxjac_forward),
        Baseline("jaxjac one VJP", "jax", "vjp", _jaxjac("vjp", "batched-vjp")),
    ]
}

# jaxjac's default method: the rate every ratio and target is computed from.
JAXJAC_ALL = "jaxjac vmap-jacrev"
JAXJAC_PREDICTED = "jaxjac vmap-jacrev (predicted)"
