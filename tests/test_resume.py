"""Resume loses neither progress nor logs: a corrupt or empty last.ckpt, a run that failed on a checkpoint, an
unreadable checkpoint given by hand, metrics.csv across a resume, the wall time of a killed part."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, read_summary, run_cli
from focalnet.run import evaluate, train
from focalnet.run.job import apply_resume, earlier_parts, resume_state

# 2 epochs of 2 steps, every epoch's checkpoint kept: epoch000.ckpt at step 2, epoch001.ckpt and last.ckpt at step 4.
COMMAND = (*TINY, "trainer.max_epochs=2", "logger=csv", "callbacks.model_checkpoint.save_top_k=-1")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A folder with the 2-epoch run in run/ and a copy of it in pristine/, which restore() puts back."""
    folder = tmp_path_factory.mktemp("resume")
    result = run_cli("focalnet-train", *COMMAND, f"hydra.run.dir={folder / 'run'}", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(folder / "run", folder / "pristine")
    return folder


def restore(base: Path) -> Path:
    """The run folder as the 2-epoch run left it, at its own path (its checkpoints name their folder), and made a run
    killed before its end: its summary still "running", as SIGKILL leaves it."""
    run = base / "run"
    shutil.rmtree(run)
    shutil.copytree(base / "pristine", run)  # mtimes too
    summary = {k: v for k, v in read_summary(run).items() if k not in ("metrics", "best", "best_ckpt")}
    summary.update(status="running", parts=[{k: summary["parts"][0][k] for k in ("started_at", "host")}])
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def cut(path: Path, keep: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if keep == "half" else b"")


def why(path: Path, keep: str) -> str:
    size = path.stat().st_size
    return "empty (0 bytes)" if keep == "empty" else f"truncated ({size} bytes, the end of its zip archive is missing)"


def metrics_rows(run: Path) -> list[dict]:
    with open(run / "csv" / "metrics.csv") as file:
        return list(csv.DictReader(file))


def without_speed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "train/images_per_s"} for row in rows]


def test_a_truncated_last_ckpt_falls_back_to_the_checkpoint_with_the_most_training(base):
    run = restore(base)
    ckpts = run / "checkpoints"
    cut(ckpts / "last.ckpt", "half")
    reason = why(ckpts / "last.ckpt", "half")
    # The older file by mtime, the newer by training: the step decides.
    os.utime(ckpts / "epoch001.ckpt", (1, 1))
    result = run_cli("focalnet-train", *COMMAND, "trainer.max_epochs=3", f"hydra.run.dir={run}", "resume=auto",
                     cwd=base)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    warning = (f"resume=auto: {ckpts / 'last.ckpt'} is {reason}; resuming from "
               f"{ckpts / 'epoch001.ckpt'} (epoch 1, step 4) instead")  # fmt: skip
    assert result.stdout.count(warning) == 1
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["resumed_from"] == str(ckpts / "epoch001.ckpt")
    assert summary["warnings"] == [warning]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 6  # epoch 2 trained, last.ckpt whole
    # The epochs before the resume kept, each logged once; the earlier test row (step 4) was the resumed run's to redo.
    rows = metrics_rows(run)
    assert [int(r["epoch"]) for r in rows if r["val/loss"]] == [0, 1, 2]
    assert [int(r["step"]) for r in rows if r["test/loss"]] == [6]
    assert without_speed(rows[:4]) == without_speed(metrics_rows(base / "pristine")[:4])


def test_a_run_that_failed_on_an_empty_last_ckpt_resumes_and_loses_nothing(base):
    run = restore(base)
    ckpts = run / "checkpoints"
    cut(ckpts / "last.ckpt", "empty")
    (ckpts / "epoch001.ckpt").unlink()  # epoch000.ckpt is left: the resumed run trains epoch 1 again
    before = {p.name: p.read_bytes() for p in [*ckpts.iterdir(), run / "csv" / "metrics.csv"]}
    # Given by hand, the broken last.ckpt fails the run in one line, and the failed summary names it.
    result = run_cli("focalnet-train", *COMMAND, f"hydra.run.dir={run}", f"ckpt_path={ckpts / 'last.ckpt'}", cwd=base)
    error = f"error: ckpt_path={ckpts / 'last.ckpt'} is empty (0 bytes)"
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == error, result.stderr[-3000:]
    summary = read_summary(run)
    assert summary["status"] == "failed" and summary["bad_checkpoint"] == str(ckpts / "last.ckpt")
    assert {p.name: p.read_bytes() for p in [*ckpts.iterdir(), run / "csv" / "metrics.csv"]} == before
    # resume=auto continues it from its intact checkpoint instead of starting it over.
    result = run_cli("focalnet-train", *COMMAND, f"hydra.run.dir={run}", "resume=auto", cwd=base)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["resumed_from"] == str(ckpts / "epoch000.ckpt")
    assert summary["warnings"] == [f"resume=auto: {ckpts / 'last.ckpt'} is empty (0 bytes); resuming from "
                                   f"{ckpts / 'epoch000.ckpt'} (epoch 0, step 2) instead"]  # fmt: skip
    assert [p["status"] for p in summary["parts"]] == ["killed", "failed", "completed"]
    assert summary["wall_time_s"] == pytest.approx(sum(p["wall_time_s"] for p in summary["parts"]), abs=2e-3)
    # metrics.csv as the run that never stopped wrote it: epoch 0's rows kept, epoch 1's and the test's logged again
    # (the killed run's, from after the checkpoint, dropped), the same numbers.
    assert without_speed(metrics_rows(run)) == without_speed(metrics_rows(base / "pristine"))
    assert summary["metrics"]["test/loss"] == read_summary(base / "pristine")["metrics"]["test/loss"]


