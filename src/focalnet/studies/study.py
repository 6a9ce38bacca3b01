"""focalnet-study: run a study in rounds of seeds until every row is decided, then report it.

    focalnet-study focal_levels --data fashion_mnist [OVERRIDES ...]       (make ablation STUDY=... DATA=...)
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
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
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

from focalnet.files import now, write_json
from focalnet.host import machine
from focalnet.record import Status
from focalnet.studies import report
from focalnet.studies.report import DESIGN_KEYS
from focalnet.studies.sequential import PENDING, Design

# What does not change the numbers a run computes: its seed (the rounds' own axis), where it writes, how it logs and
# reports progress, how it is resumed. Everything else of the composed config is the run's recipe.
NOT_RECIPE = ("seed", "task_name", "tags", "ckpt_path", "resume", "fail_fast", "startup_timeout", "optimized_metric",
              "logger", "paths", "study", "hydra", "callbacks.progress_bar", "callbacks.lr_monitor",
              "callbacks.model_checkpoint.dirpath", "callbacks.last_checkpoint", "callbacks.interrupt_checkpoint",
              "trainer.default_root_dir", "trainer.log_every_n_steps", "trainer.plugins", "trainer.enable_progress_bar",
              "data.num_workers", "data.pin_memory", "data.split_file", "data.download")
# A recipe names each target as the committed runs recorded it: a class that moved keeps its old name, and a target
# that only wraps another (focalnet.threads.trainer sets the CPU threads, then returns Lightning's Trainer) the name
# of what it builds.
SAME_TARGET = {
    "trainer._target_": {'"focalnet.threads.trainer"': '"lightning.pytorch.Trainer"'},
    "module._target_": {'"focalnet.run.module.ClassificationModule"': '"focalnet.module.ClassificationModule"'},
}
RUNS_ROOT = Path("outputs/ablation")  # where every study's jobs live (and where runs are looked for)


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
            flat[key] = SAME_TARGET.get(key, {}).get(flat[key], flat[key])
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
    key: str                           # the swept key: a config key, or a config group of the study's folder
    values: list                       # the settings of `key`, the baseline's among them
    baseline: Any
    design: Design
    budget_hours: float | None
    reference: dict[str, str]          # the recipe every setting is measured against
    settings: dict[Any, str]           # value -> its setting() JSON
    paper: dict | None = None
    overrides: list[str] = field(default_factory=list)
    hosts: str = "same"                # "same": pairs and verdicts within the study's host class; "any": pooled
    first_seed: int = 0                # the design's seeds: first_seed .. first_seed + max_seeds - 1
    reruns: dict[Any, list[int]] = field(default_factory=dict)  # value -> seeds re-run on the host, for no verdict
    data_label: str | None = None
    group: bool = False                # `key` is a config group (rows of several keys: experiments/<name>/<key>/)
    frozen_recipe: str | None = None   # the recipe id the study's ledger froze (an equivalent recipe keeps it)

    @property
    def recipe_id(self) -> str:
        if self.frozen_recipe:
            return self.frozen_recipe
        return hashlib.sha256(json.dumps(self.reference, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def out(self) -> Path:
        return self.folder / self.data

    @property
    def runs(self) -> Path:
        return RUNS_ROOT / self.data / self.name

    @property
    def seeds(self) -> list[int]:
        """The design's seeds, in the order the rounds add them."""
        return list(range(self.first_seed, self.first_seed + self.design.max_seeds))

    def label(self, value) -> str:
        return f"{self.key}={report.cell(value)}"

    def command(self, values: list, seeds: list[int], display: bool = False) -> list[str]:
        """The focalnet-train multirun of one round: these values of the key times these seeds. `display`: as
        rounds.json and results.md record it, `focalnet-train` and paths relative to the checkout."""
        if display:
            head, folder = ["focalnet-train"], _relative(self.folder)
        else:
            exe = Path(sys.executable).parent / "focalnet-train"
            head, folder = ([str(exe)] if exe.exists() else [sys.executable, "-m", "focalnet.run.train"]), self.folder
        value = f"${{hydra:runtime.choices.{self.key}}}" if self.group else f"${{{self.key}}}"
        return [*head, "-m", "--config-dir", str(folder), "--config-name", "study", f"ablation={self.data}",
                f"{self.key}={','.join(_hydra_value(v) for v in values)}", f"seed={','.join(map(str, seeds))}",
                f"hydra.sweep.dir={self.runs}", f"hydra.sweep.subdir={self.key}-{value}+seed-${{seed}}",
                "resume=auto", "callbacks.progress_bar=null", *self.overrides]


