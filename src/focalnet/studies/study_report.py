"""A study's report in experiments/<name>/<data>/: results.md (the table, the frozen design and host class, the
re-runs, the superseded designs, the rounds), results.csv (the ledger: every run the design knows, on any host) and
the plots, from the runs its frozen design uses; each row's verdict goes to rounds.json."""

from __future__ import annotations

import shlex
from pathlib import Path

from focalnet.record import Status
from focalnet.studies.analysis import aggregate, compare
from focalnet.studies.design import Spec
from focalnet.studies.ledger import FROZEN_BEFORE, spent_hours, study_host
from focalnet.studies.markdown import host_classes_markdown, interval, seed_list, signed, to_markdown, verdict_text
from focalnet.studies.plots import write_plots
from focalnet.studies.runs import Run, write_csv
from focalnet.studies.sequential import PENDING, Design
from focalnet.studies.study_runs import Scope, scope, with_hosts


def write_report(spec: Spec, rows: list[Run], stopped: str | None, state: dict, here: str | None = None) -> dict:
    """results.md/csv and plots into the study's folder, from the runs its frozen design uses; returns each row's
    decision by value (and records them in `state`)."""
    spec.out.mkdir(parents=True, exist_ok=True)
    rows = with_hosts(spec, rows)
    found = scope(spec, rows, study_host(spec, state, here))
    study = {"baseline": {spec.key: spec.baseline}, "paper": spec.paper, "design": spec.design, "seeds": spec.seeds,
             "stopped": stopped, "data": spec.data_label}
    configs = aggregate(found.used, keys=[spec.key], settings=[(v,) for v in spec.values])
    compare(configs, [spec.key], study)
    state.update(command=shlex.join(["focalnet-study", spec.name, "--data", spec.data, *spec.overrides]))
    reference = state.get("reference") if spec.frozen_recipe else None
    state.update(study=spec.name, data=spec.data, recipe=spec.recipe_id, design=vars(spec.design),
                 budget_hours=spec.budget_hours, spent_hours=round(spent_hours(state), 3),
                 reference=reference or spec.reference)
    state["verdicts"] = {spec.label(c[spec.key]): _verdict(c, spec.design) for c in configs if not c["is_baseline"]}
    state["closed"] = bool(configs) and all(c["is_baseline"] or c["verdict"] not in (PENDING, None)
                                            and c.get("why") != "budget" for c in configs)
    commands = [r["command"] for r in state["rounds"] if r.get("command")] + state.get("other_commands", [])
    own = [r for r in found.reruns if Path(r.run_dir or "").parts[:len(spec.runs.parts)] == spec.runs.parts]
    lines = to_markdown([spec.runs], found.used + found.elsewhere + own, configs, study, keys=[spec.key],
                        title=f"Study `{spec.name}` on `{spec.data}`", rounds=state,
                        commands=list(dict.fromkeys(commands)), notes=_notes(spec, state, found),
                        sections=_sections(spec, state, found, configs))
    write_csv(spec.out / "results.csv", found.ledger, keys=[spec.key])
    (spec.out / "results.md").write_text(lines)
    write_plots(spec.out, found.used, configs, [spec.key], study)
    return {c[spec.key]: c for c in configs}


def _verdict(c: dict, design: Design) -> dict:
    def r(x):
        return None if x is None else round(x, 4)

    return {"n": c["n_pairs"], "delta": r(c["delta"]),
            "interval": None if c["ci_low"] is None else [r(c["ci_low"]), r(c["ci_high"])],
            "verdict": verdict_text(c, design)}


def _machines_of(rows: list[Run]) -> str:
    made: dict[str, int] = {}
    for r in rows:
        made[r.host or "host not recorded"] = made.get(r.host or "host not recorded", 0) + 1
    return "; ".join(f"{n} run(s) on {host}" for host, n in sorted(made.items()))