def checkpoint(path: Path, step: int, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "epoch": step // 2, "state_dict": {"w": torch.zeros(64)}}, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_resume_rule_after_a_checkpoint_failure(tmp_path):
    def job(name: str, status: str, **summary) -> Path:
        folder = tmp_path / name
        checkpoint(folder / "checkpoints" / "last.ckpt", 4)
        (folder / "summary.json").write_text(json.dumps({"status": status, **summary}))
        return folder

    # A failed run starts over, unless a checkpoint failed it: its summary says so, or (older summaries) its last.ckpt
    # does not load.
    assert resume_state(job("nan", "failed"))[0] == "scratch"
    assert resume_state(job("recorded", "failed", bad_checkpoint="/elsewhere/x.ckpt"))[0] == "resume"
    old = job("old", "failed", error="ckpt_path=... is not a readable training checkpoint ([Errno 22] ...)")
    cut(old / "checkpoints" / "last.ckpt", "half")
    assert resume_state(old)[0] == "resume"

    # Resumed: last.ckpt when it loads, without a word; else the checkpoint with the highest step, whatever the mtimes.
    cfg, warnings = OmegaConf.create({"resume": "auto", "ckpt_path": None}), []
    assert apply_resume(cfg, tmp_path / "recorded", warnings) is None
    assert cfg.ckpt_path == str(tmp_path / "recorded" / "checkpoints" / "last.ckpt") and warnings == []
    checkpoint(old / "checkpoints" / "epoch000.ckpt", 2, mtime=2_000_000_000)
    checkpoint(old / "checkpoints" / "epoch001.ckpt", 3, mtime=1_000_000_000)
    (old / "checkpoints" / "epoch002.ckpt").write_bytes(b"")
    cfg = OmegaConf.create({"resume": "auto", "ckpt_path": None})
    apply_resume(cfg, old, warnings)
    assert cfg.ckpt_path == str(old / "checkpoints" / "epoch001.ckpt") and len(warnings) == 1

    # Nothing loads: the run starts over, and says so in one line.
    broken = job("broken", "running")
    cut(broken / "checkpoints" / "last.ckpt", "empty")
    (broken / "checkpoints" / "epoch000.ckpt").write_bytes(b"PK\x03\x04 half")
    cfg, warnings = OmegaConf.create({"resume": "auto", "ckpt_path": None}), []
    assert apply_resume(cfg, broken, warnings) is None and cfg.ckpt_path is None
    assert warnings == [f"resume=auto: {broken / 'checkpoints' / 'last.ckpt'} is empty (0 bytes) and no other "
                        f"checkpoint in {broken / 'checkpoints'} loads: the run starts over"]  # fmt: skip


def test_a_killed_part_is_recorded_with_the_wall_time_up_to_its_last_write(tmp_path):
    start = 1_800_000_000
    iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")  # noqa: E731
    first = {"started_at": iso(start - 100), "finished_at": iso(start - 90), "status": "interrupted",
             "wall_time_s": 10.0, "signal": "SIGTERM"}  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps({"status": "running", "parts": [first, {"started_at": iso(start),
                                                                                               "host": "a"}]}))
    written = {"checkpoints/last.ckpt": 30, "csv/metrics.csv": 42.5, "summary.json": 0,
               ".hydra/config.yaml": 500, "train.log": 500}  # the last two: this start's own writes
    for name, after in written.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
        os.utime(tmp_path / name, (start + after, start + after))
    parts = earlier_parts(tmp_path, str(tmp_path / "checkpoints" / "last.ckpt"))
    assert parts == [first, {"started_at": iso(start), "host": "a", "status": "killed",
                             "finished_at": iso(start + 42.5), "wall_time_s": 42.5}]  # fmt: skip
    # An interrupted summary's parts as they are; none from a checkpoint of another folder, or a run that completed.
    (tmp_path / "summary.json").write_text(json.dumps({"status": "interrupted", "parts": [first]}))
    assert earlier_parts(tmp_path, str(tmp_path / "checkpoints" / "last.ckpt")) == [first]
    assert earlier_parts(tmp_path, "/elsewhere/last.ckpt") == []
    (tmp_path / "summary.json").write_text(json.dumps({"status": "completed", "parts": [first]}))
    assert earlier_parts(tmp_path, str(tmp_path / "checkpoints" / "last.ckpt")) == []


@pytest.mark.parametrize("app", ["train", "eval"])
def test_an_unreadable_checkpoint_given_by_hand_fails_in_one_line_naming_it(app, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    checkpoint(tmp_path / "half.ckpt", 4)
    cut(tmp_path / "half.ckpt", "half")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "text.ckpt").write_text("not a checkpoint\n")
    cases = {"half": why(tmp_path / "half.ckpt", "half"), "empty": "empty (0 bytes)",
             "text": "not a checkpoint (not the zip archive torch.save writes)"}  # fmt: skip
    main, extra = (train.main, [*TINY, "logger=csv"]) if app == "train" else (evaluate.main, [])
    for name, reason in cases.items():
        run = tmp_path / f"run-{name}"
        monkeypatch.setattr(sys, "argv", [f"focalnet-{app}", *extra, f"ckpt_path={tmp_path / name}.ckpt",
                                          f"hydra.run.dir={run}"])  # fmt: skip
        with pytest.raises(SystemExit) as stop:
            main()
        stderr = capsys.readouterr().err
        error = f"error: ckpt_path={tmp_path / name}.ckpt is {reason}"
        assert stop.value.code == 1 and [line for line in stderr.splitlines() if line.startswith("error")] == [error]
        assert "Traceback" not in stderr
        assert read_summary(run)["bad_checkpoint"] == f"{tmp_path / name}.ckpt"
