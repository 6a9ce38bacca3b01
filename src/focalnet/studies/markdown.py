"""results.md: the table of configurations (with compare()'s Δ, interval, verdict and paper columns), how to read
it, and the lines around it (command, baseline, design, machines, wall time, failed jobs)."""

from __future__ import annotations

import statistics

from focalnet.record import Status
from focalnet.studies.analysis import heterogeneity, study_design
from focalnet.studies.runs import NOT_FAILED, Run, cell, fixed_overrides, swept_keys
from focalnet.studies.sequential import PENDING, Design


def _human(x) -> str:
    if x is None:
        return "-"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _acc(c: dict) -> str:
    if c["test_acc_mean"] is None:
        return "-"
    mean = f"{100 * c['test_acc_mean']:.2f}"
    return mean if c["test_acc_std"] is None else f"{mean} ± {100 * c['test_acc_std']:.2f}"


def signed(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:+.{digits}f}"


def interval(low, high) -> str:
    return "-" if low is None else f"[{signed(low)}, {signed(high)}]"


def seed_list(seeds) -> str:
    """0,1,2,3 as "0-3"; gaps as "0-2, 5"."""
    seeds, runs = sorted(seeds or []), []
    for seed in seeds:
        if runs and isinstance(seed, int) and seed == runs[-1][1] + 1:
            runs[-1][1] = seed
        else:
            runs.append([seed, seed])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "-"


def verdict_text(c: dict, design: Design) -> str:
    if c["verdict"] == PENDING:
        return f"undecided at {c['n_pairs']} of {design.max_seeds} seeds"
    if c["verdict"] == "inconclusive":
        return f"inconclusive ({c['why']})" if c.get("why") else "inconclusive"
    if c["verdict"] == "equivalent" and design.procedure == "obf" and c.get("eq_low") is not None:
        return f"equivalent (TOST {interval(c['eq_low'], c['eq_high'])})"
    return c["verdict"] or "-"


def _needed(c: dict, design: Design | None = None) -> str:
    if c["verdict"] not in (PENDING, "inconclusive") or c["sd"] is None:
        return "-"
    if c.get("replication"):  # past the cap: what a fresh fixed-n study would need (none: it cannot show that)
        possible = {"difference": c["delta"] != 0, "equivalence": design is None or abs(c["delta"]) < design.delta}
        return "fresh: " + " / ".join("> 10000" if c["replication"][k] is None and possible[k] else "-"
                                      if c["replication"][k] is None else f"≈ {c['replication'][k]}"
                                      for k in ("difference", "equivalence"))
    if c["seeds_needed"] is None:  # obf: past its cap (a raised cap would be another calibration)
        return "past the cap" if design is not None and design.procedure == "obf" else "> 1000"
    return f"≈ {c['seeds_needed']}"


def _delta_cells(c: dict, design: Design) -> list[str]:
    if c["is_baseline"]:
        return ["baseline", "-", "-", "-", "-"]
    return [signed(c["delta"]), interval(c["ci_low"], c["ci_high"]), verdict_text(c, design),
            seed_list(c.get("seeds")), _needed(c, design)]


