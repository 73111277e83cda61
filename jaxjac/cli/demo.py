"""`jaxjac demo`: the whole workflow on the bundled example, checked against torch."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ._common import require_new_file

DESCRIPTION = """\
Run jaxjac end to end on the bundled example: a small trained torch 1D CNN
(spectra (1, 224) -> 3 classes) and 300 synthetic spectra whose classes differ
at a few planted bands.

The demo converts the model (printing the conversion check), computes the
per-sample Jacobians of every spectrum with jaxjac.jacobian, computes the same
Jacobians with torch autograd, and prints their agreement, shapes and timings.
It then ranks the bands by mean |dlogit/dx| per class and compares them with
the planted bands.

Then it runs the importance pipeline (`jaxjac importance` / jaxjac.importance)
on the same data: the bands ranked per class with bootstrap confidence, the
deletion curve (accuracy as the top bands are replaced by the mean spectrum)
against random rankings, and the model-randomisation check. It writes the
report and its plots (PNG and SVG) to --out (default ./jaxjac-demo).

Exits 1 if jaxjac and torch disagree beyond --rtol.
"""

EPILOG = """\
examples:
  jaxjac demo                       # writes ./jaxjac-demo/{importance.json, importance*.png|svg, J.npy, ...}
  jaxjac demo --out demo_out --force
  jaxjac demo --method batched-vjp --top 3

In your own code the same steps read:
  model = jaxjac.convert(net, X[:1])
  J = jaxjac.jacobian(model, X)     # J[i] == torch.autograd.functional.jacobian(net, X[i:i+1])[0, :, 0]
  report = jaxjac.importance(model, X, labels=y); report.save("importance.json"); report.plot("importance.png")
"""

# A top band counts as finding a planted peak when it lies this close to its centre
# (the peaks have a standard deviation of 2.5 bands).
BAND_TOLERANCE = 4


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `demo` subparser."""
    parser = subparsers.add_parser(
        "demo",
        help="run the bundled example end to end and compare with torch",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("jaxjac-demo"),
        metavar="DIR",
        help="write the report, plots, J.npy and the converted model here (default ./jaxjac-demo)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite files that already exist in --out")
    parser.add_argument(
        "--method",
        choices=("vmap-jacrev", "batched-vjp"),
        default="vmap-jacrev",
        help="the Jacobian formulation (default vmap-jacrev; both give the same numbers)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=100, metavar="B", help="samples per compiled call (default 100)"
    )
    parser.add_argument("--top", type=int, default=5, metavar="K", help="bands to list per class (default 5)")
    parser.add_argument("--rtol", type=float, default=1e-4, help="agreement needed with torch (default 1e-4)")
    return parser


def torch_jacobians(net, X: np.ndarray) -> np.ndarray:
    """Torch's per-sample Jacobians `(N, K, 1, L)` of the logits, for a batch `X` `(N, 1, L)`.

    In eval mode a sample's logits depend on that sample alone, so the gradient
    of `logits[:, k].sum()` with respect to the batch holds every sample's row
    `k`: one forward and K backward passes replace N per-sample jacobian calls.
    """
    import torch

    x = torch.from_numpy(X).requires_grad_(True)
    logits = net(x)
    rows = [
        torch.autograd.grad(logits[:, k].sum(), x, retain_graph=k < logits.shape[1] - 1)[0]
        for k in range(logits.shape[1])
    ]
    return torch.stack(rows, dim=1).numpy()


