"""A study's design: its file read into a `Spec` (the swept key and its values, the baseline, the Design, the
budget, the host policy) and each setting's recipe, the config leaves that decide a run's numbers. Runs are found by
recipe, not by folder (focalnet.studies.study_runs)."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from focalnet.studies.runs import DESIGN_KEYS, cell, data_label, normalize, study_terms
from focalnet.studies.sequential import Design

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
    jobs_per_multirun: int | None = None  # a round in multiruns of this many jobs (None: one), the report after each
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
        return f"{self.key}={cell(value)}"

    def command(self, values: list, seeds: list[int], display: bool = False) -> list[str]:
        """The focalnet-train multirun of one round: these values of the key times these seeds. `display`: as
        rounds.json and results.md record it, `focalnet-train` and paths relative to the checkout."""
        if display:
            head, folder = ["focalnet-train"], _relative(self.folder)
        else:
            exe = Path(sys.executable).parent / "focalnet-train"
            head, folder = ([str(exe)] if exe.exists() else [sys.executable, "-m", "focalnet.run.train"]), self.folder
        value = f"${{hydra:runtime.choices.{self.key}}}" if self.group else f"${{{self.key}}}"
        return [*head, "-m", "--config-dir", str(folder), "--config-name", "study", f"benchmark={self.data}",
                f"{self.key}={','.join(cell(v) for v in values)}", f"seed={','.join(map(str, seeds))}",
                f"hydra.sweep.dir={self.runs}", f"hydra.sweep.subdir={self.key}-{value}+seed-${{seed}}",
                "resume=auto", "callbacks.progress_bar=null", *self.overrides]


def _relative(folder: Path) -> Path:
    """The study's folder as a checkout-relative path: relative to here where it lies below, else
    experiments/<name> (a copy of the tree elsewhere, /tmp/frozen/experiments/<name>, is the same study)."""
    try:
        return folder.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return Path("experiments") / folder.name


def compose(folder: Path, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import focalnet.cli  # noqa: F401 (the resolvers the configs use)
    from focalnet.cli import config_dir

    with initialize_config_dir(config_dir=str(folder.resolve()), version_base="1.3"):
        return hydra_compose(config_name="study", return_hydra_config=True,
                             overrides=[*overrides, f"hydra.searchpath=[file://{Path(config_dir()).resolve()}]"])


# data_label: how reports name the data, where the benchmark config knows more than its data config says.
STUDY_KEYS = ("name", "baseline", "paper", "budget_hours", "hosts", "first_seed", "reruns", "data_label",
              "jobs_per_multirun", *DESIGN_KEYS)


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
    base = [f"benchmark={data}", *overrides]
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
    values = [normalize(v) for v in sweep.value().list]
    baseline = {k: normalize(v) for k, v in (study.get("baseline") or {}).items()}
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
    size = study.get("jobs_per_multirun")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ValueError(f"study.jobs_per_multirun={size} must be an integer >= 1, or null (a round in one multirun)")
    design = Design(rows=len(values) - 1, **{k: study[k] for k in DESIGN_KEYS if k in study})
    reruns = {normalize(k): v for k, v in (study.get("reruns") or {}).items()}
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
    settings = {v: setting(flat(compose(folder, [*base, f"{key}={cell(v)}"])), reference) for v in values}
    paper = study_terms(study)["paper"]
    choices = cfg.hydra.runtime.choices
    label = data_label(choices.get("data"), OmegaConf.to_container(cfg.data, resolve=False), study.get("data_label"))
    return Spec(name, data, folder, key, values, baseline[key], design, budget, reference, settings, paper, overrides,
                hosts, first_seed, reruns, label, group=key in choices, jobs_per_multirun=size)


