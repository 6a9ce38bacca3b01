"""focalnet-study: run a study in rounds of seeds until every row is decided, then report it.

    focalnet-study focal_levels --data fashion_mnist [OVERRIDES ...]       (make ablation STUDY=... DATA=...)
    focalnet-study --table --data fashion_mnist                             (every study's rows in one table)

A study (experiments/<name>/study.yaml) sweeps one key against its baseline. Each round trains the next
`seeds_per_round` seeds of every undecided row (and of the baseline, where they are missing) as one Hydra multirun
of focalnet-train, with the study's launcher (side by side, SLURM, ...); then every row is looked at again
(focalnet.sequential). A decided row gets no more seeds. The study stops when every row is decided, at the cap, or
when its wall-time budget is spent; the report (results.md, results.csv, forest.png, ...) is rewritten after every
round in experiments/<name>/<data>/.

Runs are found by what they computed, not by folder: a run of any study under outputs/ablation/ whose config
differs from the study's recipe in exactly a row's setting is that row's run for its seed. So a baseline shared by
studies of one data set and budget is trained once. The committed results.csv of every study of the data set
records each run (recipe id, setting, seed, top-1, precision, torch, CPU): a study stopped on one machine resumes on
another, and re-running a finished study trains nothing. An interrupted job resumes from its last.ckpt
(resume=auto): the study's jobs live in outputs/ablation/<data>/<study>/<key>-<value>+seed-<seed>/.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from focalnet import report
from focalnet.record import Status
from focalnet.runinfo import machine, now, write_json
from focalnet.sequential import PENDING, Design

# What does not change the numbers a run computes: its seed (the rounds' own axis), where it writes, how it logs and
# reports progress, how it is resumed. Everything else of the composed config is the run's recipe.
NOT_RECIPE = ("seed", "task_name", "tags", "ckpt_path", "resume", "fail_fast", "startup_timeout", "optimized_metric",
              "logger", "paths", "study", "hydra", "callbacks.progress_bar", "callbacks.lr_monitor",
              "callbacks.model_checkpoint.dirpath", "callbacks.last_checkpoint", "callbacks.interrupt_checkpoint",
              "trainer.default_root_dir", "trainer.log_every_n_steps", "trainer.plugins", "trainer.enable_progress_bar",
              "data.num_workers", "data.pin_memory", "data.split_file", "data.download")
RUNS_ROOT = Path("outputs/ablation")  # where every study's jobs live (and where runs are looked for)
DESIGN_KEYS = ("alpha", "delta", "seeds_per_round", "max_seeds")


def recipe(config: Mapping, precision: str | None = None, prefix: str = "") -> dict[str, str]:
    """The config's leaves that decide a run's numbers, {dotted key: JSON value}; `precision` (the resolved one a
    run recorded) replaces trainer.precision, whose `auto` means different things on different machines."""
    flat: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if any(key == x or key.startswith(x + ".") for x in NOT_RECIPE):
            continue
        if isinstance(v, Mapping) and v:
            flat |= recipe(v, prefix=key + ".")
        else:
            flat[key] = json.dumps(v, sort_keys=True)
    if precision and not prefix:
        flat["trainer.precision"] = json.dumps(precision)
    return flat


def setting(run: dict[str, str], reference: dict[str, str]) -> str:
    """Where a run's recipe differs from the study's reference, as canonical JSON ("{}": the reference itself).
    A key the run's config lacks counts as the reference's value: it was added to the configs after the run, with a
    default that keeps the old behaviour (a new model switch, off)."""
    return json.dumps({k: json.loads(v) for k, v in sorted(run.items()) if reference.get(k) != v}, sort_keys=True)


@dataclass
class Spec:
    """A study as its file and the data set declare it."""

    name: str
    data: str
    folder: Path                       # experiments/<name>
    key: str
    values: list                       # the settings of `key`, the baseline's among them
    baseline: Any
    design: Design
    budget_hours: float | None
    reference: dict[str, str]          # the recipe every setting is measured against
    settings: dict[Any, str]           # value -> its setting() JSON
    paper: dict | None = None
    overrides: list[str] = field(default_factory=list)

    @property
    def recipe_id(self) -> str:
        return hashlib.sha256(json.dumps(self.reference, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def out(self) -> Path:
        return self.folder / self.data

    @property
    def runs(self) -> Path:
        return RUNS_ROOT / self.data / self.name

    def command(self, values: list, seeds: list[int]) -> list[str]:
        """The focalnet-train multirun of one round: these values of the key times these seeds."""
        exe = Path(sys.executable).parent / "focalnet-train"
        head = [str(exe)] if exe.exists() else [sys.executable, "-m", "focalnet.train"]
        return [*head, "-m", "--config-dir", str(self.folder), "--config-name", "study", f"ablation={self.data}",
                f"{self.key}={','.join(_hydra_value(v) for v in values)}", f"seed={','.join(map(str, seeds))}",
                f"hydra.sweep.dir={self.runs}", f"hydra.sweep.subdir={self.key}-${{{self.key}}}+seed-${{seed}}",
                "resume=auto", "callbacks.progress_bar=null", *self.overrides]


def _hydra_value(value) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def compose(folder: Path, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import focalnet.runinfo  # noqa: F401 (the resolvers the configs use)
    from focalnet.cli import config_dir

    with initialize_config_dir(config_dir=str(folder.resolve()), version_base="1.3"):
        return hydra_compose(config_name="study", return_hydra_config=True,
                             overrides=[*overrides, f"hydra.searchpath=[file://{Path(config_dir()).resolve()}]"])


def load_spec(name: str, data: str, overrides: list[str] | None = None, experiments: Path = Path("experiments")
              ) -> Spec:
    """The study `name` on `data`: its swept key and values, baseline, design and the recipe of each setting."""
    from omegaconf import OmegaConf

    from focalnet.precision import resolve_precision

    folder = experiments / name
    if not (folder / "study.yaml").is_file():
        known = sorted(p.parent.name for p in experiments.glob("*/study.yaml"))
        raise ValueError(f"no study {name!r} in {experiments}/ (studies: {', '.join(known)})")
    overrides = list(overrides or [])
    base = [f"ablation={data}", *overrides]
    cfg = compose(folder, base)
    params = {k: v for k, v in (cfg.hydra.sweeper.params or {}).items() if k != "seed"}
    study = OmegaConf.to_container(cfg.get("study") or {}, resolve=True)
    if len(params) != 1:
        raise ValueError(f"study {name} sweeps {', '.join(params) or 'nothing'}: a study compares the settings of "
                         "one key with its baseline (hydra.sweeper.params: one key and seed)")
    (key, text), = params.items()
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (sweep,) = OverridesParser.create().parse_overrides([f"{key}={text}"])
    values = [report.normalize(v) for v in sweep.value().list]
    baseline = {k: report.normalize(v) for k, v in (study.get("baseline") or {}).items()}
    if list(baseline) != [key] or baseline[key] not in values:
        raise ValueError(f"study.baseline={baseline} must name one of {key}={text}")
    unknown = set(study) - {"name", "baseline", "paper", "budget_hours", *DESIGN_KEYS}
    if unknown:
        raise ValueError(f"study.{sorted(unknown)[0]} is not a study key (name, baseline, paper, budget_hours, "
                         f"{', '.join(DESIGN_KEYS)})")
    if study.get("name", name) != name:
        raise ValueError(f"study.name={study['name']} in {folder / 'study.yaml'}: a study is named by its folder "
                         f"({name})")
    budget = study.get("budget_hours")
    if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
        raise ValueError(f"study.budget_hours={budget} must be a number of hours > 0, or null (no budget)")
    design = Design(rows=len(values) - 1, **{k: study[k] for k in DESIGN_KEYS if k in study})

    def flat(c) -> dict[str, str]:
        precision = resolve_precision(c.trainer.precision, c.trainer.accelerator)
        return recipe(OmegaConf.to_container(c, resolve=False), precision)

    from focalnet import schema

    checked = cfg.copy()
    OmegaConf.update(checked, "paths.output_dir", ".", force_add=True)  # a job's own folder: none outside a job
    for group in schema.SCHEMA:  # a bad override fails here, in one line, before any job starts
        if checked.get(group) is not None:
            schema.check(group, OmegaConf.to_container(checked[group], resolve=True))
    reference = flat(cfg)
    settings = {v: setting(flat(compose(folder, [*base, f"{key}={_hydra_value(v)}"])), reference) for v in values}
    paper = report.read_study([{"job_config": {"config": {"study": study}, "hydra": {}}}])["paper"]
    return Spec(name, data, folder, key, values, baseline[key], design, budget, reference, settings, paper, overrides)


# --- the runs of a study: on this machine, and as recorded in the committed results.csv files ----------------------


def local_runs(spec: Spec, root: Path = RUNS_ROOT) -> list[dict]:
    """Every run folder under `root` whose recipe is one of the study's settings, as focalnet-report's job rows,
    with overrides {key: value}; runs of this study's own folder that did not complete come too (their status
    counts in the report)."""
    by_setting = {s: v for v, s in spec.settings.items()}
    found = []
    for r in report.collect_folder(root) if root.is_dir() else []:
        run_dir = Path(r["run_dir"])
        job = report.job_config_of(run_dir)
        if not job["config"]:
            continue
        value = by_setting.get(setting(recipe(job["config"], r.get("precision")), spec.reference))
        own = spec.runs.resolve() in run_dir.resolve().parents
        if not own and (value is None or r["status"] != Status.COMPLETED):
            continue  # another study's job still running (or stopped) is none of this study's rows
        if value is None:  # one of ours that has not recorded its precision yet (still starting)
            value = report.normalize(_dotted(job["config"], spec.key))
        found.append(r | {"job_config": job, "overrides": {spec.key: value}, "recipe": spec.recipe_id,
                          "setting": spec.settings.get(value), "study": spec.name})
    return found


def _dotted(config: Mapping, key: str):
    for part in key.split("."):
        config = (config or {}).get(part) if isinstance(config, Mapping) else None
    return config


def recorded_runs(spec: Spec) -> list[dict]:
    """The completed runs that the committed results.csv files of every study on this data set record for the
    study's settings (made on any machine). A row names its recipe by id and its setting as a difference to that
    recipe; the recipe itself is in the rounds.json beside it, so a run recorded under an older recipe (before a new
    model switch, say) is recognised by what it computed."""
    by_setting = {s: v for v, s in spec.settings.items()}
    found = []
    for path in sorted(spec.folder.parent.glob(f"*/{spec.data}/results.csv")):
        try:
            state = json.loads((path.parent / "rounds.json").read_text())
        except (OSError, ValueError):
            continue
        reference = state.get("reference") or {}
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("recipe") != state.get("recipe"):  # write_report gives every row the rounds.json's id
                    raise ValueError(f"{path}: run {row.get('run_dir')!r} names recipe {row.get('recipe')!r} but "
                                     f"the rounds.json beside it {state.get('recipe')!r}; copy the two together")
                if row.get("status") != Status.COMPLETED or not row.get("setting"):
                    continue
                ran = reference | {k: json.dumps(v, sort_keys=True) for k, v in json.loads(row["setting"]).items()}
                value = by_setting.get(setting(ran, spec.reference))
                if value is not None:
                    found.append(report.row_from_csv(row) | {"overrides": {spec.key: value}, "study": path.parts[-3],
                                                            "recipe": spec.recipe_id, "setting": spec.settings[value]})
    return found


def runs(spec: Spec) -> list[dict]:
    """The study's runs: local ones first, then the recorded ones; one per (setting, seed, machine), the first
    found."""
    chosen, seen = [], set()
    for r in local_runs(spec) + recorded_runs(spec):
        key = (r["overrides"][spec.key], r["seed"], r.get("cpu"))
        if r["status"] == Status.COMPLETED:
            if key in seen:
                continue
            seen.add(key)
        elif key in seen:
            continue
        chosen.append(r)
    # A job that failed or was interrupted and then completed in the same folder is one row: the completed one.
    done = {r["run_dir"] for r in chosen if r["status"] == Status.COMPLETED}
    return [r for r in chosen if r["status"] == Status.COMPLETED or r["run_dir"] not in done]


# --- rounds -------------------------------------------------------------------------------------------------------


def needed(spec: Spec, rows: list[dict], decisions: dict, here: str | None) -> dict[tuple[int, ...], list]:
    """The next round: {seeds: values} for every undecided row and the baseline. A row needs each seed up to its
    next look paired like with like: its run and the baseline's made on the same machine. What is missing is run on
    this one (`here`, its CPU): the baseline's run of a seed the row has here, the row's of a seed the baseline has
    here, both where neither has it here. Empty when no row is pending."""
    have: dict[Any, dict] = {v: {} for v in spec.values}
    for r in rows:
        if r["status"] == Status.COMPLETED and r.get("test/acc_top1") is not None:
            have[r["overrides"][spec.key]].setdefault(r["seed"], set()).add(r.get("cpu"))
    wanted: dict[Any, set] = {v: set() for v in spec.values}
    base = have[spec.baseline]
    for value, decision in decisions.items():
        if decision["verdict"] != PENDING:
            continue
        target = spec.design.next_look(decision["n_pairs"] or 0) or spec.design.max_seeds
        for seed in range(target):
            mine, theirs = have[value].get(seed, set()), base.get(seed, set())
            if mine & theirs or (None in mine and theirs) or (mine and None in theirs):
                continue  # a pair made on one machine (an unrecorded machine pairs with any)
            if here not in mine:
                wanted[value].add(seed)
            if here not in theirs:
                wanted[spec.baseline].add(seed)
    groups: dict[tuple[int, ...], list] = {}
    for value in spec.values:
        if wanted.get(value):
            groups.setdefault(tuple(sorted(wanted[value])), []).append(value)
    return groups


def spent_hours(state: dict) -> float:
    return sum(r.get("wall_time_s") or 0 for r in state.get("rounds", [])) / 3600


def read_state(spec: Spec) -> dict:
    """rounds.json of the study's folder: the rounds run so far (their wall time counts against the budget)."""
    try:
        return json.loads((spec.out / "rounds.json").read_text())
    except (OSError, ValueError):
        return {"study": spec.name, "data": spec.data, "rounds": []}


