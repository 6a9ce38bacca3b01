"""focalnet-report: turn a sweep folder (one summary.json per job) into a paper-style ablation table and plots.

    focalnet-report outputs/train/multirun/<time>_<id> [MORE_FOLDERS ...] [--out DIR] [--baseline KEY=VALUE]
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

This module is the command line; the work is in runs.py (reading the jobs), analysis.py (the statistics),
markdown.py, plots.py and focalnet.studies.trials (an Optuna search's trials).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from focalnet.cli import one_line
from focalnet.host import parse_overrides
from focalnet.studies.analysis import aggregate, compare
from focalnet.studies.markdown import to_markdown
from focalnet.studies.plots import write_plots
from focalnet.studies.runs import Run, collect, duplicates, normalize, read_study, swept_keys, write_csv
from focalnet.studies.trials import plot_search, trials_markdown

# Run fields the W&B jobs table leaves out: the setting is in its own columns, the rest is focalnet-study's.
NOT_LOGGED = ("overrides", "job_config", "recipe", "setting", "study", "host")


def log_wandb(sweep_dir, runs: list[Run], configs: list[dict], plots: list[Path], project: str, group: str | None,
              mode: str) -> None:
    import wandb

    # Beside the jobs' runs (each in <job>/wandb): `wandb sync` over the sweep folder uploads this one too. Absolute:
    # wandb's service process, shared by every run of this process, resolves a relative dir against its own cwd.
    run = wandb.init(project=project, group=group, job_type="report", dir=Path(sweep_dir).resolve(), mode=mode,
                     config={"sweep_dir": str(sweep_dir)})
    # Per-seed accuracies are in "jobs".
    cols = [k for k in configs[0] if k not in ("by_seed", "jobs_by_seed")] if configs else []
    jobs = [{k: v for k, v in r.columns().items() if k not in NOT_LOGGED} | r.overrides for r in runs]
    job_cols = list({k: None for j in jobs for k in j})
    run.log({"configs": wandb.Table(columns=cols, data=[[c[k] for k in cols] for c in configs]),
             "jobs": wandb.Table(columns=job_cols, data=[[str(j.get(k)) for k in job_cols] for j in jobs]),
             **{p.stem: wandb.Image(str(p)) for p in plots}})
    wandb.finish()


def _baseline(text: str) -> tuple:
    """--baseline KEY=VALUE, the value parsed by Hydra's override parser (not YAML, as focalnet.cli.key_value): so
    it equals the overrides the jobs recorded (1e-3 a float), and a sweep (3,4) is refused."""
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
    parser.add_argument("--baseline", action="append", type=_baseline, metavar="KEY=VALUE",
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
    runs = collect(*args.sweep_dirs)
    sweep_dir = args.sweep_dirs[0]
    if not runs:
        folders = " ".join(map(str, args.sweep_dirs))
        parser.exit(2, f"focalnet-report: no summary.json or Hydra job folder under {folders}\n")
    twice = duplicates(runs)
    if twice:
        parser.exit(2, f"focalnet-report: two completed jobs ran the same setting and seed: {twice[0]} and {twice[1]}; "
                       "give one of them\n")
    out = args.out or sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    study = read_study(runs)
    if args.baseline:
        study["baseline"] = dict(args.baseline)
    keys = swept_keys(runs)
    configs = aggregate(runs)
    try:
        compare(configs, keys, study)
    except ValueError as error:
        parser.exit(2, f"focalnet-report: {one_line(error)}\n")
    markdown = to_markdown(args.sweep_dirs, runs, configs, study, sections=trials_markdown(runs))
    write_csv(out / "results.csv", runs)
    (out / "results.md").write_text(markdown)
    plots = write_plots(out, runs, configs, keys, study) + plot_search(out, runs)
    print(markdown, end="")
    if not any(p.name == "curves.png" for p in plots):
        print("focalnet-report: no curves.png: no job logged validation top-1 per epoch (CSV or offline W&B)",
              file=sys.stderr)
    jobs_wandb = next((r.wandb for r in runs if r.wandb), None)  # what train.py recorded
    if args.wandb if args.wandb is not None else jobs_wandb is not None:
        jobs_wandb = jobs_wandb or {}
        project = args.wandb_project or jobs_wandb.get("project") or "focalnet"
        # The jobs' mode (offline by default) unless WANDB_MODE says otherwise: by default nothing needs the network.
        mode = os.environ.get("WANDB_MODE") or jobs_wandb.get("mode") or "offline"
        log_wandb(sweep_dir, runs, configs, plots, project, args.wandb_group or jobs_wandb.get("group"), mode)
