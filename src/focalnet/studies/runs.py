"""The runs a report reads: one `Run` per job folder (its summary.json, else what Hydra left) or per results.csv row,
the sweep's swept keys, its `study:` block, and results.csv written back."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from focalnet.host import parse_overrides
from focalnet.record import NotARecord, Status, read_record

METRICS = ("test/acc_top1", "val/acc_top1")
# Statuses that are not failures: an interrupted job resumes where it stopped (resume=auto, a SLURM requeue).
NOT_FAILED = tuple(s.value for s in Status if s != Status.FAILED)
STATS = ("params", "flops", "train_images_per_s", "wall_time_s", "time_to_first_step_s")
# What results.csv records of each job beside its setting: enough to pair it again on another machine (and "gpu",
# the GPU's name, where a job ran on one).
RECORD = ("precision", "torch", "cpu", "recipe", "setting")
DESIGN_KEYS = ("alpha", "delta", "seeds_per_round", "max_seeds", "procedure")  # a study block's Design terms
COLUMNS = {"test_top1": "test/acc_top1", "val_top1": "val/acc_top1"}  # the fields results.csv names otherwise


@dataclass
class Run:
    """One job of a report, as its folder or a results.csv row recorded it."""

    job_num: int | None = None
    status: str = "missing"
    overrides: dict = field(default_factory=dict)  # its setting: override key -> value (normalize()d)
    seed: Any = None
    params: int | None = None
    flops: int | None = None
    train_images_per_s: float | None = None
    wall_time_s: float | None = None
    time_to_first_step_s: float | None = None
    test_top1: float | None = None  # test/acc_top1, a fraction
    val_top1: float | None = None   # val/acc_top1
    error: str | None = None
    run_dir: str | None = None
    wandb: dict | None = None       # where the job logged to W&B
    argv: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    precision: str | None = None
    trial: int | None = None        # its number in an Optuna search
    pruned_at_epoch: int | None = None
    torch: str | None = None
    cpu: str | None = None
    gpu: str | None = None
    parts: list = field(default_factory=list)  # {started_at, finished_at} of each stretch it ran (resumed: several)
    val_curve: dict | None = None   # {epoch: validation top-1 (%)}; None: not read yet (run_curve)
    job_config: dict | None = None  # job_config_of() its folder; None for a run results.csv recorded
    # What focalnet-study adds: the recipe id and setting it ran (results.csv keeps them), the study whose ledger
    # recorded it and its host class.
    recipe: str | None = None
    setting: str | None = None
    study: str | None = None
    host: str | None = None

    @classmethod
    def from_summary(cls, path: Path) -> Run:
        """A job from its summary.json; one without a readable summary is "missing", the reason in `error`."""
        try:
            s = read_record(path).model_dump(mode="json", exclude_unset=True)
        except NotARecord as e:
            return cls.missing(path.parent, str(e))
        overrides = {k: normalize(v) for k, v in (s.get("overrides") or {}).items()}
        metrics, machine = s.get("metrics") or {}, s.get("machine") or {}
        return cls(job_num=s.get("job_num"), status=s.get("status", "missing"), overrides=overrides,
                   seed=s.get("seed", overrides.get("seed")), **{k: s.get(k) for k in STATS},
                   test_top1=metrics.get("test/acc_top1"), val_top1=metrics.get("val/acc_top1"),
                   error=s.get("error"), run_dir=str(path.parent), wandb=s.get("wandb"), argv=s.get("argv"),
                   started_at=s.get("started_at"), finished_at=s.get("finished_at"), precision=s.get("precision"),
                   trial=s.get("trial"), pruned_at_epoch=s.get("pruned_at_epoch"),
                   torch=(s.get("versions") or {}).get("torch"), cpu=machine.get("cpu"), gpu=machine.get("gpu"),
                   parts=s.get("parts") or [{k: s.get(k) for k in ("started_at", "finished_at")}])

    @classmethod
    def missing(cls, folder: Path, error: str) -> Run:
        """A job that left no readable summary: its overrides from Hydra's own record of them."""
        overrides = {k: normalize(v) for k, v in _hydra_overrides(folder).items()}
        number = folder.name.split("_", 1)[0]  # job folders are <number>_<overrides>
        return cls(job_num=int(number) if number.isdigit() else None, overrides=overrides,
                   seed=overrides.get("seed"), error=error, run_dir=str(folder))

    @classmethod
    def from_csv(cls, row: dict) -> Run:
        """A job as results.csv recorded it (overrides left to the caller)."""
        def number(key):
            text = row.get(key)
            if text in (None, ""):
                return None
            return int(float(text)) if key in ("params", "flops") else float(text)

        seed = row.get("seed")
        return cls(job_num=int(row["job_num"]) if (row.get("job_num") or "").isdigit() else None,
                   status=row.get("status") or "missing",
                   seed=int(seed) if (seed or "").lstrip("-").isdigit() else seed or None,
                   **{k: number(k) for k in STATS}, test_top1=number("test/acc_top1"),
                   val_top1=number("val/acc_top1"), **{k: row.get(k) or None for k in (*RECORD, "gpu")},
                   error=row.get("error") or None, run_dir=row.get("run_dir"),
                   started_at=row.get("started_at") or None, finished_at=row.get("finished_at") or None,
                   val_curve=dict(enumerate(json.loads(row["val_curve"]))) if row.get("val_curve") else {},
                   parts=[{"started_at": row.get("started_at"), "finished_at": row.get("finished_at")}])

    def columns(self) -> dict:
        """Its fields by results.csv's names."""
        return {COLUMNS.get(k, k): v for k, v in vars(self).items()}


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


