"""Measure jaxjac's CPU forms of thin 1D convolutions against XLA's own convolution.

`converters/conv.py` runs a channels-last 1D convolution with few channels
in a tiled form with fatter channels (`tiled_conv1d`, tile from `conv_tile`),
one on 1-4 input channels with many outputs as one product over its patches
(`patches_conv1d`, chosen by `use_patches`), and every other one as one
`lax.conv_general_dilated`. This probe times the forms in one process over
`--repeats` rounds, running the forms of a layer or model back to back in
random order, so that machine load (2 shared cores) affects them alike. It
prints the best times and, for the models, the median over rounds of the
paired ratio, the steadier figure under fluctuating load:

- per layer, every convolution shape of the benchmark models (plus a few
  others) in all three forms: the forward pass on 256 samples plus the
  input gradient (VJP) on 768 cotangents, which is what one batch of
  `vmap(jacrev)` with 3 outputs asks of a layer;
- per model, the full per-sample Jacobian (`jaxjac.jacobian_fn`, target
  all) at batch 256, with XLA's convolution everywhere ("xla") and with
  the rules' choices ("jaxjac").

Run: `python -m bench.conv_probe` (about 2 minutes on 2 cores), or
`python -m bench.conv_probe --models inceptiontime --no-layers`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxjac
from jaxjac.converters import conv

# name: (C_in, C_out, kernel, length, padding, stride); the benchmark models' layers first.
LAYERS: dict[str, tuple[int, int, int, int, int, int]] = {
    "seed-cnn 1->8 k7": (1, 8, 7, 224, 3, 1),
    "seed-cnn 8->16 k5": (8, 16, 5, 112, 2, 1),
    "seed-cnn 16->16 k3": (16, 16, 3, 56, 1, 1),
    "resnet1d stem 1->16 k7 s2": (1, 16, 7, 224, 3, 2),
    "resnet1d 16->16 k3": (16, 16, 3, 56, 1, 1),
    "inceptiontime 1->8 k1": (1, 8, 1, 224, 0, 1),
    "inceptiontime 32->8 k1": (32, 8, 1, 224, 0, 1),
    "inceptiontime 8->8 k9": (8, 8, 9, 224, 4, 1),
    "inceptiontime 8->8 k19": (8, 8, 19, 224, 9, 1),
    "inceptiontime 8->8 k39": (8, 8, 39, 224, 19, 1),
    "wide-cnn 1->64 k7": (1, 64, 7, 224, 3, 1),
    "wide-cnn 64->128 k5": (64, 128, 5, 112, 2, 1),
    "other 8->64 k3": (8, 64, 3, 112, 1, 1),
    "other 2->32 k7": (2, 32, 7, 224, 3, 1),
    "other 8->8 k5 s2": (8, 8, 5, 224, 2, 2),
    "other 1->8 k63": (1, 8, 63, 224, 31, 1),
    "ECG stem 1->64 k15 s2": (1, 64, 15, 224, 7, 2),
    "other 4->64 k7": (4, 64, 7, 224, 3, 1),
    "other 1->128 k3": (1, 128, 3, 224, 1, 1),
}


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _interleaved(fns: dict, repeats: int) -> dict:
    """The times of every function `fns[(name, variant)]` over `repeats` rounds.

    Each round visits the names in a fresh random order and runs a name's
    variants back to back, also in random order, so that the variants of one
    name run close in time, under similar machine load, and none always first.
    """
    rng = np.random.default_rng(0)
    names = list(dict.fromkeys(name for name, _ in fns))
    variants = {name: [key for key in fns if key[0] == name] for name in names}
    times: dict = {key: [] for key in fns}
    for _ in range(repeats):
        for i in rng.permutation(len(names)):
            keys = variants[names[i]]
            for j in rng.permutation(len(keys)):
                start = time.perf_counter()
                fns[keys[j]]()
                times[keys[j]].append(time.perf_counter() - start)
    return times


def _paired_ratio(slow: list[float], fast: list[float]) -> float:
    """The median over rounds of `slow / fast`: each round's pair ran close in time, under similar load."""
    return float(np.median(np.asarray(slow) / np.asarray(fast)))


