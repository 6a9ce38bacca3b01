"""focalnet-report: turn a sweep folder (one summary.json per job) into a paper-style ablation table and plots.

    focalnet-report multirun/2024-05-01/12-00-00 [MORE_FOLDERS ...] [--out DIR] [--baseline KEY=VALUE]
                    [--[no-]wandb --wandb-project P --wandb-group G]

More folders (sweeps or single jobs) join the same table: a study that reuses the baseline runs of another one
names them instead of running them again.

Writes results.csv (one row per job), results.md (one row per configuration: jobs grouped by the overrides that
differ between them, minus ``seed``; test top-1 as mean ± std over seeds), acc_vs_*.png and curves.png (validation
top-1 per epoch, from the jobs' CSV-logger metrics.csv or their offline W&B runs). With a baseline (the `study:`
block of the jobs' config, or --baseline) every other row also gets its difference to it, paired by seed, with the
study's repeated confidence interval and verdict (studies.sequential: family-wise α over the rows) and forest.png;
with the study's `paper:` numbers, the paper's top-1 and difference for the same setting. Runs whose precision or
torch version differ are not paired: the report refuses them, naming both. When the jobs logged to W&B (their
summary.json says where), the table and plots go to one more run in the same project and group.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import sys
from pathlib import Path

import yaml

from focalnet.host import parse_overrides
from focalnet.record import NotARecord, Status, read_record
from focalnet.studies.sequential import PENDING, Design, decide, replication_seeds, seeds_to_decide

METRICS = ("test/acc_top1", "val/acc_top1")
# Statuses that are not failures: an interrupted job resumes where it stopped (resume=auto, a SLURM requeue).
NOT_FAILED = tuple(s.value for s in Status if s != Status.FAILED)
STATS = ("params", "flops", "train_images_per_s", "wall_time_s", "time_to_first_step_s")
# What compare() adds to a configuration: its paired difference to the baseline (test top-1, percentage points).
PAIRED = ("n_pairs", "delta", "sd", "ci_low", "ci_high", "verdict", "why", "seeds_needed", "eq_low", "eq_high",
          "replication")
# What results.csv records of each job beside its setting: enough to pair it again on another machine (and "gpu",
# the GPU's name, where a job ran on one).
RECORD = ("precision", "torch", "cpu", "recipe", "setting")
DESIGN_KEYS = ("alpha", "delta", "seeds_per_round", "max_seeds", "procedure")  # a study block's Design terms


def normalize(value):
    # Group keys must be hashable and comparable; numbers stay numbers so they sort numerically.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return value if isinstance(value, str) else json.dumps(value)


def sort_key(value):
    if value is None:
        return (0, 0, "")
    if isinstance(value, (int, float)):
        return (1, value, "")
    return (2, 0, str(value))


def _hydra_overrides(folder: Path) -> dict:
    """The overrides of a job that left no readable summary, from Hydra's own record of them."""
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    return parse_overrides(list(OmegaConf.load(path)))  # the keys of the summaries' overrides


def _missing_row(folder: Path, error: str) -> dict:
    overrides = {k: normalize(v) for k, v in _hydra_overrides(folder).items()}
    number = folder.name.split("_", 1)[0]  # job folders are <number>_<overrides>
    job_num = int(number) if number.isdigit() else None
    return {"job_num": job_num, "status": "missing", "overrides": overrides, "seed": overrides.get("seed"),
            **dict.fromkeys(STATS + METRICS), "error": error, "run_dir": str(folder)}


def job_config_of(folder: Path) -> dict:
    """What Hydra recorded of a job, read once: `hydra` (hydra.yaml's node) and `config` (the composed config);
    empty where the job left none."""
    hydra = _load_yaml(folder / ".hydra" / "hydra.yaml").get("hydra")
    return {"hydra": hydra or {}, "config": _load_yaml(folder / ".hydra" / "config.yaml")}


def _choices(job: dict) -> dict:
    return (job["hydra"].get("runtime") or {}).get("choices") or {}


def _composed(job: dict, key: str):
    """What a job ran with for an override key it was not given: its config group choice, else its config's value
    (None where the job left no composed config)."""
    if key in _choices(job):
        return _choices(job)[key]
    node = job["config"]
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def collect(*sweep_dirs) -> list[dict]:
    """One dict per job folder under the given folders (sweep folders or single jobs), those of the first folder
    first. A job with a .hydra folder but no (readable) summary.json comes back with status "missing" and the reason
    in "error". Overrides the job folder names leave out (resume=auto, ...) are dropped. A key some jobs override
    and others do not (a baseline run in another study) gets the value the others ran with from their composed
    config, so the same setting lands in the same row."""
    rows, seen = [], set()
    for sweep_dir in sweep_dirs:
        for r in collect_folder(Path(sweep_dir)):
            if Path(r["run_dir"]).resolve() not in seen:
                seen.add(Path(r["run_dir"]).resolve())
                rows.append(r | {"job_config": job_config_of(Path(r["run_dir"]))})
    for r in rows:  # what the folder names leave out (resume=auto, ...) is how a job ran, not a setting
        hydra = r["job_config"]["hydra"]
        exclude = (((hydra.get("job") or {}).get("config") or {}).get("override_dirname") or {}).get("exclude_keys")
        for k in exclude or ():
            r["overrides"].pop(k, None)
        for k in [k for k in r["overrides"] if k.startswith("search.")]:  # a trial's place in its search
            r["overrides"].pop(k)
    keys = {k: None for r in rows for k in r["overrides"]}
    for r in rows:
        for k in keys:
            if k not in r["overrides"] and (value := _composed(r["job_config"], k)) is not None:
                r["overrides"][k] = normalize(value)
    return rows


