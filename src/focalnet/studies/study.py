"""focalnet-study: run a study in rounds of seeds until every row is decided, then report it.

    focalnet-study focal_levels --data fashion_mnist [OVERRIDES ...]       (make study STUDY=... DATA=...)
    focalnet-study --table --data fashion_mnist                             (every study's rows in one table)

A study (experiments/<name>/study.yaml) sweeps one key (or a config group of its folder whose options are rows that
set several keys) against its baseline. Each round trains the next
`seeds_per_round` seeds of every undecided row (and of the baseline, where they are missing) as one Hydra multirun
of focalnet-train, with the study's launcher (side by side, SLURM, ...); then every row is looked at again
(studies.sequential). A decided row gets no more seeds. The study stops when every row is decided, at the cap, or
when its wall-time budget is spent; the report (results.md, results.csv, forest.png, ...) is rewritten after every
round in experiments/<name>/<data>/.

Runs are found by what they computed, not by folder: a run of any study under outputs/ablation/ whose config
differs from the study's recipe in exactly a row's setting is that row's run for its seed. So a baseline shared by
studies of one data set and budget is trained once. The committed results.csv of every study of the data set
records each run (recipe id, setting, seed, top-1, precision, torch, CPU): a study stopped on one machine resumes on
another, and re-running a finished study trains nothing. An interrupted job resumes from its last.ckpt
(resume=auto): the study's jobs live in outputs/ablation/<data>/<study>/<key>-<value>+seed-<seed>/.

Verdicts that hold up (docs/studies.md): the study's design (rows and settings, δ, α, looks, procedure, seeds, recipe,
host policy and class) is frozen in rounds.json with a hash before its first look, and a later change is refused
unless --new-design (a new ledger; the old verdicts kept, superseded). By default a study pairs and decides within
one host class (CPU model or GPU, precision, torch: the first round's), naming the runs made elsewhere; `hosts: any`
pools them and reports Δ per class. Each round's command is recorded (relative paths), so the report regenerates
from the committed files alone; a finished ledger is closed: it reads its own results.csv only.

The study's parts: design.py (the study file read into a Spec, and the recipes), study_runs.py (its runs, found by
recipe, and their host classes), ledger.py (rounds.json and the frozen design), study_report.py (its results.md,
results.csv and plots) and table.py (--table); this module runs the rounds and is the command line.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from focalnet.files import now, write_json
from focalnet.record import Status
from focalnet.studies.design import Spec, load_spec
from focalnet.studies.ledger import fix_host_class, read_state, settle_design, spent_hours, study_host
from focalnet.studies.runs import Run
from focalnet.studies.sequential import PENDING
from focalnet.studies.study_report import write_report
from focalnet.studies.study_runs import runs, scope, this_host, with_hosts
from focalnet.studies.table import table


def needed(spec: Spec, rows: list[Run], decisions: dict, here: str | None) -> dict[tuple[int, ...], list]:
    """The next round: {seeds: values} for every undecided row and the baseline, and the re-runs this machine
    lacks. A row needs each of the design's seeds up to its next look paired like with like: its run and the
    baseline's made on the same machine. What is missing is run on this one (`here`, its CPU): the baseline's run of
    a seed the row has here, the row's of a seed the baseline has here, both where neither has it here. A re-run
    (study.reruns) is trained where this machine has none of it. Empty when nothing is due."""
    have: dict[Any, dict] = {v: {} for v in spec.values}
    for r in rows:
        if r.status == Status.COMPLETED and r.test_top1 is not None:
            have[r.overrides[spec.key]].setdefault(r.seed, set()).add(r.cpu)
    wanted: dict[Any, set] = {v: set() for v in spec.values}
    base = have[spec.baseline]
    pending = False
    for value, decision in decisions.items():
        if decision["verdict"] != PENDING:
            continue
        pending = True
        target = spec.design.next_look(decision["n_pairs"] or 0) or spec.design.max_seeds
        for seed in spec.seeds[:target]:
            mine, theirs = have[value].get(seed, set()), base.get(seed, set())
            if mine & theirs or (None in mine and theirs) or (mine and None in theirs):
                continue  # a pair made on one machine (an unrecorded machine pairs with any)
            if here not in mine:
                wanted[value].add(seed)
            if here not in theirs:
                wanted[spec.baseline].add(seed)
    reruns = {value: {s for s in seeds if here not in have[value].get(s, set())}
              for value, seeds in (spec.reruns.items() if pending else ())}
    groups: dict[tuple[int, ...], list] = {}
    for want in (reruns, wanted):  # the re-runs first: they answer their question whatever the looks decide
        for value in spec.values:
            if want.get(value):
                groups.setdefault(tuple(sorted(want[value])), []).append(value)
    return groups


def parts(values: list, seeds: list[int], size: int | None) -> list[tuple[list, list[int]]]:
    """A round's jobs (values x seeds) as multiruns of at most `size` jobs (None: one multirun), seed by seed, so
    that the report, rewritten after each, keeps what finished however the study is stopped. Values left over from
    whole multiruns go last, several seeds at once, so that no more than one multirun runs short."""
    if size is None or len(values) * len(seeds) <= size:
        return [(values, seeds)]
    if size >= len(values):
        step = size // len(values)
        return [(values, seeds[i:i + step]) for i in range(0, len(seeds), step)]
    whole = len(values) - len(values) % size
    found = [(values[i:i + size], [s]) for s in seeds for i in range(0, whole, size)]
    rest = values[whole:]
    step = size // len(rest) if rest else 1
    return found + ([(rest, seeds[i:i + step]) for i in range(0, len(seeds), step)] if rest else [])


def run(spec: Spec, dry_run: bool = False, max_rounds: int | None = None, new_design: bool = False) -> int:
    """Rounds until every row is decided, the cap or the budget; returns the exit code (1 when a job failed)."""
    cpu, here = this_host(spec)
    state = settle_design(spec, read_state(spec), with_hosts(spec, runs(spec, read_state(spec))), new_design)
    rounds = 0
    while True:
        rows = runs(spec, state)
        over_budget = spec.budget_hours is not None and spent_hours(state) >= spec.budget_hours
        decisions = write_report(spec, rows, "budget" if over_budget else None, state, here)
        host = study_host(spec, state, here)
        found = scope(spec, with_hosts(spec, rows), host)
        plan = needed(spec, found.used + found.reruns, decisions, cpu)  # another host class's pairs do not count
        write_json(spec.out / "rounds.json", state)
        if plan and host is not None and host != here:
            message = (f"focalnet-study: {spec.name} on {spec.data}: this machine ({here}) is not the study's host "
                       f"class ({host}): its runs would not count (study.hosts: same); run it there")
            if dry_run:
                print(message + f"; report in {spec.out}/results.md", flush=True)
                return 0
            print(message, file=sys.stderr, flush=True)
            return 2
        if not plan or over_budget or (max_rounds is not None and rounds >= max_rounds):
            why = ("budget spent" if over_budget and plan else "rounds given" if plan
                   else "no row pending (each decided, or at the cap)")
            print(f"focalnet-study: {spec.name} on {spec.data}: {why}; report in {spec.out}/results.md", flush=True)
            return 0
        if not dry_run and spec.hosts == "same" and not state["frozen"]["design"].get("host_class"):
            fix_host_class(state, here)  # the first round starts here, before any look at its data
            write_json(spec.out / "rounds.json", state)
        multiruns = [p for group, rows in plan.items() for p in parts(rows, list(group), spec.jobs_per_multirun)]
        for k, (values, seeds) in enumerate(multiruns, 1):
            command = spec.command(values, seeds)
            shown = shlex.join(spec.command(values, seeds, display=True))
            # Numbered within this round: the design's rounds are the looks, rounds.json lists every multirun.
            print(f"focalnet-study: multirun {k}/{len(multiruns)}: {shown}", flush=True)
            if dry_run:
                continue
            start, started_at = time.perf_counter(), now()
            code = subprocess.run(command).returncode
            state["rounds"].append({"started_at": started_at, "finished_at": now(), "seeds": seeds,
                                    "values": values, "command": shown, "exit_code": code,
                                    "wall_time_s": round(time.perf_counter() - start, 1)})
            if code or spec.jobs_per_multirun is not None:  # what finished is reported before anything more runs
                write_report(spec, runs(spec, state), None, state, here)
            write_json(spec.out / "rounds.json", state)
            if code:  # a failed job would fail again in the next round; a stop (SIGTERM, Ctrl-C) is a stop
                print(f"focalnet-study: multirun {k}/{len(multiruns)} exited with {code}: stopped; the report lists "
                      f"the failed jobs ({spec.out}/results.md); the same command resumes", file=sys.stderr, flush=True)
                return 1 if code > 0 and code not in (130, 143) else code
        if dry_run:
            return 0
        rounds += 1


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="focalnet-study", description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?", help="a folder name under experiments/ (e.g. focal_levels); none with "
                        "--table")
    parser.add_argument("overrides", nargs="*", help="more focalnet-train overrides for every job (part of the "
                        "recipe: runs with other values are other runs)")
    parser.add_argument("--data", default="digits", help="the conf/benchmark/ option: data set and budget")
    parser.add_argument("--dry-run", action="store_true", help="report, print the next round's commands, run nothing")
    parser.add_argument("--rounds", type=int, default=None, help="run at most this many rounds now")
    parser.add_argument("--new-design", action="store_true", help="the study's file changed its frozen design: start "
                        "a new ledger under the new one; the old verdicts are kept, marked superseded")
    parser.add_argument("--table", action="store_true", help="print every study's rows on --data in one table "
                        "(what exists now; runs nothing)")
    parser.add_argument("--family", choices=("study", "table"), default="study", help="with --table: α family-wise "
                        "over each study's rows (study, the default) or over every row of the table (table)")
    parser.add_argument("--experiments", type=Path, default=Path("experiments"),
                        help="the folder of the studies (default: experiments); reports go to <it>/<study>/<data>/")
    args = parser.parse_intermixed_args(argv)
    from focalnet.cli import config_dir

    benchmarks = Path(config_dir(), "benchmark")
    if not (benchmarks / f"{args.data}.yaml").is_file():
        choices = " ".join(p.stem for p in sorted(benchmarks.glob("*.yaml")))
        parser.exit(2, f"focalnet-study: no benchmark {args.data!r} (conf/benchmark/); choices: {choices}\n")
    if args.table and args.study and "=" in args.study:  # an override, not a study: the table takes none
        args.overrides.insert(0, args.study)
        args.study = None
    if bool(args.study) == args.table:
        parser.exit(2, "focalnet-study: give a study, or --table for all of them\n")
    if not any(args.experiments.glob("*/study.yaml")):  # run outside the checkout: say so, not an empty answer
        checkout = Path(config_dir()).parent / "experiments"
        where = checkout if any(checkout.glob("*/study.yaml")) else "<focalnet checkout>/experiments"
        parser.exit(2, f"focalnet-study: no studies (<name>/study.yaml) in {args.experiments.absolute()}/: run it from "
                       f"the focalnet checkout, or pass --experiments {where}\n")  # fmt: skip
    try:
        if args.table:
            print(table(args.data, args.experiments, args.overrides, args.family), end="")
            sys.exit(0)
        spec = load_spec(args.study, args.data, args.overrides, args.experiments)
        code = run(spec, dry_run=args.dry_run, max_rounds=args.rounds, new_design=args.new_design)
    except Exception as error:  # a bad study file or override, a changed design: Hydra's or ours, one line
        from hydra.errors import HydraException

        if not isinstance(error, (ValueError, HydraException)):
            raise
        from focalnet.cli import hydra_error_line

        parser.exit(2, f"focalnet-study: {hydra_error_line(error)}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
