import csv
import json
import statistics

import matplotlib.image
import pytest
from scipy import stats

from focalnet.studies.analysis import aggregate, compare
from focalnet.studies.report import main
from focalnet.studies.runs import Run, collect, learning_curve
from focalnet.studies.sequential import Design, replication_seeds

LEVELS, KERNELS, SEEDS = (10, 2), (3, 5), (0, 1)  # 10 first: the report must sort numerically, not as text


def acc(levels, kernel, seed):
    return 0.9 + levels / 1000 + kernel / 100 + seed * 0.005


def write_job(folder, num, overrides, status="completed", **extra):
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {k}={v}\n" for k, v in overrides.items()))
    summary = {
        "status": status, "error": None, "overrides": overrides, "job_num": num, "run_dir": str(folder),
        "override_string": ",".join(f"{k}={v}" for k, v in overrides.items()), "seed": overrides["seed"],
        "model": "focalnet_card", "data": "digits", "params": 1000 * overrides["model.focal_levels"],
        "flops": 10**6 * overrides["model.focal_levels"] * overrides["model.focal_kernel"],
        "train_images_per_s": 100.0 + num, "wall_time_s": 5.0 + num,
        "metrics": {"test/acc_top1": acc(*overrides.values()), "val/acc_top1": 0.5},
    }
    summary.update(extra)
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def sweep(tmp_path):
    """A 2x2 grid over focal_levels x focal_kernel, 2 seeds each, plus one failed, one corrupt, one missing job."""
    root = tmp_path / "multirun" / "2024-01-01" / "12-00-00"
    grid = [(lv, k, s) for lv in LEVELS for k in KERNELS for s in SEEDS]
    for num, (lv, k, s) in enumerate(grid):
        write_job(root / str(num), num, {"model.focal_levels": lv, "model.focal_kernel": k, "seed": s})
    write_job(root / "8", 8, {"model.focal_levels": 2, "model.focal_kernel": 3, "seed": 2}, status="failed",
              error="RuntimeError: CUDA out of memory", metrics={})
    write_job(root / "9", 9, {"model.focal_levels": 10, "model.focal_kernel": 5, "seed": 2})
    (root / "9" / "summary.json").write_text('{"status": "compl')  # half-written
    write_job(root / "10", 10, {"model.focal_levels": 2, "model.focal_kernel": 5, "seed": 2})
    (root / "10" / "summary.json").unlink()  # killed before writing its summary
    return root


def test_report(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    main([str(sweep), "--out", str(out)])

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["job_num"]) for r in rows] == list(range(11))
    assert [r["status"] for r in rows] == ["completed"] * 8 + ["failed", "missing", "missing"]
    for r in rows[:8]:
        lv, k, s = int(r["model.focal_levels"]), int(r["model.focal_kernel"]), int(r["seed"])
        assert float(r["test/acc_top1"]) == pytest.approx(acc(lv, k, s))
        assert int(r["flops"]) == 10**6 * lv * k and int(r["params"]) == 1000 * lv
    assert rows[8]["error"] == "RuntimeError: CUDA out of memory"
    assert rows[9]["error"].startswith(f"{sweep / '9' / 'summary.json'}: not JSON (")
    assert rows[10]["model.focal_levels"] == "2" and "no summary.json" in rows[10]["error"]

    md = (out / "results.md").read_text()
    assert capsys.readouterr().out == md
    assert str(sweep) in md and "jobs: 11, completed: 8, failed: 3" in md
    table = [line.split(" | ") for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [(int(r[0][2:]), int(r[1])) for r in table] == [(2, 3), (2, 5), (10, 3), (10, 5)]
    for r in table:
        lv, k = int(r[0][2:]), int(r[1])
        accs = [100 * acc(lv, k, s) for s in SEEDS]
        assert r[2:4] == [f"{lv}K", f"{lv * k}M"]
        assert r[5] == f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}"
        assert r[6] == "2" and r[7].rstrip(" |") == str(int((lv, k) in [(2, 3), (10, 5), (2, 5)]))
    assert "RuntimeError: CUDA out of memory" in md.split("## Failed jobs")[1]

    names = ["acc_vs_model.focal_levels.png", "acc_vs_model.focal_kernel.png", "acc_vs_flops.png"]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(names)
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(out / name).size > 0


