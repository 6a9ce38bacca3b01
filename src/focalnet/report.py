"""focalnet-report: turn a sweep folder (one summary.json per job) into a paper-style ablation table and plots.

    focalnet-report multirun/2024-05-01/12-00-00 [--out DIR] [--[no-]wandb --wandb-project P --wandb-group G]

Writes results.csv (one row per job), results.md (one row per configuration: jobs grouped by the overrides that
differ between them, minus ``seed``; test top-1 as mean ± std over seeds) and acc_vs_*.png. When the jobs logged
to W&B (their summary.json says where), the table and plots go to one more run in the same project and group.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
from pathlib import Path

METRICS = ("test/acc_top1", "val/acc_top1")
STATS = ("params", "flops", "train_images_per_s", "wall_time_s", "time_to_first_step_s")


def _normalize(value):
    # Group keys must be hashable and comparable; numbers stay numbers so they sort numerically.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return value if isinstance(value, str) else json.dumps(value)


def _sort_key(value):
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
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_overrides(list(OmegaConf.load(path)))
    return {o.key_or_group: o.value() for o in parsed}


def _missing_row(folder: Path, error: str) -> dict:
    overrides = {k: _normalize(v) for k, v in _hydra_overrides(folder).items()}
    number = folder.name.split("_", 1)[0]  # job folders are <number>_<overrides>
    job_num = int(number) if number.isdigit() else None
    return {"job_num": job_num, "status": "missing", "overrides": overrides, "seed": overrides.get("seed"),
            **dict.fromkeys(STATS + METRICS), "error": error, "run_dir": str(folder)}


def collect(sweep_dir) -> list[dict]:
    """One dict per job folder under ``sweep_dir``: a job with a .hydra folder but no (readable) summary.json
    comes back with status "missing" and the reason in "error"."""
    root = Path(sweep_dir)
    rows = []
    for path in root.rglob("summary.json"):
        try:
            s = json.loads(path.read_text())
            if not isinstance(s, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            rows.append(_missing_row(path.parent, f"corrupt {path}: {str(e).splitlines()[0]}"))
            continue
        overrides = {k: _normalize(v) for k, v in (s.get("overrides") or {}).items()}
        metrics = s.get("metrics") or {}
        rows.append({"job_num": s.get("job_num"), "status": s.get("status", "missing"), "overrides": overrides,
                     "seed": s.get("seed", overrides.get("seed")), **{k: s.get(k) for k in STATS},
                     **{k: metrics.get(k) for k in METRICS}, "error": s.get("error"), "run_dir": str(path.parent),
                     "wandb": s.get("wandb"), "argv": s.get("argv")})
    for hydra_dir in root.rglob(".hydra"):
        if hydra_dir.is_dir() and not (hydra_dir.parent / "summary.json").exists():
            rows.append(_missing_row(hydra_dir.parent, f"no summary.json in {hydra_dir.parent}"))
    rows.sort(key=lambda r: (str(Path(r["run_dir"]).parent), _sort_key(r["job_num"]), r["run_dir"]))
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


def aggregate(rows: list[dict]) -> list[dict]:
    """One dict per configuration (the jobs' overrides minus seed), sorted by the swept values.
    test_acc_mean / test_acc_std are fractions; std is the sample std (None below two seeds)."""
    keys = swept_keys(rows)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r["overrides"].get(k) for k in keys), []).append(r)
    configs = []
    for values, jobs in sorted(groups.items(), key=lambda kv: [_sort_key(v) for v in kv[0]]):
        done = [j for j in jobs if j["status"] == "completed"]
        accs = [j["test/acc_top1"] for j in done if j["test/acc_top1"] is not None]
        speeds = [j["train_images_per_s"] for j in done if j["train_images_per_s"] is not None]
        # Size and cost don't depend on the seed; a failed job may still have measured them.
        params, flops = (next((j[k] for j in done + jobs if j[k] is not None), None) for k in ("params", "flops"))
        configs.append({**dict(zip(keys, values)), "params": params, "flops": flops,
                        "images_per_s": statistics.fmean(speeds) if speeds else None,
                        "test_acc_mean": statistics.fmean(accs) if accs else None,
                        "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
                        "n": len(done), "failed": sum(j["status"] not in ("completed", "running") for j in jobs)})
    return configs


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


def to_markdown(sweep_dir, rows: list[dict], configs: list[dict]) -> str:
    keys = swept_keys(rows)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "running")}
    failed = [r for r in rows if r["status"] not in counts]
    head = f"jobs: {len(rows)}, completed: {counts['completed']}, failed: {len(failed)}"
    head += f", running: {counts['running']}" if counts["running"] else ""
    cols = [*keys, "params", "FLOPs", "images/s", "test top-1 (%)", "n", "failed"]
    lines = [f"# Sweep `{sweep_dir}`", ""]
    commands = {r.get("argv") for r in rows} - {None}
    if len(commands) == 1:
        lines += [f"Command: `{commands.pop()}`", ""]
    fixed = fixed_overrides(rows)
    if fixed:
        lines += ["Every job: " + " ".join(f"`{k}={v}`" for k, v in fixed.items()), ""]
    lines += [head]
    starts = sorted(r["time_to_first_step_s"] for r in rows if r.get("time_to_first_step_s") is not None)
    if starts:
        lines += ["", f"Time to first training step per job: median {statistics.median(starts):.1f} s "
                      f"(min {starts[0]:.1f} s, max {starts[-1]:.1f} s)"]
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for c in configs:
        speed = "-" if c["images_per_s"] is None else f"{c['images_per_s']:.0f}"
        cells = [*("-" if c[k] is None else str(c[k]) for k in keys), _human(c["params"]), _human(c["flops"]),
                 speed, _acc(c), str(c["n"]), str(c["failed"])]
        lines.append("| " + " | ".join(cells) + " |")
    if failed:
        lines += ["", "## Failed jobs", ""]
        for r in failed:
            label = ",".join(f"{k}={v}" for k, v in r["overrides"].items())
            lines.append(f"- job {r['job_num']} (`{label}`, {r['status']}): {r['error']}")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = swept_keys(rows)
    cols = ["job_num", "status", *keys, "seed", *STATS, *METRICS, "error", "run_dir"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, cols)
        writer.writeheader()
        for r in rows:
            writer.writerow({**{k: v for k, v in r.items() if k in cols}, **{k: r["overrides"].get(k) for k in keys}})


def plot(out: Path, configs: list[dict], keys: list[str]) -> list[Path]:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [c for c in configs if c["test_acc_mean"] is not None]
    if not configs:
        return []

    def pct(c, key):
        return 100 * (c[key] or 0.0)

    paths = []
    for axis in keys:
        # Categorical x positions keep any value type readable; one line per combination of the other axes.
        ticks = sorted({c[axis] for c in configs}, key=_sort_key)
        others = [k for k in keys if k != axis]
        lines: dict[tuple, list[dict]] = {}
        for c in configs:
            lines.setdefault(tuple(c[k] for k in others), []).append(c)
        fig, ax = plt.subplots(figsize=(6, 4))
        for rest, cs in sorted(lines.items(), key=lambda kv: [_sort_key(v) for v in kv[0]]):
            cs = sorted(cs, key=lambda c: _sort_key(c[axis]))
            label = ", ".join(f"{k}={v}" for k, v in zip(others, rest)) or None
            ax.errorbar([ticks.index(c[axis]) for c in cs], [pct(c, "test_acc_mean") for c in cs],
                        yerr=[pct(c, "test_acc_std") for c in cs], marker="o", capsize=3, label=label)
        ax.set(xticks=range(len(ticks)), xticklabels=[str(t) for t in ticks], xlabel=axis, ylabel="test top-1 (%)")
        if others:
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        safe = re.sub(r"[^\w.-]", "_", axis)
        paths.append(out / f"acc_vs_{safe}.png")
        fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    points = [c for c in configs if c["flops"]]
    if points:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.errorbar([c["flops"] for c in points], [pct(c, "test_acc_mean") for c in points],
                    yerr=[pct(c, "test_acc_std") for c in points], fmt="o", capsize=3)
        for c in points:
            label = ", ".join(f"{k.rsplit('.', 1)[-1]}={c[k]}" for k in keys)
            ax.annotate(label, (c["flops"], pct(c, "test_acc_mean")), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        flops = [c["flops"] for c in points]
        if max(flops) / min(flops) > 10:
            ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter())
        ax.set(xlabel="FLOPs (MACs)", ylabel="test top-1 (%)")
        ax.grid(alpha=0.3)
        paths.append(out / "acc_vs_flops.png")
        fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    return paths


def log_wandb(sweep_dir, rows, configs, plots, project: str, group: str | None, mode: str) -> None:
    import wandb

    # Beside the jobs' runs (each in <job>/wandb): `wandb sync` over the sweep folder uploads this one too. Absolute:
    # wandb's service process, shared by every run of this process, resolves a relative dir against its own cwd.
    run = wandb.init(project=project, group=group, job_type="report", dir=Path(sweep_dir).resolve(), mode=mode,
                     config={"sweep_dir": str(sweep_dir)})
    cols = list(configs[0]) if configs else []
    jobs = [{k: v for k, v in r.items() if k != "overrides"} | r["overrides"] for r in rows]
    job_cols = list({k: None for j in jobs for k in j})
    run.log({"configs": wandb.Table(columns=cols, data=[[c[k] for k in cols] for c in configs]),
             "jobs": wandb.Table(columns=job_cols, data=[[str(j.get(k)) for k in job_cols] for j in jobs]),
             **{p.stem: wandb.Image(str(p)) for p in plots}})
    wandb.finish()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="focalnet-report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="sweep folder (e.g. a Hydra multirun folder)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the sweep folder)")
    parser.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                        help="log the table and plots to one W&B run (default: when the sweep's jobs logged to W&B)")
    parser.add_argument("--wandb-project", default=None, help="default: the jobs' W&B project, else focalnet")
    parser.add_argument("--wandb-group", default=None, help="default: the jobs' W&B group (the sweep's)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.exit(2, f"focalnet-report: no such folder: {args.sweep_dir}\n")
    rows = collect(args.sweep_dir)
    if not rows:
        parser.exit(2, f"focalnet-report: no summary.json or Hydra job folder under {args.sweep_dir}\n")
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    configs = aggregate(rows)
    markdown = to_markdown(args.sweep_dir, rows, configs)
    write_csv(out / "results.csv", rows)
    (out / "results.md").write_text(markdown)
    plots = plot(out, configs, swept_keys(rows))
    print(markdown, end="")
    jobs_wandb = next((r["wandb"] for r in rows if r.get("wandb")), None)  # what train.py recorded
    if args.wandb if args.wandb is not None else jobs_wandb is not None:
        jobs_wandb = jobs_wandb or {}
        project = args.wandb_project or jobs_wandb.get("project") or "focalnet"
        # The jobs' mode (offline by default) unless WANDB_MODE says otherwise: by default nothing needs the network.
        mode = os.environ.get("WANDB_MODE") or jobs_wandb.get("mode") or "offline"
        log_wandb(args.sweep_dir, rows, configs, plots, project, args.wandb_group or jobs_wandb.get("group"), mode)
