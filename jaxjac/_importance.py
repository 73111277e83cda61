"""`jaxjac.importance`: rank features by their attributions over a whole dataset.

One streamed pass reduces the attributions on the devices (`_reduce`), so a
dataset of any size needs O(features) memory. The ranking's confidence comes
from a streaming bootstrap. An evaluation subset (evenly spaced rows) then
checks the ranking: deletion and insertion curves against random rankings,
and the model-randomisation sanity check (`_evaluate`). The result is an
`ImportanceReport`, whose `data` is the `importance.json` document.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._arrays import ArrayWriter, array_reader, batch_size_for, positive_int
from ._attribute import feature_mean, stream_attributions, target_and_labels
from ._batching import attribution_batch_size
from ._durable import replace_atomically
from ._errors import JaxjacError
from ._methods import AttributionOptions, attribution_shape, check_options, resolve_baseline
from ._reduce import STATISTICS, Accumulator, bootstrap_confidence, group_statistics, reduction_program, score_values
from ._run import RunResult, run_stream
from ._versions import package_version

if TYPE_CHECKING:
    from ._model import ConvertedModel

SCHEMA = "jaxjac.importance/1"


@dataclass
class ImportanceReport:
    """The result of `jaxjac.importance`.

    **Attributes:**

    - `data`: the `importance.json` document (plain JSON types; see the README
      for its schema): `ranking`, `scores`, `per_class`, `confidence`,
      `evaluation`, `randomization`, ...
    - `attributions`: `(S, F)` per-sample attributions of the evaluation rows
      (for ``target="all"``, their mean over outputs), for the heatmap.
    - `rows`: `(S,)` the dataset rows they belong to; `classes`: `(S,)` their
      true labels (or predicted classes without labels).
    """

    data: dict[str, Any]
    attributions: np.ndarray | None = None
    rows: np.ndarray | None = None
    classes: np.ndarray | None = None
    run: RunResult | None = field(default=None, repr=False)

    @property
    def ranking(self) -> np.ndarray:
        """Feature indices `(F,)`, most important first."""
        return np.asarray(self.data["ranking"])

    @property
    def scores(self) -> np.ndarray:
        """One score per feature `(F,)`, in feature order."""
        return np.asarray(self.data["scores"], dtype=float)

    def top(self, k: int | None = None) -> list[int]:
        """The `k` most important features (default the report's top-k)."""
        return self.data["ranking"][: k or self.data["top_k"]["k"]]

    def to_json(self) -> str:
        return json.dumps(self.data, indent=1)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write `importance.json` atomically (temp file, fsync, rename)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise JaxjacError(f"{path} already exists; pass --force (overwrite=True) to replace it")
        return replace_atomically(path, self.to_json() + "\n")

    def plot(self, path: str | os.PathLike) -> list[Path]:
        """Write the profile, heatmap and curves as PNG and SVG beside `path`; returns the files."""
        from ._plots import plot_all

        return plot_all(self.data, path, attributions=self.attributions, classes=self.classes)


def importance(
    model: ConvertedModel,
    x: Any,
    *,
    labels: np.ndarray | None = None,
    method: str = "gradient",
    target: str | int | None = None,
    output: str = "logits",
    baseline: Any = "zeros",
    steps: int = 32,
    rule: str = "riemann",
    noise: float = 0.15,
    samples: int = 32,
    seed: int = 0,
    top_k: int = 20,
    score: str = "mean_abs",
    bootstrap: int = 100,
    level: float = 0.95,
    evaluate: bool = True,
    eval_samples: int = 1000,
    n_random: int = 10,
    eval_baseline: Any = "mean",
    randomization: bool = True,
    feature_names: Sequence[str] | None = None,
    wavelengths: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    batch_size: int | None = None,
    formulation: str = "vmap-jacrev",
    precision: str = "float32",
) -> ImportanceReport:
    """Global feature importance of a dataset, with its confidence and an evaluation.

    **Arguments:**

    - `model`, `x` `(N, *sample_shape)` (any row-sliceable array), `labels` `(N,)`.
    - `method`, `output`, `baseline`, `steps`, `rule`, `noise`, `samples`,
      `seed`, `batch_size`, `formulation`, `precision`: as for
      `jaxjac.attribute`.
    - `target`: default ``"label"`` with labels, else ``"predicted"``.
    - `score`: what ranks the features: ``"mean_abs"`` (mean |a|, default),
      ``"mean_sq"`` or ``"mean"``.
    - `top_k`: how many top features to report and mark.
    - `bootstrap`: Poisson-bootstrap replicates for the confidence (0: none);
      `level`: the intervals' coverage.
    - `evaluate`: deletion/insertion curves on up to `eval_samples` evenly
      spaced rows, against `n_random` random rankings, imputing
      `eval_baseline` (``"mean"``, ``"zeros"`` or an array).
    - `randomization`: the model-randomisation sanity check on those rows.
    - `feature_names` or `wavelengths`: labels for the F features.
    - `class_names`: labels for the classes.

    **Returns:** an `ImportanceReport`; `report.data` is `importance.json`.

    >>> report = jaxjac.importance(model, X, labels=y, top_k=20)  # doctest: +SKIP
    >>> report.top(5)                                             # doctest: +SKIP
    [148, 32, 70, 188, 105]
    """
    reader = array_reader(model, x)
    target, labels = target_and_labels(model, reader.n_samples, target, labels)
    options = AttributionOptions(method, target, output, steps, rule, noise, samples, seed, formulation, precision)
    plan = ImportancePlan(
        options=options,
        baseline=baseline,
        top_k=top_k,
        score=score,
        bootstrap=bootstrap,
        level=level,
        evaluate=evaluate,
        eval_samples=eval_samples,
        n_random=n_random,
        eval_baseline=eval_baseline,
        randomization=randomization,
        feature_names=feature_names,
        wavelengths=wavelengths,
        class_names=class_names,
    )
    return compute_importance(model, reader, plan, labels=labels, batch_size=batch_size)


@dataclass
class ImportancePlan:
    """Everything `compute_importance` does besides the data: see `importance` for each field."""

    options: AttributionOptions
    baseline: Any = "zeros"
    top_k: int = 20
    score: str = "mean_abs"
    bootstrap: int = 100
    level: float = 0.95
    evaluate: bool = True
    eval_samples: int = 1000
    n_random: int = 10
    eval_baseline: Any = "mean"
    randomization: bool = True
    feature_names: Sequence[str] | None = None
    wavelengths: Sequence[float] | None = None
    class_names: Sequence[str] | None = None
    keep_attributions: bool = True  # per-sample attributions of the evaluation rows, for the heatmap
    source: dict[str, Any] = field(default_factory=dict)

    def check(self, model: ConvertedModel) -> ImportancePlan:
        """Validate against `model` before any work; returns the plan with normalised options."""
        n_features = math.prod(model.sample_shape)
        self.options = check_options(model, self.options)
        if self.score not in STATISTICS:
            raise JaxjacError(f"score must be one of {', '.join(STATISTICS)}; got {self.score!r}")
        # More features asked for than there are: all of them, ranked (the report says k).
        self.top_k = min(positive_int(self.top_k, "top-k"), n_features)
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int | np.integer) or self.bootstrap < 0:
            raise JaxjacError(f"bootstrap must be 0 (off) or a number of replicates; got {self.bootstrap!r}")
        if (
            isinstance(self.level, bool)
            or not isinstance(self.level, int | float | np.number)
            or not 0 < self.level < 1
        ):
            raise JaxjacError(f"level must be between 0 and 1; got {self.level!r}")
        self.eval_samples = positive_int(self.eval_samples, "eval_samples")
        self.n_random = positive_int(self.n_random, "n_random")
        if self.feature_names is not None and self.wavelengths is not None:
            raise JaxjacError("give feature names or wavelengths, not both")
        for name, values in (("feature_names", self.feature_names), ("wavelengths", self.wavelengths)):
            if values is not None and len(values) != n_features:
                raise JaxjacError(
                    f"{name} (--{name.replace('_', '-')}): {len(values)} given; the model's samples "
                    f"{model.sample_shape} have {n_features} features"
                )
        if self.class_names is not None and len(self.class_names) != model.n_outputs:
            raise JaxjacError(
                f"class_names (--class-names): {len(self.class_names)} given; the model has {model.n_outputs} outputs"
            )
        return self