def _relative(folder: Path) -> Path:
    """The study's folder as a checkout-relative path: relative to here where it lies below, else
    experiments/<name> (a copy of the tree elsewhere, /tmp/frozen/experiments/<name>, is the same study)."""
    try:
        return folder.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return Path("experiments") / folder.name


def _hydra_value(value) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def compose(folder: Path, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import focalnet.cli  # noqa: F401 (the resolvers the configs use)
    from focalnet.cli import config_dir

    with initialize_config_dir(config_dir=str(folder.resolve()), version_base="1.3"):
        return hydra_compose(config_name="study", return_hydra_config=True,
                             overrides=[*overrides, f"hydra.searchpath=[file://{Path(config_dir()).resolve()}]"])


STUDY_KEYS = ("name", "baseline", "paper", "budget_hours", "hosts", "first_seed", "reruns", *DESIGN_KEYS)


def load_spec(name: str, data: str, overrides: list[str] | None = None, experiments: Path = Path("experiments")
              ) -> Spec:
    """The study `name` on `data`: its swept key and values, baseline, design and the recipe of each setting.

    The swept key is a config key (model.focal_levels: 0,1,2,3,4) or a config group of the study's folder whose
    options are its rows, each setting as many keys as it needs (experiments/replication/row/*.yaml)."""
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
                         "one key (or one config group of rows) with its baseline (hydra.sweeper.params: one key "
                         "and seed)")
    (key, text), = params.items()
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (sweep,) = OverridesParser.create().parse_overrides([f"{key}={text}"])
    values = [report.normalize(v) for v in sweep.value().list]
    baseline = {k: report.normalize(v) for k, v in (study.get("baseline") or {}).items()}
    if list(baseline) != [key] or baseline[key] not in values:
        raise ValueError(f"study.baseline={baseline} must name one of {key}={text}")
    unknown = set(study) - set(STUDY_KEYS)
    if unknown:
        raise ValueError(f"study.{sorted(unknown)[0]} is not a study key ({', '.join(STUDY_KEYS)})")
    if study.get("name", name) != name:
        raise ValueError(f"study.name={study['name']} in {folder / 'study.yaml'}: a study is named by its folder "
                         f"({name})")
    budget = study.get("budget_hours")
    if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
        raise ValueError(f"study.budget_hours={budget} must be a number of hours > 0, or null (no budget)")
    hosts = study.get("hosts", "same")
    if hosts not in ("same", "any"):
        raise ValueError(f"study.hosts={hosts} must be same (pairs and verdicts within the study's host class) or "
                         "any (pooled: each pair within one host class)")
    first_seed = study.get("first_seed", 0)
    if not isinstance(first_seed, int) or isinstance(first_seed, bool) or first_seed < 0:
        raise ValueError(f"study.first_seed={first_seed} must be an integer >= 0")
    design = Design(rows=len(values) - 1, **{k: study[k] for k in DESIGN_KEYS if k in study})
    reruns = {report.normalize(k): v for k, v in (study.get("reruns") or {}).items()}
    for value, seeds in reruns.items():
        if value not in values or not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
            raise ValueError(f"study.reruns: {value}: {seeds} must map one of {key}={text} to a list of seeds")
        inside = sorted(set(seeds) & set(range(first_seed, first_seed + design.max_seeds)))
        if inside:
            raise ValueError(f"study.reruns: {value}: seeds {inside} are the design's own (first_seed={first_seed}, "
                             f"max_seeds={design.max_seeds}): a re-run is of seeds outside them")

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
    choices = cfg.hydra.runtime.choices
    data_label = report._data_label(choices.get("data"), OmegaConf.to_container(cfg.data, resolve=False))
    return Spec(name, data, folder, key, values, baseline[key], design, budget, reference, settings, paper, overrides,
                hosts, first_seed, reruns, data_label, group=key in choices)


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
            value = report.normalize(report._composed(job, spec.key))
        found.append(r | {"job_config": job, "overrides": {spec.key: value}, "recipe": spec.recipe_id,
                          "setting": spec.settings.get(value), "study": spec.name})
    return found


def recorded_runs(spec: Spec, only: Path | None = None) -> list[dict]:
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
                    found.append(report.row_from_csv(row) | {"overrides": {spec.key: value}, "study": path.parts[-3],
                                                            "recipe": spec.recipe_id, "setting": spec.settings[value]})
    return found


