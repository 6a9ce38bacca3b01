"""Runs survive preemption (SIGTERM), hard kills (SIGKILL), non-finite losses, W&B faults and bad input."""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import BIN, QUICK, TINY, read_summary, run_cli
from focalnet.cli import one_line
from focalnet.files import write_json
from focalnet.models import gemm
from focalnet.record import RunRecord, Status
from focalnet.run import build, train
from focalnet.run.plugins import AtomicCheckpointIO

EPOCH_BATCHES = 79  # digits' 1257 training images in batches of 16 (QUICK)


def start_and_signal(run_dir: Path, signum: int, epoch: int, batch: int, cwd: Path, *extra: str,
                     logger: str = "csv") -> subprocess.Popen:
    """Start the QUICK run with its progress bar on and send `signum` once it reports `batch` of `epoch`."""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(cwd / "wandb-home"))
    env.pop("HYDRA_FULL_ERROR", None)
    args = [*QUICK, "callbacks.progress_bar.refresh_rate=1", f"logger={logger}", f"hydra.run.dir={run_dir}", *extra]
    args.remove("callbacks.progress_bar=null")
    process = subprocess.Popen(
        [str(BIN / "focalnet-train"), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    progress = re.compile(rb"Epoch (\d+):[^|]*\|[^|]*\| (\d+)/")
    output, deadline = b"", time.monotonic() + 240
    while time.monotonic() < deadline and select.select([process.stdout], [], [], deadline - time.monotonic())[0]:
        chunk = os.read(process.stdout.fileno(), 1 << 16)
        if not chunk:
            break
        output = (output + chunk)[-4000:]
        seen = progress.findall(output)
        if seen and (int(seen[-1][0]), int(seen[-1][1])) >= (epoch, batch):
            process.send_signal(signum)
            break
    else:
        process.kill()
        pytest.fail(f"the run never reached epoch {epoch}, batch {batch}: {output[-2000:]!r}")
    process.communicate(timeout=120)
    return process


def assert_same_metrics(run_dir: Path, reference: Path) -> None:
    resumed, full = read_summary(run_dir)["metrics"], read_summary(reference)["metrics"]
    keys = [k for k in full if k.startswith(("test/", "val/", "train/")) and k != "train/images_per_s"]
    assert len(keys) >= 10
    for key in keys:
        assert resumed[key] == pytest.approx(full[key], abs=1e-6), key


def assert_logged_once(run_dir: Path, steps: range, epochs: range) -> None:
    """metrics.csv has each logged step's and each epoch's rows once: those from before the stop are kept, those
    the stopped run logged after its checkpoint replaced by the resumed run's."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r["train/loss_step"]] == list(steps)
    assert [int(r["epoch"]) for r in rows if r["val/loss"]] == list(epochs)


@pytest.mark.precision
def test_sigterm_mid_epoch_then_resume_gives_the_uninterrupted_metrics(trained_run, tmp_path, monkeypatch):
    # The machine's kernel choices (focalnet.models.gemm), as the uninterrupted run took them, in a cache of this
    # test's own: between the two parts another process changes them, as two processes measuring one shape at once
    # on a busy host did. The checkpoint's choices must win, or the resumed part computes other last bits.
    cache = tmp_path / "cache"
    (cache / "focalnet").mkdir(parents=True)
    shutil.copy(gemm._cache_file(), cache / "focalnet")
    monkeypatch.setenv("FOCALNET_CACHE", str(cache))
    run_dir = tmp_path / "run"
    process = start_and_signal(run_dir, signal.SIGTERM, epoch=0, batch=20, cwd=tmp_path)
    assert process.returncode == 143
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["last.ckpt"]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    done = checkpoint["global_step"]
    assert 20 <= done < EPOCH_BATCHES and checkpoint["epoch"] == 0  # really mid-epoch
    assert checkpoint["DigitsDataModule"] == {"epoch": 0, "batches": done}

    (cached,) = (cache / "focalnet").glob("gemm-*.json")
    flipped = {k: {"linear": "conv", "conv": "linear"}[v] for k, v in json.loads(cached.read_text()).items()}
    cached.write_text(json.dumps(flipped))

    # The same command again, resume=auto: continues from checkpoints/last.ckpt.
    args = [*QUICK, "logger=csv", f"hydra.run.dir={run_dir}", "resume=auto"]
    result = run_cli("focalnet-train", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "completed"
    assert_same_metrics(run_dir, trained_run)
    # The record of the run keeps both parts: how the first stopped, and the wall time of each.
    first, second = summary["parts"]
    assert (first["status"], first["signal"], first["step"]) == ("interrupted", "SIGTERM", done)
    assert second["status"] == "completed" and summary["requeues"] == 0 and "slurm_job_id" not in first
    assert summary["wall_time_s"] == pytest.approx(first["wall_time_s"] + second["wall_time_s"], abs=2e-3)
    assert_logged_once(run_dir, range(9, 3 * EPOCH_BATCHES, 10), range(3))  # trainer.log_every_n_steps=10


# The CLI's main() in a subprocess that sends itself SIGTERM after evaluation batch {batch} of {stage} ("validation" in
# epoch 0 or "test"), as a scheduler would, at a batch known in advance.
SIGTERM_AT = """
import os, signal, sys
from focalnet.run.module import ClassificationModule
from focalnet.run.train import main

step = getattr(ClassificationModule, "{stage}_step")
def stage_step(self, batch, batch_idx):
    out = step(self, batch, batch_idx)
    if batch_idx == {batch} and (self.trainer.testing or self.current_epoch == 0) and not self.trainer.sanity_checking:
        os.kill(os.getpid(), signal.SIGTERM)
    return out
setattr(ClassificationModule, "{stage}_step", stage_step)
sys.argv = ["focalnet-train", *sys.argv[1:]]
main()
"""


def run_signalled(stage: str, batch: int, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline")
    env.pop("HYDRA_FULL_ERROR", None)
    script = SIGTERM_AT.format(stage=stage, batch=batch)
    return subprocess.run([sys.executable, "-c", script, *overrides], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_sigterm_in_validation_then_in_the_test_phase_and_two_resumes_give_the_uninterrupted_metrics(
    trained_run, tmp_path
):
    run_dir = tmp_path / "run"
    args = [*QUICK, "logger=csv", f"hydra.run.dir={run_dir}"]
    result = run_signalled("validation", 5, *args, cwd=tmp_path)
    assert result.returncode == 143 and read_summary(run_dir)["status"] == "interrupted", result.stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == EPOCH_BATCHES and checkpoint["epoch"] == 0  # its validation cut short
    # Resumed: epoch 0's validation runs again from its first batch, epochs 1 and 2 train; then stopped while testing.
    result = run_signalled("test", 3, *args, "resume=auto", cwd=tmp_path)
    assert result.returncode == 143 and read_summary(run_dir)["status"] == "interrupted", result.stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3 * EPOCH_BATCHES  # training's end: the test phase saves nothing over it
    # Resumed again: nothing left to train; the best checkpoint is tested, the fit's metrics come from last.ckpt.
    result = run_cli("focalnet-train", *args, "resume=auto", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_summary(run_dir)["status"] == "completed"
    assert_same_metrics(run_dir, trained_run)


# As above, but the signal comes after the fit has ended and before the test starts: outside Lightning's loops, where
# its handler is not installed and the default action would kill the process with its record still "running".
SIGTERM_AFTER_FIT = """
import os, signal, sys
from focalnet.run.module import ClassificationModule
from focalnet.run.train import main

ClassificationModule.on_fit_end = lambda self: os.kill(os.getpid(), signal.SIGTERM)
sys.argv = ["focalnet-train", *sys.argv[1:]]
main()
"""


def test_sigterm_between_fit_and_test_is_recorded_and_the_run_resumes_to_its_test(tmp_path):
    run_dir, env = tmp_path / "run", dict(os.environ, WANDB_MODE="offline")
    env.pop("HYDRA_FULL_ERROR", None)
    args = [*TINY, "trainer.limit_train_batches=3", "logger=csv", f"hydra.run.dir={run_dir}"]
    result = subprocess.run([sys.executable, "-c", SIGTERM_AFTER_FIT, *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 143, result.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and summary["parts"][-1]["signal"] == "SIGTERM"
    assert not any(k.startswith("test/") for k in summary.get("metrics") or {})
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    result = run_cli("focalnet-train", *args, "resume=auto", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and "test/acc_top1" in summary["metrics"]
    assert [p["status"] for p in summary["parts"]] == ["interrupted", "completed"]


def test_sigkill_mid_epoch_leaves_a_loadable_checkpoint_and_the_run_resumes(tmp_path):
    run_dir, shorter = tmp_path / "run", ("trainer.max_epochs=2", "trainer.limit_train_batches=30")
    process = start_and_signal(run_dir, signal.SIGKILL, 1, 10, tmp_path, *shorter, logger="[wandb,csv]")
    assert process.returncode == -signal.SIGKILL
    assert read_summary(run_dir)["status"] == "running"  # nothing could record the kill
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 30  # the end of epoch 0: what epoch 1 had done is lost
    args = [*QUICK, *shorter, "logger=[wandb,csv]", f"hydra.run.dir={run_dir}", "resume=auto"]
    result = run_cli("focalnet-train", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 60
    # The killed part is recorded, its wall time up to its last write, and counted in the run's.
    killed, resumed = summary["parts"]
    assert killed["status"] == "killed" and killed["wall_time_s"] > 0 and killed["finished_at"] < resumed["started_at"]
    assert summary["wall_time_s"] == pytest.approx(killed["wall_time_s"] + resumed["wall_time_s"], abs=2e-3)
    assert_logged_once(run_dir, range(9, 60, 10), range(2))  # step 39, logged before the kill, is there once
    # The resumed run continues the killed one's W&B run: offline, a second folder with the same run id.
    first, second = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert first.name.split("-")[-1] == second.name.split("-")[-1] == summary["wandb_resumed_id"]


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("killed half-way through the write")


def test_a_checkpoint_write_cut_short_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "weights": torch.ones(1000)}, path)
    with pytest.raises(RuntimeError, match="half-way"):
        AtomicCheckpointIO().save_checkpoint({"step": 2, "weights": torch.zeros(1000), "x": Unpicklable()}, path)
    kept = torch.load(path, weights_only=True)
    assert kept["step"] == 1 and torch.equal(kept["weights"], torch.ones(1000))
    assert sorted(p.name for p in path.parent.glob("*.ckpt")) == ["last.ckpt"]


# A subprocess whose training batch `STEP` is all NaN (as a diverging run's would be): the CLI's own main().
NAN_AT_STEP = """
import sys
import torch
from focalnet.run.module import ClassificationModule
from focalnet.run.train import main

step = ClassificationModule.training_step
poisoned = []
def training_step(self, batch, batch_idx):
    if self.global_step == {step} and not poisoned:
        poisoned.append(True)
        batch = (torch.full_like(batch[0], float("nan")), batch[1])
    return step(self, batch, batch_idx)
ClassificationModule.training_step = training_step
if {deferred}:  # as on a GPU: the first non-finite step kept on the device, looked at later
    import focalnet.run.module
    focalnet.run.module.host_sync_is_costly = lambda device: True
sys.argv = ["focalnet-train", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("mode", ["stop", "skip", "stop-without-a-sync-per-step"])
def test_a_nonfinite_loss_stops_naming_the_step_and_the_last_good_checkpoint(mode, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [*TINY, "trainer.max_epochs=2", "trainer.limit_train_batches=3", "logger=csv"]
    env = dict(os.environ, WANDB_MODE="offline")
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run(
        [sys.executable, "-c", NAN_AT_STEP.format(step=4, deferred=mode != "skip" and mode != "stop"), *overrides,
         f"module.on_nonfinite={mode.split('-')[0]}",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    if mode == "stop":
        assert result.returncode == 1
        line = result.stderr.strip().splitlines()[-1]
        assert line == (
            f"error: non-finite loss (nan) at step 4 (epoch 1, batch 1); last good checkpoint: {last} "
            "(module.on_nonfinite=skip skips such batches)"
        )
        assert read_summary(run_dir)["status"] == "failed"
        assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3  # epoch 0's, untouched
    elif mode == "stop-without-a-sync-per-step":  # seen at the end of epoch 1, before its checkpoint is written
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == (
            "error: non-finite loss (nan) at step 4 (seen at step 6: on cpu the loss is checked every "
            "trainer.log_every_n_steps steps, not to wait for the device at each one); last good checkpoint: "
            f"{last} (module.on_nonfinite=skip skips such batches)"
        )
        assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3  # epoch 0's, untouched
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stderr.count("non-finite loss at step 4 (epoch 1, batch 1): batch skipped") == 1
        summary = read_summary(run_dir)
        assert summary["status"] == "completed" and all(
            v == v and abs(v) != float("inf") for v in summary["metrics"].values()
        )
        weights = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(w).all() for w in weights.values())  # the NaN batch never reached the weights


def test_wandb_with_an_invalid_key_falls_back_to_offline_and_finishes(tmp_path):
    env = dict(os.environ, WANDB_MODE="online", WANDB_API_KEY="bad", WANDB_DIR=str(tmp_path), WANDB_INIT_TIMEOUT="5")
    env.pop("HYDRA_FULL_ERROR", None)
    run_dir = tmp_path / "run"
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "focalnet-train"), *TINY, "logger.wandb.offline=false", "trainer.deterministic=true",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started < 60
    output = result.stdout + result.stderr
    assert output.count("UserWarning: W&B could not start online") == 1 and "API key" in output
    assert read_summary(run_dir)["status"] == "completed"
    (offline_run,) = run_dir.glob("wandb/offline-run-*")  # everything logged, for `wandb sync`
    assert list(offline_run.glob("run-*.wandb")) and f"wandb sync {offline_run}" in result.stdout


def test_deterministic_is_passed_to_the_trainer(tmp_path):
    """trainer.deterministic=true reaches Lightning, which turns on torch's deterministic algorithms (the W&B run
    above trains with it; tests/test_resumable_sweeps.py checks that equal seeds give equal metrics)."""
    from test_config import compose_train

    try:
        cfg = compose_train(["trainer.deterministic=true", "logger=csv"], tmp_path)
        trainer = build.build_trainer(cfg, RunRecord(status=Status.RUNNING))
        assert torch.are_deterministic_algorithms_enabled() and trainer is not None
    finally:
        torch.use_deterministic_algorithms(False)


# --- bad input ---------------------------------------------------------------------------------------------------

ANOTHER_MODEL = "another_model.ckpt"
CORRUPT = "corrupt.ckpt"
A_FILE = "a_file"
# (overrides, what the one-line error must name); {tmp} is the test's folder. Nothing is trained in any of them.
BAD_INPUT = [
    (["nope=1"], "'nope'"),
    (["model.nope=1"], "'model.nope'"),
    (["data.augment.nope=1"], "'data.augment.nope'"),
    (["model=focalnet_nope"], "model/focalnet_nope"),
    (["data=nope"], "data/nope"),
    (["trainer=nope"], "trainer/nope"),
    (["logger=nope"], "logger/nope"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc'"),
    (["data.batch_size=abc"], "data.batch_size='abc'"),
    (["data.batch_size=0"], "data.batch_size=0"),
    (["data.num_workers=-1"], "data.num_workers=-1"),
    (["seed=abc"], "seed='abc'"),
    (["test=maybe"], "test='maybe'"),
    (["model.focal_levels=-1"], "focal_levels=-1"),
    (["model.focal_kernel=4"], "focal_kernel=4"),
    (["data.image_size=30"], "model.image_size=30 is not divisible by model.patch_size=4"),  # the model's own check
    (["model.patch_size=0"], "patch_size=0"),
    (["model.drop_path_rate=2"], "drop_path_rate=2"),
    (
        ["model=focalnet_tiny_srf", "data.image_size=32", "+model.focal_levels=[2,2]"],
        "focal_levels=[2, 2] has 2 entries",
    ),
    (["model=focalnet_tiny_srf", "data.image_size=32", "model.name=focalnet_nope"], "name='focalnet_nope'"),
    (["data=cifar10", "data.root={tmp}/nowhere"], "data.root={tmp}/nowhere"),
    (["data=imagefolder", "data.root={tmp}/nowhere"], "data.root={tmp}/nowhere"),
    (["data=imagefolder"], "data.root is not set"),
    (["data.num_classes=5"], "data.num_classes=5"),
    (["data.val_fraction=1.5"], "data.val_fraction=1.5"),
    (["ckpt_path={tmp}/nowhere.ckpt"], "ckpt_path={tmp}/nowhere.ckpt"),
    ([f"ckpt_path={{tmp}}/{CORRUPT}"], f"ckpt_path={{tmp}}/{CORRUPT} is not a checkpoint (not the zip archive"),
    ([f"ckpt_path={{tmp}}/{ANOTHER_MODEL}"], f"ckpt_path={{tmp}}/{ANOTHER_MODEL} is a checkpoint of another model"),
    # A CPU host's error only: where torch sees a CUDA GPU the run is valid (tests/test_gpu.py trains there).
    *([(["trainer.accelerator=gpu"], "trainer: No supported gpu backend")] if not torch.cuda.is_available() else []),
    (["trainer.precision=bogus"], "trainer.precision='bogus' must be auto, 64-true"),
    (["trainer.limit_train_batches=-1"], "limit_train_batches"),
    (["optim.optimizer.lr=-1"], "optim.optimizer.lr=-1 must be a number > 0"),
    (["optim.optimizer._target_=torch.optim.Nope"], "optim.optimizer: Error loading 'torch.optim.Nope'"),
    (["optim.warmup_epochs=-1"], "optim.warmup_epochs=-1"),
    (["module.label_smoothing=2"], "module.label_smoothing=2"),
    (["module.on_nonfinite=nope"], "module.on_nonfinite='nope' must be stop or skip"),
    # Every group's schema (focalnet.schema): the key, the value and what is allowed.
    (["seed=-1"], "seed=-1 must be an integer in [0, 4294967295] or null"),
    (["fail_fast=1"], "fail_fast=1 must be true or false"),
    (["resume=yes"], "resume='yes' must be auto or null"),
    (["model.hidden_size=-8"], "model.hidden_size=-8 must be an integer >= 1"),
    (["model.mlp_ratio=0"], "model.mlp_ratio=0 must be a number > 0"),
    (["model.num_layers=0"], "model.num_layers=0 must be an integer >= 1"),
    (["model.gate_act=relu"], "model.gate_act='relu' must be none or sigmoid"),
    (["model.use_global_context=maybe"], "model.use_global_context='maybe' must be true or false"),
    (["model.layerscale_value=0"], "model.layerscale_value=0 must be a number > 0"),
    (["data.image_size=-32"], "data.image_size=-32 must be an integer >= 1"),
    (["data.pin_memory=2"], "data.pin_memory=2 must be true or false"),
    (["data.split_seed=-1"], "data.split_seed=-1 must be an integer in [0, 4294967295]"),
    (["data.augment.hflip=2"], "data.augment.hflip=2 must be a number in [0, 1] or null"),
    (["+data.augment.hflp=0.5"], "data.augment.hflp is not an option; known: random_resized_crop"),
    (["data.augment=fancy"], "data.augment='fancy' is not a preset"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1 must be a number >= 0 or null"),
    (["trainer.devices=0"], "trainer.devices=0 must be an integer >= 1, -1, a string"),
    (["trainer.max_epochs=-5"], "trainer.max_epochs=-5 must be an integer >= -1 or null"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 must be an integer >= 1"),
    (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch=0 must be an integer >= 1 or null"),
    (["trainer.accelerator=quantum"], "trainer.accelerator='quantum' must be auto, cpu, gpu"),
    (["trainer.deterministic=sometimes"], "trainer.deterministic='sometimes' must be true or false, warn or null"),
    (["optim.optimizer.weight_decay=-0.1"], "optim.optimizer.weight_decay=-0.1 must be a number >= 0"),
    (["optim.optimizer.betas=[0.9]"], "optim.optimizer.betas=[0.9] must be a list of 2, each a number in [0, 1)"),
    (["optim.min_lr=-1"], "optim.min_lr=-1 must be a number >= 0"),
    (["optim.layer_decay=2"], "optim.layer_decay=2 must be in (0, 1] (null or 1 turns it off)"),
    (["module.mixup_alpha=-1"], "module.mixup_alpha=-1 must be a number >= 0 (0 turns it off)"),
    (["module.max_nonfinite=0"], "module.max_nonfinite=0 must be an integer >= 1"),
    (["callbacks.model_checkpoint.mode=maximum"], "callbacks.model_checkpoint.mode='maximum' must be min or max"),
    (["callbacks.model_checkpoint.save_top_k=-2"], "callbacks.model_checkpoint.save_top_k=-2 must be an integer >= -1"),
    (["callbacks=[default,early_stopping]", "callbacks.early_stopping.patience=-1"],
     "callbacks.early_stopping.patience=-1 must be an integer >= 0"),
    (["callbacks=[default,ema]", "callbacks.ema.decay=1.5"], "callbacks.ema.decay=1.5 must be a number in (0, 1)"),
    (["logger=wandb", "logger.wandb.offline=maybe"], "logger.wandb.offline='maybe' must be true or false"),
    ([f"hydra.run.dir={{tmp}}/{A_FILE}/run"], f"Not a directory: '{{tmp}}/{A_FILE}/run'"),  # an unwritable run folder
    # Multi-process and launcher cases run as the CLI in a subprocess.
    (["-m", "hydra/launcher=nope", "SUBPROCESS"], "hydra/launcher/nope"),
    (["trainer=ddp_cpu", "hydra.output_subdir=null", "SUBPROCESS"], "hydra.output_subdir=null"),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    """A corrupt checkpoint, a checkpoint of another (wider) model, a file where a folder should be."""
    from focalnet import FocalNet

    folder = tmp_path_factory.mktemp("bad")
    (folder / CORRUPT).write_bytes(b"not a checkpoint\x00\x01")
    (folder / A_FILE).write_text("a file\n")
    model = FocalNet.build(image_size=32, patch_size=4, in_channels=1, hidden_size=48, num_layers=1, num_classes=10)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 0, "global_step": 0}, folder / ANOTHER_MODEL)
    return folder


def run_in_process(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """focalnet-train's main() in this process (3-10x faster than a subprocess for runs that fail before training)."""
    monkeypatch.setattr(sys, "argv", ["focalnet-train", *args])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    code = 0
    try:
        train.main()
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("overrides,names", BAD_INPUT, ids=[" ".join(o) for o, _ in BAD_INPUT])
def test_bad_input_fails_in_one_line_and_leaves_nothing_half_written(overrides, names, bad_files, capsys, monkeypatch):
    tmp = bad_files
    run_dir = tmp / f"run-{BAD_INPUT.index((overrides, names))}"
    args = [o.format(tmp=tmp) for o in overrides if o != "SUBPROCESS"]
    base = [o for o in TINY if not (o.startswith("model.") and any(a.startswith("model=") for a in args))]
    flags = [a for a in args if a.startswith("-")]  # Hydra's -m goes before the overrides
    args = [*flags, *base, "logger=csv", f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={run_dir}",
            *[a for a in args if a not in flags]]  # fmt: skip
    if "SUBPROCESS" in overrides:
        result = run_cli("focalnet-train", *args, cwd=tmp)
        code, stderr = result.returncode, result.stderr
    else:
        monkeypatch.chdir(tmp)
        code, stderr = run_in_process(args, capsys, monkeypatch)
    error = stderr.strip().splitlines()[-1]
    assert code == 1 and error.startswith("error: ") and names.format(tmp=tmp) in error, stderr[-3000:]
    assert "Traceback" not in stderr and [line for line in stderr.splitlines() if line.startswith("error:")] == [error]
    # Nothing half-written: no run folder at all (the config never composed), or one whose summary says "failed"
    # with that error and that holds no checkpoint, no temporary file and no logged metrics (the logger may have
    # recorded the config of the failed run).
    if run_dir.exists():
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "failed" and f"error: {summary['error']}" == error
        assert (run_dir / "error.log").read_text().startswith("Traceback")  # the whole story, for a bug report
        assert not [p for p in run_dir.rglob("*") if p.suffix in (".ckpt", ".tmp")]
        assert not (run_dir / "csv" / "metrics.csv").exists()


# --- a full disk or a failing device while a checkpoint or the summary is written ----------------------------------


def _fail_with(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_checkpoint_write_that_fails_part_way_keeps_the_previous_file(tmp_path, monkeypatch, code):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(1000)}, path)
    before = path.read_bytes()

    def save_half(obj, file):  # the disk fills after part of the file went out
        file.write(before[: len(before) // 2])
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", save_half)
    with pytest.raises(OSError) as failure:
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(1000)}, path)
    assert str(failure.value) == f"[Errno {code}] could not write {path}: {os.strerror(code)}"
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]  # whole, and no partial file left
    assert torch.load(path, weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_summary_write_that_fails_keeps_the_previous_summary(tmp_path, monkeypatch, code):
    path = tmp_path / "summary.json"
    write_json(path, {"status": "running"})
    monkeypatch.setattr(os, "fsync", _fail_with(code))  # where a network filesystem reports a full disk
    with pytest.raises(OSError) as failure:
        write_json(path, {"status": "completed"})
    assert one_line(failure.value) == f"[Errno {code}] could not write {path}: {os.strerror(code)}"
    assert read_summary(tmp_path) == {"status": "running"} and sorted(tmp_path.iterdir()) == [path]