def _how_to_read(with_delta: bool, paper: dict | None, design: Design | None = None) -> str:
    text = "**How to read.** "
    if with_delta and design is not None:
        text += (
            "Δ is a row's test top-1 minus the baseline's in percentage points, paired by seed (seed s against seed "
            "s) and averaged over the pairs of the last look reached. *Interval* is a repeated confidence interval "
            "(Jennison & Turnbull 1989; focalnet.studies.sequential): mean ± c_n·sd/√n over the n pairs, ")
        if design.procedure == "obf":
            looks = ", ".join(f"{n} ({design.bound(n):.2f}, {design.eq_bound(n):.2f})" for n in design.looks)
            text += (
                f"where the looks n and their c_n and TOST cutoffs c^eq_n are {looks}. The cutoffs spend "
                f"α/{design.rows} per row with Lan & DeMets' O'Brien-Fleming-type spending function, calibrated for "
                "the joint law of a row's t-statistics at its looks (not a union bound over them), and lowered so "
                "that skewed differences (skewness 0.5) keep it. *Equivalent* is a TOST: the equivalence interval "
                f"mean ± c^eq_n·sd/√n (beside the verdict) lies inside ±δ = ±{design.delta:g} points. By the union "
                f"bound over the rows the study gives a wrong verdict with probability at most α = {design.alpha:g}, "
                "whenever it stops (docs/sequential.md). Verdict: *better*/*worse* when the interval excludes 0, "
                "*equivalent* as said, ")
        else:
            looks = ", ".join(f"{n} ({design.bound(n):.2f})" for n in design.looks)
            text += (
                f"where the looks n and their c_n are {looks}, each look's t-level a share of α/{design.rows} in "
                "proportion to n - 2. By the union bound over looks and rows, all intervals of the study hold at "
                f"once with probability at least 1 - α = {1 - design.alpha:.2f}, whenever the study stops: that is "
                "the guarantee, for normal paired differences (docs/sequential.md). Verdict: *better*/*worse* when "
                f"the interval excludes 0, *equivalent* when it lies inside ±δ = ±{design.delta:g} points, ")
        text += (
            f"*inconclusive* when the cap ({design.max_seeds} seeds) or the budget came first, *undecided* while more "
            "rounds are due. *Seeds to decide* is how many seeds in all the observed mean and sd say would decide an "
            "undecided row (an estimate, not a promise); past the cap the design has no more looks, and the cell "
            "gives the seeds a fresh fixed-n replication would need for 80% power at the observed mean and sd: "
            f"*fresh: ≈ N / ≈ M*, N to show the difference (a paired t-test at α/{design.rows}), M to show "
            f"equivalence within ±δ (a TOST at α/{design.rows}); *-* where the observed Δ cannot show it (|Δ| ≥ δ "
            "for equivalence). ")
    if paper:
        text += (f"The paper columns are {paper['source']}: ImageNet-1K with a far larger model and recipe, so "
                 "compare the direction of paper Δ with Δ, not the values.")
    return text.strip()


def host_classes_markdown(configs: list[dict], keys: list[str]) -> list[str]:
    """The "Δ per host class" section of a study that pools host classes (study.hosts: any): each compared row's
    pairs of the verdict's look, grouped by the class they were made on (each pair on one), with their mean and sd,
    and Welch's test of equal means across the classes (`heterogeneity`)."""
    rows = [c for c in configs if c.get("pair_diffs")]
    if not rows:
        return []
    lines = ["", "## Δ per host class", "",
             "`hosts: any`: each pair is two runs of one host class (CPU model, precision, torch version), but "
             "different seeds come from different classes, and the verdicts pool them. Here each row's pairs of the "
             "verdict's look, by class. *Heterogeneity* tests whether the classes' mean paired differences are "
             "equal: Welch's t-test (unequal variances) for two classes, Welch's one-way ANOVA for more, leaving out "
             "a class with a single pair. It describes the pooled pairs and is no part of the verdicts' error "
             "control (α family-wise is spent on the verdicts).", "",
             "| row | host class | pairs | seeds | Δ top-1 (pts) | sd (pts) | heterogeneity |",
             "|---|---|---|---|---|---|---|"]
    for c in rows:
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={cell(c[k])}" for k in keys)
        by_class: dict[str, list] = {}
        for seed, diff, host in zip(c["seeds"], c["pair_diffs"], c["pair_hosts"]):
            by_class.setdefault(host or "not recorded", []).append((seed, diff))
        test = heterogeneity({k: [d for _, d in v] for k, v in by_class.items()})
        for i, (host, found) in enumerate(sorted(by_class.items(), key=lambda kv: min(s for s, _ in kv[1]))):
            diffs = [d for _, d in found]
            sd = f"{statistics.stdev(diffs):.2f}" if len(diffs) > 1 else "-"
            het = "-" if i or test is None else f"{test['test']}: {test['stat']}, df {test['df']}, p = {test['p']:.3f}"
            lines.append(f"| {label} | {host} | {len(diffs)} | {seed_list([s for s, _ in found])} | "
                         f"{signed(statistics.fmean(diffs))} | {sd} | {het} |")
    return lines


