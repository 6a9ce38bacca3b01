"""The trials report of an Optuna search (focalnet-report on its sweep folder): the "Trials" section of results.md
and search.png, with Optuna's own figures (focalnet.search.sweeper.plot_study)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from focalnet.record import Status
from focalnet.studies.plots import pyplot, save
from focalnet.studies.runs import Run, cell, composed, load_yaml, run_curve, swept_keys


def _trials(runs: list[Run]) -> list[Run]:
    """The jobs with a trial number (search.sweeper), in trial order."""
    return sorted((r for r in runs if r.trial is not None), key=lambda r: r.trial)


def _best_trial(trials: list[Run]) -> int | None:
    """The best trial as the search recorded it (<sweep>/optimization_results.yaml, focalnet.search.sweeper)."""
    return load_yaml(Path(trials[0].run_dir).parent / "optimization_results.yaml").get("best_trial")


def trials_markdown(runs: list[Run]) -> list[str]:
    """The "Trials" section of an Optuna search's report: each trial's parameters, how it ended, the epochs it
    trained and its last validation top-1, the best trial marked; and the epochs the pruner saved. [] without
    trials."""
    trials = _trials(runs)
    if not trials:
        return []
    keys = swept_keys(trials)
    best = _best_trial(trials)
    cols = ["trial", *keys, "state", "epochs trained", "val top-1 (%)", "best"]
    lines = ["", "## Trials", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    trained = planned = 0
    for r in trials:
        epochs, total = len(run_curve(r)), composed(r.job_config, "trainer.max_epochs")
        trained, planned = trained + epochs, planned + (total or epochs)
        stopped = f"{epochs} of {total}" if total and epochs < total else str(epochs)
        value = "-" if r.val_top1 is None else f"{100 * r.val_top1:.2f}"
        state = {"completed": "complete"}.get(r.status, r.status)
        lines.append(f"| {r.trial} | " + " | ".join(cell(r.overrides.get(k)) for k in keys)
                     + f" | {state} | {stopped} | {value} | {'best' if r.trial == best else ''} |")
    lines += ["", f"Epochs trained in all: {trained} of the {planned} the trials would have trained whole"
                  + (f" ({100 * (1 - trained / planned):.0f}% saved by pruning)" if planned else "")]
    busy = _busy(trials)
    if busy:
        lines += ["", busy]
    return lines


def _busy(trials: list[Run]) -> str | None:
    """How busy the search kept its trial slots: the trials' time over (slots x the span from the first trial's start
    to the last one's end), the slots being the most trials that ever ran at once."""
    parts = [(datetime.fromisoformat(p["started_at"]), datetime.fromisoformat(p["finished_at"]))
             for r in trials for p in r.parts if p.get("started_at") and p.get("finished_at")]
    if not parts:
        return None
    events = sorted([(start, 1) for start, _ in parts] + [(end, -1) for _, end in parts])  # an end before a start
    slots = running = 0
    for _, step in events:
        running += step
        slots = max(slots, running)
    span = (max(e for _, e in parts) - min(s for s, _ in parts)).total_seconds()
    used = sum((e - s).total_seconds() for s, e in parts)
    if span <= 0:
        return None
    return (f"Trial slots busy: {100 * used / (slots * span):.0f}% ({used / 60:.1f} min of trials in {slots} "
            f"slot{'s' if slots > 1 else ''} x {span / 60:.1f} min from the first trial's start to the last one's end)")


def plot_search(out: Path, runs: list[Run]) -> list[Path]:
    """search.png (every trial's validation curve, the pruned ones dashed and cut with an x, the best thick) and
    Optuna's optimization_history.png, intermediate_values.png and param_importances.png, where Optuna can draw
    them; [] without trials."""
    trials = _trials(runs)
    if not trials:
        return []
    paths = []
    storage = next((composed(r.job_config, "search.storage") for r in trials), None)
    name = next((composed(r.job_config, "search.study_name") for r in trials), None)
    if storage and name:
        from focalnet.search.sweeper import plot_study

        paths += plot_study(storage, name, out)
    curves = {r.trial: run_curve(r) for r in trials}
    if not any(curves.values()):  # the jobs logged no curves (logger=none)
        return paths
    plt = pyplot()
    best = _best_trial(trials)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in trials:
        curve = curves[r.trial]
        if not curve:
            continue
        x, y = [e + 1 for e in sorted(curve)], [curve[e] for e in sorted(curve)]
        pruned = r.status == Status.PRUNED
        (line,) = ax.plot(x, y, linestyle="--" if pruned else "-", linewidth=3 if r.trial == best else 1.2,
                          alpha=0.6 if pruned else 1.0, label=f"trial {r.trial}" if r.trial == best else None)
        if pruned:
            ax.plot(x[-1:], y[-1:], marker="x", color=line.get_color(), markersize=8)
    ax.set(xlabel="epochs trained", ylabel="validation top-1 (%)",
           title="trials (dashed, x: pruned)" + (f"; best: trial {best}" if best is not None else ""))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return [save(fig, out / "search.png"), *paths]
