"""Figures of a feature-importance report: the profile, the per-sample heatmap, the deletion/insertion curves.

Every function draws on its own `matplotlib.figure.Figure` with the Agg canvas, never on
pyplot: it opens no window, needs no display and leaves no figure behind. Each writes
`<stem>.png` (150 dpi) and `<stem>.svg` (text kept as text, so it can be edited and
searched) and returns both paths. A path ending in `.png` or `.svg` names the stem
without its suffix. matplotlib is imported only when a figure is drawn.

`report` is the content of `importance.json` (schema `jaxjac.importance/1`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ._errors import JaxjacError

_DPI = 150
_RC = {
    "svg.fonttype": "none",  # text stays text in the SVG
    "svg.hashsalt": "jaxjac",  # reproducible SVG ids
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_MAX_HEATMAP_ROWS = 4000  # more samples are shown as every k-th row of the class-sorted stack
_N_ANNOTATED = 10  # top features named on the profile
_METHODS = {
    "gradient": "gradient",
    "grad-x-input": "gradient × input",
    "integrated-gradients": "integrated gradients",
    "smoothgrad": "SmoothGrad",
    "smoothgrad-sq": "SmoothGrad²",
    "vargrad": "VarGrad",
}
_OUTPUTS = {"logits": "logit", "probs": "probability", "log_probs": "log-probability"}
_SCORES = {"mean_abs": "mean |attribution|", "mean": "mean attribution", "mean_sq": "mean attribution²"}
_METRICS = {"accuracy": "accuracy", "agreement": "agreement with the unperturbed prediction"}


def _matplotlib():
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise JaxjacError("plotting needs matplotlib: pip install matplotlib") from e
    return matplotlib, Figure, FigureCanvasAgg


def _stem(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix.lower() in (".png", ".svg") else path


def figure_stems(path: str | Path) -> dict[str, Path]:
    """Where `plot_all` puts each figure for `path`: `<stem>`, `<stem>-heatmap`, `<stem>-curves`."""
    stem = _stem(path)
    return {
        "profile": stem,
        "heatmap": stem.with_name(stem.name + "-heatmap"),
        "curves": stem.with_name(stem.name + "-curves"),
    }


def figure_files(path: str | Path) -> list[Path]:
    """Every file `plot_all` may write for `path`: each figure's PNG and SVG."""
    return [stem.with_name(stem.name + suffix) for stem in figure_stems(path).values() for suffix in (".png", ".svg")]


def _render(path: str | Path, figsize: tuple[float, float], draw: Callable) -> list[Path]:
    """Draw with `draw(fig)` on a fresh Agg figure and write `<stem>.png` and `<stem>.svg`."""
    matplotlib, Figure, FigureCanvasAgg = _matplotlib()
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=figsize, layout="constrained")
        FigureCanvasAgg(fig)
        draw(fig)
        fig.savefig(out[0], dpi=_DPI)
        fig.set_layout_engine("none")  # keep the layout just computed: the SVG needs no second pass
        fig.savefig(out[1], dpi=_DPI, metadata={"Date": None})
    return out


# -- reading the report --------------------------------------------------------------------------


def _vec(values) -> np.ndarray:
    """A feature vector; a nested `[M][F]` array (target "all") is averaged over its M outputs."""
    a = np.asarray(values, dtype=float)
    return a.reshape(-1, a.shape[-1]).mean(axis=0) if a.ndim > 1 else a


def _check(report) -> int:
    if not isinstance(report, dict) or "scores" not in report:
        found = sorted(report)[:8] if isinstance(report, dict) else type(report).__name__
        raise JaxjacError(
            f"`report`: expected an importance.json report (jaxjac.importance/1) with 'scores'; got {found}"
        )
    return len(_vec(report["scores"]))