def write_report(spec: Spec, rows: list[dict], stopped: str | None, state: dict) -> dict:
    """results.md/csv and plots into the study's folder; returns each row's decision by value."""
    spec.out.mkdir(parents=True, exist_ok=True)
    study = {"baseline": {spec.key: spec.baseline}, "paper": spec.paper, "design": spec.design,
             "stopped": stopped, "data": report.read_study(rows)["data"]}
    configs = report.aggregate(rows, keys=[spec.key], settings=[(v,) for v in spec.values])
    report.compare(configs, [spec.key], study)
    state.update(command=shlex.join(["focalnet-study", spec.name, "--data", spec.data, *spec.overrides]))
    state.update(study=spec.name, data=spec.data, recipe=spec.recipe_id, design=vars(spec.design),
                 budget_hours=spec.budget_hours, spent_hours=round(spent_hours(state), 3), reference=spec.reference)
    lines = report.to_markdown([spec.runs], rows, configs, study, keys=[spec.key],
                               title=f"Study `{spec.name}` on `{spec.data}`", rounds=state)
    report.write_csv(spec.out / "results.csv", rows, keys=[spec.key])
    (spec.out / "results.md").write_text(lines)
    report.write_plots(spec.out, rows, configs, [spec.key], study)
    return {c[spec.key]: c for c in configs}