def _wall_time(runs: list[Run]) -> str | None:
    """The study's wall time (first job's start to last job's end) and what its jobs took one by one. A study that
    was stopped and resumed (its jobs' `parts`) counts the time jobs ran, not the pause (a gap over a minute)."""
    from datetime import datetime

    parts = [[(datetime.fromisoformat(p["started_at"]), datetime.fromisoformat(p["finished_at"]))
              for p in r.parts if p.get("started_at") and p.get("finished_at")] for r in runs]
    times = sorted(t for job in parts for t in job)
    if not times:
        return None
    stretches = [list(times[0])]  # the union of the parts: when at least one job ran
    for start, end in times[1:]:
        # A gap under a minute is the next job of the same command starting (one after another), not a pause.
        if (start - stretches[-1][1]).total_seconds() > 60:
            stretches.append([start, end])
        else:
            stretches[-1][1] = max(stretches[-1][1], end)
    span = sum((end - start).total_seconds() for start, end in stretches)
    jobs = sorted(sum((end - start).total_seconds() for start, end in job) for job in parts if job)
    where = "from the first job's start to the last one's end"
    if len(stretches) > 1:
        where = (f"with jobs running, in {len(stretches)} stretches "
                 "(stopped and resumed, or runs joined from another sweep)")
    precisions = sorted({r.precision for r in runs if r.precision})
    return (f"Wall time: {span / 60:.1f} min {where}; per job median "
            f"{statistics.median(jobs) / 60:.1f} min (sum {sum(jobs) / 60:.1f} min)"
            + (f"; precision {', '.join(precisions)}" if precisions else ""))


def _machines(runs: list[Run]) -> str | None:
    """Which machines and versions made the completed runs: a row can say which machine made it."""
    made = {}
    for r in runs:
        if r.status == Status.COMPLETED and (r.cpu or r.torch):
            key = (r.cpu or "CPU not recorded", r.torch or "?", r.precision or "?")
            made[key] = made.get(key, 0) + 1
    if not made:
        return None
    return "Made on: " + "; ".join(f"{n} run(s) on {cpu}, torch {torch}, {precision}"
                                   for (cpu, torch, precision), n in sorted(made.items()))


def _header(runs: list[Run], study: dict, design: Design | None, with_delta: bool, rounds: dict | None) -> list[str]:
    """The lines between the title and the counts: the study's command, the overrides every job shares, the
    baseline and data, the design."""
    lines = []
    if rounds and rounds.get("command"):
        lines += [f"Study: `{rounds['command']}` (rounds of seeds until each row is decided; the same command resumes "
                  "it)", ""]
    fixed = fixed_overrides(runs)
    if fixed:
        lines += ["Every job: " + " ".join(f"`{k}={v}`" for k, v in fixed.items()), ""]
    baseline = " ".join(f"`{k}={cell(v)}`" for k, v in (study.get("baseline") or {}).items())
    if baseline:
        lines += [f"Baseline: {baseline}" + ("" if with_delta else " (not among this sweep's rows: no Δ columns)")
                  + (f"; data: {study['data']}" if study.get("data") else ""), ""]
    elif study.get("data"):
        lines += [f"Data: {study['data']}", ""]
    if design is not None:
        lines += [f"Design: α = {design.alpha:g} family-wise over {design.rows} row(s), δ = ±{design.delta:g} points, "
                  f"{design.seeds_per_round} seeds per round, cap {design.max_seeds} seeds, procedure "
                  + ("obf (O'Brien-Fleming-type spending, TOST equivalence)" if design.procedure == "obf"
                     else "bonferroni")
                  + (f", budget {rounds['budget_hours']:g} h ({rounds['spent_hours']:.2f} h spent)"
                     if rounds and rounds.get("budget_hours") else ""), ""]
    return lines