def cell(value) -> str:
    """A value as an override writes it (true, null, 0.004)."""
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def _hydra_overrides(folder: Path) -> dict:
    """The overrides of a job that left no readable summary, from Hydra's own record of them."""
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    return parse_overrides(list(OmegaConf.load(path)))  # the keys of the summaries' overrides


def load_yaml(path: Path) -> dict:
    """A YAML file's mapping; {} where it is missing or not one."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def job_config_of(folder: Path) -> dict:
    """What Hydra recorded of a job, read once: `hydra` (hydra.yaml's node) and `config` (the composed config);
    empty where the job left none."""
    hydra = load_yaml(folder / ".hydra" / "hydra.yaml").get("hydra")
    return {"hydra": hydra or {}, "config": load_yaml(folder / ".hydra" / "config.yaml")}


def _choices(job: dict) -> dict:
    return (job["hydra"].get("runtime") or {}).get("choices") or {}


def composed(job: dict, key: str):
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


# Config groups renamed (their old names still compose): a run made under the old name reads as the new one.
RENAMED_GROUPS = {"ablation": "benchmark", "experiment": "recipe"}


def collect(*sweep_dirs) -> list[Run]:
    """One Run per job folder under the given folders (sweep folders or single jobs), those of the first folder
    first. A job with a .hydra folder but no (readable) summary.json comes back with status "missing" and the reason
    in "error". Overrides the job folder names leave out (resume=auto, ...) are dropped. A key some jobs override
    and others do not (a baseline run in another study) gets the value the others ran with from their composed
    config, so the same setting lands in the same row."""
    runs, seen = [], set()
    for sweep_dir in sweep_dirs:
        for r in collect_folder(Path(sweep_dir)):
            if Path(r.run_dir).resolve() not in seen:
                seen.add(Path(r.run_dir).resolve())
                r.job_config = job_config_of(Path(r.run_dir))
                runs.append(r)
    for r in runs:  # what the folder names leave out (resume=auto, ...) is how a job ran, not a setting
        r.overrides = {RENAMED_GROUPS.get(k, k): v for k, v in r.overrides.items()}
        hydra = r.job_config["hydra"]
        exclude = (((hydra.get("job") or {}).get("config") or {}).get("override_dirname") or {}).get("exclude_keys")
        for k in exclude or ():
            r.overrides.pop(k, None)
        for k in [k for k in r.overrides if k.startswith("search.")]:  # a trial's place in its search
            r.overrides.pop(k)
    keys = {k: None for r in runs for k in r.overrides}
    for r in runs:
        for k in keys:
            if k not in r.overrides and (value := composed(r.job_config, k)) is not None:
                r.overrides[k] = normalize(value)
    return runs


def collect_folder(root: Path) -> list[Run]:
    """One Run per summary.json under `root`, and one "missing" per Hydra job folder without one."""
    runs = [Run.from_summary(path) for path in root.rglob("summary.json")]
    for hydra_dir in root.rglob(".hydra"):
        if hydra_dir.is_dir() and not (hydra_dir.parent / "summary.json").exists():
            runs.append(Run.missing(hydra_dir.parent, f"no summary.json in {hydra_dir.parent}"))
    runs.sort(key=lambda r: (str(Path(r.run_dir).parent), sort_key(r.job_num), r.run_dir))
    return runs


def swept_keys(runs: list[Run]) -> list[str]:
    """Override keys other than seed whose value differs between jobs, in the order they first appear.

    The other overrides (e.g. trainer.max_epochs=4 given to the whole sweep) are the same for every job.
    """
    keys = {k: None for r in runs for k in r.overrides if k != "seed"}
    return [k for k in keys if len({json.dumps(r.overrides.get(k)) for r in runs}) > 1]


def fixed_overrides(runs: list[Run]) -> dict:
    """The overrides every job shares (other than seed)."""
    swept = set(swept_keys(runs))
    return {k: v for k, v in runs[0].overrides.items() if k != "seed" and k not in swept} if runs else {}


def duplicates(runs: list[Run]) -> tuple[str, str] | None:
    """The run folders of two completed jobs with the same setting and seed (they would count twice), or None. Two
    trials of a search are two draws of the sampler, even where it drew the same values."""
    keys, seen = swept_keys(runs), {}
    for r in runs:
        if r.status == Status.COMPLETED:
            key = (tuple(r.overrides.get(k) for k in keys), r.seed, r.cpu, r.trial)
            if key in seen:
                return seen[key], r.run_dir
            seen[key] = r.run_dir
    return None


def data_label(choice: str | None, data: dict, declared: str | None = None) -> str:
    """How a report names the data: as the study block declares it (`study.data_label`: what the data on this
    machine is), else by its data config."""
    if declared:
        return declared
    target, root = str(data.get("_target_")), str(data.get("root"))
    if "fashion" in f"{choice} {target}".lower():
        return f"Fashion-MNIST (from {root})"
    return f"`{choice or target}`"


def study_terms(study: dict) -> dict:
    """A `study:` block's terms: baseline, {key: value} of the row every other row is compared with; paper, {"key",
    "source", "top1": {value: top-1 %}} keyed by the values of the baseline's one key (None without); and the
    Design terms it gives. Values normalised like the jobs' overrides, so they compare equal to the table's cells."""
    baseline = {k: normalize(v) for k, v in (study.get("baseline") or {}).items()}
    paper = study.get("paper") or {}
    if paper.get("top1") and len(baseline) == 1:
        paper = {"key": next(iter(baseline)), "source": paper.get("source") or "the paper",
                 "top1": {normalize(k): float(v) for k, v in paper["top1"].items()}}
    else:
        paper = None
    return {"baseline": baseline, "paper": paper, **{k: study[k] for k in DESIGN_KEYS if k in study}}


def read_study(runs: list[Run]) -> dict:
    """The sweep's `study:` block (study_terms(): the first job's that has one) and the data its jobs ran on, from
    the jobs' composed configs (collect()'s job_config). Empty/None where the jobs carry no study block."""
    study, data = {}, {}
    for r in runs:
        config = (r.job_config or {}).get("config")  # none for a run results.csv recorded
        if not config:
            continue
        study = study or config.get("study") or {}
        declared = (config.get("study") or {}).get("data_label")
        data[data_label(_choices(r.job_config).get("data"), config.get("data") or {}, declared)] = None
    return {**study_terms(study), "data": ", ".join(data) or None}


def write_csv(path: Path, runs: list[Run], keys: list[str] | None = None) -> None:
    """results.csv: one row per job, with what Run.from_csv() needs to pair it again where its folder is not."""
    keys = swept_keys(runs) if keys is None else keys
    search = ["trial", "pruned_at_epoch"] if any(r.trial is not None for r in runs) else []
    gpu = ["gpu"] if any(r.gpu for r in runs) else []
    cols = ["job_num", "status", *search, *keys, "seed", *STATS, *METRICS, *RECORD, *gpu, "started_at", "finished_at",
            "error", "run_dir", "val_curve"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, cols, extrasaction="ignore")
        writer.writeheader()
        for r in runs:
            curve = run_curve(r) if r.status == Status.COMPLETED else {}
            writer.writerow({**r.columns(), **{k: cell(r.overrides.get(k)) for k in keys},
                             "val_curve": json.dumps([round(curve[e], 4) for e in sorted(curve)]) if curve else ""})


def run_curve(run: Run) -> dict[int, float]:
    """A job's validation curve: as results.csv recorded it (a run made elsewhere), else read from its folder."""
    if run.val_curve is None:
        run.val_curve = learning_curve(run.run_dir) if run.run_dir else {}
    return run.val_curve


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