def run(spec: Spec, dry_run: bool = False, max_rounds: int | None = None) -> int:
    """Rounds until every row is decided, the cap or the budget; returns the exit code (1 when a job failed)."""
    state, rounds = read_state(spec), 0
    while True:
        rows = runs(spec)
        over_budget = spec.budget_hours is not None and spent_hours(state) >= spec.budget_hours
        decisions = write_report(spec, rows, "budget" if over_budget else None, state)
        plan = needed(spec, rows, decisions, machine()["cpu"])
        write_json(spec.out / "rounds.json", state)
        if not plan or over_budget or (max_rounds is not None and rounds >= max_rounds):
            why = ("budget spent" if over_budget and plan else "rounds given" if plan
                   else "no row pending (each decided, or at the cap)")
            print(f"focalnet-study: {spec.name} on {spec.data}: {why}; report in {spec.out}/results.md", flush=True)
            return 0
        for seeds, values in plan.items():
            command = spec.command(values, list(seeds))
            print(f"focalnet-study: round {len(state['rounds']) + 1}: {shlex.join(command)}", flush=True)
            if dry_run:
                continue
            start, started_at = time.perf_counter(), now()
            code = subprocess.run(command).returncode
            state["rounds"].append({"started_at": started_at, "finished_at": now(), "seeds": list(seeds),
                                    "values": values, "exit_code": code,
                                    "wall_time_s": round(time.perf_counter() - start, 1)})
            write_json(spec.out / "rounds.json", state)
            if code:  # a failed job would fail again in the next round; a stop (SIGTERM, Ctrl-C) is a stop
                write_report(spec, runs(spec), None, state)
                print(f"focalnet-study: round {len(state['rounds'])} exited with {code}: stopped; the report lists "
                      f"the failed jobs ({spec.out}/results.md); the same command resumes", file=sys.stderr, flush=True)
                return 1 if code > 0 and code not in (130, 143) else code
        if dry_run:
            return 0
        rounds += 1