def to_markdown(sweep_dir, runs: list[Run], configs: list[dict], study: dict | None = None,
                keys: list[str] | None = None, title: str | None = None, rounds: dict | None = None,
                commands: list[str] | None = None, notes: list[str] = (), sections: list[str] = ()) -> str:
    """results.md; with compare()'s fields in the configurations and `study` (read_study()), the baseline and data
    line, the Δ and paper columns and a note on how to read them; with `rounds` (focalnet-study's state), the
    design, budget and rounds. `commands`: the commands to list (default: those the runs recorded); `notes`: lines
    after the machines line; `sections`: markdown lines after the table's notes, before the rounds."""
    keys = swept_keys(runs) if keys is None else keys
    study = study or {}
    counts = {s: sum(r.status == s for r in runs) for s in NOT_FAILED}
    failed = [r for r in runs if r.status not in counts]
    interrupted = [r for r in runs if r.status == Status.INTERRUPTED]
    head = f"jobs: {len(runs)}, completed: {counts['completed']}, failed: {len(failed)}"
    head += "".join(f", {s}: {counts[s]}" for s in ("pruned", "running", "interrupted") if counts[s])
    with_delta = any(c.get("is_baseline") for c in configs)
    with_paper = any(c.get("paper_top1") is not None for c in configs)
    design = study_design(study, sum(c.get("n_pairs") is not None for c in configs)) if with_delta else None
    cols = [*keys, "params", "FLOPs", "images/s", "test top-1 (%)", "n", "failed"]
    cols += ["Δ top-1 (pts)", "interval (pts)", "verdict", "seeds", "seeds to decide"] if with_delta else []
    cols += ["paper top-1 (%)", "paper Δ (pts)"] if with_paper else []
    folders = sweep_dir if isinstance(sweep_dir, (list, tuple)) else [sweep_dir]
    lines = [f"# {title}" if title else "# Sweep " + " + ".join(f"`{f}`" for f in folders), ""]
    if commands is None:
        commands = [c for c in dict.fromkeys(r.argv for r in runs) if c]
    if len(commands) == 1:
        lines += [f"Command: `{commands[0]}`", ""]
    elif commands:  # several folders: each one's command, the first folder's first
        lines += ["Commands:", "", *(f"- `{c}`" for c in commands), ""]
    lines += _header(runs, study, design, with_delta, rounds)
    lines += [head]
    machines = _machines(runs)
    if machines:
        lines += ["", machines]
    for note in notes:
        lines += ["", note]
    span = _wall_time(runs)
    if span:
        lines += ["", span]
    starts = sorted(r.time_to_first_step_s for r in runs if r.time_to_first_step_s is not None)
    if starts:
        lines += ["", f"Time to first training step per job: median {statistics.median(starts):.1f} s "
                      f"(min {starts[0]:.1f} s, max {starts[-1]:.1f} s)"]
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for c in configs:
        speed = "-" if c["images_per_s"] is None else f"{c['images_per_s']:.0f}"
        cells = [*("-" if c[k] is None else cell(c[k]) for k in keys), _human(c["params"]), _human(c["flops"]),
                 speed, _acc(c), str(c["n"]), str(c["failed"])]
        cells += _delta_cells(c, design) if with_delta else []
        if with_paper:
            top1 = "-" if c["paper_top1"] is None else f"{c['paper_top1']:.1f}"
            cells += [top1, signed(c["paper_delta"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    if with_delta or with_paper:
        lines += ["", _how_to_read(with_delta, study.get("paper") if with_paper else None, design)]
    lines += list(sections)
    if rounds and rounds.get("rounds"):
        lines += ["", "## Rounds", "", "| round | started | values | seeds | wall time (min) | exit |",
                  "|---|---|---|---|---|---|"]
        for i, r in enumerate(rounds["rounds"], 1):
            lines.append(f"| {i} | {r['started_at'][:16]} | {', '.join(map(cell, r['values']))} | "
                         f"{seed_list(r['seeds'])} | {r['wall_time_s'] / 60:.1f} | {r['exit_code']} |")
    for title_, jobs in (("Failed jobs", failed), ("Interrupted jobs", interrupted)):
        lines += ["", f"## {title_}", ""] if jobs else []
        for r in jobs:
            label = ",".join(f"{k}={cell(v)}" for k, v in r.overrides.items())
            lines.append(f"- job {r.job_num} (`{label}`, {r.status}): {r.error}")
    return "\n".join(lines) + "\n"