def _kinks_in_float32(net, X: np.ndarray, ours: np.ndarray, scale: float, rtol: float) -> str | None:  # noqa: ANN001
    """Why samples `X` miss `rtol` (of `scale`) against a torch float32 run, judged by torch in float64; None if not kinks.

    A ReLU input or a max tie within float32 rounding of flipping takes a
    different branch in one float32 run than in another, and that sample's
    rows differ by a whole term: torch's float64 tells which float32 rows are
    right. A lowering bug would miss on nearly every sample, and in float64 too.
    """
    import torch

    from jaxjac._check import _per_probe_error
    from jaxjac._torch_dtypes import in_dtype

    with in_dtype(net, torch.float64) as net64:
        truth = torch_jacobians(net64, X.astype(np.float64))
    errors = _per_probe_error(ours, truth, scale)  # NaN counts as inf
    if not np.all(errors <= rtol):
        return None
    return (
        f" (and {len(X)} at a float32 kink: beyond rtol against a torch float32 run, but within "
        f"{errors.max() * scale:.2e} of torch in float64)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0 when jaxjac agrees with torch within `args.rtol`, else 1."""
    import torch

    import jaxjac
    from jaxjac._check import _per_probe_error, format_report, relative_error
    from jaxjac._plots import figure_files
    from jaxjac.example import load_example_bands, load_example_data, load_example_model

    args.out.mkdir(parents=True, exist_ok=True)
    paths = {"J": args.out / "J.npy", "model": args.out / "spectra_cnn.jaxjac", "report": args.out / "importance.json"}
    plots = figure_files(args.out / "importance.png")
    for path in [*paths.values(), *plots]:  # fail before the work, not after
        require_new_file(path, args.force)

    net = load_example_model()
    X, y = load_example_data()
    bands = load_example_bands()
    print(
        f"example: torch {type(net).__name__}, X {X.shape} {X.dtype}, y {y.shape} ({np.bincount(y).tolist()} per class)"
    )

    start = time.perf_counter()
    model = jaxjac.convert(net, X[:1], check_data=X[:8], metadata={"source": "jaxjac.example"})
    print(f"converted in {time.perf_counter() - start:.1f} s; {format_report(model.metadata['check'])}")

    start = time.perf_counter()
    J = jaxjac.jacobian(model, X, batch_size=args.batch_size, method=args.method)
    jax_seconds = time.perf_counter() - start
    print(f"jaxjac: J = jaxjac.jacobian(model, X) -> {J.shape} {J.dtype}")
    print(f"  {jax_seconds:.2f} s for {len(X)} samples, including the one-off compilation ({args.method})")

    start = time.perf_counter()
    reference = torch_jacobians(net, X)
    torch_seconds = time.perf_counter() - start
    print(f"torch:  batched autograd.grad, one per class -> {reference.shape}; {torch_seconds:.2f} s")
    # The loop users start from, timed on a few rows: one jacobian call per sample.
    n_loop = min(10, len(X))
    xt = torch.from_numpy(X)
    start = time.perf_counter()
    loop = [torch.autograd.functional.jacobian(net.forward, xt[i : i + 1])[0, :, 0].numpy() for i in range(n_loop)]
    per_sample = (time.perf_counter() - start) / n_loop
    print(
        f"torch:  per-sample loop jacobian(net.forward, X[i:i+1]) -> {(1, *reference.shape[1:2], 1, *X.shape[1:])} "
        f"per sample; {1e3 * per_sample:.1f} ms per sample, about {per_sample * len(X):.1f} s for all {len(X)}"
    )
    reference_loop = np.stack(loop)

    # Samples beyond rtol against either torch run are judged by torch in float64; every other
    # sample is within rtol by construction, so those judgements decide the agreement.
    scale = float(np.max(np.abs(reference)))
    off = _per_probe_error(J, reference, scale) > args.rtol
    off[:n_loop] |= _per_probe_error(J[:n_loop], reference_loop, scale) > args.rtol
    off = np.nonzero(off)[0]
    kinks = _kinks_in_float32(net, X[off], J[off], scale, args.rtol) if len(off) else ""
    agree = kinks is not None
    if not agree:
        kinks = f" ({len(off)} more beyond rtol, against torch in float64 too)"
    abs_err, _ = relative_error(np.delete(J, off, 0), np.delete(reference, off, 0))
    rel_err = abs_err / scale
    on_loop = np.setdiff1d(np.arange(n_loop), off)
    loop_rel_err = relative_error(J[on_loop], reference_loop[on_loop])[0] / scale
    print(
        f"agreement: max relative error {rel_err:.2e} (max abs {abs_err:.2e}) over "
        f"{'all ' if not len(off) else ''}{J.shape[0] - len(off)} samples{kinks}, "
        f"{loop_rel_err:.2e} against the per-sample loop on {n_loop}: {'OK' if agree else 'FAILED'} "
        f"(rtol {args.rtol:g}); J[i] equals jacobian(net.forward, X[i:i+1])[0, :, 0]"
    )

    start = time.perf_counter()
    report = jaxjac.importance(model, X, labels=y, top_k=args.top, batch_size=args.batch_size)
    data = report.data
    print(
        f"importance: jaxjac.importance(model, X, labels=y), mean |dlogit_y/dx| over the samples, "
        f"{time.perf_counter() - start:.1f} s (with bootstrap, curves and checks)"
    )
    print(f"  top {args.top} bands per true class vs the planted bands:")
    for c, planted in bands.items():
        found = data["per_class"]["true"][str(c)]["ranking"][: args.top]
        hits = [b for b in planted if any(abs(b - f) <= BAND_TOLERANCE for f in found)]
        print(
            f"    class {c}: top {found}  planted {planted}  found {len(hits)}/{len(planted)} within +-{BAND_TOLERANCE} bands"
        )
    confidence = data["confidence"]
    print(
        f"  ranking confidence: top-{args.top} set overlap {confidence['top_k_stability']:.2f} and rank correlation "
        f"{confidence['spearman_mean']:.3f} over {confidence['replicates']} bootstrap replicates"
    )
    deletion, k = data["evaluation"]["deletion"], data["evaluation"]["k"]
    i = 1 + int(np.argmin(np.abs(np.asarray(k[1:]) - 2 * args.top)))
    print(
        f"  deleting the top {k[i]} bands (set to the mean spectrum): accuracy {deletion['ranked'][i]:.2f}, vs "
        f"{deletion['random_mean'][i]:.2f} +- {deletion['random_std'][i]:.2f} for random bands; curve area "
        f"{deletion['ranked_auc']:.3f} vs {deletion['random_auc']:.3f}"
    )
    randomization = data["randomization"]
    print(
        f"  model randomisation: rank correlation with a randomly re-weighted model {randomization['spearman']:.2f} "
        f"({'passed' if randomization['passed'] else 'FAILED'}: the ranking depends on what the model learned)"
    )

    np.save(paths["J"], J, allow_pickle=False)
    jaxjac.save(model, paths["model"], overwrite=args.force)
    report.save(paths["report"], overwrite=args.force)
    written = report.plot(args.out / "importance.png")
    print(f"wrote {paths['J']}, {paths['model']}, {paths['report']} and {len(written)} plots in {args.out}")
    return 0 if agree else 1