def _notes(spec: Spec, state: dict, found: Scope) -> list[str]:
    frozen = state["frozen"]
    when = (f"frozen before the first look ({frozen['at'][:16]})" if frozen["frozen"] == FROZEN_BEFORE
            else "recorded after the looks (the ledger predates frozen designs; its verdicts are the ones it was "
                 "decided with)")
    c = frozen["design"].get("calibration")
    procedure = (f"procedure and its calibration ({c['method']}, skewness {c['skew']}, seed {c['seed']}, "
                 f"{c['paths']:,} paths, the critical values)" if c else "procedure")
    notes = [f"Frozen design: {when}, hash `{frozen['hash']}` (rounds.json `frozen`): rows and settings, δ, α, "
             f"looks, {procedure}, seeds {seed_list(spec.seeds)}, recipe `{spec.recipe_id}`, host policy "
             "`hosts: " + spec.hosts + "`. A change is refused; `--new-design` starts a new ledger."]
    if spec.hosts == "any":
        notes.append("Hosts: any: the verdicts pool the host classes (each pair made on one; Δ per class below).")
    elif frozen["design"].get("host_class"):
        notes.append(f"Host class: {frozen['design']['host_class']} (hosts: same: the pairs and verdicts use its "
                     "runs only).")
    else:
        notes.append("Host class: not fixed yet: the first round's host becomes the study's (hosts: same).")
    if found.elsewhere:
        notes.append(f"Made elsewhere, not used (another host class than the study's): "
                     f"{_machines_of([r for r in found.elsewhere if r.status == Status.COMPLETED])}.")
    if found.outside:
        seeds = seed_list({r.seed for r in found.outside})
        notes.append(f"Not used: {len(found.outside)} run(s) of these settings at seeds outside the design's "
                     f"(seeds {seeds}: other studies' ledgers).")
    return notes


def _sections(spec: Spec, state: dict, found: Scope, configs: list[dict]) -> list[str]:
    lines = host_classes_markdown(configs, [spec.key]) if spec.hosts == "any" else []
    lines += _reruns_markdown(spec, found)
    for i, old in enumerate(state.get("superseded", []), 1):
        d = old["frozen"]["design"]
        lines += ["", f"## Superseded design {i} (kept, not used for decisions)", "",
                  f"Frozen {old['frozen']['frozen']}, hash `{old['frozen']['hash']}`: α = {d['alpha']:g} over "
                  f"{d['K']} row(s), δ = ±{d['delta']:g} points, {d['seeds_per_round']} seeds per round, cap "
                  f"{d['max_seeds']}, procedure {d['procedure']}, hosts {d['hosts']}; superseded "
                  f"{old['superseded_at'][:16]} ({'; '.join(old['changes'])}), after {len(old.get('rounds', []))} "
                  "round(s).", "", "| row | n | Δ top-1 (pts) | interval (pts) | verdict (superseded) |",
                  "|---|---|---|---|---|"]
        for row, v in (old.get("verdicts") or {}).items():
            shown = "-" if not v["interval"] else interval(*v["interval"])
            lines.append(f"| {row} | {v['n']} | {signed(v['delta'])} | {shown} | {v['verdict']} |")
    return lines


def _reruns_markdown(spec: Spec, found: Scope) -> list[str]:
    """The re-runs' section: each re-run setting and seed's top-1 on every host class that has it, and, for a row
    re-run with the baseline, its Δ at those seeds per host class."""
    if not spec.reruns:
        return []
    runs_ = [r for r in found.reruns + found.used + found.elsewhere
             if r.status == Status.COMPLETED and r.seed in spec.reruns.get(r.overrides[spec.key], ())
             and r.test_top1 is not None]
    top1 = {(r.overrides[spec.key], r.seed, r.host or "host not recorded"): 100 * r.test_top1 for r in runs_}
    hosts = sorted({h for _, _, h in top1})
    lines = ["", "## Re-runs: the same setting and seed on other hosts", "",
             "`study.reruns` trains these settings at these seeds on this study's host class as well, where it has "
             "none of them, and no verdict uses them: the committed studies ran them on other hosts. fp32 training "
             "repeats itself on one host class, so two columns of one seed differ by what the host changes. For a "
             "row re-run with the baseline, Δ at those seeds per host class: alike across hosts, a gap between "
             "host classes seen in a committed study came with its seeds (one draw); different on the same seeds, "
             "with the host.", "",
             "| setting | seed | " + " | ".join(hosts) + " |", "|---|---|" + "---|" * len(hosts)]
    for value, seeds in spec.reruns.items():
        for seed in seeds:
            cells = [f"{top1[value, seed, h]:.2f}" if (value, seed, h) in top1 else "-" for h in hosts]
            lines.append(f"| {spec.label(value)} | {seed} | " + " | ".join(cells) + " |")
    base = spec.reruns.get(spec.baseline, [])
    for value, seeds in spec.reruns.items():
        if value == spec.baseline:
            continue
        for host in hosts:
            diffs = [(s, top1[value, s, host] - top1[spec.baseline, s, host]) for s in seeds
                     if s in base and (value, s, host) in top1 and (spec.baseline, s, host) in top1]
            if diffs:
                per_seed = ", ".join(f"{signed(d)} (seed {s})" for s, d in diffs)
                lines += ["", f"Δ {spec.label(value)} − baseline on {host}: mean "
                              f"{signed(sum(d for _, d in diffs) / len(diffs))} over {len(diffs)} seed(s): "
                              f"{per_seed}."]
    return lines