def _layer_fns(spec: tuple[int, ...], form: str | int, rng: np.random.Generator) -> Callable[[], None]:
    """Forward on 256 samples then input VJP on 768 cotangents, channels-last.

    `form` is ``"xla"`` (XLA's own convolution), ``"patches"`` (the product
    over patches) or a tile size for the tiled form.
    """
    c_in, c_out, kernel, length, pad, stride = spec

    def f(x: jax.Array, w: jax.Array) -> jax.Array:
        if form == "xla":
            numbers = ("NHC", "OIH", "NHC")
            return lax.conv_general_dilated(x, w, (stride,), [(pad, pad)], dimension_numbers=numbers)
        if form == "patches":
            return conv.patches_conv1d(x, w, stride=stride, padding=(pad, pad), dilation=1)
        return conv.tiled_conv1d(x, w, stride=stride, padding=(pad, pad), dilation=1, tile=form)

    w = jnp.asarray(rng.standard_normal((c_out, c_in, kernel)) / np.sqrt(c_in * kernel), jnp.float32)
    x = jnp.asarray(rng.standard_normal((256, length, c_in)), jnp.float32)
    x3 = jnp.asarray(rng.standard_normal((768, length, c_in)), jnp.float32)
    ct = jnp.asarray(rng.standard_normal((768, (length + 2 * pad - kernel) // stride + 1, c_out)), jnp.float32)
    forward = jax.jit(f)
    backward = jax.jit(lambda x, w, ct: jax.vjp(lambda x: f(x, w), x)[1](ct)[0])

    def run() -> None:
        forward(x, w).block_until_ready()
        backward(x3, w, ct).block_until_ready()

    run()
    return run


def layers(repeats: int) -> None:
    rng = np.random.default_rng(0)
    fns, rule = {}, {}
    for name, spec in LAYERS.items():
        c_in, c_out, kernel, length, pad, stride = spec
        tile = conv.conv_tile(c_in, c_out, kernel, length + 2 * pad, stride, 1)
        rule[name] = f"tiled, {tile}" if tile else "patches" if conv.use_patches(c_in, kernel) else "XLA"
        # Every layer in every form (tile 4 where the rule gives none), to show why the rule chooses.
        for form in ("xla", "patches", tile or 4):
            fns[(name, "tiled" if isinstance(form, int) else form)] = _layer_fns(spec, form, rng)
    times = _interleaved(fns, repeats)
    print(f"\n## Layers: forward (256) + input VJP (768), ms, best of {repeats}; load average {_load()}\n")
    print(
        "| layer | rule's form | XLA conv ms | tiled ms | patches ms | XLA / tiled | XLA / patches |\n"
        "|---|---|--:|--:|--:|--:|--:|"
    )
    for name in LAYERS:
        xla, tiled, patches = (min(times[(name, form)]) * 1e3 for form in ("xla", "tiled", "patches"))
        print(
            f"| {name} | {rule[name]} | {xla:.2f} | {tiled:.2f} | {patches:.2f} | {xla / tiled:.2f} | {xla / patches:.2f} |"
        )


@contextlib.contextmanager
def _xla_only() -> Iterator[None]:
    """Every convolution traced inside the block uses XLA's form."""
    with (
        mock.patch.object(conv, "conv_tile", lambda *args: None),
        mock.patch.object(conv, "use_patches", lambda *args: False),
    ):
        yield


def models(names: list[str], repeats: int, batch: int = 256) -> None:
    import torch

    from jaxjac._formulations import batch_jacobian_core

    from .models import build

    x = np.random.default_rng(0).standard_normal((batch, 1, 224)).astype(np.float32)
    fns, worst = {}, {}
    for name in names:
        model = jaxjac.convert(build(name), torch.zeros(1, 1, 224))
        core, tensors = batch_jacobian_core(model)
        results = {}
        for variant, ctx in (("xla", _xla_only), ("jaxjac", contextlib.nullcontext)):
            fn = jax.jit(lambda t, x, core=core: core(t, x, None))  # a fresh function: a fresh trace
            with ctx():
                results[variant] = np.asarray(fn(tensors, x))
            fns[(name, variant)] = lambda fn=fn, t=tensors: fn(t, x).block_until_ready()
        ref = results["xla"]
        worst[name] = float(np.max(np.abs(results["jaxjac"] - ref)) / np.max(np.abs(ref)))
    times = _interleaved(fns, repeats)
    print(f"\n## Models: full Jacobian, batch {batch}, samples/s, best of {repeats}; load average {_load()}\n")
    print(
        "| model | XLA conv | jaxjac's forms | speed-up (best) | speed-up (median of paired rounds) | max rel. difference |\n"
        "|---|--:|--:|--:|--:|--:|"
    )
    for name in names:
        slow, fast = times[(name, "xla")], times[(name, "jaxjac")]
        xla, ours = batch / min(slow), batch / min(fast)
        paired = _paired_ratio(slow, fast)
        print(f"| {name} | {xla:,.0f} | {ours:,.0f} | {ours / xla:.2f} | {paired:.2f} | {worst[name]:.1e} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.conv_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="seed-cnn,resnet1d,inceptiontime,wide-cnn", help="'' to skip")
    p.add_argument("--repeats", type=int, default=21, help="interleaved rounds")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    args = p.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; load average {_load()}")
    if not args.no_layers:
        layers(args.repeats)
    names = [s for s in args.models.split(",") if s]
    if names:
        models(names, args.repeats)


if __name__ == "__main__":
    main()
