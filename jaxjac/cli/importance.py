"""`jaxjac importance`: rank a dataset's features by their attributions, with confidence and evaluation."""

from __future__ import annotations

import argparse
import builtins
import contextlib
import functools
import json
import threading
import time
from pathlib import Path

from .._errors import JaxjacError
from ._common import (
    add_precision_flag,
    load_npy,
    paths_overlap,
    print_note,
    read_text_file,
    refuse_writing_over_inputs,
    require_new_file,
    sha256_of,
)

DESCRIPTION = """\
Rank the features (e.g. spectral bands) of a dataset by how much a converted
model's output depends on them, and check the ranking.

One streamed pass computes every sample's attribution on all local devices
and reduces it there (mean |a|, mean a, mean a^2 and their standard errors,
overall, per true class, per predicted class, for correct and wrong
predictions), so any dataset size needs memory for the features only. The
ranking's confidence comes from a Poisson bootstrap over the samples.

On up to --eval-samples evenly spaced rows it then draws the deletion and
insertion curves (accuracy with --labels, else agreement with the unmodified
model, as the top-k features are replaced by a baseline or put back) against
--random-rankings random rankings, and runs the model-randomisation sanity
check (the ranking of a model with re-drawn weights should differ).

Methods: gradient (saliency), grad-x-input, integrated-gradients (--baseline,
--steps, --rule), smoothgrad, smoothgrad-sq, vargrad (--noise as a fraction of
each sample's range, --samples draws). The target is each sample's true label
with --labels, else its predicted class; or --target all|INT.

-o writes importance.json (schema jaxjac.importance/1: ranking, scores,
per_class, confidence, evaluation, randomization, ...). --plot FILE.png writes
FILE.png/.svg (the profile per class with its confidence band and the top-k
marked), FILE-heatmap.png/.svg (per-sample attributions sorted by class) and
FILE-curves.png/.svg (deletion and insertion curves). Existing files are
never overwritten without --force.
"""

EPILOG = """\
examples:
  jaxjac importance net.jaxjac X.npy --labels y.npy --top-k 20 -o importance.json --plot importance.png
  jaxjac importance net.jaxjac X.npy --method integrated-gradients --baseline mean --per-class -o imp.json
  jaxjac importance net.jaxjac X.npy --method smoothgrad --noise 0.1 --wavelengths wl.txt -o imp.json
  jaxjac importance net.jaxjac cube.h5 --key radiance --cube --target predicted -o imp.json --json

In Python: report = jaxjac.importance(model, X, labels=y, top_k=20); report.save("imp.json"); report.plot("imp.png")
"""

METHOD_CHOICES = ("gradient", "grad-x-input", "integrated-gradients", "smoothgrad", "smoothgrad-sq", "vargrad")


def _target(text: str) -> str | int:
    if text in ("all", "predicted", "label"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'label', 'predicted', 'all' or a class index; got {text!r}"
        ) from None


def _positive(text: str) -> int:
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")


