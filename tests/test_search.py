"""Optuna searches (focalnet.search): pruned trials recorded as pruned, two trials in flight with no idle slot, one
journal study shared by two commands with n_trials exact, optuna-dashboard on it, resume after SIGTERM (in process and
with two workers), max_failure_rate, DDP trials, the search space, the report, bad input. (A search on SLURM:
tests/test_slurm.py.)"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import BIN, TINY, read_summary, run_cli
from test_train import wandb_records

optuna = pytest.importorskip("optuna", reason="no optuna (extra: optuna)")

# lr is 0.005 or 1e-9 (no training at all). The sampler (TPE, seed 0; its first trials are random) draws 1e-9, 0.005,
# 1e-9, 1e-9, 0.005 for trials 0-4. Any trial below 20% after an epoch stops (Optuna's ThresholdPruner): the 1e-9
# trials after their first (at chance), never the 0.005 ones (37, 66, 78% on the way). Unlike the median rule this
# does not depend on which trials ended first, so it holds with trials side by side. fp32 on every host.
SEARCH = (
    "hparams_search=optuna",
    "search.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 0.2}",
    "optim.optimizer.lr=choice(0.005,1e-9)",
    "optim.optimizer.weight_decay=0.05",
    "model.drop_path_rate=0",
    "optim.warmup_epochs=0.5",
    "trainer.max_epochs=3",
    "trainer.limit_test_batches=1",
    "trainer.precision=32-true",
    "data.batch_size=16",
    "model.hidden_size=32",
    "model.num_layers=2",
    "callbacks.progress_bar=null",
)
State = optuna.trial.TrialState


def load_study(sweep: Path):
    from focalnet.search.storage import load_study

    return load_study(str(sweep / "optuna.journal"), "focalnet")


def started_while_others_ran(summaries: list[dict]) -> list[int]:
    """The trials that started after an earlier trial had ended while another earlier one still ran: a slot refilled
    at once. A batch sweeper has none (each batch starts once the whole batch before it has ended)."""
    return [k for k, s in enumerate(summaries)
            if any(e["finished_at"] <= s["started_at"] for e in summaries[:k])
            and any(s["started_at"] < e["finished_at"] for e in summaries[:k])]  # fmt: skip


def files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file of a trial's folder, .hydra/ included: a finished trial is not launched again."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def test_two_workers_keep_their_slots_busy_and_bad_trials_are_pruned_and_reported(tmp_path):
    sweep = tmp_path / "search"
    result = run_cli("focalnet-train", *SEARCH, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
                     "hydra/launcher=parallel", f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [read_summary(sweep / str(n)) for n in range(3)]  # a trial's folder is its number
    assert [s["status"] for s in summaries] == ["pruned", "completed", "pruned"]
    assert [s["trial"] for s in summaries] == [0, 1, 2]
    assert [s["overrides"]["optim.optimizer.lr"] for s in summaries] == [1e-9, 0.005, 1e-9]
    assert [s.get("pruned_at_epoch") for s in summaries] == [0, None, 0] and not summaries[2]["error"]
    # No idle slot: trial 2 started when trial 0 was pruned, while trial 1 still trained (a batch sweeper waits for
    # 1), in the other worker process, each process writing into the one study.
    assert summaries[0]["finished_at"] <= summaries[2]["started_at"] < summaries[1]["finished_at"]
    assert summaries[1]["pid"] != summaries[2]["pid"] and started_while_others_ran(summaries) == [2]
    study = load_study(sweep)
    assert [t.state for t in study.trials] == [State.PRUNED, State.COMPLETE, State.PRUNED]
    steps = [sorted(t.intermediate_values) for t in study.trials]  # a step: the epochs trained
    assert steps == [[1], [1, 2, 3], [1]]
    assert study.trials[1].value == summaries[1]["metrics"]["val/acc_top1"] > 0.2
    # A pruned trial keeps its checkpoint and its curve, skips the test, and its W&B run says how it ended.
    for n in (0, 2):
        checkpoint = torch.load(sweep / str(n) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        whole = torch.load(sweep / "1" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert checkpoint["epoch"] == 0 and 3 * checkpoint["global_step"] == whole["global_step"]
        assert "val/acc_top1" in summaries[n]["metrics"] and "test/acc_top1" not in summaries[n]["metrics"]
    for n, state in ((1, "complete"), (2, "pruned")):
        updates = [r["summary"]["update"] for r in wandb_records(sweep / str(n)) if r.get("type") == "summary"]
        assert {"trial": n, "trial_state": state} in updates, updates
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_trial"] == 1 and best["trials"]["complete"] == 1 and best["trials"]["pruned"] == 2

    report = run_cli("focalnet-report", str(sweep), "--no-wandb", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    markdown = (sweep / "results.md").read_text()
    assert "jobs: 3, completed: 1, failed: 0, pruned: 2" in markdown
    trials = markdown.split("## Trials")[1].strip().splitlines()
    assert trials[0] == "| trial | optim.optimizer.lr | state | epochs trained | val top-1 (%) | best |"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in trials[2:5]]
    assert [(r[0], r[1], r[2], r[3], r[5]) for r in rows] == [
        ("0", "1e-09", "pruned", "1 of 3", ""), ("1", "0.005", "complete", "3", "best"),
        ("2", "1e-09", "pruned", "1 of 3", "")]  # fmt: skip
    assert [float(r[4]) for r in rows] == [round(100 * s["metrics"]["val/acc_top1"], 2) for s in summaries]
    assert "Epochs trained in all: 5 of the 9 the trials would have trained whole (44% saved by pruning)" in markdown
    assert "Trial slots busy: " in markdown
    with open(sweep / "results.csv", newline="") as f:
        jobs = list(csv.DictReader(f))
    assert [(j["trial"], j["status"], j["pruned_at_epoch"]) for j in jobs] == [
        ("0", "pruned", "0"), ("1", "completed", ""), ("2", "pruned", "0")]  # fmt: skip
    assert "search.trial" not in jobs[0]  # where a trial sits in its search is not a setting
    for figure in ("search", "optimization_history", "intermediate_values"):  # importances: test_sweeps.py
        assert (sweep / f"{figure}.png").stat().st_size > 1000, figure
    assert not (sweep / "param_importances.png").exists()  # Optuna fits them once two trials have completed


def test_the_search_space_is_hydras_sweep_syntax_as_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from focalnet.search.space import parse_space

    params = {"optim.optimizer.lr": "tag(log, interval(1e-4, 1e-2))", "model.drop_path_rate": "interval(0, 0.3)",
              "model.num_layers": "range(2, 8, 2)", "model.focal_levels": "tag(log, range(1, 5))",
              "optim.optimizer.weight_decay": "range(0.0, 0.3, 0.1)", "model.hidden_size": "choice(16, 32)"}
    space, fixed = parse_space(params, ["model.focal_kernel=3,5", "model.drop_path_rate=0.1", "seed=1"])
    assert space == {
        "optim.optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "model.num_layers": IntDistribution(2, 6, step=2),  # Hydra's range leaves out its end
        "model.focal_levels": IntDistribution(1, 4, log=True),
        "optim.optimizer.weight_decay": FloatDistribution(0.0, 0.2, step=0.1),
        "model.hidden_size": CategoricalDistribution([16, 32]),
        "model.focal_kernel": CategoricalDistribution([3, 5]),  # the command line adds to the space
    }  # fmt: skip
    assert fixed == {"model.drop_path_rate": "0.1", "seed": "1"}  # and a plain value takes a key out of it
    with pytest.raises(ValueError, match=r"^model.num_layers=range\(4, 2, 1\) holds no value$"):
        parse_space({"model.num_layers": "range(4, 2)"}, [])


def test_a_store_is_a_file_or_a_database_server(tmp_path):
    """A journal path and SQLite are files (made absolute, locked beside, a missing one an error, not a new empty
    store); any other URL is a database server, passed through and not locked."""
    from focalnet.search import storage

    journal, sqlite = tmp_path / "a/optuna.journal", f"sqlite:///{tmp_path}/b/optuna.db"
    assert [storage.file_of(s) for s in (str(journal), sqlite, "postgresql://h/db")] == [
        journal, tmp_path / "b/optuna.db", None]
    assert storage.prepare(sqlite) == sqlite and (tmp_path / "b").is_dir()
    assert storage.prepare("postgresql://h/db") == "postgresql://h/db"
    with pytest.raises(FileNotFoundError, match=f"^{journal}: no such file$"):
        storage.load_study(str(journal), "s")
    with storage.ask_lock(storage.prepare(str(journal))):
        assert Path(f"{journal}.ask.lock").is_symlink()  # Optuna's symlink lock beside the store
    assert not Path(f"{journal}.ask.lock").is_symlink()
    with storage.ask_lock("postgresql://h/db"):
        pass


@pytest.fixture(scope="module")
def shared_sweep(tmp_path_factory) -> tuple[Path, list[int]]:
    """Two sweep commands started at once on one study (one journal file): 4 trials between them, 1 epoch each.
    Returns the sweep folder and the two commands' pids."""
    tmp_path = tmp_path_factory.mktemp("shared")
    sweep = tmp_path / "search"
    command = [str(BIN / "focalnet-train"), *SEARCH, "trainer.max_epochs=1", "hydra.sweeper.n_trials=4",
               "logger=csv", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    env = dict(os.environ, WANDB_MODE="offline")
    processes = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]  # fmt: skip
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    return sweep, [p.pid for p in processes]