def collect_folder(root: Path) -> list[dict]:
    rows = []
    for path in root.rglob("summary.json"):
        try:
            s = read_record(path).model_dump(mode="json", exclude_unset=True)
        except NotARecord as e:
            rows.append(_missing_row(path.parent, str(e)))
            continue
        overrides = {k: normalize(v) for k, v in (s.get("overrides") or {}).items()}
        metrics = s.get("metrics") or {}
        rows.append({"job_num": s.get("job_num"), "status": s.get("status", "missing"), "overrides": overrides,
                     "seed": s.get("seed", overrides.get("seed")), **{k: s.get(k) for k in STATS},
                     **{k: metrics.get(k) for k in METRICS}, "error": s.get("error"), "run_dir": str(path.parent),
                     "wandb": s.get("wandb"), "argv": s.get("argv"), "started_at": s.get("started_at"),
                     "finished_at": s.get("finished_at"), "precision": s.get("precision"), "trial": s.get("trial"),
                     "pruned_at_epoch": s.get("pruned_at_epoch"),
                     "torch": (s.get("versions") or {}).get("torch"), "cpu": (s.get("machine") or {}).get("cpu"),
                     "gpu": (s.get("machine") or {}).get("gpu"),
                     "parts": s.get("parts") or [{k: s.get(k) for k in ("started_at", "finished_at")}]})
    for hydra_dir in root.rglob(".hydra"):
        if hydra_dir.is_dir() and not (hydra_dir.parent / "summary.json").exists():
            rows.append(_missing_row(hydra_dir.parent, f"no summary.json in {hydra_dir.parent}"))
    rows.sort(key=lambda r: (str(Path(r["run_dir"]).parent), sort_key(r["job_num"]), r["run_dir"]))
    return rows


def swept_keys(rows: list[dict]) -> list[str]:
    """Override keys other than seed whose value differs between jobs, in the order they first appear.

    The other overrides (e.g. trainer.max_epochs=4 given to the whole sweep) are the same for every job.
    """
    keys = {k: None for r in rows for k in r["overrides"] if k != "seed"}
    return [k for k in keys if len({json.dumps(r["overrides"].get(k)) for r in rows}) > 1]


def fixed_overrides(rows: list[dict]) -> dict:
    """The overrides every job shares (other than seed)."""
    swept = set(swept_keys(rows))
    return {k: v for k, v in rows[0]["overrides"].items() if k != "seed" and k not in swept} if rows else {}


def _load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _data_label(choice: str | None, data: dict) -> str:
    target, root = str(data.get("_target_")), str(data.get("root"))
    if "fashion" in f"{choice} {target}".lower():
        # The shared copy is not the official split (/work/shared/data/README.md): say so wherever it is quoted.
        seeded = "shared/data/fashion-mnist" in root
        return "Fashion-MNIST (seeded 60k/10k split)" if seeded else f"Fashion-MNIST (from {root})"
    return f"`{choice or target}`"


def read_study(rows: list[dict]) -> dict:
    """The sweep's `study:` block and the data its jobs ran on, from the jobs' composed configs (collect()'s
    job_config).

    baseline: {key: value} of the row every other row is compared with; paper: {"key", "source", "top1": {value:
    top-1 %}} keyed by the values of the baseline's one key; both normalised like the jobs' overrides, so they
    compare equal to the table's cells. Empty/None when the jobs carry no study block.
    """
    study, data = {}, {}
    for r in rows:
        job = r.get("job_config") or {}  # none for a run results.csv recorded
        config = job.get("config")
        if not config:
            continue
        study = study or config.get("study") or {}
        data[_data_label(_choices(job).get("data"), config.get("data") or {})] = None
    baseline = {k: normalize(v) for k, v in (study.get("baseline") or {}).items()}
    paper = study.get("paper") or {}
    if paper.get("top1") and len(baseline) == 1:
        paper = {"key": next(iter(baseline)), "source": paper.get("source") or "the paper",
                 "top1": {normalize(k): float(v) for k, v in paper["top1"].items()}}
    else:
        paper = None
    design = {k: study[k] for k in DESIGN_KEYS if k in study}
    return {"baseline": baseline, "paper": paper, "data": ", ".join(data) or None, **design}


