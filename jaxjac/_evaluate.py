"""Evaluating a feature ranking: deletion and insertion curves, and a model-randomisation check.

A ranking of input features (most important first) is only as good as what the
model loses when those features go. `selection_curves` replaces the top-k
features with a baseline (deletion) or restores them onto the baseline
(insertion) and reports accuracy or agreement at each k, next to the same
curves for random rankings. `randomization_check` is the sanity check of
Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018): a ranking
that survives randomising the weights explains the input, not the model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import stats

from ._errors import JaxjacError
from ._graph import Graph
from ._graph_model import ModelSpec
from ._graph_model import batched_forward as _batched_forward
from ._interpret import with_default_numpy_rules
from ._model import ConvertedModel
from ._xla_options import jit

# A rank correlation below 0.5 means the trained ranking explains less than a
# quarter of the randomised one's rank variance (rho^2 < 0.25): the scores
# depend on what the weights learned. Demanding rho near 0 would fail sound
# methods, since gradients of a random network still follow the input's
# structure (Adebayo et al. 2018 see this for several methods).
SPEARMAN_THRESHOLD = 0.5

# A parameter tensor with no spread (one element, or constant like an
# untouched zero bias) has no scale to copy; it is drawn around its mean with
# a scale of its own magnitude, at least this, so that it is randomised too.
_MIN_SCALE = 1e-2


def selection_curves(
    model: ConvertedModel,
    x: np.ndarray,
    ranking: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    baseline: np.ndarray,
    n_steps: int = 16,
    n_random: int = 10,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Deletion and insertion curves of a feature ranking, against random rankings.

    Features are the `F = prod(sample_shape)` positions of a flattened sample.
    Deletion at k replaces every sample's top-k ranked features with the
    baseline; insertion at k starts from the baseline and restores them.

    **Arguments:**

    - `model`: a converted classifier, output `(K,)` logits per sample.
    - `x`: samples `(S, *sample_shape)`.
    - `ranking`: `(F,)` a permutation of the feature indices, most important first.
    - `labels`: `(S,)` integer classes; the metric is then accuracy. Without
      them it is agreement: the fraction of samples whose prediction equals
      the unmodified model's prediction on `x`.
    - `baseline`: `(*sample_shape)` the values imputed for absent features.
    - `n_steps`: the grid of k is `n_steps + 1` points from 0 to F (rounded, unique).
    - `n_random`: random rankings (at least 2) whose curves give the reference mean and spread.
    - `seed`: seed of the random rankings.
    - `batch_size`: model inputs per compiled forward call.

    **Returns:** a JSON-serialisable dict: `metric` (``"accuracy"`` or
    ``"agreement"``), `n_samples`, `n_random`, `k` (the grid), and for
    ``"deletion"`` and ``"insertion"`` each: `ranked`, `random_mean`,
    `random_std` (sample std, ddof=1, over the random rankings, per k) and
    `ranked_auc`, `random_auc` (trapezoid areas over k/F in [0, 1]). A good
    ranking has a low deletion AUC and a high insertion AUC.

    The model runs on `(2 * (n_random + 1) * (len(k) - 2) + 2) * S` inputs
    (k = 0 and k = F are shared by every ranking): 332,000 for S = 1000 with
    the defaults.

    >>> ranking = np.argsort(-np.abs(J).mean(0).ravel())                           # doctest: +SKIP
    >>> curves = selection_curves(model, X, ranking, labels=y, baseline=X.mean(0))  # doctest: +SKIP
    >>> curves["deletion"]["ranked_auc"] < curves["deletion"]["random_auc"]          # doctest: +SKIP
    True
    """
    x, ranking, baseline, labels = _check_inputs(model, x, ranking, labels, baseline)
    if n_steps < 1:
        raise JaxjacError(f"n_steps must be at least 1; got {n_steps}")
    if n_random < 2:
        raise JaxjacError(f"n_random must be at least 2 to give a spread; got {n_random}")
    if batch_size < 1:
        raise JaxjacError(f"batch_size must be a positive integer; got {batch_size}")
    n_features = ranking.shape[0]
    k = np.unique(np.round(np.linspace(0, n_features, n_steps + 1)).astype(np.int64))
    rng = np.random.default_rng(seed)
    rankings = np.stack([ranking, *(rng.permutation(n_features) for _ in range(n_random))])  # (R, F)
    # position[r, f]: where feature f stands in ranking r; the top-k are those with position < k.
    position = np.empty_like(rankings)
    np.put_along_axis(position, rankings, np.arange(n_features), axis=1)
    top = position[:, None, :] < k[None, :, None]  # (R, nk, F)
    keep = np.stack([~top, top])  # (2, R, nk, F): deletion keeps the rest, insertion the top-k
    # k = 0 and k = F give the same inputs for every ranking; evaluate each distinct mask once.
    masks, inverse = np.unique(keep.reshape(-1, n_features), axis=0, return_inverse=True)
    predictions = _predictions(model, x, baseline, masks, batch_size)  # (U, S)
    if labels is None:
        # Deletion at k = 0 keeps every feature: its predictions are the unmodified model's.
        target = predictions[inverse.reshape(keep.shape[:-1])[0, 0, 0]]
    else:
        target = labels
    # Integer counts first: equal curves then give a spread of exactly 0, not rounding noise.
    hits = (predictions == target).sum(axis=1)[inverse.reshape(-1)].reshape(keep.shape[:-1])  # (2, R, nk)
    n_samples = x.shape[0]
    fraction = k / n_features
    result: dict[str, Any] = {
        "metric": "agreement" if labels is None else "accuracy",
        "n_samples": int(n_samples),
        "n_random": int(n_random),
        "k": k.tolist(),
    }
    for name, counts in zip(("deletion", "insertion"), hits, strict=True):
        ranked = counts[0] / n_samples
        random_mean = counts[1:].mean(axis=0) / n_samples
        result[name] = {
            "ranked": ranked.tolist(),
            "random_mean": random_mean.tolist(),
            "random_std": (counts[1:].std(axis=0, ddof=1) / n_samples).tolist(),
            "ranked_auc": float(np.trapezoid(ranked, fraction)),
            # The area is linear in the curve: the mean curve's area is the mean of the random areas.
            "random_auc": float(np.trapezoid(random_mean, fraction)),
        }
    return result