def runs(spec: Spec, state: dict | None = None) -> list[dict]:
    """The study's runs: local ones first, then the recorded ones; one per (setting, seed, machine), the first
    found. A closed ledger (state["closed"]: every row decided or at the cap) is what its own results.csv holds:
    runs that other studies add later (a replication's re-runs of seeds 0-2, say) do not change its verdicts."""
    if state and state.get("closed") and (spec.out / "results.csv").is_file():
        return recorded_runs(spec, only=spec.out / "results.csv")
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


# --- host classes: what made a run's numbers ----------------------------------------------------------------------


def host_of(run: dict, accelerator: str = "cpu") -> str | None:
    """A run's host class: its CPU model (with family and model, as summary.json's machine.cpu has it; the GPU's
    name for a run on a GPU), its precision and its torch version. None where the CPU was not recorded."""
    device = run.get("gpu") if accelerator != "cpu" and run.get("gpu") else run.get("cpu")
    if not device:
        return None
    return f"{device}, {run.get('precision') or '?'}, torch {run.get('torch') or '?'}"


def this_host(spec: Spec) -> tuple[str, str]:
    """This machine's CPU (what needed() pairs by) and its host class for the study's recipe."""
    import torch

    info = machine()
    accelerator = json.loads(spec.reference.get("trainer.accelerator", '"cpu"'))
    precision = json.loads(spec.reference.get("trainer.precision", "null"))
    run = {"cpu": info["cpu"], "gpu": info.get("gpu"), "precision": precision, "torch": torch.__version__}
    return info["cpu"], host_of(run, accelerator)


def with_hosts(spec: Spec, rows: list[dict]) -> list[dict]:
    accelerator = json.loads(spec.reference.get("trainer.accelerator", '"cpu"'))
    for r in rows:
        r["host"] = host_of(r, accelerator)
    return rows


@dataclass
class Scope:
    """A study's runs sorted by what its verdicts may use."""

    used: list[dict]        # the design's seeds, on the study's host class (any, with hosts: any)
    elsewhere: list[dict]   # the design's seeds, made on another host class: named, not used
    reruns: list[dict]      # study.reruns' settings and seeds, on any host: compared, not used
    outside: list[dict]     # other seeds (other studies' ledgers): counted, not used
    host: str | None        # the host class the verdicts use (None: any)

    @property
    def ledger(self) -> list[dict]:
        """What results.csv records: the design's seeds on every host, and the re-runs."""
        return self.used + self.elsewhere + self.reruns


def scope(spec: Spec, rows: list[dict], host: str | None) -> Scope:
    """`rows` (runs(), with_hosts()) sorted for the study: `host` is its host class (None: hosts any). A run whose
    CPU was not recorded counts as the study's (as report.same_machine pairs it with any)."""
    seeds = set(spec.seeds)
    found = Scope([], [], [], [], host)
    for r in rows:
        if r["seed"] in seeds:
            ours = host is None or r.get("host") in (None, host)
            (found.used if ours else found.elsewhere).append(r)
        elif r["seed"] in spec.reruns.get(r["overrides"][spec.key], ()):
            found.reruns.append(r)
        elif r["status"] == Status.COMPLETED:
            found.outside.append(r)
        else:  # a job of this study's folder that did not complete: listed (failed, interrupted)
            found.used.append(r)
    return found


# --- rounds -------------------------------------------------------------------------------------------------------


def needed(spec: Spec, rows: list[dict], decisions: dict, here: str | None) -> dict[tuple[int, ...], list]:
    """The next round: {seeds: values} for every undecided row and the baseline, and the re-runs this machine
    lacks. A row needs each of the design's seeds up to its next look paired like with like: its run and the
    baseline's made on the same machine. What is missing is run on this one (`here`, its CPU): the baseline's run of
    a seed the row has here, the row's of a seed the baseline has here, both where neither has it here. A re-run
    (study.reruns) is trained where this machine has none of it. Empty when nothing is due."""
    have: dict[Any, dict] = {v: {} for v in spec.values}
    for r in rows:
        if r["status"] == Status.COMPLETED and r.get("test/acc_top1") is not None:
            have[r["overrides"][spec.key]].setdefault(r["seed"], set()).add(r.get("cpu"))
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
    for value, seeds in spec.reruns.items() if pending else ():
        wanted[value] |= {s for s in seeds if here not in have[value].get(s, set())}
    groups: dict[tuple[int, ...], list] = {}
    for value in spec.values:
        if wanted.get(value):
            groups.setdefault(tuple(sorted(wanted[value])), []).append(value)
    return groups