def duplicates(rows: list[dict]) -> tuple[str, str] | None:
    """The run folders of two completed jobs with the same setting and seed (they would count twice), or None."""
    keys, seen = swept_keys(rows), {}
    for r in rows:
        if r["status"] == Status.COMPLETED:
            key = (tuple(r["overrides"].get(k) for k in keys), r.get("seed"), r.get("cpu"))
            if key in seen:
                return seen[key], r["run_dir"]
            seen[key] = r["run_dir"]
    return None


def aggregate(rows: list[dict], keys: list[str] | None = None, settings: list[tuple] = ()) -> list[dict]:
    """One dict per configuration (the jobs' overrides minus seed; `keys`: the swept ones; `settings`: value tuples
    that get a row even without jobs), sorted by the swept values. test_acc_mean / test_acc_std are fractions; std
    is the sample std (None below two seeds); by_seed maps each completed seed to its top-1 (the first run of it),
    jobs_by_seed to all its runs (one per machine, where a seed ran on several)."""
    keys = swept_keys(rows) if keys is None else keys
    groups: dict[tuple, list[dict]] = {tuple(values): [] for values in settings}
    for r in rows:
        groups.setdefault(tuple(r["overrides"].get(k) for k in keys), []).append(r)
    configs = []
    for values, jobs in sorted(groups.items(), key=lambda kv: [sort_key(v) for v in kv[0]]):
        done = [j for j in jobs if j["status"] == Status.COMPLETED]
        accs = [j["test/acc_top1"] for j in done if j["test/acc_top1"] is not None]
        speeds = [j["train_images_per_s"] for j in done if j["train_images_per_s"] is not None]
        # Size and cost don't depend on the seed; a failed job may still have measured them.
        params, flops = (next((j[k] for j in done + jobs if j[k] is not None), None) for k in ("params", "flops"))
        scored = sorted((j for j in done if j["test/acc_top1"] is not None), key=lambda j: sort_key(j.get("seed")))
        configs.append({**dict(zip(keys, values)), "params": params, "flops": flops,
                        "images_per_s": statistics.fmean(speeds) if speeds else None,
                        "test_acc_mean": statistics.fmean(accs) if accs else None,
                        "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
                        "n": len(done), "failed": sum(j["status"] not in NOT_FAILED for j in jobs),
                        "by_seed": {s: js[0]["test/acc_top1"] for s, js in _by_seed(scored).items()},
                        "jobs_by_seed": _by_seed(scored)})
    return configs


def _by_seed(jobs: list[dict]) -> dict:
    found: dict = {}
    for j in jobs:
        found.setdefault(j.get("seed"), []).append(j)
    return found


def study_design(study: dict, rows: int) -> Design:
    """The study's Design (focalnet.studies.sequential): the one given, else the study block's alpha, delta,
    seeds_per_round, max_seeds and procedure over `rows` rows."""
    if isinstance(study.get("design"), Design):
        return study["design"]
    given = {k: study[k] for k in DESIGN_KEYS if study.get(k) is not None}
    return Design(rows=max(rows, 1), **given)


def paired(diffs: list[float], design: Design, stopped: str | None = None) -> dict:
    """The mean of paired differences (points) with the study's repeated confidence interval, its equivalence
    interval (TOST under "obf") and verdict at the last look the pairs reach; for an undecided row the pairs its
    observed mean and sd say would decide it, and for a row the cap left inconclusive the seeds a fresh fixed-n
    replication would need ("replication": focalnet.studies.sequential.replication_seeds), not a continuation the design
    does not cover."""
    decision = decide(diffs, design, stopped)
    result = dict.fromkeys(PAIRED) | {"n_pairs": decision.n, "delta": decision.delta, "sd": decision.sd,
                                      "ci_low": decision.low, "ci_high": decision.high,
                                      "verdict": decision.verdict, "why": decision.why or None,
                                      "eq_low": decision.eq_low, "eq_high": decision.eq_high}
    if decision.verdict == "inconclusive" and decision.why == "cap" and decision.sd is not None:
        result["replication"] = replication_seeds(decision.delta, decision.sd, design)
    elif decision.verdict in (PENDING, "inconclusive") and decision.sd is not None:
        result["seeds_needed"] = seeds_to_decide(decision.delta, decision.sd, design, decision.n)
    if decision.n == 0:  # below the first look: the mean of what there is, without an interval
        result["delta"] = statistics.fmean(diffs) if diffs else None
        result["n_pairs"] = len(diffs)
    return result


def check_pairable(a: dict, b: dict) -> None:
    """Runs compared seed against seed must have computed alike: the same precision and torch version."""
    for what in ("precision", "torch"):
        if a.get(what) and b.get(what) and a[what] != b[what]:
            raise ValueError(f"cannot pair {a['run_dir']} ({what} {a[what]}) with {b['run_dir']} ({what} {b[what]}): "
                             f"runs of different {what} do not compare; run both alike")


