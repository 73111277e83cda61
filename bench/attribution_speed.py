"""Attributions per second: jaxjac against captum, the torch way, in one run on the same models and data.

Integrated gradients (32 midpoint steps from a zero baseline) and SmoothGrad
(32 noisy gradients) of each sample's predicted class. captum runs on the
torch model in batches of `--torch-batch` samples, each call differentiating
all of a batch's steps or draws at once (its default); jaxjac runs
`jaxjac.attribute(model, X, method)` with its defaults. Each side is timed
at its best of `--repeats` passes after a warm-up, so compilation is left
out; the ratio is jaxjac's rate over captum's. Integrated gradients of the
first rows are compared between the two (SmoothGrad's noise is each
library's own).

Run: `python -m bench.attribution_speed` (about 2 minutes on 2 cores).
Writes `bench/results/<date>-<device>-attributions.{json,md}`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
METHODS = ("integrated-gradients", "smoothgrad")
DRAWS = 32  # integrated gradients' steps, SmoothGrad's samples: jaxjac's and captum's defaults alike
NOISE = 0.15  # SmoothGrad's noise as a fraction of a sample's range, jaxjac's default


def _best_rate(run: Callable[[], Any], n: int, repeats: int) -> float:
    run()  # warm-up: compilation, caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return n / best


def captum_attribute(net: Any, x: np.ndarray, method: str, batch: int) -> Callable[[], np.ndarray]:
    """A function computing captum's attributions of `x`, in batches of `batch` samples."""
    import torch
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    xt = torch.as_tensor(x)
    with torch.no_grad():
        targets = net(xt).argmax(1)
    if method == "integrated-gradients":
        explainer = IntegratedGradients(net)

        def one(xb: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
            return explainer.attribute(xb, baselines=0.0, target=tb, n_steps=DRAWS, method="riemann_middle")
    else:
        explainer = NoiseTunnel(Saliency(net))
        stdev = NOISE * float((xt.amax(dim=(1, 2)) - xt.amin(dim=(1, 2))).mean())

        def one(xb: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
            return explainer.attribute(xb, nt_type="smoothgrad", nt_samples=DRAWS, stdevs=stdev, target=tb, abs=False)

    def run() -> np.ndarray:
        parts = [one(xt[i : i + batch], targets[i : i + batch]).detach() for i in range(0, len(xt), batch)]
        return torch.cat(parts).numpy()

    return run


def ig_difference(net: Any, model: Any, x: np.ndarray) -> float:
    """max |jaxjac - captum| / max |captum| of integrated gradients on `x`: what is timed computes the same."""
    import jaxjac

    theirs = captum_attribute(net, x, "integrated-gradients", len(x))()
    ours = jaxjac.attribute(model, x, "integrated-gradients")
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def jaxjac_rate(model: Any, x: np.ndarray, method: str, repeats: int) -> tuple[float, int]:
    """jaxjac's samples per second on `x` with its defaults, and the default batch size it took."""
    import jaxjac
    from jaxjac._batching import attribution_batch_size
    from jaxjac._methods import AttributionOptions

    rate = _best_rate(lambda: jaxjac.attribute(model, x, method), len(x), repeats)
    return rate, attribution_batch_size(model, AttributionOptions(method), len(x))


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# jaxjac attributions against captum, {report['date']}",
        "",
        f"Device: {report['device_kind']} ({report['device']}); CPU: {report['cpu_model']} ({report['cpu_count']} "
        f"cores); jax {report['versions']['jax']}, torch {report['versions']['torch']}, "
        f"captum {report['versions']['captum']}.",
        f"Settings: {DRAWS} steps or draws per sample, predicted class, captum batches of "
        f"{report['torch_batch']} samples, best of {report['repeats']}.",
        "",
        "| model | method | captum samples/s | jaxjac samples/s | jaxjac batch | jaxjac x | max rel difference |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for row in report["rows"]:
        difference = f"{row['max_rel_difference']:.1e}" if "max_rel_difference" in row else "—"
        lines.append(
            f"| {row['model']} | {row['method']} | {row['captum']:,.0f} | {row['jaxjac']:,.0f} | "
            f"{row['jaxjac_batch']} | {row['ratio']:.2f} | {difference} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="seed-cnn,resnet1d,inceptiontime,wide-cnn", help="comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--n", type=int, default=256, help="samples per timed pass")
    parser.add_argument("--torch-batch", type=int, default=64, help="samples per captum call")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes; the best counts")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import captum
    import jax

    import jaxjac

    from .models import SAMPLE_SHAPE, build
    from .report import device_info, slug

    x = np.random.default_rng(0).standard_normal((args.n, *SAMPLE_SHAPE)).astype(np.float32)
    rows = []
    for name in args.models.split(","):
        net = build(name)
        model = jaxjac.convert(net, x[:8])
        for method in args.methods.split(","):
            theirs = _best_rate(captum_attribute(net, x, method, args.torch_batch), len(x), args.repeats)
            ours, batch = jaxjac_rate(model, x, method, args.repeats)
            row = {"model": name, "method": method, "captum": theirs, "jaxjac": ours, "jaxjac_batch": batch}
            row["ratio"] = ours / theirs
            if method == "integrated-gradients":  # SmoothGrad's noise is each library's own
                row["max_rel_difference"] = ig_difference(net, model, x[:8])
            print(json.dumps(row), flush=True)
            rows.append(row)
    info = device_info(jax.devices()[0].platform)
    report = {
        "date": datetime.date.today().isoformat(),
        **info,
        "versions": {**info["versions"], "captum": captum.__version__},
        "n": args.n,
        "torch_batch": args.torch_batch,
        "repeats": args.repeats,
        "rows": rows,
    }
    stem = args.out_dir / f"{report['date']}-{slug(info)}-attributions"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {stem}.json and .md")
    return report


if __name__ == "__main__":
    main()
