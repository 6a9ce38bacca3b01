"""Sweeps: grid sweeps with DDP jobs, failing jobs, the report on a real sweep, the studies in experiments/, the
Optuna and W&B searches, and the SLURM / torchrun environments."""

from __future__ import annotations

import csv
import math
import os
from importlib.metadata import entry_points
from pathlib import Path

import matplotlib.image
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import TINY, job_dir, read_summary, run_cli
from focalnet.cli import config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = Path(config_dir())
STUDIES = sorted(p.parent for p in (ROOT / "experiments").glob("*/study.yaml"))
LEVELS = [1, 2]  # the DDP sweep's jobs


def compose_cfg(*overrides: str, name: str = "train", directory: Path = CONF):
    """The config focalnet-train would compose, hydra node included; `directory` other than conf/ acts like
    --config-dir (conf/ stays on the search path)."""
    with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
        return compose(name, overrides=[f"hydra.searchpath=[file://{CONF}]", *overrides], return_hydra_config=True)


def tree(root: Path) -> set[str]:
    """Every path under root; inside a W&B folder only its run folders count (offline-run-* and W&B's logs)."""
    paths = set()
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if "wandb" in parts[:-1]:
            i = parts.index("wandb")
            parts = parts[: i + 1] + ("offline-run-*" if parts[i + 1].startswith("offline-run-") else parts[i + 1],)
        paths.add("/".join(parts))
    return paths


def wandb_run_has(job: Path, **fields: str) -> bool:
    """Whether the job's one offline W&B run records these RunRecord fields (their protobuf bytes are in the file)."""
    from wandb.proto.wandb_internal_pb2 import RunRecord

    (run_file,) = job.glob("wandb/offline-run-*/run-*.wandb")
    data = run_file.read_bytes()
    return all(RunRecord(**{k: v}).SerializeToString() in data for k, v in fields.items())