def test_two_commands_share_one_journal_study_with_no_trial_lost_or_run_twice(shared_sweep):
    sweep, pids = shared_sweep
    study = load_study(sweep)
    # Exactly n_trials in the study, though each command asked for up to 4 (the ask lock), each run once, in its folder.
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    # Each command's sampler draws its own sequence (the same seed: the same draws), so which trial drew what depends
    # on who asked first; how each ended follows from what it drew.
    lrs = [t.params["optim.optimizer.lr"] for t in study.trials]
    assert [t.state for t in study.trials] == [State.PRUNED if lr == 1e-9 else State.COMPLETE for lr in lrs]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    summaries = [read_summary(sweep / str(n)) for n in range(4)]
    assert [s["trial"] for s in summaries] == [0, 1, 2, 3]
    assert [len(s["parts"]) for s in summaries] == [1, 1, 1, 1]  # no trial started twice
    assert {s["pid"] for s in summaries} == set(pids)  # both commands ran trials of the one study
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    counts = {"running": 0, "complete": lrs.count(0.005), "pruned": lrs.count(1e-9), "fail": 0, "waiting": 0}
    assert best["trials"] == counts


def test_optuna_dashboard_serves_a_finished_sweeps_study(shared_sweep):
    import json
    import socket
    import urllib.request

    sweep, _ = shared_sweep
    with socket.socket() as probe:  # a free port for the server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(BIN / "optuna-dashboard"), str(sweep / "optuna.journal"), "--port", str(port),
                               "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline, studies = time.monotonic() + 60, None
        while studies is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    studies = json.load(answer)["study_summaries"]
            except OSError:
                time.sleep(0.2)
        assert studies is not None, server.stderr.read() if server.poll() is not None else "no answer in 60 s"
        (summary,) = studies
        assert summary["study_name"] == "focalnet"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=10) as answer:
            study = json.load(answer)
        trials = sorted(study["trials"], key=lambda t: t["number"])
        stored = load_study(sweep).trials
        assert [(t["number"], t["state"]) for t in trials] == [(t.number, t.state.name.capitalize()) for t in stored]
        assert [[p["name"] for p in t["params"]] for t in trials] == [["optim.optimizer.lr"]] * 4
        assert [len(t["intermediate_values"]) for t in trials] == [len(t.intermediate_values) for t in stored]
        assert [t.get("values") for t in trials] == [t.values for t in stored]  # a pruned trial's: its last epoch's
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_search_stopped_by_sigterm_resumes_without_running_a_trial_twice(tmp_path):
    sweep = tmp_path / "search"
    command = [*SEARCH, "hydra.sweeper.n_trials=2", "logger=csv", f"hydra.sweep.dir={sweep}"]
    env = dict(os.environ, WANDB_MODE="offline")
    env.pop("HYDRA_FULL_ERROR", None)
    process = subprocess.Popen([str(BIN / "focalnet-train"), *command], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (sweep / "1" / "checkpoints" / "last.ckpt").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # trial 1 (lr 0.005) in its second epoch; trial 0 pruned
    assert process.wait(timeout=120) == 143
    assert [t.state for t in load_study(sweep).trials] == [State.PRUNED, State.RUNNING]
    assert read_summary(sweep / "1")["status"] == "interrupted"
    before = files(sweep / "0")

    result = run_cli("focalnet-train", *command, "resume=auto", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 trial(s) so far, 1 left running continue first" in result.stdout + result.stderr
    study = load_study(sweep)
    assert [t.state for t in study.trials] == [State.PRUNED, State.COMPLETE]  # no third trial
    assert files(sweep / "0") == before  # pruned: not a byte touched
    resumed = read_summary(sweep / "1")
    assert resumed["status"] == "completed"
    assert resumed["resumed_from"] == str(sweep / "1" / "checkpoints" / "last.ckpt")
    assert [p["status"] for p in resumed["parts"]] == ["interrupted", "completed"]
    assert sorted(study.trials[1].intermediate_values) == [1, 2, 3]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]


def test_a_search_of_two_workers_stopped_by_sigterm_resumes(tmp_path):
    # The signal reaches the trials in flight (the workers' pids in their summaries): each saves what it has, and the
    # same command with resume=auto continues them before it asks for the rest.
    sweep = tmp_path / "search"
    command = [*SEARCH, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2", "hydra/launcher=parallel",
               "logger=csv", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    env = dict(os.environ, WANDB_MODE="offline")
    process = subprocess.Popen([str(BIN / "focalnet-train"), *command], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    while not ((sweep / "1" / "checkpoints" / "last.ckpt").is_file() and (sweep / "2").is_dir()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # trial 0 pruned, 1 (lr 0.005) in its second epoch, 2 started in 0's slot
    assert process.wait(timeout=120) == 143
    states = [t.state for t in load_study(sweep).trials]
    assert states in ([State.PRUNED, State.RUNNING, State.RUNNING], [State.PRUNED, State.RUNNING, State.PRUNED])
    stopped = read_summary(sweep / "1")
    assert stopped["status"] == "interrupted", stopped

    # Resumed here one trial at a time (any launcher continues a study).
    result = run_cli("focalnet-train", *command, "hydra/launcher=basic", "hydra.sweeper.n_jobs=1", "resume=auto",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(sweep)
    assert [t.state for t in study.trials] == [State.PRUNED, State.COMPLETE, State.PRUNED]
    resumed = read_summary(sweep / "1")
    assert [p["status"] for p in resumed["parts"]] == ["interrupted", "completed"]
    assert resumed["resumed_from"] == str(sweep / "1" / "checkpoints" / "last.ckpt")
    assert sorted(study.trials[1].intermediate_values) == [1, 2, 3]


def test_a_pruned_ddp_trial_stops_on_every_rank(tmp_path):
    # Any trial below 50% after its first epoch stops (Optuna's ThresholdPruner): this one, after 2 batches.
    sweep = tmp_path / "search"
    result = run_cli("focalnet-train", "hparams_search=optuna", "hydra.sweeper.n_trials=1", "trainer=ddp_cpu",
                     "+search.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 0.5}", *TINY,
                     "trainer.max_epochs=3", "trainer.precision=32-true", "logger=csv", f"hydra.sweep.dir={sweep}",
                     cwd=tmp_path, timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(sweep / "0")
    assert summary["status"] == "pruned" and summary["pruned_at_epoch"] == 0 and summary["world_size"] == 2
    # Both ranks stopped after epoch 0: had one trained on, the other's next collective would hang or fail the run.
    checkpoint = torch.load(sweep / "0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 2
    (trial,) = load_study(sweep).trials
    assert trial.state == State.PRUNED and list(trial.intermediate_values) == [1]  # rank 0 alone reported


@pytest.mark.parametrize(
    ("spec", "metric", "error"),
    [
        ({"_target_": "optuna.pruners.Nope"}, "val/acc_top1",
         "search.pruner._target_=optuna.pruners.Nope: no such class (an Optuna pruner, e.g. "
         "optuna.pruners.MedianPruner)"),
        ({"_target_": "torch.nn.Identity"}, "val/acc_top1",
         "search.pruner._target_=torch.nn.Identity is not an Optuna pruner (optuna.pruners.*)"),
        ({"_target_": "optuna.pruners.MedianPruner", "nope": 1}, "val/acc_top1",
         "search.pruner: optuna.pruners.MedianPruner cannot be made (MedianPruner.__init__() got an unexpected keyword "
         "argument 'nope')"),
        ({"_target_": "optuna.pruners.MedianPruner"}, "train/loss",
         "optimized_metric=train/loss: a pruner judges a metric reported after every validation, so it must be a val/ "
         "metric (e.g. val/acc_top1)"),
        ({"_target_": "optuna.pruners.MedianPruner"}, None,
         "optimized_metric=null: a pruner judges a metric reported after every validation, so it must be a val/ "
         "metric (e.g. val/acc_top1)"),
    ],
)  # fmt: skip
def test_a_bad_pruner_is_named_in_one_line(spec, metric, error):
    from omegaconf import OmegaConf

    from focalnet.search.sweeper import make_pruner

    with pytest.raises(ValueError) as raised:
        make_pruner(OmegaConf.create(spec), metric)
    assert str(raised.value) == error


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (["search.pruner._target_=optuna.pruners.Nope"],  # as above, in a search: before any trial
         "search.pruner._target_=optuna.pruners.Nope: no such class (an Optuna pruner, e.g. "
         "optuna.pruners.MedianPruner)"),
        (["hydra.sweeper.storage=sqlite:////proc/nowhere/optuna.db"],
         "hydra.sweeper.storage=sqlite:////proc/nowhere/optuna.db: its folder cannot be made (No such file or "
         "directory)"),
        (["hydra.sweeper.storage=/proc/nowhere/optuna.journal"],
         "hydra.sweeper.storage=/proc/nowhere/optuna.journal: its folder cannot be made (No such file or directory)"),
        (["hydra.sweeper.n_jobs=2"],
         "hydra.sweeper.n_jobs=2 runs trials side by side, which takes hydra/launcher=parallel (this machine) or "
         "slurm/slurm_cpu; the basic launcher runs one job at a time in this process"),
    ],
)  # fmt: skip
def test_bad_search_input_fails_in_one_line(tmp_path, overrides, error):
    result = run_cli("focalnet-train", "hparams_search=asha", "hydra.sweeper.n_trials=1", *TINY, "logger=none",
                     *overrides, "hydra.sweep.dir=search", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [f"error: {error}"]
    assert not [p for p in (tmp_path / "search").glob("*") if p.is_dir()]  # refused before any trial


@pytest.mark.parametrize(
    ("search", "override", "error"),
    [
        ("optuna", "hydra.sweeper.n_trials=-1", "hydra.sweeper.n_trials=-1 must be an integer >= 1"),
        ("asha", "search.pruner=foo",
         "search.pruner='foo' must be null or {_target_: optuna.pruners.<name>, ...}, <name> one of MedianPruner, "
         "PercentilePruner, SuccessiveHalvingPruner, HyperbandPruner, WilcoxonPruner, ThresholdPruner, "
         "PatientPruner, NopPruner (hparams_search=median, asha, hyperband and wilcoxon set one)"),
    ],
)  # fmt: skip
def test_a_bad_search_setting_is_refused_before_the_study_is_made(tmp_path, search, override, error):
    result = run_cli("focalnet-train", f"hparams_search={search}", override, *TINY, "logger=none",
                     "hydra.sweep.dir=search", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [f"error: {error}"]
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "search").iterdir()) == []  # no optuna.db, no results, no trial


def test_max_failure_rate_stops_the_launches_once_it_cannot_be_met(tmp_path):
    # A bad metric reaches the jobs: every trial fails, in one line each. Of 4 trials at most 1 may fail (0.25): the
    # second failure stops the search, which says so and exits 1; no third trial is asked for.
    result = run_cli("focalnet-train", "hparams_search=asha", "hydra.sweeper.n_trials=4",
                     "hydra.sweeper.max_failure_rate=0.25", "optimized_metric=val/nope", *TINY, "logger=none",
                     "hydra.sweep.dir=search", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    assert [t.state for t in load_study(tmp_path / "search").trials] == [State.FAIL, State.FAIL]
    trial_error = ("error: optimized_metric=val/nope is not logged at validation, so the pruner has nothing to judge "
                   "(logged: val/acc_top1, val/acc_top5, val/loss)")  # fmt: skip
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [
        trial_error, trial_error,
        "error: hydra.sweeper.max_failure_rate=0.25: 2 of 4 trials failed, so the search stopped launching"]
    best = yaml.safe_load((tmp_path / "search" / "optimization_results.yaml").read_text())
    assert best["trials"]["fail"] == 2 and "best_trial" not in best


@pytest.mark.parametrize(("search", "pruner"), [("median", "MedianPruner"), ("asha", "SuccessiveHalvingPruner"),
                                              ("hyperband", "HyperbandPruner"), ("wilcoxon", "WilcoxonPruner")])
def test_each_pruned_search_config_makes_its_pruner(search, pruner):
    from focalnet.search.sweeper import make_pruner
    from test_sweeps import compose_cfg

    cfg = compose_cfg(f"hparams_search={search}", "trainer.max_epochs=7")
    made = make_pruner(cfg.search.pruner, cfg.optimized_metric)
    assert type(made).__name__ == pruner
    if search == "hyperband":  # its max_resource is the run's epochs
        assert made._max_resource == 7


def test_a_pruned_search_config_runs_a_trial(tmp_path):
    # The pruner is made again in the job, from its resolved config.
    result = run_cli("focalnet-train", "hparams_search=asha", "hydra.sweeper.n_trials=1", *TINY, "logger=none",
                     "hydra.sweep.dir=search", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (trial,) = load_study(tmp_path / "search").trials
    assert trial.state == State.COMPLETE and list(trial.intermediate_values) == [1]