def compute_importance(
    model: ConvertedModel,
    reader: Any,
    plan: ImportancePlan,
    *,
    labels: np.ndarray | None = None,
    batch_size: int | None = None,
    stop_event: threading.Event | None = None,
    on_rows: Callable[[int], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> ImportanceReport:
    """The whole importance pipeline over a `Reader` (the CLI's entry point).

    `batch_size` `None` takes `attribution_batch_size`'s. Raises `JaxjacError`
    if interrupted through `stop_event` (nothing is written).
    """
    plan = plan.check(model)
    options = plan.options
    if batch_size is None:
        batch_size = attribution_batch_size(model, options, reader.n_samples)
    batch_size = batch_size_for(batch_size, reader.n_samples)
    phase = on_phase or (lambda message: None)
    baseline = resolve_baseline(model, plan.baseline, mean=lambda: feature_mean(reader))
    program, consts, groups = reduction_program(
        model,
        options,
        baseline,
        has_labels=labels is not None,
        score=plan.score,
        replicates=max(plan.bootstrap, 1),
        seed=options.seed,
    )
    sink = Accumulator()
    phase(f"attributions ({options.method}) of {reader.n_samples} rows, reduced on the devices")
    run = run_stream(
        model,
        reader,
        sink,
        program,
        consts,
        labels=labels,
        reduce=True,
        batch_size=batch_size,
        stop_event=stop_event,
        on_rows=on_rows,
    )
    if run.interrupted:
        raise JaxjacError(f"interrupted after {run.completed_rows} of {reader.n_samples} rows; nothing was written")
    if sink.totals is None or sink.totals["count"][0] == 0:
        raise JaxjacError("no rows to rank features with: the data is empty or every row holds NaN or Inf")
    data = _summarise(model, plan, sink.totals, groups.names, run)
    report = ImportanceReport(data, run=run)
    if not (plan.evaluate or plan.randomization or plan.keep_attributions):
        return report
    rows, x_sub = _evaluation_rows(reader, plan.eval_samples)
    if not rows.size:
        return report
    y_sub = labels[rows] if labels is not None else None
    if plan.keep_attributions:
        phase(f"per-sample attributions of {rows.size} evaluation rows")
        a_sub = _attributions(model, x_sub, options, baseline, y_sub, batch_size)
        report.attributions = a_sub.reshape(rows.size, -1, math.prod(model.sample_shape)).mean(axis=1)
        if y_sub is None:
            classes = np.asarray(model(x_sub)).reshape(rows.size, -1).argmax(axis=1)
        else:
            classes = y_sub
        report.rows, report.classes = rows, classes
    from ._evaluate import selection_curves, why_no_selection_curves

    skipped = why_no_selection_curves(model) if plan.evaluate else None
    if skipped:
        data["evaluation_skipped"] = f"deletion and insertion curves skipped: {skipped}"
        phase(data["evaluation_skipped"])
    elif plan.evaluate:
        phase(f"deletion and insertion curves on {rows.size} rows against {plan.n_random} random rankings")
        data_mean = sink.totals["x_sum"] / sink.totals["count"][0]
        imputed = resolve_baseline(model, plan.eval_baseline, mean=lambda: data_mean)
        curves = selection_curves(
            model, x_sub, report.ranking, labels=y_sub, baseline=imputed, n_random=plan.n_random, seed=options.seed
        )
        data["evaluation"] = {**curves, "baseline": _describe_baseline(plan.eval_baseline)}
    if plan.randomization:
        from ._evaluate import randomization_check

        phase("model-randomisation check")

        def scores_of(m: ConvertedModel, xs: np.ndarray) -> np.ndarray:
            a = _attributions(m, xs, options, baseline, y_sub, batch_size)
            a = a.reshape(xs.shape[0], -1, math.prod(model.sample_shape))  # (S, M, F)
            return score_values(a, plan.score).mean(axis=(0, 1))

        data["randomization"] = randomization_check(model, x_sub, scores_of, top_k=plan.top_k, seed=options.seed)
    return report


def _attributions(model, x, options, baseline, labels, batch_size) -> np.ndarray:
    reader = array_reader(model, x)
    out = ArrayWriter(attribution_shape(model.spec, x.shape[0], options.target), model.dtype)
    stream_attributions(model, reader, out, options, baseline, labels=labels, batch_size=batch_size)
    return out.array


def _evaluation_rows(reader: Any, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `limit` evenly spaced rows whose inputs are finite: `(rows, samples)`, each read once."""
    n = reader.n_samples
    rows = np.unique(np.linspace(0, n - 1, min(limit, n)).round().astype(np.int64)) if n else np.zeros(0, np.int64)
    samples = [reader.read(int(i), int(i) + 1)[0] for i in rows]
    keep = [k for k, x in enumerate(samples) if np.isfinite(x).all()]
    x = np.stack([samples[k] for k in keep]) if keep else np.zeros((0, *reader.sample_shape), reader.dtype)
    return rows[keep], x


def _describe_baseline(baseline: Any) -> str:
    return baseline if isinstance(baseline, str) else "array"


def _summarise(model: ConvertedModel, plan: ImportancePlan, totals: dict, names: list, run: RunResult) -> dict:
    """The `importance.json` document from the reduced sums."""
    options = plan.options
    n_outputs = 1 if options.target != "all" else model.n_outputs
    stats = [group_statistics(totals["count"][g], totals["sums"][:, g], n_outputs) for g in range(len(names))]
    overall = stats[0]
    scores = overall[plan.score]["mean"].mean(axis=0)
    ranking = np.argsort(-scores, kind="stable")
    k = min(plan.top_k, scores.size)
    labels_of = _feature_labels(plan)
    per_class: dict[str, Any] = {"true": None, "predicted": {}}
    extra: dict[str, Any] = {"correct": None, "wrong": None}
    for (kind, key), group in zip(names, stats, strict=True):
        if kind in ("true", "predicted"):
            per_class[kind] = per_class[kind] or {}
            per_class[kind][key] = _group_json(group, plan.score, k)
        elif kind in extra:
            extra[kind] = _group_json(group, plan.score, k)
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "method": options.method,
        "method_options": options.describe(),
        "baseline": _describe_baseline(plan.baseline) if options.method == "integrated-gradients" else None,
        "target": options.target,
        "output": options.output,
        "score": plan.score,
        "n_samples": overall["n"],
        "n_nonfinite": run.nonfinite_count,
        "nonfinite_first": run.nonfinite_first,
        "feature_shape": list(model.sample_shape),
        "n_features": int(scores.size),
        "feature_names": list(plan.feature_names) if plan.feature_names is not None else None,
        "wavelengths": [float(w) for w in plan.wavelengths] if plan.wavelengths is not None else None,
        "classes": model.n_outputs,
        "class_names": list(plan.class_names) if plan.class_names is not None else None,
        "accuracy": extra["correct"]["n"] / overall["n"] if extra["correct"] is not None else None,
        "ranking": ranking.tolist(),
        "scores": _plain(scores),
        "top_k": {"k": k, "features": ranking[:k].tolist(), "names": [labels_of(i) for i in ranking[:k]]},
        "overall": _group_json(overall, plan.score, k, ranking=False),
        "per_class": per_class,
        **extra,
        "confidence": None,
        "evaluation": None,
        "randomization": None,
        "source": plan.source,
        "versions": {"jaxjac": package_version("jaxjac"), "jax": package_version("jax")},
    }
    if plan.bootstrap > 0:
        confidence = bootstrap_confidence(scores, totals["boot"], totals["boot_count"], top_k=k, level=plan.level)
        data["confidence"] = {key: _plain(value) for key, value in confidence.items()}
    return data


def _group_json(group: dict[str, Any], score: str, k: int, ranking: bool = True) -> dict[str, Any]:
    """One group's statistics; arrays are `(F,)`, or `(M, F)` lists for target ``"all"``."""
    out: dict[str, Any] = {"n": group["n"]}
    for name in STATISTICS:
        out[name] = {part: _plain(_squeeze(group[name][part])) for part in ("mean", "se")}
    if ranking:
        scores = group[score]["mean"].mean(axis=0)
        out["ranking"] = np.argsort(-scores, kind="stable").tolist() if group["n"] else None
    return out


def _squeeze(array: np.ndarray) -> np.ndarray:
    return array[0] if array.shape[0] == 1 else array


def _plain(value: Any) -> Any:
    """numpy to JSON types; NaN and Inf become None (JSON has neither)."""
    if isinstance(value, np.ndarray):
        if np.issubdtype(value.dtype, np.floating):
            return (
                [_plain(v) for v in value]
                if value.ndim > 1
                else [None if not np.isfinite(v) else float(v) for v in value]
            )
        return value.tolist()
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _feature_labels(plan: ImportancePlan) -> Callable[[int], str]:
    if plan.feature_names is not None:
        return lambda i: str(plan.feature_names[i])
    if plan.wavelengths is not None:
        return lambda i: f"{float(plan.wavelengths[i]):g}"
    return str