def test_aggregate_single_seed_and_sort():
    rows = [Run(job_num=i, status="completed", overrides={"lr": lr, "seed": 0}, params=5, flops=7,
                train_images_per_s=1.0, test_top1=a)
            for i, (lr, a) in enumerate([(0.1, 0.5), (0.02, 0.75), ("auto", 0.25)])]
    configs = aggregate(rows)
    assert [c["lr"] for c in configs] == [0.02, 0.1, "auto"]
    assert [(c["test_acc_mean"], c["test_acc_std"], c["n"]) for c in configs] == [(0.75, None, 1), (0.5, None, 1),
                                                                                 (0.25, None, 1)]


def test_collect_single_run(tmp_path):
    write_job(tmp_path / "run", 0, {"model.focal_levels": 2, "model.focal_kernel": 3, "seed": 0})
    assert [r.status for r in collect(tmp_path / "run")] == ["completed"]


def test_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nope")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == f"focalnet-report: no such folder: {tmp_path / 'nope'}"
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("folder", ["sweep", "study"])  # study: the Δ and paper columns, curves.png
def test_wandb_offline(folder, request, monkeypatch):
    sweep = request.getfixturevalue(folder)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(sweep / ".wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    main([str(sweep), "--wandb", "--wandb-group", "ablation"])
    runs = list((sweep / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))


# A study over model.focal_levels with baseline 3, 10 seeds. Differences (points) against the baseline: 4 is better
# by about 2, 2 is within ±0.1, 1 is worse by about 5, 5 scatters ±1.5 around 0 (undecided at the cap), 0 ran seed 0.
BASE = [0.90, 0.91, 0.92, 0.905, 0.915, 0.90, 0.91, 0.92, 0.905, 0.915]
DIFFS = {4: [2, 2.5, 2, 1.5, 2, 2.5, 2, 1.5, 2, 2], 2: [0.1, -0.1, 0.05, 0, -0.05, 0.1, -0.1, 0, 0.05, -0.05],
         1: [-5, -4, -6, -5, -5.5, -4.5, -5, -5, -6, -4], 5: [1.5, -1.5, 2, -1, 0.5, -2, 1, 0, -0.5, 1.2]}
STUDY_ACCS = {3: BASE, **{lv: [b + d / 100 for b, d in zip(BASE, diffs)] for lv, diffs in DIFFS.items()}, 0: [0.80]}


HYDRA_YAML = "hydra:\n  runtime:\n    choices:\n      data: fashion_mnist\n"


STUDY_CONFIG = """seed: 0
data:
  _target_: focalnet.data.FashionMNISTDataModule
  root: ../shared/data/fashion-mnist
study:
  data_label: Fashion-MNIST (seeded 60k/10k split)   # as conf/benchmark/fashion_mnist.yaml declares it
  baseline: {model.focal_levels: 3}
  paper:
    source: "Table 14 (FocalNet-T LRF, ImageNet-1K top-1)"
    top1: {0: 75.7, 1: 82.0, 2: 82.1, 3: 82.3}   # none for 4
"""


def val_curve(level, seed):
    return [0.5 + level / 100 + seed / 1000 + epoch / 10 for epoch in range(3)]


def write_metrics_csv(folder, val_accs):
    """What Lightning's CSVLogger writes: validation and training metrics on separate lines of each epoch."""
    (folder / "csv").mkdir()
    lines = ["epoch,step,train/loss_epoch,val/acc_top1,test/acc_top1"]
    for epoch, v in enumerate(val_accs):
        lines += [f"{epoch},{epoch * 10 + 9},,{v},", f"{epoch},{epoch * 10 + 9},1.5,,"]
    lines.append(f"{len(val_accs)},{len(val_accs) * 10},,,0.9")  # the test line: no validation value
    (folder / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def study(tmp_path):
    root = tmp_path / "ablation"
    num = 0
    for level, accs in STUDY_ACCS.items():
        for seed, a in enumerate(accs):
            folder = root / f"{num}_model.focal_levels-{level}+seed-{seed}"
            (folder / ".hydra").mkdir(parents=True)
            (folder / ".hydra" / "config.yaml").write_text(STUDY_CONFIG)
            (folder / ".hydra" / "hydra.yaml").write_text(HYDRA_YAML)
            overrides = {"model.focal_levels": level, "seed": seed}
            summary = {"status": "completed", "overrides": overrides, "job_num": num, "seed": seed, "params": 1000,
                       "flops": 10**6 * (level + 1), "metrics": {"test/acc_top1": a}, "run_dir": str(folder)}
            (folder / "summary.json").write_text(json.dumps(summary))
            write_metrics_csv(folder, val_curve(level, seed))
            num += 1
    return root


def table(md):
    """The results table of a results.md as one {column: cell} per row."""
    lines = [line.strip("| ").split(" | ") for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    return {int(r[0]): dict(zip(lines[0], r)) for r in lines[1:]}


def by_hand(diffs, rows):
    """The repeated confidence interval at the last look, computed from its definition: 10 pairs, the look's
    t-level 8/20 of 0.05/rows (looks at 3, 6, 9, 10 weighted 1, 4, 7, 8), 9 degrees of freedom."""
    n = len(diffs)
    c = stats.t.ppf(1 - 0.05 / rows * 8 / 20 / 2, n - 1)
    mean, half = statistics.mean(diffs), c * statistics.stdev(diffs) / n**0.5
    return mean, mean - half, mean + half


def test_study_report(study, tmp_path):
    out = tmp_path / "report"
    main([str(study), "--out", str(out)])
    md = (out / "results.md").read_text()
    rows = table(md)
    assert "Baseline: `model.focal_levels=3`; data: Fashion-MNIST (seeded 60k/10k split)" in md
    assert "**How to read.**" in md and "Table 14 (FocalNet-T LRF, ImageNet-1K top-1)" in md
    assert "Design: α = 0.05 family-wise over 5 row(s), δ = ±0.5 points, 3 seeds per round, cap 10 seeds" in md
    assert "repeated confidence interval" in md and "bootstrap" not in md

    assert rows[3]["Δ top-1 (pts)"] == "baseline" and rows[3]["verdict"] == "-"
    for level, verdict in ((4, "better"), (2, "equivalent"), (1, "worse"), (5, "inconclusive (cap)")):
        diffs = [100 * (a - b) for a, b in zip(STUDY_ACCS[level], STUDY_ACCS[3])]
        mean, low, high = by_hand(diffs, rows=5)
        r = rows[level]
        assert r["Δ top-1 (pts)"] == f"{mean:+.2f}"
        assert r["interval (pts)"] == f"[{low:+.2f}, {high:+.2f}]"
        assert (r["verdict"], r["seeds"]) == (verdict, "0-9")
    # By hand: 4 is better by 2.00 points, sd 1/3, c = 3.83 (t quantile 1 - 0.002/2, 9 df), half-width
    # 3.83 / 3 / sqrt(10) = 0.40.
    assert (rows[4]["Δ top-1 (pts)"], rows[4]["interval (pts)"]) == ("+2.00", "[+1.60, +2.40]")
    # Past the cap the design has no more looks: the seeds a fresh fixed-n replication would need (80% power).
    diffs = [100 * (a - b) for a, b in zip(STUDY_ACCS[5], STUDY_ACCS[3])]
    need = replication_seeds(statistics.mean(diffs), statistics.stdev(diffs), Design(rows=5))
    assert rows[5]["seeds to decide"] == f"fresh: ≈ {need['difference']} / ≈ {need['equivalence']}"
    assert need["difference"] > need["equivalence"] > 10
    assert rows[0]["Δ top-1 (pts)"] == "-10.00" and rows[0]["verdict"] == "undecided at 1 of 10 seeds"
    assert rows[0]["interval (pts)"] == "-"

    assert {lv: (r["paper top-1 (%)"], r["paper Δ (pts)"]) for lv, r in rows.items()} == {
        0: ("75.7", "-6.6"), 1: ("82.0", "-0.3"), 2: ("82.1", "-0.2"), 3: ("82.3", "+0.0"), 4: ("-", "-"),
        5: ("-", "-")}

    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == sum(len(a) for a in STUDY_ACCS.values())  # still one row per job
    for name in ("curves.png", "forest.png", "acc_vs_model.focal_levels.png", "acc_vs_flops.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(out / name).size > 0


def test_runs_of_different_precision_are_not_paired(study, tmp_path, capsys):
    job = next(study.glob("*_model.focal_levels-4+seed-2"))
    summary = json.loads((job / "summary.json").read_text())
    (job / "summary.json").write_text(json.dumps(summary | {"precision": "bf16-mixed"}))
    base = next(study.glob("*_model.focal_levels-3+seed-2"))
    summary = json.loads((base / "summary.json").read_text())
    (base / "summary.json").write_text(json.dumps(summary | {"precision": "32-true"}))
    with pytest.raises(SystemExit) as e:
        main([str(study), "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert str(job) in err and str(base) in err and "bf16-mixed" in err and "32-true" in err


def test_equal_flops_make_no_flops_plot(study, tmp_path):
    """Settings of equal FLOPs would stack at one x: no acc_vs_flops.png (and a stale one goes)."""
    for summary_path in study.glob("*/summary.json"):
        summary_path.write_text(json.dumps(json.loads(summary_path.read_text()) | {"flops": 10**6}))
    out = tmp_path / "report"
    out.mkdir()
    (out / "acc_vs_flops.png").write_bytes(b"stale")
    main([str(study), "--out", str(out)])
    assert not (out / "acc_vs_flops.png").exists() and (out / "forest.png").exists()


def test_baseline_flag_overrides_study(study, tmp_path):
    out = tmp_path / "report"
    main([str(study), "--out", str(out), "--baseline", "model.focal_levels=4"])
    md = (out / "results.md").read_text()
    rows = table(md)
    assert "Baseline: `model.focal_levels=4`" in md and rows[4]["Δ top-1 (pts)"] == "baseline"
    assert (rows[3]["Δ top-1 (pts)"], rows[3]["verdict"]) == ("-2.00", "worse")
    assert rows[3]["paper Δ (pts)"] == "-"  # the paper has no number for the new baseline
    with pytest.raises(SystemExit):
        main([str(study), "--baseline", "model.focal_levels=3,4"])


def test_no_study_no_difference_columns(sweep, tmp_path):
    main([str(sweep), "--out", str(tmp_path / "report")])
    md = (tmp_path / "report" / "results.md").read_text()
    assert "Baseline" not in md and "verdict" not in md and "paper" not in md


def test_learning_curve(study):
    job = next(study.glob("*_model.focal_levels-2+seed-1"))
    assert learning_curve(job) == pytest.approx({e: 100 * v for e, v in enumerate(val_curve(2, 1))})
    assert learning_curve(study / "nowhere") == {}


def test_grid_baseline_pairs_within_other_keys():
    """With a baseline naming one key of a grid, each row is compared with the baseline at its own other values."""
    rows = [Run(status="completed", overrides={"a": a, "b": b, "seed": s}, seed=s,
                test_top1=0.5 + a / 10 + b / 100 + s / 1000)
            for a in (1, 2) for b in (1, 2) for s in (0, 1, 2)]
    configs = aggregate(rows)
    compare(configs, ["a", "b"], {"baseline": {"a": 1}})
    by = {(c["a"], c["b"]): c for c in configs}
    assert by[1, 1]["is_baseline"] and by[1, 2]["is_baseline"]
    assert by[2, 2]["delta"] == pytest.approx(10)
    assert by[2, 2]["ci_high"] - by[2, 2]["ci_low"] == pytest.approx(0, abs=1e-9)  # every pair differs by 10
    assert by[2, 2]["verdict"] == "better"


def test_a_resumed_study_counts_the_time_its_jobs_ran_not_the_pause():
    from focalnet.studies.markdown import _wall_time

    def part(start, end):  # minutes after 10:00
        return {"started_at": f"2026-01-01T10:{start:02d}:00+00:00", "finished_at": f"2026-01-01T10:{end:02d}:00+00:00"}

    # Two jobs side by side (0-20, 5-25), stopped; resumed at 40: job 0 ran 40-45, job 1 (done) and a third 40-50.
    rows = [Run(parts=[part(0, 20), part(40, 45)]), Run(parts=[part(5, 25)]), Run(parts=[part(40, 50)]),
            Run(status="missing")]
    assert _wall_time(rows) == ("Wall time: 35.0 min with jobs running, in 2 stretches (stopped and resumed, or "
                                "runs joined from another sweep); per job median 20.0 min (sum 55.0 min)")
    assert _wall_time(rows[1:2]).startswith("Wall time: 20.0 min from the first job's start to the last one's end")


def test_baseline_runs_from_another_study_join_the_table(tmp_path, capsys):
    """A kernel study that ran 5 only, plus the depth study's 4-layer runs (kernel 3 by default) as its baseline:
    the joined runs land in the kernel-3 row (from their composed config), paired by seed, the first folder's
    study block counts, and a job given twice is refused in one line."""
    def job(root, num, overrides, a, study_block):
        folder = root / (f"{num}_" + "+".join(f"{k}-{v}" for k, v in overrides.items()))
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text(
            f"seed: {overrides['seed']}\nmodel:\n  focal_kernel: {overrides.get('model.focal_kernel', 3)}\n"
            f"  num_layers: {overrides.get('model.num_layers', 4)}\nstudy:\n  baseline: {study_block}\n")
        (folder / ".hydra" / "hydra.yaml").write_text(HYDRA_YAML)
        summary = {"status": "completed", "overrides": overrides, "job_num": num, "seed": overrides["seed"],
                   "metrics": {"test/acc_top1": a}, "run_dir": str(folder), "argv": f"train {root.name}"}
        (folder / "summary.json").write_text(json.dumps(summary))
        return folder

    kernel, depth = tmp_path / "kernel", tmp_path / "depth"
    for seed, a in enumerate([0.91, 0.93, 0.92]):
        job(kernel, seed, {"model.focal_kernel": 5, "seed": seed}, a, "{model.focal_kernel: 3}")
    base = [job(depth, 3 * n + seed, {"model.num_layers": layers, "seed": seed}, a, "{model.num_layers: 4}")
            for n, (layers, accs) in enumerate([(2, [0.5] * 3), (4, [0.90, 0.91, 0.92])])
            for seed, a in enumerate(accs)]
    baseline_runs = [str(f) for f in base[3:]]
    out = tmp_path / "report"
    main([str(kernel), *baseline_runs, "--out", str(out)])
    md = (out / "results.md").read_text()
    rows = table(md)
    assert set(rows) == {3, 5} and rows[3]["Δ top-1 (pts)"] == "baseline" and rows[3]["n"] == "3"
    # 3 pairs [1, 2, 0], one row: the first look's bound, t quantile at 1 - 0.05 * 1/20 / 2 with 2 df.
    half = stats.t.ppf(1 - 0.05 / 20 / 2, 2) / 3**0.5
    assert rows[5]["Δ top-1 (pts)"] == "+1.00" and rows[5]["interval (pts)"] == f"[{1 - half:+.2f}, {1 + half:+.2f}]"
    assert "Baseline: `model.focal_kernel=3`" in md and "Every job: `model.num_layers=4`" in md
    assert "- `train kernel`" in md and "- `train depth`" in md
    with open(out / "results.csv") as f:
        assert sorted(r["model.focal_kernel"] for r in csv.DictReader(f)) == ["3", "3", "3", "5", "5", "5"]

    # The whole depth study: its 2-layer rows join as a second key; kernel 5 is still paired with 4 layers, kernel 3.
    main([str(kernel), str(depth), baseline_runs[0], "--out", str(out)])  # a job given twice counts once
    lines = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| model.focal_kernel | model.num_layers |") and len(lines) == 1 + 3
    assert any(line.startswith("| 5 | 4 |") and "| +1.00 |" in line for line in lines)

    again = job(tmp_path / "kernel_again", 0, {"model.focal_kernel": 5, "seed": 0}, 0.9, "{model.focal_kernel: 3}")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(kernel), str(again), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "same setting and seed" in err and str(again) in err and str(kernel / "0_model.focal_kernel-5+seed-0") in err


def test_a_resumed_job_stays_in_its_row(study, tmp_path):
    """resume=auto (left out of the job folder names) is how a job ran, not a setting: no column of its own."""
    hydra = HYDRA_YAML + "  job:\n    config:\n      override_dirname:\n        exclude_keys: [resume, fail_fast]\n"
    for job in study.iterdir():
        (job / ".hydra" / "hydra.yaml").write_text(hydra)
    job = next(study.glob("*_model.focal_levels-4+seed-2"))
    summary = json.loads((job / "summary.json").read_text())
    summary["overrides"]["resume"] = "auto"
    (job / "summary.json").write_text(json.dumps(summary))
    main([str(study), "--out", str(tmp_path / "report")])
    rows = table((tmp_path / "report" / "results.md").read_text())
    assert "resume" not in rows[4] and rows[4]["n"] == "10" and rows[4]["Δ top-1 (pts)"] == "+2.00"


def test_an_interrupted_job_is_counted_apart_from_the_failed(sweep, tmp_path):
    """A job stopped by a signal resumes where it stopped; counting it as failed would send the user to debug it."""
    write_job(sweep / "11", 11, {"model.focal_levels": 10, "model.focal_kernel": 3, "seed": 2}, status="interrupted",
              error="interrupted by SIGTERM at epoch 6; resume=auto continues it", metrics={})
    out = tmp_path / "report"
    main([str(sweep), "--out", str(out)])
    md = (out / "results.md").read_text()
    assert "jobs: 12, completed: 8, failed: 3, interrupted: 1" in md
    table = [line.split(" | ") for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [(r[0][2:], r[1], r[6], r[7].rstrip(" |")) for r in table] == [
        ("2", "3", "2", "1"), ("2", "5", "2", "1"), ("10", "3", "2", "0"), ("10", "5", "2", "1")]
    failed, interrupted = md.split("## Failed jobs")[1].split("## Interrupted jobs")
    assert "job 11" not in failed and "- job 11 (`model.focal_levels=10,model.focal_kernel=3,seed=2`, interrupted): " \
        "interrupted by SIGTERM at epoch 6; resume=auto continues it" in interrupted


def test_an_obf_study_reports_its_tost_interval_and_a_fresh_study_past_the_cap(study, tmp_path):
    """procedure: obf: the Design line and the note name it, an equivalent row shows its TOST interval (the
    calibrated one-sided cutoff c^eq_n), and a row the cap left inconclusive the seeds a fresh fixed-n study needs."""
    for config in study.glob("*/.hydra/config.yaml"):
        config.write_text(config.read_text().replace("  baseline:", "  procedure: obf\n  baseline:"))
    out = tmp_path / "report"
    main([str(study), "--out", str(out)])
    md = (out / "results.md").read_text()
    rows = table(md)
    design = Design(rows=5, procedure="obf")
    assert "cap 10 seeds, procedure obf (O'Brien-Fleming-type spending, TOST equivalence)" in md
    looks = ", ".join(f"{n} ({design.bound(n):.2f}, {design.eq_bound(n):.2f})" for n in design.looks)
    assert f"the looks n and their c_n and TOST cutoffs c^eq_n are {looks}" in md and "docs/sequential.md" in md
    diffs = [100 * (a - b) for a, b in zip(STUDY_ACCS[2], STUDY_ACCS[3])]
    mean, half = statistics.mean(diffs), design.eq_bound(10) * statistics.stdev(diffs) / 10**0.5
    assert rows[2]["verdict"] == f"equivalent (TOST [{mean - half:+.2f}, {mean + half:+.2f}])"
    assert design.eq_bound(10) < design.bound(10)
    diffs = [100 * (a - b) for a, b in zip(STUDY_ACCS[5], STUDY_ACCS[3])]
    need = replication_seeds(statistics.mean(diffs), statistics.stdev(diffs), design)
    assert rows[5]["verdict"] == "inconclusive (cap)"
    assert rows[5]["seeds to decide"] == f"fresh: ≈ {need['difference']} / ≈ {need['equivalence']}"
    assert (rows[4]["verdict"], rows[1]["verdict"]) == ("better", "worse")
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == sum(len(a) for a in STUDY_ACCS.values())


def test_heterogeneity_is_welchs_test():
    from focalnet.studies.analysis import heterogeneity

    a, b, c = [0.2, 0.3, 0.1, 0.25], [1.1, 0.9, 1.0], [0.5, 0.7, 0.4, 0.6, 0.55]
    two = heterogeneity({"zen": a, "xeon": b, "one pair": [3.0]})
    welch = stats.ttest_ind(a, b, equal_var=False)
    assert two["test"] == "Welch's t-test" and two["classes"] == ["zen", "xeon"]
    assert two["stat"] == f"t = {welch.statistic:+.2f}" and two["p"] == pytest.approx(welch.pvalue)
    three = heterogeneity({"zen": a, "xeon": b, "other": c})
    assert three["test"] == "Welch's one-way ANOVA" and three["df"].startswith("2, ") and 0 < three["p"] < 0.001
    assert heterogeneity({"zen": a}) is None and heterogeneity({"zen": a, "xeon": [1.0]}) is None