def spent_hours(state: dict) -> float:
    return sum(r.get("wall_time_s") or 0 for r in state.get("rounds", [])) / 3600


def read_state(spec: Spec) -> dict:
    """rounds.json of the study's folder: its frozen design, the rounds run so far (their wall time counts against
    the budget), each row's verdict, and the ledgers an earlier design kept (superseded)."""
    try:
        return json.loads((spec.out / "rounds.json").read_text())
    except (OSError, ValueError):
        return {"study": spec.name, "data": spec.data, "rounds": []}


# --- the frozen design ----------------------------------------------------------------------------------------------


def design_of(spec: Spec) -> dict:
    """The study's question as its file declares it: rows and their settings, the baseline, the family (K rows),
    δ, α, the looks, the procedure, the seeds, the re-runs and the host policy (the recipe and host class are added
    by freeze())."""
    d = spec.design
    return {"rows": {spec.label(v): json.loads(spec.settings[v]) for v in spec.values if v != spec.baseline},
            "baseline": {spec.label(spec.baseline): json.loads(spec.settings[spec.baseline])},
            "K": d.rows, "alpha": d.alpha, "delta": d.delta, "seeds_per_round": d.seeds_per_round,
            "max_seeds": d.max_seeds, "looks": d.looks, "procedure": d.procedure, "seeds": spec.seeds,
            "reruns": {spec.label(v): sorted(s) for v, s in spec.reruns.items()}, "hosts": spec.hosts}


def _hash(design: dict) -> str:
    return hashlib.sha256(json.dumps(design, sort_keys=True).encode()).hexdigest()[:16]


def freeze(spec: Spec, host: str | None, frozen: str) -> dict:
    design = design_of(spec) | {"recipe": spec.recipe_id, "host_class": host}
    record = {"frozen": frozen, "hash": _hash(design), "design": design}
    if frozen == FROZEN_BEFORE:
        record["at"] = now()
    return record


FROZEN_BEFORE = "before the first look"
FROZEN_AFTER = "recorded after the looks"


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def design_changes(spec: Spec, state: dict) -> list[str]:
    """What differs between the study's frozen design and the one its file and the configs declare now, as
    "what old → new"; [] when nothing. The recipe is compared by what it computes: a key added to the configs since
    (a new switch, off) is no change, a key whose value differs is."""
    frozen, now_ = state["frozen"]["design"], design_of(spec)
    changes = []
    for key, value in now_.items():
        old = frozen.get(key)
        if key == "rows" and old != value:
            for row in sorted(set(old or {}) | set(value), key=str):
                if (old or {}).get(row) != value.get(row):
                    changes.append(f"row {row} {_short((old or {}).get(row, 'absent'))} → "
                                   f"{_short(value.get(row, 'absent'))}")
        elif old != value:
            changes.append(f"{key} {_short(old)} → {_short(value)}")
    reference = state.get("reference") or {}
    differ = [k for k in sorted(reference) if spec.reference.get(k) != reference[k]]
    changes += [f"recipe {k} {reference[k]} → {spec.reference.get(k, 'absent')}" for k in differ[:3]]
    if len(differ) > 3:
        changes.append(f"recipe: {len(differ) - 3} more keys")
    return changes


