"""Global importance statistics, reduced on the devices while the data streams past.

For every batch the program computes the attributions `a` `(B, M, F)` (M = 1
for one target, K for ``"all"``; F features), then sums, per group of rows,
`a`, `|a|`, `a**2` and `a**4`: O(groups x features) numbers leave the device
per batch, never the attributions. The host adds them up in float64. From
these sums come the mean of `|a|`, of `a` and of `a**2` and their standard
errors, for all rows, per true class, per predicted class, and for correct
and wrong predictions.

The confidence of the ranking comes from a streaming Poisson bootstrap: row
`i` carries, in replicate `r`, a weight drawn from Poisson(1) (seeded by the
row index), and each replicate's weighted score sums are kept. That is the
usual bootstrap in the large-N limit, with O(replicates x features) memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ._methods import AttributionOptions, attribution_and_outputs, check_options

if TYPE_CHECKING:
    from ._model import ConvertedModel

STATISTICS: tuple[str, ...] = ("mean_abs", "mean", "mean_sq")
_POWERS = ("a", "abs", "sq", "fourth")  # the sums kept per group


@dataclass(frozen=True)
class Groups:
    """The row groups statistics are kept for, in the order of the program's columns."""

    n_classes: int
    has_labels: bool

    @property
    def names(self) -> list[tuple[str, str]]:
        """`(kind, key)` per column: ("overall", ""), ("predicted", "0"), ..., ("true", "0"), ..., ("correct", "")."""
        names = [("overall", "")] + [("predicted", str(k)) for k in range(self.n_classes)]
        if self.has_labels:
            names += [("true", str(k)) for k in range(self.n_classes)] + [("correct", ""), ("wrong", "")]
        return names

    def membership(self, valid: jax.Array, predicted: jax.Array, labels: jax.Array | None) -> jax.Array:
        """`(B, G)` 0/1 weights: which groups each row of a batch belongs to."""
        classes = jnp.arange(self.n_classes)
        columns = [valid[:, None], valid[:, None] & (predicted[:, None] == classes)]
        if self.has_labels:
            correct = predicted == labels
            columns += [
                valid[:, None] & (labels[:, None] == classes),
                (valid & correct)[:, None],
                (valid & ~correct)[:, None],
            ]
        return jnp.concatenate(columns, axis=1)


def reduction_program(
    model: ConvertedModel,
    options: AttributionOptions,
    baseline: np.ndarray,
    *,
    has_labels: bool,
    score: str = "mean_abs",
    replicates: int = 100,
    seed: int = 0,
):
    """A `run_stream` program (with `reduce=True`) and its constants.

    `baseline` `(*sample_shape)` is integrated gradients' starting point.

    **Returns:** `(program, consts, groups)`; `program(consts, x, labels, rows)`
    returns a dict of per-batch sums: `count` `(G,)`, `sums` `(4, G, M*F)`,
    `x_sum` `(F,)` (for the data mean), `boot` `(R, F)` and `boot_count` `(R,)`.
    `labels` are the true labels when `has_labels` (they also serve target
    ``"label"``).
    """
    options = check_options(model, options)
    core = attribution_and_outputs(model.graph, model.spec, options)
    groups = Groups(model.n_outputs, has_labels)
    boot_key = jax.random.PRNGKey(seed)
    precision = jax.lax.Precision.HIGHEST  # these sums must not drop to TF32 on GPUs

    def program(consts, x, labels, rows):
        a, outputs = core(consts["params"], x, labels, rows, consts["baseline"])
        b = x.shape[0]
        a = a.reshape(b, -1, int(np.prod(model.sample_shape)))  # (B, M, F)
        valid = rows >= 0
        a = jnp.where(valid[:, None, None], a, 0)  # padding rows may hold NaN; keep them out of the sums
        weights = groups.membership(valid, jnp.argmax(outputs, axis=1), labels).astype(a.dtype)
        flat = a.reshape(b, -1)
        powers = jnp.stack([flat, jnp.abs(flat), flat * flat, (flat * flat) ** 2])
        sums = jnp.einsum("bg,pbf->pgf", weights, powers, precision=precision)
        per_row_score = score_values(a, score).mean(axis=1)  # (B, F)
        draws = jax.vmap(lambda row: jax.random.poisson(jax.random.fold_in(boot_key, row), 1.0, (replicates,)))(rows)
        draws = jnp.where(valid[:, None], draws, 0).astype(a.dtype)
        return {
            "count": weights.sum(axis=0),
            "sums": sums,
            "x_sum": jnp.einsum("b,bf->f", valid.astype(x.dtype), jnp.where(valid[:, None], x.reshape(b, -1), 0)),
            "boot": jnp.einsum("br,bf->rf", draws, per_row_score, precision=precision),
            "boot_count": draws.sum(axis=0),
        }

    return program, {"params": model.tensors(), "baseline": baseline}, groups