def why_no_selection_curves(model: ConvertedModel) -> str | None:
    """Why the curves cannot rank `model`'s features, or `None` when they can.

    They follow the predicted class, the argmax of outputs `(K,)`: a model
    with one output (a regressor, or a binary classifier with one logit) has
    none that a removed feature could change.
    """
    if len(model.output_shape) != 1:
        return f"they need a classifier with outputs (K,) per sample; this model's are {model.output_shape}"
    if model.output_shape[0] < 2:
        return "the model has one output, so no predicted class for removed features to change"
    return None


def _check_inputs(
    model: ConvertedModel, x: Any, ranking: Any, labels: Any, baseline: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate and convert: `x` `(S, F)`, `ranking` `(F,)`, `baseline` `(F,)`, `labels` `(S,)` or None."""
    sample_shape = model.sample_shape
    n_features = math.prod(sample_shape)
    reason = why_no_selection_curves(model)
    if reason:
        raise JaxjacError(f"no selection curves: {reason}")
    x = np.asarray(x)
    if x.ndim < 1 or tuple(x.shape[1:]) != sample_shape or x.shape[0] < 1:
        raise JaxjacError(f"x must be samples (S, *{sample_shape}) with S >= 1; got shape {x.shape}")
    ranking = np.asarray(ranking)
    if ranking.shape != (n_features,):
        raise JaxjacError(
            f"ranking must hold all {n_features} feature indices (prod of {sample_shape}); got shape {ranking.shape}"
        )
    if not np.issubdtype(ranking.dtype, np.integer):
        raise JaxjacError(f"ranking must hold integer feature indices; got dtype {ranking.dtype}")
    if not np.array_equal(np.sort(ranking), np.arange(n_features)):
        raise JaxjacError(f"ranking must be a permutation of 0..{n_features - 1}; it repeats or misses indices")
    baseline = np.asarray(baseline)
    if baseline.shape != sample_shape:
        raise JaxjacError(
            f"baseline must have one sample's shape {sample_shape}; got {baseline.shape} "
            f"(for a constant use np.full({sample_shape}, value))"
        )
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (x.shape[0],):
            raise JaxjacError(f"labels have shape {labels.shape}; expected ({x.shape[0]},), one per sample of x")
        n_classes = model.output_shape[0]
        if not np.issubdtype(labels.dtype, np.integer):
            raise JaxjacError(f"labels must be integer classes in 0..{n_classes - 1}; got dtype {labels.dtype}")
        if labels.min() < 0 or labels.max() >= n_classes:
            raise JaxjacError(
                f"labels must be integer classes in 0..{n_classes - 1}; got values from {labels.min()} to {labels.max()}"
            )
    dtype = model.dtype
    return (
        x.reshape(x.shape[0], n_features).astype(dtype, copy=False),
        ranking.astype(np.int64),
        baseline.reshape(n_features).astype(dtype),
        labels,
    )


def _predictions(
    model: ConvertedModel, x: np.ndarray, baseline: np.ndarray, masks: np.ndarray, batch_size: int
) -> np.ndarray:
    """Argmax predictions `(U, S)` on `where(masks[u], x[s], baseline)`, in fixed-shape compiled calls.

    `x` is `(S, F)`, `baseline` `(F,)`, `masks` `(U, F)` bool. Each call takes
    `B` samples and `M` masks (`M * B <= batch_size` when S allows), padded,
    so there is one compilation however many calls.
    """
    n_samples, n_masks = x.shape[0], masks.shape[0]
    chunks = -(-n_samples // batch_size)
    per_call = -(-n_samples // chunks)  # B: balance the chunks so that little padding is wasted
    masks_per_call = max(1, batch_size // per_call)  # M: fill the batch when S is small
    x = np.concatenate([x, np.zeros((chunks * per_call - n_samples, x.shape[1]), x.dtype)])
    mask_calls = -(-n_masks // masks_per_call)
    masks = np.concatenate([masks, np.ones((mask_calls * masks_per_call - n_masks, masks.shape[1]), bool)])
    run = _predict_fn(model.graph, model.spec)
    tensors = model.tensors()
    # Dispatch everything before reading back, so the host loop overlaps the compute.
    pending = [
        [
            run(tensors, x[s : s + per_call], baseline, masks[m : m + masks_per_call])
            for s in range(0, chunks * per_call, per_call)
        ]
        for m in range(0, mask_calls * masks_per_call, masks_per_call)
    ]
    out = np.block([[np.asarray(p) for p in row] for row in pending])
    return out[:n_masks, :n_samples]


@functools.lru_cache(maxsize=16)
def _predict_fn(graph: Graph, spec: ModelSpec) -> Callable[..., jax.Array]:
    # One jitted function per model structure, like `_batched_forward`.
    forward = _batched_forward(graph, spec)

    @with_default_numpy_rules
    def predict(tensors: dict[str, jax.Array], x: jax.Array, baseline: jax.Array, masks: jax.Array) -> jax.Array:
        # The imputed inputs are built on the device: (M, B, F) never exists on the host.
        inputs = jnp.where(masks[:, None, :], x[None], baseline[None, None])
        logits = forward(tensors, inputs.reshape(-1, *spec.sample_shape))
        return jnp.argmax(logits, axis=-1).reshape(masks.shape[0], x.shape[0]).astype(jnp.int32)

    return jit(predict)


def randomized_model(model: ConvertedModel, seed: int = 0) -> ConvertedModel:
    """A copy of `model` with every trainable parameter redrawn at random.

    Each `nnx.Param` tensor is replaced by normal draws with that tensor's own
    mean and standard deviation, so every layer keeps its scale (activations
    neither vanish nor blow up) while what it learned is destroyed: the "full
    model randomisation" of Adebayo et al. (2018). Buffers (`jaxjac.Buffer`:
    BatchNorm running statistics and the like) are kept. A tensor with no
    spread is drawn with a scale of `max(|mean|, 1e-2)`.

    **Arguments:**

    - `model`: a converted model; it is not modified.
    - `seed`: seed of the draws.

    **Returns:** a new `ConvertedModel` with the same graph, buffers and shapes.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    drawn = []
    for leaf in leaves:
        value = np.asarray(leaf)
        if not np.issubdtype(value.dtype, np.floating) or value.size == 0:
            drawn.append(leaf)
            continue
        mean, std = float(value.mean()), float(value.std())
        scale = std if value.size > 1 and std > 0 else max(abs(mean), _MIN_SCALE)
        drawn.append(jnp.asarray(rng.normal(mean, scale, value.shape), dtype=value.dtype))
    # copy=True: merge would otherwise reuse the input's Variable objects, so the
    # two models would share buffers and an in-place write to one would show in the other.
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, drawn), rest, copy=True)