def settle_design(spec: Spec, state: dict, rows: list[dict], new_design: bool = False) -> dict:
    """The state with the study's frozen design, checked: recorded now where the ledger has none (before the first
    look, or after the looks for a ledger older than frozen designs), refused in one line (ValueError) where the
    declared design differs from it, unless `new_design`: then a new ledger, the old one kept as superseded."""
    reference = state.get("reference")
    if reference and not any(spec.reference.get(k) != v for k, v in reference.items()):
        spec.frozen_recipe = state.get("recipe")  # the same recipe (keys added since are no change): its id
    if "frozen" not in state:
        if new_design:
            raise ValueError(f"study {spec.name}: --new-design: no design recorded yet to supersede")
        legacy = bool(state.get("rounds"))
        host = first_host(spec, rows) if legacy and spec.hosts == "same" else None
        state["frozen"] = freeze(spec, host, FROZEN_AFTER if legacy else FROZEN_BEFORE)
        return state
    changes = design_changes(spec, state)
    what = f"(frozen {state['frozen']['frozen']}, {state['frozen']['hash']})"
    if changes and not new_design:
        raise ValueError(f"study {spec.name}: the design changed since it was frozen {what}: {'; '.join(changes)}; "
                         "refused (its verdicts were decided under the frozen one): --new-design starts a new "
                         "ledger and keeps the old verdicts, marked superseded"
                         + ("" if state.get("rounds") else " (no round has run yet: it only replaces the design)"))
    if not changes and new_design:
        raise ValueError(f"study {spec.name}: --new-design: the design is the frozen one {what}; nothing to "
                         "supersede")
    if new_design:
        spec.frozen_recipe = None
        kept = {k: state[k] for k in ("frozen", "rounds", "verdicts", "spent_hours", "budget_hours", "reference",
                                      "recipe", "other_commands") if k in state}
        kept |= {"superseded_at": now(), "changes": changes, "status": "superseded, kept"}
        looked = state.get("rounds") or any(v.get("n") for v in (state.get("verdicts") or {}).values())
        # A ledger that never ran a round nor looked at a pair has no verdict to keep: its design is replaced.
        superseded = [*state.get("superseded", []), kept] if looked else state.get("superseded", [])
        state = {"study": spec.name, "data": spec.data, "rounds": []} | ({"superseded": superseded} if superseded
                                                                          else {})
        state["frozen"] = freeze(spec, None, FROZEN_BEFORE)
    return state


def first_host(spec: Spec, rows: list[dict]) -> str | None:
    """The host class of the ledger's first run (the design's seeds, by start time)."""
    done = [r for r in rows if r["status"] == Status.COMPLETED and r["seed"] in spec.seeds and r.get("host")]
    return min(done, key=lambda r: r.get("started_at") or "")["host"] if done else None


def study_host(spec: Spec, state: dict, here: str | None) -> str | None:
    """The host class the verdicts use: None with hosts: any; the frozen one; this machine's while the study has
    not started (the first round's host becomes the study's)."""
    if spec.hosts == "any":
        return None
    return state["frozen"]["design"].get("host_class") or here


# --- the report ----------------------------------------------------------------------------------------------------


def write_report(spec: Spec, rows: list[dict], stopped: str | None, state: dict, here: str | None = None) -> dict:
    """results.md/csv and plots into the study's folder, from the runs its frozen design uses; returns each row's
    decision by value (and records them in `state`)."""
    spec.out.mkdir(parents=True, exist_ok=True)
    rows = with_hosts(spec, rows)
    found = scope(spec, rows, study_host(spec, state, here))
    study = {"baseline": {spec.key: spec.baseline}, "paper": spec.paper, "design": spec.design,
             "stopped": stopped, "data": spec.data_label}
    configs = report.aggregate(found.used, keys=[spec.key], settings=[(v,) for v in spec.values])
    report.compare(configs, [spec.key], study)
    state.update(command=shlex.join(["focalnet-study", spec.name, "--data", spec.data, *spec.overrides]))
    reference = state.get("reference") if spec.frozen_recipe else None
    state.update(study=spec.name, data=spec.data, recipe=spec.recipe_id, design=vars(spec.design),
                 budget_hours=spec.budget_hours, spent_hours=round(spent_hours(state), 3),
                 reference=reference or spec.reference)
    state["verdicts"] = {spec.label(c[spec.key]): _verdict(c, spec.design) for c in configs if not c["is_baseline"]}
    state["closed"] = bool(configs) and all(c["is_baseline"] or c["verdict"] not in (PENDING, None)
                                            and c.get("why") != "budget" for c in configs)
    commands = [r["command"] for r in state["rounds"] if r.get("command")] + state.get("other_commands", [])
    own = [r for r in found.reruns if Path(r["run_dir"] or "").parts[:len(spec.runs.parts)] == spec.runs.parts]
    lines = report.to_markdown([spec.runs], found.used + found.elsewhere + own, configs, study, keys=[spec.key],
                               title=f"Study `{spec.name}` on `{spec.data}`", rounds=state,
                               commands=list(dict.fromkeys(commands)), notes=_notes(spec, state, found),
                               sections=_sections(spec, state, found, configs))
    report.write_csv(spec.out / "results.csv", found.ledger, keys=[spec.key])
    (spec.out / "results.md").write_text(lines)
    report.write_plots(spec.out, found.used, configs, [spec.key], study)
    return {c[spec.key]: c for c in configs}