def table(data: str, experiments: Path = Path("experiments"), overrides: list[str] | None = None) -> str:
    """Every study's rows on `data` in one markdown table, from what each study's files and runs hold now: n, Δ, the
    interval, the verdict, the seeds and the paper's Δ (the README's Results)."""
    lines = ["| study | setting vs baseline | n | Δ top-1 (pts) | interval (pts) | verdict | paper Δ (pts) |",
             "|---|---|---|---|---|---|---|"]
    for path in sorted(experiments.glob("*/study.yaml")):
        spec = load_spec(path.parent.name, data, overrides, experiments)
        rows = runs(spec)
        configs = report.aggregate(rows, keys=[spec.key], settings=[(v,) for v in spec.values])
        report.compare(configs, [spec.key], {"baseline": {spec.key: spec.baseline}, "paper": spec.paper,
                                             "design": spec.design})
        short = spec.key.rsplit(".", 1)[-1]
        for c in configs:
            if c["is_baseline"]:
                continue
            interval = "-" if c["ci_low"] is None else f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"
            delta = "-" if c["delta"] is None else f"{c['delta']:+.2f}"
            paper = "-" if c.get("paper_delta") is None else f"{c['paper_delta']:+.1f}"
            lines.append(f"| {spec.name} | {short}={report.cell(c[spec.key])} vs {report.cell(spec.baseline)} | "
                         f"{c['n_pairs']} | {delta} | {interval} | {report.verdict_text(c, spec.design)} | {paper} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="focalnet-study", description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?", help="a folder name under experiments/ (e.g. focal_levels); none with "
                        "--table")
    parser.add_argument("overrides", nargs="*", help="more focalnet-train overrides for every job (part of the "
                        "recipe: runs with other values are other runs)")
    parser.add_argument("--data", default="digits", help="the conf/ablation/ option: data set and budget")
    parser.add_argument("--dry-run", action="store_true", help="report, print the next round's commands, run nothing")
    parser.add_argument("--rounds", type=int, default=None, help="run at most this many rounds now")
    parser.add_argument("--table", action="store_true", help="print every study's rows on --data in one table "
                        "(what exists now; runs nothing)")
    parser.add_argument("--experiments", type=Path, default=Path("experiments"),
                        help="the folder of the studies (default: experiments); reports go to <it>/<study>/<data>/")
    args = parser.parse_intermixed_args(argv)
    from focalnet.cli import config_dir

    ablation = Path(config_dir(), "ablation")
    if not (ablation / f"{args.data}.yaml").is_file():
        choices = " ".join(p.stem for p in sorted(ablation.glob("*.yaml")))
        parser.exit(2, f"focalnet-study: no ablation data {args.data!r}; choices: {choices}\n")
    if args.table and args.study and "=" in args.study:  # an override, not a study: the table takes none
        args.overrides.insert(0, args.study)
        args.study = None
    if bool(args.study) == args.table:
        parser.exit(2, "focalnet-study: give a study, or --table for all of them\n")
    try:
        if args.table:
            print(table(args.data, args.experiments, args.overrides), end="")
            sys.exit(0)
        spec = load_spec(args.study, args.data, args.overrides, args.experiments)
        code = run(spec, dry_run=args.dry_run, max_rounds=args.rounds)
    except Exception as error:  # a bad study file or override: Hydra's or ours, one line
        from hydra.errors import HydraException

        if not isinstance(error, (ValueError, HydraException)):
            raise
        from focalnet.cli import hydra_error_line

        parser.exit(2, f"focalnet-study: {hydra_error_line(error)}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