def _layout(report, n_features: int) -> tuple[int, int]:
    """(channels, length) of the features; (1, F) unless `feature_shape` is (C, L) with C > 1."""
    shape = [int(s) for s in report.get("feature_shape") or [n_features]]
    if len(shape) >= 2 and int(np.prod(shape)) == n_features and int(np.prod(shape[:-1])) > 1:
        return int(np.prod(shape[:-1])), shape[-1]
    return 1, n_features


def _class_name(report, c) -> str:
    names = report.get("class_names") if report else None
    try:
        return str(names[int(c)]) if names and 0 <= int(c) < len(names) else f"class {c}"
    except (TypeError, ValueError):
        return f"class {c}"


def _class_colors(report, keys) -> dict:
    """One colour per class, the same in the profile and the heatmap (tab10, tab20, then viridis)."""
    import matplotlib

    names = (report or {}).get("class_names") or []
    try:
        ints = [int(k) for k in keys]
        n, index = max([len(names), *(i + 1 for i in ints)]), dict(zip(keys, ints, strict=True))
    except (TypeError, ValueError):
        n, index = len(keys), {k: i for i, k in enumerate(keys)}
    if n <= 10:
        return {k: matplotlib.colormaps["tab10"](index[k]) for k in keys}
    if n <= 20:
        return {k: matplotlib.colormaps["tab20"](index[k]) for k in keys}
    return {k: matplotlib.colormaps["viridis"](index[k] / max(n - 1, 1)) for k in keys}


def _class_groups(report, score: str) -> tuple[str, list[tuple[str, str, int, np.ndarray]]]:
    """The per-class curves: (kind, [(key, legend label, n, values)]), true classes if known, else predicted."""
    per_class = report.get("per_class") or {}
    kind = "true" if per_class.get("true") else "predicted"
    groups = per_class.get(kind) or {}
    keys = sorted(groups, key=lambda k: (0, int(k)) if str(k).lstrip("-").isdigit() else (1, str(k)))
    out = []
    for k in keys:
        g = groups[k]
        if not g or int(g.get("n", 0)) == 0:
            continue
        stat = g.get(score) or g["mean_abs"]
        out.append((k, _class_name(report, k), int(g["n"]), _vec(stat["mean"])))
    return kind, out


def _describe(report) -> str:
    method = _METHODS.get(report.get("method"), str(report.get("method", "attribution")))
    out = _OUTPUTS.get(report.get("output"), str(report.get("output", "output")))
    target = report.get("target")
    if target == "label":
        return f"{method} of the true-class {out}"
    if target == "predicted":
        return f"{method} of the predicted-class {out}"
    if target == "all":
        return f"{method}, averaged over every {out}"
    return f"{method} of the {out} of {_class_name(report, target)}"


def _feature_label(report, i: int, length: int, channels: int) -> str:
    names, wl = report.get("feature_names"), report.get("wavelengths")
    if names and len(names) > i:
        return str(names[i])
    c, pos = divmod(i, length)
    where = f"{wl[pos]:.4g}" if wl and len(wl) == length else f"#{pos}"
    return f"ch{c} {where}" if channels > 1 else where


def _value_ticks(ax, values) -> bool:
    """Label an index x axis with round values of the monotonic `values` (e.g. wavelengths)."""
    from matplotlib.ticker import MaxNLocator

    v = np.asarray(values, dtype=float)
    step = np.diff(v)
    if len(v) < 2 or not (np.all(step > 0) or np.all(step < 0)):
        return False
    ticks = MaxNLocator(nbins=8).tick_values(v.min(), v.max())
    ticks = ticks[(ticks >= v.min()) & (ticks <= v.max())]
    order = np.argsort(v)
    ax.set_xticks(np.interp(ticks, v[order], np.arange(len(v))[order]), [f"{t:g}" for t in ticks])
    return True


# -- the profile ---------------------------------------------------------------------------------