def _verdict(c: dict, design: Design) -> dict:
    def r(x):
        return None if x is None else round(x, 4)

    return {"n": c["n_pairs"], "delta": r(c["delta"]),
            "interval": None if c["ci_low"] is None else [r(c["ci_low"]), r(c["ci_high"])],
            "verdict": report.verdict_text(c, design)}


def _machines_of(rows: list[dict]) -> str:
    made: dict[str, int] = {}
    for r in rows:
        made[r.get("host") or "host not recorded"] = made.get(r.get("host") or "host not recorded", 0) + 1
    return "; ".join(f"{n} run(s) on {host}" for host, n in sorted(made.items()))


def _notes(spec: Spec, state: dict, found: Scope) -> list[str]:
    frozen = state["frozen"]
    when = (f"frozen before the first look ({frozen['at'][:16]})" if frozen["frozen"] == FROZEN_BEFORE
            else "recorded after the looks (the ledger predates frozen designs; its verdicts are the ones it was "
                 "decided with)")
    notes = [f"Frozen design: {when}, hash `{frozen['hash']}` (rounds.json `frozen`): rows and settings, δ, α, "
             f"looks, procedure, seeds {report._seed_list(spec.seeds)}, recipe `{spec.recipe_id}`, host policy "
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
                     f"{_machines_of([r for r in found.elsewhere if r['status'] == Status.COMPLETED])}.")
    if found.outside:
        seeds = report._seed_list({r["seed"] for r in found.outside})
        notes.append(f"Not used: {len(found.outside)} run(s) of these settings at seeds outside the design's "
                     f"(seeds {seeds}: other studies' ledgers).")
    return notes


def _sections(spec: Spec, state: dict, found: Scope, configs: list[dict]) -> list[str]:
    lines = report.host_classes_markdown(configs, [spec.key]) if spec.hosts == "any" else []
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
            interval = "-" if not v["interval"] else report._interval(*v["interval"])
            lines.append(f"| {row} | {v['n']} | {report._signed(v['delta'])} | {interval} | {v['verdict']} |")
    return lines


def _reruns_markdown(spec: Spec, found: Scope) -> list[str]:
    """The re-runs' section: each re-run setting and seed's top-1 on every host class that has it, and, for a row
    re-run with the baseline, its Δ at those seeds per host class."""
    if not spec.reruns:
        return []
    runs_ = [r for r in found.reruns + found.used + found.elsewhere
             if r["status"] == Status.COMPLETED and r["seed"] in spec.reruns.get(r["overrides"][spec.key], ())
             and r.get("test/acc_top1") is not None]
    top1 = {(r["overrides"][spec.key], r["seed"], r.get("host") or "host not recorded"): 100 * r["test/acc_top1"]
            for r in runs_}
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
                per_seed = ", ".join(f"{report._signed(d)} (seed {s})" for s, d in diffs)
                lines += ["", f"Δ {spec.label(value)} − baseline on {host}: mean "
                              f"{report._signed(sum(d for _, d in diffs) / len(diffs))} over {len(diffs)} seed(s): "
                              f"{per_seed}."]
    return lines


# --- running it ----------------------------------------------------------------------------------------------------


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
            # The first round starts here: this machine's class is the study's (before any look at its data).
            design = state["frozen"]["design"] | {"host_class": here}
            state["frozen"] |= {"design": design, "hash": _hash(design), "host_class_at": now()}
            write_json(spec.out / "rounds.json", state)
        for seeds, values in plan.items():
            command = spec.command(values, list(seeds))
            shown = shlex.join(spec.command(values, list(seeds), display=True))
            print(f"focalnet-study: round {len(state['rounds']) + 1}: {shown}", flush=True)
            if dry_run:
                continue
            start, started_at = time.perf_counter(), now()
            code = subprocess.run(command).returncode
            state["rounds"].append({"started_at": started_at, "finished_at": now(), "seeds": list(seeds),
                                    "values": values, "command": shown, "exit_code": code,
                                    "wall_time_s": round(time.perf_counter() - start, 1)})
            write_json(spec.out / "rounds.json", state)
            if code:  # a failed job would fail again in the next round; a stop (SIGTERM, Ctrl-C) is a stop
                write_report(spec, runs(spec, state), None, state, here)
                write_json(spec.out / "rounds.json", state)
                print(f"focalnet-study: round {len(state['rounds'])} exited with {code}: stopped; the report lists "
                      f"the failed jobs ({spec.out}/results.md); the same command resumes", file=sys.stderr, flush=True)
                return 1 if code > 0 and code not in (130, 143) else code
        if dry_run:
            return 0
        rounds += 1


