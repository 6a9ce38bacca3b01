"""The statistics of a report: runs grouped into configurations, each compared with the baseline seed by seed
(the study's repeated confidence interval and verdict, focalnet.studies.sequential), and a test that host classes
agree."""

from __future__ import annotations

import itertools
import statistics

from focalnet.record import Status
from focalnet.studies.runs import DESIGN_KEYS, NOT_FAILED, Run, sort_key, swept_keys
from focalnet.studies.sequential import PENDING, Design, decide, replication_seeds, seeds_to_decide

# What compare() adds to a configuration: its paired difference to the baseline (test top-1, percentage points).
PAIRED = ("n_pairs", "delta", "sd", "ci_low", "ci_high", "verdict", "why", "seeds_needed", "eq_low", "eq_high",
          "replication")


def aggregate(runs: list[Run], keys: list[str] | None = None, settings: list[tuple] = ()) -> list[dict]:
    """One dict per configuration (the jobs' overrides minus seed; `keys`: the swept ones; `settings`: value tuples
    that get a row even without jobs), sorted by the swept values. test_acc_mean / test_acc_std are fractions; std
    is the sample std (None below two seeds); by_seed maps each completed seed to its top-1 (the first run of it),
    jobs_by_seed to all its runs (one per machine, where a seed ran on several)."""
    keys = swept_keys(runs) if keys is None else keys
    groups: dict[tuple, list[Run]] = {tuple(values): [] for values in settings}
    for r in runs:
        groups.setdefault(tuple(r.overrides.get(k) for k in keys), []).append(r)
    configs = []
    for values, jobs in sorted(groups.items(), key=lambda kv: [sort_key(v) for v in kv[0]]):
        done = [j for j in jobs if j.status == Status.COMPLETED]
        accs = [j.test_top1 for j in done if j.test_top1 is not None]
        speeds = [j.train_images_per_s for j in done if j.train_images_per_s is not None]
        # Size and cost don't depend on the seed; a failed job may still have measured them.
        params = next((j.params for j in done + jobs if j.params is not None), None)
        flops = next((j.flops for j in done + jobs if j.flops is not None), None)
        scored = sorted((j for j in done if j.test_top1 is not None), key=lambda j: sort_key(j.seed))
        by_seed = _by_seed(scored)
        configs.append({**dict(zip(keys, values)), "params": params, "flops": flops,
                        "images_per_s": statistics.fmean(speeds) if speeds else None,
                        "test_acc_mean": statistics.fmean(accs) if accs else None,
                        "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
                        "n": len(done), "failed": sum(j.status not in NOT_FAILED for j in jobs),
                        "by_seed": {s: js[0].test_top1 for s, js in by_seed.items()}, "jobs_by_seed": by_seed})
    return configs


def _by_seed(jobs: list[Run]) -> dict:
    found: dict = {}
    for j in jobs:
        found.setdefault(j.seed, []).append(j)
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
    replication would need ("replication": focalnet.studies.sequential.replication_seeds), not a continuation the
    design does not cover."""
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


def check_pairable(a: Run, b: Run) -> None:
    """Runs compared seed against seed must have computed alike: the same precision and torch version."""
    for what in ("precision", "torch"):
        mine, theirs = getattr(a, what), getattr(b, what)
        if mine and theirs and mine != theirs:
            raise ValueError(f"cannot pair {a.run_dir} ({what} {mine}) with {b.run_dir} ({what} {theirs}): "
                             f"runs of different {what} do not compare; run both alike")


def same_machine(a: Run, b: Run) -> bool:
    """Whether two runs were made on the same kind of CPU (unrecorded: assumed so). fp32 results differ between
    CPUs by about seed noise (other vector kernels and GEMM choices): a pair is made on one machine."""
    return not a.cpu or not b.cpu or a.cpu == b.cpu


def host_class(device: str | None, precision: str | None, torch: str | None) -> str | None:
    """A host class: what a run ran on, its precision and torch version; None where the device was not recorded."""
    return f"{device}, {precision or '?'}, torch {torch or '?'}" if device else None


def host_label(run: Run) -> str | None:
    """A run's host class: its `host`, where the caller named it, else by its CPU model."""
    return run.host or host_class(run.cpu, run.precision, run.torch)


def pairs(row: dict, base: dict) -> list[tuple]:
    """(seed, row's top-1, baseline's top-1, the pair's host class) for each seed both have on the same machine, in
    seed order."""
    found = []
    for seed, jobs in row["jobs_by_seed"].items():
        for job in jobs:
            match = [b for b in base["jobs_by_seed"].get(seed, []) if same_machine(job, b)]
            if match:
                check_pairable(job, match[0])
                found.append((seed, job.test_top1, match[0].test_top1, host_label(job) or host_label(match[0])))
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
            if study.get("seeds"):  # a study's looks use its seeds in their order, up to the first without a pair
                have = {s for s, *_ in matched}
                prefix = set(itertools.takewhile(have.__contains__, study["seeds"]))
                matched = [m for m in matched if m[0] in prefix]
            c.update(paired([100 * (a - b) for _, a, b, _ in matched], design, study.get("stopped")))
            used = matched[: c["n_pairs"]] if c["n_pairs"] else matched
            c["seeds"] = [s for s, *_ in used]
            c["pair_diffs"] = [100 * (a - b) for _, a, b, _ in used]
            c["pair_hosts"] = [h for *_, h in used]
        c["paper_top1"] = paper["top1"].get(c.get(paper["key"])) if paper else None
        c["paper_delta"] = None if c["paper_top1"] is None or paper_base is None else c["paper_top1"] - paper_base


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