def plot_profile(report: dict, path: str | Path, *, per_class: bool = True) -> list[Path]:
    """The importance profile over features, with its bootstrap band, per-class curves and the top-k.

    One-channel data (`feature_shape` (1, L) or (L,)) gives a line over the features
    (over `wavelengths` when the report has them): the overall score, its bootstrap
    confidence band, one curve per class (true classes, else predicted; empty classes
    are left out), the top-k features marked on the curve and as ticks on the axis, the
    first ten of them named, and below, how often each feature lands in the bootstrap
    top-k. Multi-channel data (C, L) gives a channels × positions heatmap of the overall
    score with the top-k ringed, its channel-averaged profile per class above, and the
    per-channel mean per class beside it; per-feature confidence bounds do not combine
    into a band for an average, so none is drawn there.

    **Arguments:**
    - `report`: the importance report (the content of `importance.json`).
    - `path`: where to write; `.png`/`.svg` is stripped and both are written.
    - `per_class`: draw the per-class curves.

    **Returns:** the written paths, `[<stem>.png, <stem>.svg]`.
    """
    n_features = _check(report)
    channels, length = _layout(report, n_features)
    if channels > 1:
        return _render(path, (11, 6.5), lambda fig: _profile_channels(fig, report, per_class, channels, length))
    return _render(path, (11, 6), lambda fig: _profile_1d(fig, report, per_class, n_features))


def _profile_1d(fig, report, per_class: bool, n_features: int) -> None:
    score = report.get("score", "mean_abs")
    scores = _vec(report["scores"])
    wl, names = report.get("wavelengths"), report.get("feature_names")
    x = np.asarray(wl, dtype=float) if wl and len(wl) == n_features else np.arange(n_features, dtype=float)
    conf = report.get("confidence")
    freq = _vec(conf["top_k_frequency"]) if conf and conf.get("top_k_frequency") is not None else None
    if freq is not None:
        gs = fig.add_gridspec(2, 1, height_ratios=[3.3, 1])
        ax, axf = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
        axf.sharex(ax)
        ax.tick_params(labelbottom=False)
    else:
        ax, axf = fig.add_subplot(), None

    tops = [scores]
    if conf:
        lo, hi = _vec(conf["score_low"]), _vec(conf["score_high"])
        level, reps = conf.get("level", 0.95), conf.get("replicates")
        ax.fill_between(
            x, lo, hi, color="0.55", alpha=0.35, lw=0, label=f"{level:.0%} bootstrap band ({reps} replicates)"
        )
        tops.append(hi)
    ax.plot(x, scores, color="k", lw=1.6, zorder=3, label=f"all samples (n={report.get('n_samples', '?')})")
    kind, groups = _class_groups(report, score) if per_class else ("true", [])
    colors = _class_colors(report, [k for k, *_ in groups])
    for k, label, n, values in groups:
        ax.plot(x, values, color=colors[k], lw=1.1, alpha=0.9, zorder=2, label=f"{label} (n={n})")
        tops.append(values)

    top_k = report.get("top_k") or {}
    feats = np.asarray(top_k.get("features") or report["ranking"][:20], dtype=int)
    if feats.size:
        ax.plot(x[feats], scores[feats], "o", ms=4, mfc="white", mec="k", mew=1, zorder=4, label=f"top {len(feats)}")
        ax.vlines(x[feats], 0, 0.035, transform=ax.get_xaxis_transform(), color="k", lw=1, zorder=4)
    # Name up to ten distinct places of the top-k, best first; a feature next to one named already is skipped.
    ceiling = np.nanmax(tops, axis=0)
    gap = (float(np.ptp(x)) or 1.0) * (11 / 72) / (0.7 * fig.get_figwidth())
    name_ticks = not wl and names and len(names) == n_features and n_features <= 40  # names on the axis already
    named: list[tuple[float, str]] = []
    for rank, f in enumerate(feats, start=1):
        if len(named) < _N_ANNOTATED and all(abs(x[f] - u) >= gap for u, _ in named):
            label = "" if name_ticks else f": {_feature_label(report, int(f), n_features, 1)}"
            named.append((x[f], f"{rank}{label}"))
    order = np.argsort(x)
    for u, text in named:
        # Start the name above every curve under its width, between samples too.
        under = ceiling[np.abs(x - u) <= gap / 2]
        edges = np.interp([u - gap / 2, u + gap / 2], x[order], ceiling[order])
        ax.annotate(
            text,
            (u, np.nanmax([*under, *edges])),
            xytext=(0, 4),
            textcoords="offset points",
            rotation=0 if name_ticks else 90,
            ha="center",
            va="bottom",
            fontsize=7,
            color="0.15",
        )
    # Leave room above the highest curve for the longest name (about 4.2 pt a character at 7 pt).
    height = 72 * fig.get_figheight() * (0.62 if freq is not None else 0.8)
    room = min(0.5, (8 + 4.2 * max((len(t) for _, t in named), default=0)) / height)
    peak = float(np.nanmax(ceiling, initial=0.0))
    top = peak / (1 - room) if peak > 0 else 1.0
    low = float(np.nanmin(np.r_[scores, ceiling, 0.0]))  # a signed score ("mean") can go below 0
    ax.set_ylim(low - 0.04 * (top - low) if low < 0 else 0.0, top)
    ax.set_xlim((x.min(), x.max()) if np.ptp(x) > 0 else (x[0] - 0.5, x[0] + 0.5))
    ax.set_ylabel(_SCORES.get(score, score))
    ax.set_title(f"Feature importance: {_describe(report)}", loc="left")
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        frameon=False,
        alignment="left",
        title=f"per {kind} class" if groups else None,
    )

    bottom = axf if axf is not None else ax
    if axf is not None:
        axf.fill_between(x, freq, step="mid", color="0.35", lw=0)
        axf.set_ylim(0, 1.05)
        axf.set_ylabel(f"in top-{top_k.get('k', len(feats))}\n(share of replicates)")
        notes = [
            f"{name} {conf[key]:.2f}"
            for key, name in (("top_k_stability", "top-k stability"), ("spearman_mean", "mean Spearman ρ"))
            if conf.get(key) is not None
        ]
        axf.text(1.01, 0.5, "\n".join(notes), transform=axf.transAxes, va="center", fontsize=8)
    if wl and len(wl) == n_features:
        bottom.set_xlabel("wavelength")
    elif name_ticks:
        bottom.set_xticks(x, [str(s) for s in names], rotation=60, ha="right")
        bottom.set_xlabel("feature")
    else:
        bottom.set_xlabel("feature index")


