"""Derived metrics (ratios, closeness to the limit, targets) and the Markdown report."""

from __future__ import annotations

import datetime
import platform
from typing import Any

from .baselines import (
    BASELINES,
    JAXJAC_ALL,
    JAXJAC_ON_DEVICE,
    JAXJAC_PREDICTED,
    JAXJAC_STREAMED,
    JAXJAC_STREAMED_PREDICTED,
)

K_DEFAULT = 3
TORCH_BEST = ("torch best", "torch best + compile", "torch best (pinned host)")
# jaxjac's side of a target, like torch's: the faster of its host-to-host forms, the per-batch function
# and the whole-dataset call (which overlaps transfers on GPUs and costs ~3 ms more per call on CPUs).
ALL = (JAXJAC_STREAMED, JAXJAC_ALL)
PREDICTED = (JAXJAC_STREAMED_PREDICTED, JAXJAC_PREDICTED)
# (name, devices, jaxjac baselines, compared baselines (on each side the fastest that ran counts),
# minimum ratio: None for a ratio reported without a target)
TARGETS = (
    ("full Jacobian >= 1.3x torch best", ("cpu",), ALL, TORCH_BEST, 1.3),
    ("full Jacobian >= 4x torch.func vmap(jacrev)", ("cpu",), ALL, ("torch.func vmap(jacrev)",), 4.0),
    ("full Jacobian >= 5x the seed loop", ("cpu",), ALL, ("seed loop",), 5.0),
    ("target predicted >= 2.5x the full Jacobian", ("cpu",), PREDICTED, ALL, 2.5),
    ("full Jacobian >= 2x torch best", ("gpu",), ALL, TORCH_BEST, 2.0),
    (
        "on the device, no transfers: jaxjac / torch best",
        ("gpu",),
        (JAXJAC_ON_DEVICE,),
        ("torch best (on device)",),
        None,
    ),
)
# "jaxjac ×": the row's rate against jaxjac's default method for the same target and data placement.
REFERENCE = {
    ("all", "batch"): JAXJAC_ALL,
    ("all", "stream"): JAXJAC_ALL,
    ("predicted", "batch"): JAXJAC_PREDICTED,
    ("predicted", "stream"): JAXJAC_PREDICTED,
    ("all", "resident"): JAXJAC_ON_DEVICE,
}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: str) -> dict[str, Any]:
    """What ran the benchmark: the device kind as JAX names it, the CPU, versions."""
    import os

    import jax
    import torch

    import jaxjac

    info: dict[str, Any] = {
        "device": device,
        "device_kind": jax.devices()[0].device_kind,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "versions": {
            "jaxjac": jaxjac.__version__,
            "jax": jax.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    if device == "gpu" and torch.cuda.is_available():
        info["torch_device"] = torch.cuda.get_device_name(0)
    return info


def slug(info: dict[str, Any]) -> str:
    """A file-name-safe device name: the GPU kind, or the CPU model."""
    name = info["device_kind"] if info["device"] == "gpu" else info["cpu_model"]
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower() or "unknown"


def _rate(entry: dict[str, Any], baseline: str) -> float | None:
    result = entry["baselines"].get(baseline)
    return result["samples_per_s"] if result and result.get("status") == "ok" else None


def add_derived(models: dict[str, Any], device: str, n_outputs: int = K_DEFAULT) -> None:
    """Add jaxjac's ratio to every baseline, the closeness to the limit and the targets, in place."""
    for entry in models.values():
        for name, result in entry["baselines"].items():
            reference = REFERENCE.get((result.get("target"), BASELINES[name].mode))
            mine, theirs = reference and _rate(entry, reference), _rate(entry, name)
            if mine and theirs:
                result["jaxjac_ratio"] = mine / theirs
        entry["limit"] = limit(entry, n_outputs)
        entry["targets"] = targets(entry, device)


def limit(entry: dict[str, Any], k: int) -> dict[str, Any]:
    """Closeness to the limit; see bench/README.md ("The limit")."""
    forward, vjp = _rate(entry, "jaxjac forward"), _rate(entry, "jaxjac one VJP")
    if not forward or not vjp:
        return {}
    t_forward, t_vjp = 1 / forward, 1 / vjp
    t_backward = max(t_vjp - t_forward, 0.0)
    out: dict[str, Any] = {"forward_per_s": forward, "vjp_per_s": vjp, "backward_over_forward": t_backward / t_forward}
    for name, kind in (
        ("jaxjac vmap-jacrev", k),
        ("jaxjac batched-vjp", k),
        ("jaxjac vmap-jacrev (predicted)", 1),
        ("jaxjac batched-vjp (predicted)", 1),
    ):
        rate = _rate(entry, name)
        if rate:
            ideal = t_forward + kind * t_backward
            out[name] = {"fraction_of_forward_rate": rate / forward, "time_over_ideal": (1 / rate) / ideal}
    return out


def targets(entry: dict[str, Any], device: str) -> list[dict[str, Any]]:
    rows = []
    for name, devices, mine, others, minimum in TARGETS:
        if device not in devices:
            continue
        ours = [(m, r) for m in mine if (r := _rate(entry, m))]
        available = [(o, r) for o in others if (r := _rate(entry, o))]
        if not ours or not available:
            rows.append({"target": name, "status": "n/a"})
            continue
        jaxjac = max(ours, key=lambda item: item[1])
        against, theirs = max(available, key=lambda item: item[1])
        ratio = jaxjac[1] / theirs
        status = "—" if minimum is None else "PASS" if ratio >= minimum else "FAIL"
        rows.append(
            {
                "target": name,
                "jaxjac": jaxjac[0],
                "against": against,
                "ratio": ratio,
                "minimum": minimum,
                "status": status,
            }
        )
    return rows


def assemble(models: dict[str, Any], info: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    add_derived(models, info["device"])
    return {"date": datetime.date.today().isoformat(), "machine": info, "settings": settings, "models": models}


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _batch(baseline: str, result: dict[str, Any]) -> str:
    """The batch size a row ran at: its fastest, "auto" for a library call, 1 for the per-sample loop."""
    if BASELINES[baseline].per_sample:
        return "1"
    if BASELINES[baseline].mode == "stream":
        return "auto"
    return str(result.get("batch_size", "—"))


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# jaxjac benchmark, {report['date']}",
        "",
        f"Device: **{m['device_kind']}** ({m['device']}); CPU: {m['cpu_model']} ({m['cpu_count']} cores); "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + ".",
        f"Settings: {', '.join(f'{k}={v}' for k, v in report['settings'].items())}.",
        "",
        "jaxjac × = jaxjac's default method (vmap-jacrev) for the same target and data placement divided by "
        "the row's rate. Rows marked (streamed) are one `jaxjac.jacobian(model, X)` call on the whole host array, "
        "at the library's own batch size; (on device) rows take inputs already on the GPU and leave results there. "
        "Every other batched row ran at each of the settings' batch sizes; it shows its fastest, and the batch "
        "size that gave it.",
        "",
        "| model | baseline | target | batch | samples/s | jaxjac × | compile s | peak RSS MB | device peak MB "
        "| max rel err |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, entry in report["models"].items():
        for baseline, r in entry["baselines"].items():
            if r.get("status") != "ok":
                reason = r.get("reason", "").replace("|", "/")
                lines.append(f"| {name} | {baseline} | {r.get('target', '')} | | n/a: {reason} | | | | | |")
                continue
            note = " †" if r.get("note") else ""
            lines.append(
                f"| {name} | {baseline}{note} | {r['target']} | {_batch(baseline, r)} | {_fmt(r['samples_per_s'])} | "
                f"{_fmt(r.get('jaxjac_ratio'), 2)} | {_fmt(r['compile_s'], 1)} | {_fmt(r['peak_rss_mb'])} | "
                f"{_fmt(r.get('device_peak_mb'))} | {r['max_rel_err']:.1e} |"
            )
    notes = {r["note"] for e in report["models"].values() for r in e["baselines"].values() if r.get("note")}
    lines += [f"\n† {note}" for note in sorted(notes)]
    lines += [
        "",
        "## Closeness to the limit",
        "",
        "ideal = T_forward + K·T_backward, T_backward = T_oneVJP − T_forward (K = 1 for predicted).",
        "",
        "| model | forward/s | one VJP/s | backward/forward | method | fraction of forward rate | time / ideal |",
        "|---|--:|--:|--:|---|--:|--:|",
    ]
    for name, entry in report["models"].items():
        lim = entry.get("limit") or {}
        for method, v in lim.items():
            if isinstance(v, dict):
                lines.append(
                    f"| {name} | {_fmt(lim['forward_per_s'])} | {_fmt(lim['vjp_per_s'])} | "
                    f"{lim['backward_over_forward']:.2f} | {method} | {v['fraction_of_forward_rate']:.3f} | "
                    f"{v['time_over_ideal']:.2f} |"
                )
    rows = [(name, e["precision"]) for name, e in report["models"].items() if e.get("precision")]
    if rows:
        lines += [
            "",
            "## Precision (full Jacobian, vmap-jacrev)",
            "",
            "| model | precision | samples/s | max rel err vs float64 | median row rel err |",
            "|---|---|--:|--:|--:|",
        ]
        for name, p in rows:
            if p.get("status") != "ok":
                lines.append(f"| {name} | n/a: {p.get('reason', '')} | | | |")
                continue
            for precision, v in p["precisions"].items():
                median = v.get("median_row_rel_err_vs_f64")
                lines.append(
                    f"| {name} | {precision} | {_fmt(v['samples_per_s'])} | {v['max_rel_err_vs_f64']:.1e} | "
                    f"{'—' if median is None else f'{median:.1e}'} |"
                )
    lines += [
        "",
        "## Targets",
        "",
        "| model | target | jaxjac | against | ratio | result |",
        "|---|---|---|---|--:|---|",
    ]
    for name, entry in report["models"].items():
        for t in entry["targets"]:
            lines.append(
                f"| {name} | {t['target']} | {t.get('jaxjac', '—')} | {t.get('against', '—')} | "
                f"{_fmt(t.get('ratio'), 2)} | {t['status']} |"
            )
    return "\n".join(lines) + "\n"