def score_values(a: Any, score: str) -> Any:
    """The per-row values whose mean is `score`: `|a|`, `a**2` or `a`; for jax and numpy arrays alike."""
    if score == "mean_abs":
        return abs(a)
    if score == "mean_sq":
        return a * a
    return a


class Accumulator:
    """Adds up the per-batch sums of a reduction program in float64 (a `run_stream` reduce sink)."""

    def __init__(self) -> None:
        self.totals: dict[str, np.ndarray] | None = None
        self.batches = 0

    def add(self, result: dict[str, Any]) -> None:
        values = {k: np.asarray(v, np.float64) for k, v in result.items()}
        self.totals = values if self.totals is None else {k: self.totals[k] + values[k] for k in values}
        self.batches += 1

    def flush(self) -> None:
        pass


def group_statistics(count: float, sums: np.ndarray, n_outputs: int) -> dict[str, Any]:
    """Means and standard errors of one group from its sums `(4, M*F)`.

    **Returns:** `{"n", "mean_abs", "mean", "mean_sq"}`, each statistic a dict of
    `mean` and `se` arrays `(M, F)`; NaN where the group has too few rows.
    """
    s_a, s_abs, s_sq, s_fourth = (s.reshape(n_outputs, -1) for s in sums)
    n = float(count)
    out: dict[str, Any] = {"n": int(round(n))}
    for name, first, second in (("mean_abs", s_abs, s_sq), ("mean", s_a, s_sq), ("mean_sq", s_sq, s_fourth)):
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = first / n
            # Unbiased variance from the raw sums; clipped, since rounding can make it slightly negative.
            variance = np.maximum(second - first * first / n, 0) / (n - 1)
            se = np.sqrt(variance / n)
        out[name] = {"mean": np.where(n > 0, mean, np.nan), "se": np.where(n > 1, se, np.nan)}
    return out


def bootstrap_confidence(
    scores: np.ndarray, boot: np.ndarray, boot_count: np.ndarray, *, top_k: int, level: float = 0.95
) -> dict[str, Any]:
    """Confidence in a ranking from bootstrap replicates of the scores.

    **Arguments:** `scores` `(F,)`, the full-data scores; `boot` `(R, F)` and
    `boot_count` `(R,)`, each replicate's weighted score sums and weights.

    **Returns:** percentile intervals of each feature's score and rank (0 is
    the most important), how often each feature is in a replicate's top-k,
    the mean Jaccard overlap of the replicates' top-k with the full-data
    top-k (`top_k_stability`, 1 = always the same set) and the mean Spearman
    correlation of the replicates' scores with the full-data scores.
    """
    replicate = boot / np.maximum(boot_count, 1)[:, None]
    n_rep, n_feat = replicate.shape
    k = min(top_k, n_feat)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    ranks = _ranks(replicate)
    main_top = set(np.argsort(-scores, kind="stable")[:k].tolist())
    in_top = ranks < k
    jaccard = [len(main_top & set(np.flatnonzero(row).tolist())) / len(main_top | set(np.flatnonzero(row).tolist()))
               for row in in_top]  # fmt: skip
    main_ranks = _ranks(scores[None])[0]
    spearman = [_pearson(main_ranks, r) for r in ranks]
    return {
        "method": "poisson-bootstrap",
        "replicates": int(n_rep),
        "level": level,
        "score_low": np.percentile(replicate, lo, axis=0),
        "score_high": np.percentile(replicate, hi, axis=0),
        "rank_low": np.floor(np.percentile(ranks, lo, axis=0)).astype(int),
        "rank_high": np.ceil(np.percentile(ranks, hi, axis=0)).astype(int),
        "top_k_frequency": in_top.mean(axis=0),
        "top_k_stability": float(np.mean(jaccard)),
        "spearman_mean": float(np.mean(spearman)),
    }


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of each feature per row of `scores` `(R, F)`: 0 for the largest score (ties by index)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None].repeat(scores.shape[0], 0), axis=1)
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")