def _count(text: str) -> int:
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a non-negative integer; got {text!r}")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number; got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `importance` subparser."""
    p = subparsers.add_parser(
        "importance",
        help="rank features by attribution over a dataset, with confidence, curves and plots",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", type=Path, help="a .jaxjac artifact (from `jaxjac convert`)")
    p.add_argument("data", metavar="DATA", type=Path, help="the samples: .npy, .npz, .h5, .zarr (or .pt with torch)")
    p.add_argument("-o", "--out", type=Path, metavar="JSON", help="write the report here (e.g. importance.json)")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="write the plots (PNG and SVG) beside this path")
    p.add_argument("--key", help="the array inside an .npz, .h5, .mat or .zarr group")
    p.add_argument("--cube", action="store_true", help="DATA is a hyperspectral cube (H, W, bands): one sample a pixel")
    p.add_argument("--labels", type=Path, metavar="y.npy", help="true labels (N ints): target, per-class, accuracy")
    what = p.add_argument_group("attribution")
    what.add_argument("--method", choices=METHOD_CHOICES, default="gradient", help="default gradient")
    what.add_argument(
        "--target", type=_target, metavar="label|predicted|all|INT", help="default label with --labels, else predicted"
    )
    what.add_argument("--output", choices=("logits", "probs", "log-probs"), default="logits", help="default logits")
    what.add_argument(
        "--baseline", default="zeros", metavar="zeros|mean|FILE.npy", help="integrated gradients' start (default zeros)"
    )
    what.add_argument(
        "--steps", metavar="N", type=_positive, default=32, help="integrated gradients' nodes (default 32)"
    )
    what.add_argument("--rule", choices=("riemann", "gauss-legendre"), default="riemann", help="default riemann")
    what.add_argument(
        "--noise", metavar="F", type=_fraction, default=0.15, help="SmoothGrad noise std / sample range (0.15)"
    )
    what.add_argument("--samples", metavar="N", type=_positive, default=32, help="SmoothGrad noise draws (default 32)")
    what.add_argument(
        "--seed", metavar="S", type=_seed, default=0, help="seed of the noise, the bootstrap and random rankings"
    )
    rank = p.add_argument_group("ranking")
    rank.add_argument(
        "--top-k", metavar="K", type=_positive, default=20, help="features to report and mark (default 20)"
    )
    rank.add_argument(
        "--score", choices=("mean-abs", "mean-sq", "mean"), default="mean-abs", help="what ranks (default mean-abs)"
    )
    rank.add_argument(
        "--bootstrap", metavar="R", type=_count, default=100, help="bootstrap replicates, 0 for none (default 100)"
    )
    rank.add_argument("--per-class", action="store_true", help="also print each class's top-k")
    names = rank.add_mutually_exclusive_group()
    names.add_argument("--feature-names", type=Path, metavar="names.txt", help="one name per feature, one per line")
    names.add_argument("--wavelengths", type=Path, metavar="w.txt", help="one number per feature (text or .npy)")
    rank.add_argument("--class-names", type=Path, metavar="classes.txt", help="one name per class, one per line")
    check = p.add_argument_group("evaluation")
    check.add_argument(
        "--eval-samples", metavar="S", type=_positive, default=1000, help="rows for curves and checks (1000)"
    )
    check.add_argument(
        "--random-rankings", metavar="R", type=_positive, default=10, help="random rankings to compare (10)"
    )
    check.add_argument(
        "--eval-baseline", default="mean", metavar="mean|zeros|FILE.npy", help="value of removed features (mean)"
    )
    check.add_argument("--no-evaluate", action="store_true", help="skip the deletion and insertion curves")
    check.add_argument("--no-randomization", action="store_true", help="skip the model-randomisation check")
    how = p.add_argument_group("how")
    how.add_argument(
        "--batch-size",
        metavar="B",
        type=_positive,
        help="samples per step over all devices (default: as many as `jaxjac jacobian --batch-size auto` takes "
        "rows, divided by each sample's --steps or --samples, which share its batch)",
    )
    how.add_argument("--formulation", choices=("vmap-jacrev", "batched-vjp"), default="vmap-jacrev")
    add_precision_flag(how)
    how.add_argument("--compile-cache", metavar="DIR|off", help="persistent XLA compilation cache")
    show = p.add_argument_group("files and reporting")
    show.add_argument("--force", action="store_true", help="overwrite existing report and plot files")
    show.add_argument("--quiet", action="store_true", help="no progress bar and no notes")
    show.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    return p


