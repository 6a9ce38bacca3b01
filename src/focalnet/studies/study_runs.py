"""A study's runs, found by what they computed: the run folders on this machine whose recipe is one of the study's
settings, and the runs the committed results.csv files of every study on the data set record; their host classes,
and which of them the study's verdicts may use (Scope)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path

from focalnet.host import machine
from focalnet.record import Status
from focalnet.studies.analysis import host_class
from focalnet.studies.design import RUNS_ROOT, Spec, recipe, setting
from focalnet.studies.runs import Run, collect_folder, composed, job_config_of, normalize


def local_runs(spec: Spec, root: Path = RUNS_ROOT) -> list[Run]:
    """Every run folder under `root` whose recipe is one of the study's settings, with overrides {key: value};
    runs of this study's own folder that did not complete come too (their status
    counts in the report)."""
    by_setting = {s: v for v, s in spec.settings.items()}
    found = []
    for r in collect_folder(root) if root.is_dir() else []:
        run_dir = Path(r.run_dir)
        job = job_config_of(run_dir)
        if not job["config"]:
            continue
        value = by_setting.get(setting(recipe(job["config"], r.precision), spec.reference))
        own = spec.runs.resolve() in run_dir.resolve().parents
        if not own and (value is None or r.status != Status.COMPLETED):
            continue  # another study's job still running (or stopped) is none of this study's rows
        if value is None:  # one of ours that has not recorded its precision yet (still starting)
            value = normalize(composed(job, spec.key))
        found.append(replace(r, job_config=job, overrides={spec.key: value}, recipe=spec.recipe_id,
                             setting=spec.settings.get(value), study=spec.name))
    return found


def recorded_runs(spec: Spec, only: Path | None = None) -> list[Run]:
    """The completed runs that the committed results.csv files of every study on this data set record for the
    study's settings (made on any machine). A row names its recipe by id and its setting as a difference to that
    recipe; the recipe itself is in the rounds.json beside it, so a run recorded under an older recipe (before a new
    model switch, say) is recognised by what it computed. `only`: that results.csv alone."""
    by_setting = {s: v for v, s in spec.settings.items()}
    found = []
    for path in [only] if only else sorted(spec.folder.parent.glob(f"*/{spec.data}/results.csv")):
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
                    found.append(replace(Run.from_csv(row), overrides={spec.key: value}, study=path.parts[-3],
                                         recipe=spec.recipe_id, setting=spec.settings[value]))
    return found


def runs(spec: Spec, state: dict | None = None) -> list[Run]:
    """The study's runs: local ones first, then the recorded ones; one per (setting, seed, machine), the first
    found. A closed ledger (state["closed"]: every row decided or at the cap) is what its own results.csv holds:
    runs that other studies add later (a replication's re-runs of seeds 0-2, say) do not change its verdicts."""
    if state and state.get("closed") and (spec.out / "results.csv").is_file():
        return recorded_runs(spec, only=spec.out / "results.csv")
    chosen, seen = [], set()
    for r in local_runs(spec) + recorded_runs(spec):
        key = (r.overrides[spec.key], r.seed, r.cpu)
        if r.status == Status.COMPLETED:
            if key in seen:
                continue
            seen.add(key)
        elif key in seen:
            continue
        chosen.append(r)
    # A job that failed or was interrupted and then completed in the same folder is one row: the completed one.
    done = {r.run_dir for r in chosen if r.status == Status.COMPLETED}
    return [r for r in chosen if r.status == Status.COMPLETED or r.run_dir not in done]


def host_of(run: Run, accelerator: str = "cpu") -> str | None:
    """A run's host class: its CPU model (with family and model, as summary.json's machine.cpu has it; the GPU's
    name for a run on a GPU), its precision and its torch version. None where the CPU was not recorded."""
    return host_class(run.gpu if accelerator != "cpu" and run.gpu else run.cpu, run.precision, run.torch)


def this_host(spec: Spec) -> tuple[str, str]:
    """This machine's CPU (what needed() pairs by) and its host class for the study's recipe."""
    import torch

    info = machine()
    accelerator = json.loads(spec.reference.get("trainer.accelerator", '"cpu"'))
    precision = json.loads(spec.reference.get("trainer.precision", "null"))
    here = Run(cpu=info["cpu"], gpu=info.get("gpu"), precision=precision, torch=torch.__version__)  # a run made here
    return info["cpu"], host_of(here, accelerator)


def with_hosts(spec: Spec, rows: list[Run]) -> list[Run]:
    accelerator = json.loads(spec.reference.get("trainer.accelerator", '"cpu"'))
    for r in rows:
        r.host = host_of(r, accelerator)
    return rows


@dataclass
class Scope:
    """A study's runs sorted by what its verdicts may use."""

    used: list[Run]         # the design's seeds, on the study's host class (any, with hosts: any)
    elsewhere: list[Run]    # the design's seeds, made on another host class: named, not used
    reruns: list[Run]       # study.reruns' settings and seeds, on any host: compared, not used
    outside: list[Run]      # other seeds (other studies' ledgers): counted, not used
    host: str | None        # the host class the verdicts use (None: any)

    @property
    def ledger(self) -> list[Run]:
        """What results.csv records: the design's seeds on every host, and the re-runs."""
        return self.used + self.elsewhere + self.reruns


def scope(spec: Spec, rows: list[Run], host: str | None) -> Scope:
    """`rows` (runs(), with_hosts()) sorted for the study: `host` is its host class (None: hosts any). A run whose
    CPU was not recorded counts as the study's (as analysis.same_machine pairs it with any)."""
    seeds = set(spec.seeds)
    found = Scope([], [], [], [], host)
    for r in rows:
        if r.seed in seeds:
            ours = host is None or r.host in (None, host)
            (found.used if ours else found.elsewhere).append(r)
        elif r.seed in spec.reruns.get(r.overrides[spec.key], ()):
            found.reruns.append(r)
        elif r.status == Status.COMPLETED:
            found.outside.append(r)
        else:  # a job of this study's folder that did not complete: listed (failed, interrupted)
            found.used.append(r)
    return found