@pytest.fixture(scope="module")
def ddp_sweep_run(tmp_path_factory) -> tuple[Path, set[str]]:
    """A 2-job sweep, every job trained by 2 gloo processes, W&B offline: its folder and the tree it left there
    (before other tests add the report)."""
    cwd = tmp_path_factory.mktemp("ddp_sweep")
    result = run_cli("focalnet-train", "-m", "trainer=ddp_cpu", "model.focal_levels=1,2", *TINY,
                     "hydra.sweep.dir=sweep", cwd=cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, tree(cwd)


@pytest.fixture(scope="module")
def ddp_sweep(ddp_sweep_run) -> Path:
    return ddp_sweep_run[0]


def test_ddp_sweep_jobs(ddp_sweep_run):
    ddp_sweep, found = ddp_sweep_run
    # Nothing but the 2 job folders: Lightning's second rank composed its job's saved config in its job's folder
    # (a rank that saw the sweep's argv would have started a sweep of its own, with folders of its own).
    job_files = {".hydra", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "summary.json",
                 "train.log", "train_ddp_process_1.log", "checkpoints", "checkpoints/epoch000.ckpt",
                 "checkpoints/last.ckpt", ".lock", "wandb",
                 "wandb/offline-run-*", "wandb/latest-run", "wandb/debug.log",
                 "wandb/debug-internal.log"}
    expected = {"wandb-home", "sweep", "sweep/multirun.yaml"}
    jobs = [f"sweep/{job_dir(ddp_sweep / 'sweep', num).name}" for num in range(len(LEVELS))]
    if read_summary(ddp_sweep / jobs[0])["git"]["dirty"]:
        job_files.add("git.diff")  # the uncommitted changes the jobs ran with
    expected |= {f"{job}/{f}" for job in jobs for f in job_files} | set(jobs)
    assert found == expected

    for num, levels in enumerate(LEVELS):
        job = job_dir(ddp_sweep / "sweep", num)
        s = read_summary(job)
        assert s["status"] == "completed" and s["error"] is None and s["job_num"] == num
        assert s["overrides"]["model.focal_levels"] == levels
        assert s["run_dir"] == str(job) and s["sweep_dir"] == str(ddp_sweep / "sweep")
        assert s["wandb"] == {"project": "focalnet", "group": "sweep", "mode": "offline"}
        assert 0 < s["time_to_first_step_s"] < s["wall_time_s"]
        assert 0 <= s["metrics"]["test/acc_top1"] <= 1
        # Both ranks joined this job, and the one W&B run of the job is in the sweep's group, named by its overrides.
        assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (job / "train_ddp_process_1.log").read_text()
        assert wandb_run_has(job, run_group="sweep", display_name=s["override_string"], job_type="train")


@pytest.mark.precision
def test_ddp_metrics_are_synced(ddp_sweep):
    """Each rank tested one batch of 64; the logged test metrics are those of all 128 images, i.e. what one process
    gets from the same checkpoint on the first two batches."""
    import lightning as L

    from focalnet.run.module import ClassificationModule

    job = job_dir(ddp_sweep / "sweep", 0)
    summary = read_summary(job)
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    model = instantiate(cfg.model, _convert_="all")
    module = ClassificationModule.load_from_checkpoint(summary["best_ckpt"], model=model, map_location="cpu")
    # Like with like: the precision the sweep ran in (precision=auto is bf16-mixed on a CPU with native bf16).
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, limit_test_batches=2, enable_progress_bar=False,
                        enable_model_summary=False, precision=summary["precision"])
    (metrics,) = trainer.test(module, datamodule=instantiate(cfg.data, _convert_="all"), verbose=False)
    assert summary["metrics"]["test/acc_top1"] == pytest.approx(metrics["test/acc_top1"], abs=1e-6)
    assert summary["metrics"]["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)


def test_report_on_ddp_sweep(ddp_sweep, monkeypatch, capsys):
    from focalnet.studies.report import main

    monkeypatch.chdir(ddp_sweep)
    for var, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": "wandb-home"}.items():
        monkeypatch.setenv(var, value)
    main(["sweep", "--out", "report"])

    with open(ddp_sweep / "report" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(LEVELS)
    for row in rows:
        s = read_summary(Path(row["run_dir"]))
        assert row["status"] == "completed" and int(row["job_num"]) == s["job_num"]
        for key in ("params", "flops", "wall_time_s", "time_to_first_step_s", "train_images_per_s"):
            assert float(row[key]) == s[key]
        assert float(row["test/acc_top1"]) == s["metrics"]["test/acc_top1"]
        assert float(row["val/acc_top1"]) == s["metrics"]["val/acc_top1"]
        assert int(row["model.focal_levels"]) == s["overrides"]["model.focal_levels"]

    md = (ddp_sweep / "report" / "results.md").read_text()
    assert "jobs: 2, completed: 2, failed: 0" in md and "`trainer=ddp_cpu`" in md  # fixed overrides: one line
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model.focal_levels | params |") and len(table) == 1 + len(LEVELS)
    # curves.png from the jobs' offline W&B runs (they logged no CSV), read back with wandb's reader.
    names = {"acc_vs_model.focal_levels.png", "acc_vs_flops.png", "curves.png"}
    assert {p.name for p in (ddp_sweep / "report").glob("*.png")} == names
    for name in names:
        assert matplotlib.image.imread(ddp_sweep / "report" / name).shape[2] in (3, 4)

    # The jobs logged to W&B, so the report did too: one more offline run, in the sweep's group.
    (report_run,) = (ddp_sweep / "sweep" / "wandb").glob("offline-run-*")
    assert wandb_run_has(ddp_sweep / "sweep", run_group="sweep", job_type="report")


def test_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    # fail_fast is read per job, so one sweep shows both: with false the failure (an even kernel) is recorded and
    # the next job runs; with true the same failure ends the sweep, and job 3 never starts.
    result = run_cli("focalnet-train", "-m", "fail_fast=false,true", "model.focal_kernel=4,3", *TINY, "logger=none",
                     "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 1
    failed, done, stopped = (read_summary(job_dir(tmp_path / "sweep", num)) for num in range(3))
    assert failed["status"] == "failed" and "focal_kernel=4" in failed["error"] and "\n" not in failed["error"]
    assert done["status"] == "completed" and done["metrics"]["test/acc_top1"] >= 0
    assert stopped["status"] == "failed" and stopped["error"] == failed["error"]
    assert not list((tmp_path / "sweep").glob("3_*"))
    assert result.stderr.count(f"error: {failed['error']}") == 2

    from focalnet.studies.report import main

    main([str(tmp_path / "sweep")])
    with open(tmp_path / "sweep" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model.focal_kernel"], r["status"], r["error"]) for r in rows] == [
        ("4", "failed", failed["error"]), ("3", "completed", ""), ("4", "failed", failed["error"])]
    assert failed["error"] in (tmp_path / "sweep" / "results.md").read_text().split("## Failed jobs")[1]


def test_studies_compose():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert {p.name for p in STUDIES} == {"focal_levels", "focal_kernel", "depth", "gate_act", "global_context",
                                         "normalize_modulator", "conv_embed", "interaction", "context", "gates",
                                         "replication"}
    for study in STUDIES:
        cfg = compose_cfg(name="study", directory=study)
        params = dict(cfg.hydra.sweeper.params)
        assert params.pop("seed") == "0,1,2", study.name
        ((key, values),) = params.items()
        assert cfg.tags == ["ablation", study.name] and cfg.logger.wandb.group == f"ablation-{study.name}"
        assert cfg.hydra.sweep.dir.startswith(f"outputs/ablation/{study.name}/")
        assert cfg.data._target_.endswith("DigitsDataModule") and cfg.trainer.max_epochs == 15
        # Side by side: 1.9x the jobs per hour of one after another on a 2-core CPU (docs/performance.md).
        assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2
        assert set(cfg.logger) == {"wandb", "csv"}  # csv: the per-epoch curves of the report
        harder = compose_cfg("ablation=fashion_mnist", name="study", directory=study)
        assert harder.data._target_.endswith("FashionMNISTDataModule") and harder.data.root.endswith("fashion-mnist")
        assert harder.trainer.max_epochs == 8 and harder.hydra.sweeper.params == cfg.hydra.sweeper.params
        assert harder.data.augment.random_crop is None and harder.data.augment.hflip == 0  # underfits: no augmentation
        # Every point of the study is a valid override and builds its model (the model checks its arguments).
        (sweep,) = OverridesParser.create().parse_overrides([f"{key}={values}"])
        points = list(sweep.sweep_iterator())
        if key in cfg.hydra.runtime.choices:  # rows of several keys: a config group of the study's folder
            for value in points:
                row = compose_cfg(f"{key}={value}", name="study", directory=study)
                assert row.hydra.runtime.choices[key] == value
                assert instantiate(row.model, _convert_="all").num_classes == 10
            continue
        assert len(points) >= 2 and OmegaConf.select(compose_cfg(f"{key}={points[-1]}", name="study",
                                                                 directory=study), key) == points[-1]
        for value in points:
            OmegaConf.update(cfg, key, value)
            assert instantiate(cfg.model, _convert_="all").num_classes == 10


def test_a_study_runs_with_csv_logging_alone(tmp_path):
    # study_common sets logger.wandb.group; with logger=csv that leaves a W&B node without _target_, not a logger.
    result = run_cli("focalnet-train", "--config-dir", str(ROOT / "experiments" / "gates"), "--config-name", "study",
                     "logger=csv", f"hydra.run.dir={tmp_path / 'run'}", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(tmp_path / "run")
    assert summary["status"] == "completed" and "wandb" not in summary
    assert (tmp_path / "run" / "csv" / "metrics.csv").is_file() and not (tmp_path / "run" / "wandb").exists()


def test_wandb_sweep_file():
    sweep = yaml.safe_load((ROOT / "experiments" / "wandb_sweep.yaml").read_text())
    (program,) = entry_points(group="console_scripts", name=sweep["program"])
    assert program.value == "focalnet.run.train:main" and sweep["method"] == "bayes"
    assert sweep["command"] == ["${env}", "${program}", "${args_no_hyphens}"]
    assert sweep["metric"] == {"name": "val/acc_top1", "goal": "maximize"}
    # One sample of every parameter, passed the way the agent passes it, is a real key of the train config.
    sample = {}
    for key, spec in sweep["parameters"].items():
        value = spec["value"] if "value" in spec else spec["values"][0] if "values" in spec else spec["max"]
        assert isinstance(value, (bool, int, float, str)), f"{key}: {value!r}"  # 1e-4 in YAML would be a string
        sample[key] = value
    cfg = compose_cfg(*(f"{k}={v}" for k, v in sample.items()))
    for key, value in sample.items():
        assert OmegaConf.select(cfg, key) == value, key
    assert cfg.logger.wandb.offline is False  # the agent's runs log online, into the sweep


def test_optuna_search(tmp_path):
    pytest.importorskip("optuna", reason="no optuna (extra: optuna)")
    cfg = compose_cfg("hparams_search=optuna")
    assert cfg.hydra.sweeper._target_.endswith("FocalnetOptunaSweeper") and cfg.hydra.sweeper.direction == "maximize"
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.optimized_metric == "val/acc_top1"
    for key in cfg.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key

    # Two trials: each a job folder with its summary; Optuna got each job's metric as its value.
    result = run_cli("focalnet-train", "hparams_search=optuna", "hydra.sweeper.n_trials=2", *TINY, "logger=none",
                     "hydra.sweep.dir=search", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    values = [read_summary(tmp_path / "search" / str(n))["metrics"]["val/acc_top1"] for n in range(2)]  # by trial
    best = OmegaConf.load(tmp_path / "search" / "optimization_results.yaml")
    assert math.isclose(best.best_value, max(values))
    assert set(best.best_params) == {"optim.optimizer.lr", "optim.optimizer.weight_decay", "model.drop_path_rate"}
    # The report draws Optuna's own figures from the study, importances included (two trials completed).
    report = run_cli("focalnet-report", "search", "--no-wandb", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    for figure in ("optimization_history", "intermediate_values", "param_importances"):
        assert (tmp_path / "search" / f"{figure}.png").stat().st_size > 1000, figure


def test_slurm_launcher_writes_one_task_per_gpu(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit", reason="no hydra-submitit-launcher (extra: slurm)")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    # A login node as submitit knows one: srun on the PATH.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    cfg = compose_cfg("hydra/launcher=slurm", "trainer=multinode", "hydra.launcher.gpus_per_node=4",
                      "hydra.launcher.nodes=2", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    # The real launcher, stopped where it would submit: the sbatch script it would write for every sweep point.
    executors = []
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", lambda self, *args: executors.append(self) or [])
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    launcher.launch([["model.focal_levels=2"], ["model.focal_levels=3"]], initial_job_idx=0)
    script = executors[0]._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--signal=USR1@120"):
        assert f"#SBATCH {line}\n" in script, line


def trainer_for(*overrides: str):
    from focalnet.run.build import resolve_trainer_precision

    cfg = compose_cfg(*overrides, "trainer.default_root_dir=.")
    resolve_trainer_precision(cfg)  # as the app does: precision=auto becomes what this machine runs
    return instantiate(cfg.trainer, logger=False, enable_progress_bar=False)


def test_cluster_environments(monkeypatch):
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment, TorchElasticEnvironment

    from focalnet.run.job import launches_processes

    # On one machine Lightning starts the other ranks (and train.py points them at the job's folder).
    trainer = trainer_for("trainer=ddp_cpu")
    assert isinstance(trainer.strategy.cluster_environment, LightningEnvironment) and launches_processes(trainer)

    # A SLURM task (what srun or submitit starts, one per GPU): sizes from SLURM, auto-requeue on, no launching.
    slurm = {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "train",
             "SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "SLURM_NODELIST": "node1,node2"}
    with monkeypatch.context() as env:
        for k, v in slurm.items():
            env.setenv(k, v)
        trainer = trainer_for("trainer=multinode", "trainer.accelerator=cpu", "trainer.precision=32-true")
        environment = trainer.strategy.cluster_environment
        assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue
        assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (2, 2, 4)
        assert not launches_processes(trainer)

    # torchrun --nproc_per_node=2 $(which focalnet-train) trainer=ddp ...: torchrun started the ranks.
    torchrun = {"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0", "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with monkeypatch.context() as env:
        for k, v in torchrun.items():
            env.setenv(k, v)
        trainer = trainer_for("trainer=ddp_cpu")
        assert isinstance(trainer.strategy.cluster_environment, TorchElasticEnvironment)
        assert trainer.world_size == 2 and not launches_processes(trainer)