def run(args: argparse.Namespace) -> int:
    """Check every input and output path, then compute, save and plot the importance report."""
    import jax

    from .._batching import default_cache_dir, enable_compile_cache
    from .._importance import ImportancePlan, compute_importance
    from .._methods import AttributionOptions
    from .._progress import Progress
    from .._readers import open_reader
    from .._run import check_labels
    from .jacobian import _load_model, _note_branches, _read_labels, _signals_stop

    cache = args.compile_cache or default_cache_dir()
    enable_compile_cache(None if str(cache) == "off" else cache)
    _check_outputs(args)
    model = _load_model(args.model, flax_module=True)  # the randomisation check splits its nnx.Params
    _note_branches(args, model)
    reader = open_reader(
        args.data, sample_shape=model.sample_shape, dtype=model.dtype, key=args.key, cube=args.cube, flag="DATA"
    )
    with contextlib.closing(reader):
        for note in reader.notes:
            _note(args, note)
        labels = None
        if args.labels is not None:
            labels = check_labels(
                _read_labels(args.labels), reader.n_samples, model.n_outputs, name=f"--labels {args.labels}"
            )
        target = args.target if args.target is not None else ("label" if labels is not None else "predicted")
        if target == "label" and labels is None:
            raise JaxjacError("--target label needs --labels y.npy (one integer label per sample)")
        options = AttributionOptions(
            args.method,
            target,
            args.output.replace("-", "_"),
            args.steps,
            args.rule,
            args.noise,
            args.samples,
            args.seed,
            args.formulation,
            args.precision,
        )
        plan = ImportancePlan(
            options=options,
            baseline=_baseline(args.baseline, "--baseline"),
            top_k=args.top_k,
            score=args.score.replace("-", "_"),
            bootstrap=args.bootstrap,
            evaluate=not args.no_evaluate,
            eval_samples=args.eval_samples,
            n_random=args.random_rankings,
            eval_baseline=_baseline(args.eval_baseline, "--eval-baseline"),
            randomization=not args.no_randomization,
            keep_attributions=args.plot is not None,
            feature_names=_lines(args.feature_names, "--feature-names") if args.feature_names else None,
            wavelengths=_numbers(args.wavelengths) if args.wavelengths else None,
            class_names=_lines(args.class_names, "--class-names") if args.class_names else None,
            source={
                "model": str(args.model),
                "model_sha256": sha256_of(args.model),
                "data": str(args.data),
                "key": args.key,
                "labels": str(args.labels) if args.labels else None,
            },
        ).check(model)
        stop, received = threading.Event(), []
        progress = Progress(
            total=reader.n_samples, initial=0, devices=jax.device_count(), enabled=not args.quiet, task="importance"
        )
        start = time.perf_counter()
        with _signals_stop(stop, received):
            try:
                report = compute_importance(
                    model,
                    reader,
                    plan,
                    labels=labels,
                    batch_size=args.batch_size,
                    stop_event=stop,
                    on_rows=progress.update,
                    on_phase=_phases(args, progress),
                )
            except JaxjacError as error:
                if received:
                    import signal

                    from ._common import print_error

                    print_error(f"{error} (stopped by {signal.Signals(received[0]).name})")
                    return 128 + received[0]
                raise
            finally:
                progress.close()
    seconds = time.perf_counter() - start
    written = []
    if args.out is not None:
        written.append(str(report.save(args.out, overwrite=args.force)))
    if args.plot is not None:
        written += [str(p) for p in report.plot(args.plot)]
    _print_summary(args, report.data, seconds, written)
    return 0


