import csv
import json
import statistics

import matplotlib.image
import pytest

from focalnet.report import aggregate, collect, main

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
    assert "corrupt" in rows[9]["error"] and str(sweep / "9" / "summary.json") in rows[9]["error"]
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
    rows = [{"job_num": i, "status": "completed", "overrides": {"lr": lr, "seed": 0}, "params": 5, "flops": 7,
             "train_images_per_s": 1.0, "test/acc_top1": a}
            for i, (lr, a) in enumerate([(0.1, 0.5), (0.02, 0.75), ("auto", 0.25)])]
    configs = aggregate(rows)
    assert [c["lr"] for c in configs] == [0.02, 0.1, "auto"]
    assert [(c["test_acc_mean"], c["test_acc_std"], c["n"]) for c in configs] == [(0.75, None, 1), (0.5, None, 1),
                                                                                 (0.25, None, 1)]


def test_collect_single_run(tmp_path):
    write_job(tmp_path / "run", 0, {"model.focal_levels": 2, "model.focal_kernel": 3, "seed": 0})
    assert [r["status"] for r in collect(tmp_path / "run")] == ["completed"]


def test_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nope")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == f"focalnet-report: no such folder: {tmp_path / 'nope'}"
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_wandb_offline(sweep, monkeypatch):
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(sweep / ".wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    main([str(sweep), "--wandb", "--wandb-group", "ablation"])
    runs = list((sweep / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