def randomization_check(
    model: ConvertedModel,
    x: np.ndarray,
    score_fn: Callable[[ConvertedModel, np.ndarray], np.ndarray],
    *,
    top_k: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """The model-randomisation sanity check: does the ranking change when the weights are random?

    **Arguments:**

    - `model`: the trained converted model.
    - `x`: samples `(S, *sample_shape)` passed to `score_fn`.
    - `score_fn`: `score_fn(model, x)` returns per-feature scores of `F =
      prod(sample_shape)` entries (any shape of that size), higher meaning more important.
    - `top_k`: size of the top sets compared.
    - `seed`: seed of `randomized_model`.

    **Returns:** a JSON-serialisable dict: `test` (``"model-randomisation"``),
    `spearman` (rank correlation of the trained and randomised scores; 0.0
    when the randomised scores are constant, since they then rank nothing),
    `top_k`, `top_k_overlap` (fraction of the trained top-k also in the
    randomised top-k) and `passed` (`spearman < SPEARMAN_THRESHOLD`).
    """
    n_features = math.prod(model.sample_shape)
    if not 1 <= top_k <= n_features:
        raise JaxjacError(f"top_k must be between 1 and the number of features {n_features}; got {top_k}")
    trained = _scores(score_fn(model, x), n_features, "the trained model")
    randomised = _scores(score_fn(randomized_model(model, seed), x), n_features, "the randomised model")
    if np.ptp(trained) == 0:
        raise JaxjacError("score_fn gives every feature the same score on the trained model; there is no ranking")
    rho = 0.0 if np.ptp(randomised) == 0 else float(stats.spearmanr(trained, randomised).statistic)
    top_trained = np.argsort(-trained, kind="stable")[:top_k]
    top_randomised = np.argsort(-randomised, kind="stable")[:top_k]
    overlap = len(np.intersect1d(top_trained, top_randomised)) / top_k
    return {
        "test": "model-randomisation",
        "spearman": rho,
        "top_k": int(top_k),
        "top_k_overlap": float(overlap),
        "passed": bool(rho < SPEARMAN_THRESHOLD),
    }


def _scores(scores: Any, n_features: int, which: str) -> np.ndarray:
    """`score_fn`'s output as finite float64 `(F,)`, or an error naming the model it came from."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.shape != (n_features,):
        raise JaxjacError(f"score_fn must return {n_features} scores, one per feature; got {scores.size} for {which}")
    if not np.all(np.isfinite(scores)):
        raise JaxjacError(f"score_fn returned non-finite scores for {which}")
    return scores
