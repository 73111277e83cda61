"""`python -m bench`: the jaxjac benchmark. See bench/README.md."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .baselines import BASELINES
from .models import MODELS
from .run import DEFAULT_BATCHES, PRECISION_MODELS, run_comparison

RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="jaxjac against torch: Jacobian throughput.")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated; default: all")
    p.add_argument("--baselines", default=",".join(BASELINES), help="comma-separated; default: all")
    p.add_argument("--n", type=int, default=None, help="samples per timed pass (default: per model and device)")
    p.add_argument(
        "--batch-size",
        type=_sizes,
        default=None,
        metavar="B[,B...]",
        help="batch sizes every batched baseline is timed at, its fastest reported (default: 32,64,256 on cpu, "
        "8192 on gpu; the scaling curve uses the largest)",
    )
    p.add_argument("--loop-n", type=int, default=200, help="samples for the seed's per-sample loop")
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the best counts")
    p.add_argument("--precision-models", default=",".join(PRECISION_MODELS), help="'' to skip the precision study")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per baseline subprocess")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--tag", default="", help="appended to the results file names")
    p.add_argument("--inprocess", action="store_true", help="no subprocesses (fast; peak RSS is then not per baseline)")
    p.add_argument("--scaling", action="store_true", help="plot time against N and against width instead")
    p.add_argument("--max-n", type=int, default=1 << 20, help="largest N of the scaling curve (default 1,048,576)")
    p.add_argument("--width-n", type=int, default=None, help="samples per point of the width curve")
    p.add_argument("--widths", default="1,2,4,8,16", help="channel multipliers of the width curve")
    return p.parse_args(argv)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas; got {text!r}")
    return sizes


def _names(text: str, known: dict, what: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in known]
    if unknown:
        raise SystemExit(f"unknown {what} {', '.join(map(repr, unknown))}; expected some of: {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"  # before jax is imported
    from .report import assemble, device_info, markdown, slug

    info = device_info(args.device)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    stem = f"{__import__('datetime').date.today().isoformat()}-{slug(info)}{'-' + args.tag if args.tag else ''}"
    sizes = args.batch_size or DEFAULT_BATCHES[args.device]
    batch = max(sizes)
    if args.scaling:
        from .scaling import plot, scaling

        widths = tuple(int(w) for w in args.widths.split(","))
        data = scaling(args.device, args.max_n, batch, args.width_n or 4 * batch, widths)
        data["machine"] = info
        (args.out_dir / f"{stem}-scaling.json").write_text(json.dumps(data, indent=1))
        png = args.out_dir / f"{stem}-scaling.png"
        where = info["cpu_model"] if args.device == "cpu" else info["device_kind"]
        plot(data, f"jaxjac scaling on {args.device} ({where})", png)
        print(f"wrote {png}")
        return 0
    models = _names(args.models, MODELS, "model")
    baselines = _names(args.baselines, BASELINES, "baseline")
    precision_models = [m for m in _names(args.precision_models, MODELS, "model") if m in models]
    settings = {
        "n": args.n or "per model",
        "batch_sizes": ",".join(map(str, sizes)),
        "loop_n": args.loop_n,
        "repeats": args.repeats,
    }
    results = run_comparison(
        models,
        baselines,
        device=args.device,
        n=args.n,
        batch_sizes=sizes,
        loop_n=args.loop_n,
        repeats=args.repeats,
        precision_models=precision_models,
        timeout=args.timeout,
        inprocess=args.inprocess,
    )
    report = assemble(results, info, settings)
    text = markdown(report)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (args.out_dir / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {args.out_dir / stem}.json and .md")
    failed = [t for e in report["models"].values() for t in e["targets"] if t["status"] == "FAIL"]
    print(f"targets: {'all PASS' if not failed else f'{len(failed)} FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