def _profile_channels(fig, report, per_class: bool, channels: int, length: int) -> None:
    score = report.get("score", "mean_abs")
    grid = _vec(report["scores"]).reshape(channels, length)
    gs = fig.add_gridspec(2, 2, width_ratios=[5, 1.2], height_ratios=[1.3, 2.2])
    axp, axh, axc = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[1, 0]), fig.add_subplot(gs[1, 1])
    axh.sharex(axp)
    axc.sharey(axh)
    axp.tick_params(labelbottom=False)
    x, rows = np.arange(length), np.arange(channels)

    kind, groups = _class_groups(report, score) if per_class else ("true", [])
    colors = _class_colors(report, [k for k, *_ in groups])
    axp.plot(x, grid.mean(axis=0), color="k", lw=1.5, label=f"all samples (n={report.get('n_samples', '?')})")
    axc.barh(rows, grid.mean(axis=1), color="0.78", height=0.8)
    for k, label, n, values in groups:
        per = values.reshape(channels, length)
        axp.plot(x, per.mean(axis=0), color=colors[k], lw=1.0, alpha=0.9, label=f"{label} (n={n})")
        axc.plot(per.mean(axis=1), rows, "o", ms=3.5, color=colors[k])
    axp.set_xlim(-0.5, length - 0.5)
    axp.set_ylim(bottom=0)
    axp.set_ylabel(f"{_SCORES.get(score, score)}\n(mean over channels)")
    axp.set_title(f"Feature importance: {_describe(report)}", loc="left")

    im = axh.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0)
    top_k = report.get("top_k") or {}
    feats = np.asarray(top_k.get("features") or report["ranking"][:20], dtype=int)
    axh.plot(feats % length, feats // length, "o", ms=6, mfc="none", mec="#ff3b30", mew=1.2, label=f"top {len(feats)}")
    step = max(1, int(np.ceil(channels / 16)))
    axh.set_yticks(rows[::step], [f"ch{c}" for c in rows[::step]])
    axh.set_ylabel("channel")
    axh.set_xlabel("position")
    wl = report.get("wavelengths")
    if wl and len(wl) == length and _value_ticks(axh, wl):
        axh.set_xlabel("wavelength")
    conf = report.get("confidence") or {}
    stability = f"; top-k stability {conf['top_k_stability']:.2f}" if conf.get("top_k_stability") is not None else ""
    axh.set_title(f"All samples by channel and position, top {len(feats)} ringed{stability}", loc="left", fontsize=9)
    axc.set_title("mean per channel\n(bars: all samples)", fontsize=8)
    axc.set_xlabel(_SCORES.get(score, score))
    axc.tick_params(labelleft=False)
    axc.set_xlim(left=0)
    fig.colorbar(im, ax=axc, location="right", label=_SCORES.get(score, score), shrink=0.9)
    handles, labels = axp.get_legend_handles_labels()
    h2, l2 = axh.get_legend_handles_labels()
    legend = fig.add_subplot(gs[0, 1])
    legend.axis("off")
    legend.legend(
        handles + h2,
        labels + l2,
        loc="center left",
        frameon=False,
        alignment="left",
        title=f"per {kind} class" if groups else None,
    )


# -- the heatmap ---------------------------------------------------------------------------------


def plot_heatmap(
    attributions: np.ndarray,
    classes: np.ndarray | None,
    path: str | Path,
    *,
    report: dict | None = None,
    class_kind: str = "true",
) -> list[Path]:
    """A heatmap of per-sample attributions, samples sorted (stably) by class.

    Signed attributions get a diverging map centred at 0, non-negative ones a
    sequential map from white; the colour limit is the 99th percentile of |a| (beyond
    it the colour saturates). Classes are separated by lines and named, with their
    sample counts, on a strip on the left in the profile's colours. Multi-channel
    features are shown channel after channel, separated by thin lines. More than 4000
    samples are shown as evenly spaced rows of the sorted stack, which keeps the
    class proportions.

    **Arguments:**
    - `attributions`: `(S, F)` or `(S, *feature_shape)`.
    - `classes`: `(S,)` class of each sample, or `None` for one group.
    - `path`: where to write; `.png`/`.svg` is stripped and both are written.
    - `report`: the importance report, for wavelengths, class names, the method and the layout.
    - `class_kind`: what `classes` holds, `"true"` or `"predicted"`, for the axis label.

    **Returns:** the written paths, `[<stem>.png, <stem>.svg]`.
    """
    a = np.asarray(attributions, dtype=float)
    if a.ndim < 2 or a.shape[0] == 0:
        raise JaxjacError(
            f"`attributions`: expected (samples, features...) with at least one sample; got shape {a.shape}"
        )
    a = a.reshape(a.shape[0], -1)
    n_samples, n_features = a.shape
    cls = np.zeros(n_samples, dtype=int) if classes is None else np.asarray(classes).reshape(-1)
    if cls.shape[0] != n_samples:
        raise JaxjacError(
            f"`classes` holds {cls.shape[0]} entries; `attributions` holds {n_samples} samples: expected one per sample"
        )
    report = report or {}
    if report.get("n_features") not in (None, n_features):
        raise JaxjacError(f"`attributions` has {n_features} features per sample; the report has {report['n_features']}")
    order = np.argsort(cls, kind="stable")
    totals = dict(zip(*np.unique(cls, return_counts=True), strict=True))
    if n_samples > _MAX_HEATMAP_ROWS:
        order = order[np.linspace(0, n_samples - 1, _MAX_HEATMAP_ROWS).round().astype(int)]
    a, cls = a[order], cls[order]
    channels, length = _layout(report, n_features)

    def draw(fig):
        from matplotlib.colors import ListedColormap

        gs = fig.add_gridspec(1, 2, width_ratios=[0.025, 1], wspace=0.0)
        strip, ax = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
        ax.sharey(strip)
        finite = np.abs(a[np.isfinite(a)])
        v = float(np.percentile(finite, 99)) if finite.size else 0.0
        v = v or (float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
        signed = bool(finite.size and np.nanmin(np.where(np.isfinite(a), a, 0)) < 0)
        cmap, lim = ("RdBu_r", (-v, v)) if signed else ("Reds", (0.0, v))
        im = ax.imshow(a, aspect="auto", interpolation="auto", cmap=cmap, vmin=lim[0], vmax=lim[1])

        keys, starts = np.unique(cls, return_index=True)
        colors = _class_colors(report, list(keys))
        strip.imshow(
            np.searchsorted(keys, cls)[:, None],
            aspect="auto",
            interpolation="nearest",
            cmap=ListedColormap([colors[k] for k in keys]),
            vmin=-0.5,
            vmax=len(keys) - 0.5,
        )
        # A line between classes, unless a block is under 3 pt tall: there, lines would hide it.
        rows_per_pt = len(cls) / (fig.get_figheight() * 0.8 * 72)
        sizes = np.diff([*starts, len(cls)])
        for i, edge in enumerate(starts[1:], start=1):
            if min(sizes[i - 1], sizes[i]) >= 3 * rows_per_pt:
                for axis in (ax, strip):
                    axis.axhline(edge - 0.5, color="k", lw=0.9)
        # Name each class at its block's centre, dropping a name that would overlap the one before.
        ticks, labels, last = [], [], -np.inf
        for k, start, end in zip(keys, starts, [*starts[1:], len(cls)], strict=True):
            centre = (start + end - 1) / 2
            if centre - last >= 11 * rows_per_pt:
                ticks.append(centre)
                labels.append(f"{_class_name(report, k)} ({totals[k]})" if classes is not None else "all samples")
                last = centre
        strip.set_yticks(ticks, labels)
        strip.tick_params(axis="y", length=0)
        strip.set_xticks([])
        ax.tick_params(labelleft=False, left=False)
        for spine in ("left", "bottom"):
            strip.spines[spine].set_visible(False)
        shown = f"{len(cls)} evenly spaced of {n_samples}" if len(cls) < n_samples else f"{n_samples}"
        sort = f", sorted by {class_kind} class" if classes is not None else ""
        strip.set_ylabel(f"samples ({shown}){sort}")

        wl = report.get("wavelengths")
        if channels > 1:
            for c in range(1, channels):
                ax.axvline(c * length - 0.5, color="0.3", lw=0.6)
            step = max(1, int(np.ceil(channels / 16)))
            ax.set_xticks(
                [c * length + (length - 1) / 2 for c in range(0, channels, step)],
                [f"ch{c}" for c in range(0, channels, step)],
            )
            ax.tick_params(axis="x", length=0)
            ax.set_xlabel(f"feature (channel × position, {channels} × {length})")
        elif wl and len(wl) == n_features and _value_ticks(ax, wl):
            ax.set_xlabel("wavelength")
        else:
            ax.set_xlabel("feature index")
        method = _METHODS.get(report.get("method"), "attribution")
        clip = f"±{v:.3g}" if signed else f"{v:.3g}"
        fig.colorbar(
            im,
            ax=ax,
            extend="both" if signed else "max",
            shrink=0.9,
            pad=0.01,
            label=f"{method} attribution (colour clipped at {clip})",
        )
        title = f"Per-sample attributions: {_describe(report)}" if report.get("method") else "Per-sample attributions"
        ax.set_title(title, loc="left")

    return _render(path, (11, 6), draw)


# -- the curves ----------------------------------------------------------------------------------


def plot_curves(report: dict, path: str | Path) -> list[Path]:
    """Deletion and insertion curves: the metric as features go in ranking order against random order.

    Two panels share the y axis. Each draws the ranked curve against the mean of the
    random orders with ±1 and ±2 standard-deviation bands, the AUCs in the legend,
    over the number of features removed (restored) below and their fraction on top.

    **Arguments:**
    - `report`: the importance report, with its `evaluation` block.
    - `path`: where to write; `.png`/`.svg` is stripped and both are written.

    **Returns:** the written paths, `[<stem>.png, <stem>.svg]`.
    """
    n_features = _check(report)
    ev = report.get("evaluation")
    if not ev:
        raise JaxjacError("`report` has no deletion/insertion evaluation (its 'evaluation' is null); nothing to plot")

    def draw(fig):
        k = np.asarray(ev["k"], dtype=float)
        axes = fig.subplots(1, 2, sharey=True)
        metric = ev.get("metric", "accuracy")
        panels = (
            ("deletion", "Deletion: most important features removed first", "lower ranked AUC is better", "C3"),
            ("insertion", "Insertion: most important features restored first", "higher ranked AUC is better", "C0"),
        )
        for ax, (key, title, better, color) in zip(axes, panels, strict=True):
            d = ev[key]
            ranked, mean, std = (np.asarray(d[n], dtype=float) for n in ("ranked", "random_mean", "random_std"))
            ax.fill_between(k, mean - 2 * std, mean + 2 * std, color="0.88", lw=0, label="random ±2 std")
            ax.fill_between(k, mean - std, mean + std, color="0.74", lw=0, label="random ±1 std")
            ax.plot(k, mean, color="0.3", ls="--", lw=1.2, label=f"random order (AUC {d['random_auc']:.3f})")
            ax.plot(
                k,
                ranked,
                color=color,
                lw=1.8,
                marker="o" if len(k) <= 40 else None,
                ms=3,
                label=f"ranked order (AUC {d['ranked_auc']:.3f})",
            )
            ax.set_xlim(0, max(n_features, float(k.max())))
            ax.set_title(f"{title}\n{better}", loc="left")
            ax.set_xlabel(f"features {'removed' if key == 'deletion' else 'restored'} (of {n_features})")
            handles, labels = ax.get_legend_handles_labels()
            ax.legend(handles[::-1], labels[::-1], loc="best")
            top = ax.secondary_xaxis("top", functions=(lambda v: v / n_features, lambda f: f * n_features))
            top.set_xlabel("fraction of features", fontsize=8)
            ax.grid(alpha=0.25, lw=0.6)
        axes[0].set_ylabel(_METRICS.get(metric, metric))
        if metric in _METRICS:
            axes[0].set_ylim(0, 1.02)
        fig.suptitle(
            f"Feature ranking by {_describe(report)}: {ev.get('n_samples', '?')} samples, "
            f"{ev.get('n_random', '?')} random orders",
            fontsize=10,
        )

    return _render(path, (11, 4.6), draw)


def plot_all(
    report: dict,
    path: str | Path,
    *,
    attributions: np.ndarray | None = None,
    classes: np.ndarray | None = None,
) -> list[Path]:
    """Every figure of a report: `<stem>` (profile), `<stem>-heatmap` and `<stem>-curves`, each PNG and SVG.

    The heatmap is drawn when `attributions` are given, sorted by `classes` (taken as
    true labels when the report has per-true-class scores, else as predicted classes);
    the curves when the report has an evaluation.

    **Returns:** all written paths, profile first.
    """
    stems = figure_stems(path)
    out = plot_profile(report, stems["profile"])
    if attributions is not None:
        kind = "true" if (report.get("per_class") or {}).get("true") else "predicted"
        out += plot_heatmap(attributions, classes, stems["heatmap"], report=report, class_kind=kind)
    if report.get("evaluation"):
        out += plot_curves(report, stems["curves"])
    return out
