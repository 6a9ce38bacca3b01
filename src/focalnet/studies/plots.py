"""The figures of a report: acc_vs_<key>.png and acc_vs_flops.png, forest.png (each row's Δ and interval) and
curves.png (validation top-1 per epoch)."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from focalnet.record import Status
from focalnet.studies.analysis import study_design
from focalnet.studies.markdown import verdict_text
from focalnet.studies.runs import Run, cell, run_curve, sort_key
from focalnet.studies.sequential import Design


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return path


def plot(out: Path, configs: list[dict], keys: list[str], baseline: dict | None = None) -> list[Path]:
    """acc_vs_<key>.png for each swept key: every seed's top-1 as a dot and the mean as a bar, the baseline's tick
    marked, no lines between settings (they are categories, not a scale); acc_vs_flops.png only where the settings'
    FLOPs all differ (equal FLOPs would stack at one x; a stale one is removed)."""
    import matplotlib.ticker

    plt = pyplot()
    baseline = baseline or {}
    configs = [c for c in configs if c["test_acc_mean"] is not None]
    if not configs:
        return []
    paths = []
    for axis in keys:
        ticks = sorted({c[axis] for c in configs}, key=sort_key)
        others = [k for k in keys if k != axis]
        groups = sorted({tuple(c[k] for k in others) for c in configs}, key=lambda g: [sort_key(v) for v in g])
        width = 0.6 / len(groups)
        fig, ax = plt.subplots(figsize=(6, 4))
        for g, rest in enumerate(groups):
            cs = [c for c in configs if tuple(c[k] for k in others) == rest]
            offset = (g - (len(groups) - 1) / 2) * width
            label = ", ".join(f"{k}={cell(v)}" for k, v in zip(others, rest)) or None
            color = f"C{g}"
            for c in cs:
                x = ticks.index(c[axis]) + offset
                accs = [100 * j.test_top1 for js in c["jobs_by_seed"].values() for j in js]
                ax.plot([x] * len(accs), accs, "o", color=color, alpha=0.45, markersize=4)
                ax.hlines(100 * c["test_acc_mean"], x - width / 2.5, x + width / 2.5, color=color, linewidth=2.5,
                          label=label if c is cs[0] else None)
        labels = [f"{cell(t)}\n(baseline)" if axis in baseline and t == baseline[axis] else cell(t) for t in ticks]
        ax.set(xticks=range(len(ticks)), xticklabels=labels, xlabel=axis,
               ylabel="test top-1 (%): seeds (dots), mean (bar)", title=f"Test top-1 against {axis}")
        if others:
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3, axis="y")
        safe = re.sub(r"[^\w.-]", "_", axis)
        paths.append(save(fig, out / f"acc_vs_{safe}.png"))
    points = [c for c in configs if c["flops"]]
    flops_path = out / "acc_vs_flops.png"
    if len(points) > 1 and len({c["flops"] for c in points}) == len(points):
        fig, ax = plt.subplots(figsize=(6, 4))
        for c in points:
            base = bool(c.get("is_baseline"))
            ax.plot(c["flops"], 100 * c["test_acc_mean"], "*" if base else "o", markersize=12 if base else 6,
                    color="C1" if base else "C0", label="baseline" if base else None)
            label = ", ".join(f"{k.rsplit('.', 1)[-1]}={cell(c[k])}" for k in keys)
            ax.annotate(label, (c["flops"], 100 * c["test_acc_mean"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        flops = [c["flops"] for c in points]
        if max(flops) / min(flops) > 10:
            ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter())
        ax.set(xlabel="FLOPs (MACs)", ylabel="test top-1 (%), mean over seeds", title="Test top-1 against FLOPs")
        if any(c.get("is_baseline") for c in points):
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        paths.append(save(fig, flops_path))
    else:
        flops_path.unlink(missing_ok=True)
    return paths


def plot_forest(out: Path, configs: list[dict], keys: list[str], design: Design) -> Path | None:
    """forest.png: each row's Δ against the baseline with its repeated confidence interval (the verdict's own
    interval), 0 and the ±δ equivalence band marked; None without compared rows."""
    rows = [c for c in configs if c.get("n_pairs") is not None and c.get("delta") is not None]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.55 * len(rows)))
    ax.axvspan(-design.delta, design.delta, color="C2", alpha=0.12, label=f"±δ = ±{design.delta:g} (equivalent)")
    ax.axvline(0, color="black", linewidth=1)
    for y, c in enumerate(reversed(rows)):
        color = {"better": "C0", "worse": "C3", "equivalent": "C2"}.get(c["verdict"], "0.4")
        if c["ci_low"] is not None:
            ax.plot([c["ci_low"], c["ci_high"]], [y, y], color=color, linewidth=2.5)
        ax.plot(c["delta"], y, "o", color=color, markersize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([", ".join(f"{k.rsplit('.', 1)[-1]}={cell(c[k])}" for k in keys)
                        + f"\n{verdict_text(c, design)}, n={c['n_pairs']}" for c in reversed(rows)], fontsize=8)
    ax.set(xlabel="Δ test top-1 vs baseline (points), repeated confidence interval",
           title=f"Paired differences, α = {design.alpha:g} family-wise over {design.rows} row(s)")
    # Outside the axes: with one or two rows any place inside covers an interval.
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, axis="x")
    return save(fig, out / "forest.png")


def plot_curves(out: Path, runs: list[Run], configs: list[dict], keys: list[str]) -> Path | None:
    """curves.png: validation top-1 per epoch, one line per configuration (mean over its completed seeds, band
    min-max), the baseline thicker; None when no job logged a curve."""
    curves: dict[tuple, list[dict]] = {}
    for r in runs:
        curve = run_curve(r) if r.status == Status.COMPLETED else {}
        if curve:
            curves.setdefault(tuple(r.overrides.get(k) for k in keys), []).append(curve)
    if not curves:
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in configs:
        found = curves.get(tuple(c[k] for k in keys), [])
        epochs = sorted({e for run in found for e in run})
        if not epochs:
            continue
        values = [[run[e] for run in found if e in run] for e in epochs]
        x = [e + 1 for e in epochs]  # Lightning counts epochs from 0: after epoch 0, one epoch has been trained
        label = ", ".join(str(c[k]) for k in keys) or "run"
        label += " (baseline)" if c.get("is_baseline") else ""
        (line,) = ax.plot(x, [statistics.fmean(v) for v in values], linewidth=3 if c.get("is_baseline") else 1.5,
                          label=label)
        ax.fill_between(x, [min(v) for v in values], [max(v) for v in values], color=line.get_color(), alpha=0.15)
    ax.set(xlabel="epochs trained", ylabel="validation top-1 (%): mean, band min-max over seeds",
           title=", ".join(keys) or "validation top-1")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(title=", ".join(keys) or None, fontsize="small")
    ax.grid(alpha=0.3)
    return save(fig, out / "curves.png")


def write_plots(out: Path, runs: list[Run], configs: list[dict], keys: list[str], study: dict) -> list[Path]:
    """Every figure of a report: acc_vs_*.png, forest.png (with a baseline) and curves.png (where curves were
    logged)."""
    paths = plot(out, configs, keys, study.get("baseline"))
    compared = sum(c.get("n_pairs") is not None for c in configs)
    forest = plot_forest(out, configs, keys, study_design(study, compared)) if compared else None
    curves = plot_curves(out, runs, configs, keys)
    return paths + [p for p in (forest, curves) if p]