def same_machine(a: dict, b: dict) -> bool:
    """Whether two runs were made on the same kind of CPU (unrecorded: assumed so). fp32 results differ between
    CPUs by about seed noise (other vector kernels and GEMM choices): a pair is made on one machine."""
    return not a.get("cpu") or not b.get("cpu") or a["cpu"] == b["cpu"]


def host_label(run: dict) -> str | None:
    """A run's host class: what it ran on (its "host", where the caller named it, else its CPU model), its
    precision and torch version; None where the CPU was not recorded."""
    if run.get("host"):
        return run["host"]
    if not run.get("cpu"):
        return None
    return f"{run['cpu']}, {run.get('precision') or '?'}, torch {run.get('torch') or '?'}"


def pairs(row: dict, base: dict) -> list[tuple]:
    """(seed, row's top-1, baseline's top-1, the pair's host class) for each seed both have on the same machine, in
    seed order."""
    found = []
    for seed, jobs in row["jobs_by_seed"].items():
        for job in jobs:
            match = [b for b in base["jobs_by_seed"].get(seed, []) if same_machine(job, b)]
            if match:
                check_pairable(job, match[0])
                found.append((seed, job["test/acc_top1"], match[0]["test/acc_top1"],
                              host_label(job) or host_label(match[0])))
                break
    return found


def compare(configs: list[dict], keys: list[str], study: dict) -> None:
    """Adds to each configuration "is_baseline", the PAIRED fields (test top-1 minus the baseline's, in points,
    paired by seed; None on the baseline row and without a baseline), "paper_top1" and "paper_delta".

    A configuration's baseline is itself with the baseline's values put in: in a grid over more keys than the
    baseline names, each row is compared with the baseline setting at the same other values. The design's α is
    family-wise over the rows compared. ValueError when a pair's runs differ in precision or torch version.
    """
    baseline, paper = study.get("baseline") or {}, study.get("paper")
    index = {tuple(c[k] for k in keys): c for c in configs}
    usable = bool(baseline) and set(baseline) <= set(keys)
    paper_base = paper["top1"].get(baseline.get(paper["key"])) if paper else None
    bases = {id(c): index.get(tuple(baseline.get(k, c[k]) for k in keys)) if usable else None for c in configs}
    compared = [c for c in configs if bases[id(c)] not in (None, c)]
    design = study_design(study, len(compared))
    for c in configs:
        base = bases[id(c)]
        c["is_baseline"] = base is c
        c.update(dict.fromkeys(PAIRED), seeds=None, pair_diffs=None, pair_hosts=None)
        if c in compared:
            matched = pairs(c, base)
            c.update(paired([100 * (a - b) for _, a, b, _ in matched], design, study.get("stopped")))
            used = matched[: c["n_pairs"]] if c["n_pairs"] else matched
            c["seeds"] = [s for s, *_ in used]
            c["pair_diffs"] = [100 * (a - b) for _, a, b, _ in used]
            c["pair_hosts"] = [h for *_, h in used]
        c["paper_top1"] = paper["top1"].get(c.get(paper["key"])) if paper else None
        c["paper_delta"] = None if c["paper_top1"] is None or paper_base is None else c["paper_top1"] - paper_base


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


def _signed(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:+.{digits}f}"


def _interval(low, high) -> str:
    return "-" if low is None else f"[{_signed(low)}, {_signed(high)}]"


def _seed_list(seeds) -> str:
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
        return f"equivalent (TOST {_interval(c['eq_low'], c['eq_high'])})"
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
    return [_signed(c["delta"]), _interval(c["ci_low"], c["ci_high"]), verdict_text(c, design),
            _seed_list(c.get("seeds")), _needed(c, design)]


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


def heterogeneity(diffs_by_class: dict[str, list[float]]) -> dict | None:
    """A test that the host classes' mean paired differences are equal: Welch's t-test for two classes (unequal
    variances), Welch's one-way ANOVA (Welch 1951) for more; a class with fewer than 2 pairs, or all pairs alike, is
    left out. None below two such classes. {"test", "stat" (t or F), "df", "p", "classes"}."""
    from scipy import stats

    groups = {k: v for k, v in diffs_by_class.items() if len(v) >= 2 and statistics.stdev(v) > 0}
    if len(groups) < 2:
        return None
    n = [len(v) for v in groups.values()]
    m = [statistics.fmean(v) for v in groups.values()]
    var = [statistics.variance(v) for v in groups.values()]
    if len(groups) == 2:
        se2 = [v / k for v, k in zip(var, n)]
        t = (m[0] - m[1]) / (sum(se2) ** 0.5)
        df = sum(se2) ** 2 / sum(x * x / (k - 1) for x, k in zip(se2, n))
        return {"test": "Welch's t-test", "stat": f"t = {t:+.2f}", "df": f"{df:.1f}",
                "p": float(2 * stats.t.sf(abs(t), df)), "classes": list(groups)}
    k = len(groups)
    w = [a / v for a, v in zip(n, var)]
    total = sum(w)
    mean = sum(wi * mi for wi, mi in zip(w, m)) / total
    lam = sum((1 - wi / total) ** 2 / (a - 1) for wi, a in zip(w, n))
    f = sum(wi * (mi - mean) ** 2 for wi, mi in zip(w, m)) / (k - 1) / (1 + 2 * (k - 2) / (k * k - 1) * lam)
    df2 = (k * k - 1) / (3 * lam)
    return {"test": "Welch's one-way ANOVA", "stat": f"F = {f:.2f}", "df": f"{k - 1}, {df2:.1f}",
            "p": float(stats.f.sf(f, k - 1, df2)), "classes": list(groups)}


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
            lines.append(f"| {label} | {host} | {len(diffs)} | {_seed_list([s for s, _ in found])} | "
                         f"{_signed(statistics.fmean(diffs))} | {sd} | {het} |")
    return lines