def table(data: str, experiments: Path = Path("experiments"), overrides: list[str] | None = None,
          family: str = "study") -> str:
    """Every study's rows on `data` in one markdown table, from what each study's files and runs hold now: n, Δ, the
    interval, the verdict, the seeds and the paper's Δ (docs/studies.md's Results), and a line after it naming the
    family α is family-wise over: each study's own rows ("study"), or every row of the table ("table": K = all of
    them, for claims about the table as a whole). A study not yet run has no rows in it (the line names it)."""
    lines = ["| study | setting vs baseline | n | Δ top-1 (pts) | interval (pts) | verdict | paper Δ (pts) |",
             "|---|---|---|---|---|---|---|"]
    studies, waiting = [], []
    for path in sorted(experiments.glob("*/study.yaml")):
        spec = load_spec(path.parent.name, data, overrides, experiments)
        state = read_state(spec)
        rows = with_hosts(spec, runs(spec, state))
        if "frozen" in state:
            settle_design(spec, state, rows)  # refused where the study's file no longer says what was frozen
            host = study_host(spec, state, None)
        else:
            host = None if spec.hosts == "any" else first_host(spec, rows)
        used = scope(spec, rows, host).used
        if not any(r["status"] == Status.COMPLETED for r in used):
            waiting.append(spec.name)
            continue
        studies.append((spec, used, state.get("closed")))
    k = sum(len(spec.values) - 1 for spec, _, _ in studies)
    for spec, used, closed in studies:
        design, stopped = spec.design, None
        if family == "table":  # a finished study adds no seeds: a row its own family decided may be inconclusive here
            design, stopped = dataclasses.replace(spec.design, rows=k), "stopped" if closed else None
        configs = report.aggregate(used, keys=[spec.key], settings=[(v,) for v in spec.values])
        report.compare(configs, [spec.key], {"baseline": {spec.key: spec.baseline}, "paper": spec.paper,
                                             "design": design, "stopped": stopped})
        short = spec.key.rsplit(".", 1)[-1]
        for c in configs:
            if c["is_baseline"]:
                continue
            interval = "-" if c["ci_low"] is None else f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"
            delta = "-" if c["delta"] is None else f"{c['delta']:+.2f}"
            paper = "-" if c.get("paper_delta") is None else f"{c['paper_delta']:+.1f}"
            lines.append(f"| {spec.name} | {short}={report.cell(c[spec.key])} vs {report.cell(spec.baseline)} | "
                         f"{c['n_pairs']} | {delta} | {interval} | {report.verdict_text(c, design)} | {paper} |")
    alphas = sorted({spec.design.alpha for spec, _, _ in studies})
    alpha = " / ".join(f"{a:g}" for a in alphas) or "-"
    if family == "table":
        line = (f"Family: the table: α = {alpha} family-wise over all {k} rows of its {len(studies)} studies "
                f"(K = {k}; each row's interval and verdict at α/{k}), for claims about the table as a whole; "
                "a finished study's row its own family decided is inconclusive (stopped) where this one does not.")
    else:
        line = (f"Family: per study: α = {alpha} family-wise over each study's own rows (K = its rows); "
                f"`--family table` splits α over all {k} rows of the table.")
    if waiting:
        line += f" Not yet run: {', '.join(waiting)}."
    # A blockquote ends a markdown table without an empty line (GFM): the table's own lines stay as they were.
    return "\n".join(lines) + "\n> " + line + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="focalnet-study", description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?", help="a folder name under experiments/ (e.g. focal_levels); none with "
                        "--table")
    parser.add_argument("overrides", nargs="*", help="more focalnet-train overrides for every job (part of the "
                        "recipe: runs with other values are other runs)")
    parser.add_argument("--data", default="digits", help="the conf/ablation/ option: data set and budget")
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

    ablation = Path(config_dir(), "ablation")
    if not (ablation / f"{args.data}.yaml").is_file():
        choices = " ".join(p.stem for p in sorted(ablation.glob("*.yaml")))
        parser.exit(2, f"focalnet-study: no ablation data {args.data!r}; choices: {choices}\n")
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