def _phases(args: argparse.Namespace, progress):
    """Announce each phase as a note; the progress bar belongs to the first (the streamed pass)."""
    seen = []

    def announce(message: str) -> None:
        if seen:
            progress.close()
        seen.append(message)
        _note(args, message)

    return announce


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse before any work if a file this run will write exists (without --force) or cannot be made."""
    paths = []
    if args.out is not None:
        paths.append(args.out)
    if args.plot is not None:
        from .._plots import figure_files

        paths += figure_files(args.plot)
    for path in paths:
        require_new_file(path, args.force)
    inputs = {"MODEL": args.model, "DATA": args.data, "--labels": args.labels}
    for flag in ("baseline", "eval_baseline", "feature_names", "wavelengths", "class_names"):
        value = getattr(args, flag, None)
        if isinstance(value, str | Path) and value not in ("zeros", "mean"):
            inputs[f"--{flag.replace('_', '-')}"] = Path(value)
    for path in paths:
        refuse_writing_over_inputs({"-o" if path == args.out else "--plot": path}, inputs)
    clashes = [figure for figure in paths[1:] if args.out is not None and paths_overlap(args.out, figure)]
    if clashes:
        raise JaxjacError(
            f"-o {args.out} is also where --plot {args.plot} writes a figure ({clashes[0]}); choose another -o "
            "or --plot, e.g. -o importance.json --plot importance.png"
        )
    if not paths:
        _note(args, "nothing will be saved: pass -o importance.json and/or --plot importance.png")


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {2**32 - 1}; got {text!r}")
    return value


def _baseline(text: str, flag: str):
    if text in ("zeros", "mean"):
        return text

    path = Path(text)
    if not path.exists():
        raise JaxjacError(f"{flag} {text}: expected 'zeros', 'mean' or a .npy file of one sample; no such file")
    return load_npy(path, flag, "one sample's values")


def _lines(path: Path, flag: str) -> list[str]:
    lines = [line.strip() for line in read_text_file(path, flag, "a text file of names, one per line").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _numbers(path: Path) -> list[float]:
    import numpy as np

    expected = "numbers, one per feature"
    try:
        if path.suffix == ".npy":
            values = load_npy(path, "--wavelengths", expected)
        else:
            values = np.array(read_text_file(path, "--wavelengths", expected).replace(",", " ").split(), dtype=float)
    except ValueError as error:
        raise JaxjacError(
            f"--wavelengths {path}: expected numbers, one per feature (text or .npy); {error}".rstrip()
        ) from None
    values = np.asarray(values, dtype=float).ravel()
    if not np.isfinite(values).all():
        raise JaxjacError(f"--wavelengths {path}: every value must be a finite number")
    return values.tolist()


def _print_summary(args: argparse.Namespace, data: dict, seconds: float, written: list[str]) -> None:
    import sys

    # With --json, stdout carries the JSON alone; the human summary goes to stderr.
    out = sys.stderr if args.json else sys.stdout
    print = functools.partial(builtins.print, file=out)  # noqa: A001
    if not args.quiet:
        top = data["top_k"]
        accuracy = f", accuracy {data['accuracy']:.3f}" if data["accuracy"] is not None else ""
        print(
            f"{data['method']} attributions of {data['n_samples']} samples (target {data['target']}, "
            f"{data['output']}{accuracy}) in {seconds:.1f} s"
        )
        print(f"top {top['k']} features: {', '.join(top['names'])}")
        confidence = data["confidence"]
        if confidence:
            print(
                f"ranking confidence ({confidence['replicates']} bootstrap replicates): top-{top['k']} overlap "
                f"{confidence['top_k_stability']:.2f}, rank correlation {confidence['spearman_mean']:.3f}"
            )
        if args.per_class:
            for kind in ("true", "predicted"):
                for key, group in (data["per_class"][kind] or {}).items():
                    if group["ranking"]:
                        names = _feature_names(data, group["ranking"][: top["k"]])
                        print(f"  {kind} class {key} (n={group['n']}): {', '.join(names)}")
        evaluation = data["evaluation"]
        if data.get("evaluation_skipped"):
            print(data["evaluation_skipped"])
        if evaluation:
            for curve in ("deletion", "insertion"):
                c = evaluation[curve]
                print(
                    f"{curve} ({evaluation['metric']} over {evaluation['n_samples']} rows): area {c['ranked_auc']:.3f} "
                    f"ranked vs {c['random_auc']:.3f} random"
                )
        randomization = data["randomization"]
        if randomization:
            verdict = "passed" if randomization["passed"] else "FAILED: the ranking barely depends on the weights"
            print(f"model randomisation: rank correlation {randomization['spearman']:.2f}, {verdict}")
        if data["n_nonfinite"]:
            print(f"{data['n_nonfinite']} rows with NaN or Inf inputs were skipped (first: {data['nonfinite_first']})")
        for path in written:
            print(f"wrote {path}")
    if args.json:
        summary = {
            "top_k": data["top_k"],
            "n_samples": data["n_samples"],
            "accuracy": data["accuracy"],
            "seconds": round(seconds, 3),
            "written": written,
        }
        builtins.print(json.dumps(summary))
    sys.stdout.flush()


def _feature_names(data: dict, indices: list[int]) -> list[str]:
    if data["feature_names"]:
        return [data["feature_names"][i] for i in indices]
    if data["wavelengths"]:
        return [f"{data['wavelengths'][i]:g}" for i in indices]
    return [str(i) for i in indices]


def _note(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print_note(message)