def _wall_time(rows: list[dict]) -> str | None:
    """The study's wall time (first job's start to last job's end) and what its jobs took one by one. A study that
    was stopped and resumed (its jobs' `parts`) counts the time jobs ran, not the pause (a gap over a minute)."""
    from datetime import datetime

    parts = [[(datetime.fromisoformat(p["started_at"]), datetime.fromisoformat(p["finished_at"]))
              for p in r.get("parts") or [] if p.get("started_at") and p.get("finished_at")] for r in rows]
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
    precisions = sorted({r["precision"] for r in rows if r.get("precision")})
    return (f"Wall time: {span / 60:.1f} min {where}; per job median "
            f"{statistics.median(jobs) / 60:.1f} min (sum {sum(jobs) / 60:.1f} min)"
            + (f"; precision {', '.join(precisions)}" if precisions else ""))


def to_markdown(sweep_dir, rows: list[dict], configs: list[dict], study: dict | None = None,
                keys: list[str] | None = None, title: str | None = None, rounds: dict | None = None,
                commands: list[str] | None = None, notes: list[str] = (), sections: list[str] = ()) -> str:
    """results.md; with compare()'s fields in the configurations and `study` (read_study()), the baseline and data
    line, the Δ and paper columns and a note on how to read them; with `rounds` (focalnet-study's state), the
    design, budget and rounds. `commands`: the commands to list (default: those the runs recorded); `notes`: lines
    after the machines line; `sections`: markdown lines after the table's notes, before the rounds."""
    keys = swept_keys(rows) if keys is None else keys
    study = study or {}
    counts = {s: sum(r["status"] == s for r in rows) for s in NOT_FAILED}
    failed = [r for r in rows if r["status"] not in counts]
    interrupted = [r for r in rows if r["status"] == Status.INTERRUPTED]
    head = f"jobs: {len(rows)}, completed: {counts['completed']}, failed: {len(failed)}"
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
        commands = [c for c in dict.fromkeys(r.get("argv") for r in rows) if c]
    if len(commands) == 1:
        lines += [f"Command: `{commands[0]}`", ""]
    elif commands:  # several folders: each one's command, the first folder's first
        lines += ["Commands:", "", *(f"- `{c}`" for c in commands), ""]
    if rounds and rounds.get("command"):
        lines += [f"Study: `{rounds['command']}` (rounds of seeds until each row is decided; the same command resumes "
                  "it)", ""]
    fixed = fixed_overrides(rows)
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
    lines += [head]
    machines = _machines(rows)
    if machines:
        lines += ["", machines]
    for note in notes:
        lines += ["", note]
    span = _wall_time(rows)
    if span:
        lines += ["", span]
    starts = sorted(r["time_to_first_step_s"] for r in rows if r.get("time_to_first_step_s") is not None)
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
            cells += [top1, _signed(c["paper_delta"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    if with_delta or with_paper:
        lines += ["", _how_to_read(with_delta, study.get("paper") if with_paper else None, design)]
    lines += list(sections)
    if rounds and rounds.get("rounds"):
        lines += ["", "## Rounds", "", "| round | started | values | seeds | wall time (min) | exit |",
                  "|---|---|---|---|---|---|"]
        for i, r in enumerate(rounds["rounds"], 1):
            lines.append(f"| {i} | {r['started_at'][:16]} | {', '.join(map(cell, r['values']))} | "
                         f"{_seed_list(r['seeds'])} | {r['wall_time_s'] / 60:.1f} | {r['exit_code']} |")
    lines += trials_markdown(rows)
    for title_, jobs in (("Failed jobs", failed), ("Interrupted jobs", interrupted)):
        lines += ["", f"## {title_}", ""] if jobs else []
        for r in jobs:
            label = ",".join(f"{k}={cell(v)}" for k, v in r["overrides"].items())
            lines.append(f"- job {r['job_num']} (`{label}`, {r['status']}): {r['error']}")
    return "\n".join(lines) + "\n"


def cell(value) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def _machines(rows: list[dict]) -> str | None:
    """Which machines and versions made the completed runs: a row can say which machine made it."""
    made = {}
    for r in rows:
        if r["status"] == Status.COMPLETED and (r.get("cpu") or r.get("torch")):
            key = (r.get("cpu") or "CPU not recorded", r.get("torch") or "?", r.get("precision") or "?")
            made[key] = made.get(key, 0) + 1
    if not made:
        return None
    return "Made on: " + "; ".join(f"{n} run(s) on {cpu}, torch {torch}, {precision}"
                                   for (cpu, torch, precision), n in sorted(made.items()))


def write_csv(path: Path, rows: list[dict], keys: list[str] | None = None) -> None:
    """results.csv: one row per job, with what row_from_csv() needs to pair it again where its folder is not."""
    keys = swept_keys(rows) if keys is None else keys
    search = ["trial", "pruned_at_epoch"] if any(r.get("trial") is not None for r in rows) else []
    gpu = ["gpu"] if any(r.get("gpu") for r in rows) else []
    cols = ["job_num", "status", *search, *keys, "seed", *STATS, *METRICS, *RECORD, *gpu, "started_at", "finished_at",
            "error", "run_dir", "val_curve"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, cols, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            curve = run_curve(r) if r["status"] == Status.COMPLETED else {}
            writer.writerow({**r, **{k: cell(r["overrides"].get(k)) for k in keys},
                             "val_curve": json.dumps([round(curve[e], 4) for e in sorted(curve)]) if curve else ""})


def row_from_csv(row: dict) -> dict:
    """A job as results.csv recorded it, in collect()'s shape (overrides left to the caller)."""
    def number(key):
        text = row.get(key)
        if text in (None, ""):
            return None
        return int(float(text)) if key in ("params", "flops") else float(text)

    seed = row.get("seed")
    return {"job_num": int(row["job_num"]) if (row.get("job_num") or "").isdigit() else None,
            "status": row.get("status") or "missing", "overrides": {},
            "seed": int(seed) if (seed or "").lstrip("-").isdigit() else seed or None,
            **{k: number(k) for k in (*STATS, *METRICS)}, **{k: row.get(k) or None for k in (*RECORD, "gpu")},
            "error": row.get("error") or None, "run_dir": row.get("run_dir"), "argv": None, "wandb": None,
            "started_at": row.get("started_at") or None, "finished_at": row.get("finished_at") or None,
            "val_curve": dict(enumerate(json.loads(row["val_curve"]))) if row.get("val_curve") else {},
            "parts": [{"started_at": row.get("started_at"), "finished_at": row.get("finished_at")}]}


def one_line_text(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot(out: Path, configs: list[dict], keys: list[str], baseline: dict | None = None) -> list[Path]:
    """acc_vs_<key>.png for each swept key: every seed's top-1 as a dot and the mean as a bar, the baseline's tick
    marked, no lines between settings (they are categories, not a scale); acc_vs_flops.png only where the settings'
    FLOPs all differ (equal FLOPs would stack at one x; a stale one is removed)."""
    import matplotlib.ticker

    plt = _pyplot()
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
                accs = [100 * j["test/acc_top1"] for js in c["jobs_by_seed"].values() for j in js]
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
        paths.append(_save(fig, out / f"acc_vs_{safe}.png"))
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
        paths.append(_save(fig, flops_path))
    else:
        flops_path.unlink(missing_ok=True)
    return paths


def plot_forest(out: Path, configs: list[dict], keys: list[str], design: Design) -> Path | None:
    """forest.png: each row's Δ against the baseline with its repeated confidence interval (the verdict's own
    interval), 0 and the ±δ equivalence band marked; None without compared rows."""
    rows = [c for c in configs if c.get("n_pairs") is not None and c.get("delta") is not None]
    if not rows:
        return None
    plt = _pyplot()
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
    return _save(fig, out / "forest.png")


def write_plots(out: Path, rows: list[dict], configs: list[dict], keys: list[str], study: dict) -> list[Path]:
    """Every figure of a report: acc_vs_*.png, forest.png (with a baseline) and curves.png (where curves were
    logged)."""
    paths = plot(out, configs, keys, study.get("baseline"))
    compared = sum(c.get("n_pairs") is not None for c in configs)
    forest = plot_forest(out, configs, keys, study_design(study, compared)) if compared else None
    curves = plot_curves(out, rows, configs, keys)
    return paths + [p for p in (forest, curves) if p] + plot_search(out, rows)


def trials_markdown(rows: list[dict]) -> list[str]:
    """The "Trials" section of an Optuna search's report (jobs with a trial number, search.sweeper): each trial's
    parameters, how it ended, the epochs it trained and its last validation top-1, the best trial marked; and the
    epochs the pruner saved."""
    trials = sorted((r for r in rows if r.get("trial") is not None), key=lambda r: r["trial"])
    if not trials:
        return []
    keys = swept_keys(trials)
    best = _best_trial(trials)
    cols = ["trial", *keys, "state", "epochs trained", "val top-1 (%)", "best"]
    lines = ["", "## Trials", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    trained = planned = 0
    for r in trials:
        epochs, total = len(run_curve(r)), _composed(r["job_config"], "trainer.max_epochs")
        trained, planned = trained + epochs, planned + (total or epochs)
        stopped = f"{epochs} of {total}" if total and epochs < total else str(epochs)
        value = "-" if r["val/acc_top1"] is None else f"{100 * r['val/acc_top1']:.2f}"
        state = {"completed": "complete"}.get(r["status"], r["status"])
        lines.append(f"| {r['trial']} | " + " | ".join(cell(r["overrides"].get(k)) for k in keys)
                     + f" | {state} | {stopped} | {value} | {'best' if r['trial'] == best else ''} |")
    lines += ["", f"Epochs trained in all: {trained} of the {planned} the trials would have trained whole"
                  + (f" ({100 * (1 - trained / planned):.0f}% saved by pruning)" if planned else "")]
    return lines


def _best_trial(trials: list[dict]) -> int | None:
    """The best trial as the search recorded it (<sweep>/optimization_results.yaml, focalnet.search.sweeper)."""
    return _load_yaml(Path(trials[0]["run_dir"]).parent / "optimization_results.yaml").get("best_trial")


def plot_search(out: Path, rows: list[dict]) -> list[Path]:
    """search.png (every trial's validation curve, the pruned ones dashed and cut with an x, the best thick) and
    Optuna's optimization_history.png and param_importances.png, where Optuna can draw them; [] without trials."""
    trials = sorted((r for r in rows if r.get("trial") is not None), key=lambda r: r["trial"])
    curves = {r["trial"]: run_curve(r) for r in trials}
    if not any(curves.values()):
        return []
    plt = _pyplot()
    best = _best_trial(trials)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in trials:
        curve = curves[r["trial"]]
        if not curve:
            continue
        x, y = [e + 1 for e in sorted(curve)], [curve[e] for e in sorted(curve)]
        pruned = r["status"] == Status.PRUNED
        (line,) = ax.plot(x, y, linestyle="--" if pruned else "-", linewidth=3 if r["trial"] == best else 1.2,
                          alpha=0.6 if pruned else 1.0, label=f"trial {r['trial']}" if r["trial"] == best else None)
        if pruned:
            ax.plot(x[-1:], y[-1:], marker="x", color=line.get_color(), markersize=8)
    ax.set(xlabel="epochs trained", ylabel="validation top-1 (%)",
           title="trials (dashed, x: pruned)" + (f"; best: trial {best}" if best is not None else ""))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    paths = [_save(fig, out / "search.png")]
    storage = next((_composed(r["job_config"], "search.storage") for r in trials), None)
    name = next((_composed(r["job_config"], "search.study_name") for r in trials), None)
    if storage and name:
        from focalnet.search.sweeper import plot_study

        paths += plot_study(storage, name, out)
    return paths


def run_curve(row: dict) -> dict[int, float]:
    """A job's validation curve: as results.csv recorded it (a run made elsewhere), else read from its folder."""
    if row.get("val_curve") is None:
        row["val_curve"] = learning_curve(row["run_dir"]) if row.get("run_dir") else {}
    return row["val_curve"]


def learning_curve(run_dir) -> dict[int, float]:
    """{epoch: validation top-1 (%)} from what the job logged: the CSV logger's metrics.csv, else its offline W&B
    runs ({} when neither is there). Should an epoch appear twice (a resumed run), its last value wins."""
    path = next(iter(sorted(Path(run_dir).rglob("metrics.csv"))), None)
    if path is not None:
        with open(path, newline="") as f:  # Lightning writes validation and training metrics on separate lines
            rows = list(csv.DictReader(f))
    else:
        rows = _wandb_history(Path(run_dir))
    return {int(float(r["epoch"])): 100 * float(r["val/acc_top1"]) for r in rows
            if r.get("val/acc_top1") not in (None, "") and r.get("epoch") not in (None, "")}


def _wandb_history(run_dir: Path) -> list[dict]:
    """The history rows of a job's offline W&B runs, oldest first, read back with wandb's own reader
    (`wandb leet inspect --json`; the wandb package has no Python API for offline files)."""
    import subprocess

    rows = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        wandb_cli = Path(sys.executable).parent / "wandb"
        try:
            out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(path)], capture_output=True,
                                 text=True, timeout=120, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            continue  # an unreadable run has no curve; the table does not need it
        records = (json.loads(line) for line in out.splitlines() if line.strip())
        rows += [r["history"]["item"] for r in records if r.get("type") == "history"]
    return rows


def plot_curves(out: Path, rows: list[dict], configs: list[dict], keys: list[str]) -> Path | None:
    """curves.png: validation top-1 per epoch, one line per configuration (mean over its completed seeds, band
    min-max), the baseline thicker; None when no job logged a curve."""
    curves: dict[tuple, list[dict]] = {}
    for r in rows:
        curve = run_curve(r) if r["status"] == Status.COMPLETED else {}
        if curve:
            curves.setdefault(tuple(r["overrides"].get(k) for k in keys), []).append(curve)
    if not curves:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in configs:
        runs = curves.get(tuple(c[k] for k in keys), [])
        epochs = sorted({e for run in runs for e in run})
        if not epochs:
            continue
        values = [[run[e] for run in runs if e in run] for e in epochs]
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
    return _save(fig, out / "curves.png")


def log_wandb(sweep_dir, rows, configs, plots, project: str, group: str | None, mode: str) -> None:
    import wandb

    # Beside the jobs' runs (each in <job>/wandb): `wandb sync` over the sweep folder uploads this one too. Absolute:
    # wandb's service process, shared by every run of this process, resolves a relative dir against its own cwd.
    run = wandb.init(project=project, group=group, job_type="report", dir=Path(sweep_dir).resolve(), mode=mode,
                     config={"sweep_dir": str(sweep_dir)})
    # Per-seed accuracies are in "jobs".
    cols = [k for k in configs[0] if k not in ("by_seed", "jobs_by_seed")] if configs else []
    jobs = [{k: v for k, v in r.items() if k not in ("overrides", "job_config")} | r["overrides"] for r in rows]
    job_cols = list({k: None for j in jobs for k in j})
    run.log({"configs": wandb.Table(columns=cols, data=[[c[k] for k in cols] for c in configs]),
             "jobs": wandb.Table(columns=job_cols, data=[[str(j.get(k)) for k in job_cols] for j in jobs]),
             **{p.stem: wandb.Image(str(p)) for p in plots}})
    wandb.finish()


def _key_value(text: str) -> tuple:
    try:
        ((key, value),) = parse_overrides([text]).items()
    except Exception as error:  # Hydra's OverrideParseException, or not exactly one item
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}") from error
    from hydra.core.override_parser.types import Sweep

    if not key or isinstance(value, Sweep):
        raise argparse.ArgumentTypeError(f"not KEY=VALUE (one value): {text!r}")
    return key, normalize(value)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="focalnet-report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, metavar="sweep_dir",
                        help="sweep folder (e.g. a Hydra multirun folder); more folders or single job folders join "
                             "the table (e.g. baseline runs from another study); the first one's study block counts")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the first sweep folder)")
    parser.add_argument("--baseline", action="append", type=_key_value, metavar="KEY=VALUE",
                        help="the row every other row is compared with, e.g. model.focal_levels=3 (repeat for more "
                             "keys; default: the `study.baseline` of the jobs' config)")
    parser.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                        help="log the table and plots to one W&B run (default: when the sweep's jobs logged to W&B)")
    parser.add_argument("--wandb-project", default=None, help="default: the jobs' W&B project, else focalnet")
    parser.add_argument("--wandb-group", default=None, help="default: the jobs' W&B group (the sweep's)")
    args = parser.parse_args(argv)
    for folder in args.sweep_dirs:
        if not folder.is_dir():
            parser.exit(2, f"focalnet-report: no such folder: {folder}\n")
    rows = collect(*args.sweep_dirs)
    sweep_dir = args.sweep_dirs[0]
    if not rows:
        folders = " ".join(map(str, args.sweep_dirs))
        parser.exit(2, f"focalnet-report: no summary.json or Hydra job folder under {folders}\n")
    twice = duplicates(rows)
    if twice:
        parser.exit(2, f"focalnet-report: two completed jobs ran the same setting and seed: {twice[0]} and {twice[1]}; "
                       "give one of them\n")
    out = args.out or sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    study = read_study(rows)
    if args.baseline:
        study["baseline"] = dict(args.baseline)
    keys = swept_keys(rows)
    configs = aggregate(rows)
    try:
        compare(configs, keys, study)
    except ValueError as error:
        parser.exit(2, f"focalnet-report: {one_line_text(error)}\n")
    markdown = to_markdown(args.sweep_dirs, rows, configs, study)
    write_csv(out / "results.csv", rows)
    (out / "results.md").write_text(markdown)
    plots = write_plots(out, rows, configs, keys, study)
    print(markdown, end="")
    if not any(p.name == "curves.png" for p in plots):
        print("focalnet-report: no curves.png: no job logged validation top-1 per epoch (CSV or offline W&B)",
              file=sys.stderr)
    jobs_wandb = next((r["wandb"] for r in rows if r.get("wandb")), None)  # what train.py recorded
    if args.wandb if args.wandb is not None else jobs_wandb is not None:
        jobs_wandb = jobs_wandb or {}
        project = args.wandb_project or jobs_wandb.get("project") or "focalnet"
        # The jobs' mode (offline by default) unless WANDB_MODE says otherwise: by default nothing needs the network.
        mode = os.environ.get("WANDB_MODE") or jobs_wandb.get("mode") or "offline"
        log_wandb(sweep_dir, rows, configs, plots, project, args.wandb_group or jobs_wandb.get("group"), mode)
