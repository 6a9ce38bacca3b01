"""The LightningModule's pieces, and focalnet-train / focalnet-eval end to end on digits (in subprocesses)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

import focalnet
from conftest import BIN, TINY, read_summary, run_cli
from focalnet.run.module import mix_batch, param_groups, warmup_cosine

# --- optimiser, schedule, mixing -------------------------------------------------------------------------------


def test_no_weight_decay_on_norms_biases_and_gammas():
    model = focalnet.FocalNet.build(
        image_size=16,
        patch_size=4,
        hidden_size=16,
        num_layers=2,
        num_classes=10,
        use_layerscale=True,
        use_postln_in_modulation=True,
    )
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay=0.05), lr=1e-3)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    decay, no_decay = set(by_name["decay"]["param_names"]), set(by_name["no_decay"]["param_names"])
    assert by_name["decay"]["weight_decay"] == 0.05 and by_name["no_decay"]["weight_decay"] == 0.0
    assert decay | no_decay == {n for n, _ in model.named_parameters()} and not decay & no_decay
    block = "layers.0.blocks.0"
    assert {
        f"{block}.modulation.f.weight",
        f"{block}.modulation.focal_layers.0.0.weight",
        f"{block}.mlp.fc1.weight",
        "patch_embed.proj.weight",
        "head.weight",
    } <= decay
    assert {
        f"{block}.gamma_1",
        f"{block}.gamma_2",
        f"{block}.norm1.weight",
        f"{block}.norm1.bias",
        f"{block}.modulation.ln.weight",
        f"{block}.modulation.f.bias",
        "norm.weight",
        "head.bias",
    } <= no_decay


def test_warmup_then_cosine_to_min_lr():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = warmup_cosine(optimizer, total_steps=100, warmup_steps=10, warmup_lr=1e-6, min_lr=1e-5)
    lrs = []
    for _ in range(101):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[5] == pytest.approx((1e-6 + 1e-3) / 2)  # linear warm-up
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[55] == pytest.approx((1e-3 + 1e-5) / 2)  # half way down the cosine
    assert lrs[100] == pytest.approx(1e-5)
    assert max(lrs) == pytest.approx(1e-3)


@pytest.mark.parametrize("warmup,peak", [({"warmup_steps": 5, "warmup_epochs": None}, 5),
                                          ({"warmup_epochs": 1, "warmup_steps": 5}, 10)])
def test_the_warmup_is_counted_in_steps_or_in_epochs(warmup, peak, tmp_path):
    """Two epochs of 10 steps: 5 warm-up steps peak at step 5 whatever an epoch's length; 1 warm-up epoch, set
    over the default's steps (a user's warmup_epochs=1 on the command line), at step 10."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from focalnet.run.module import ClassificationModule

    lrs = []

    class RecordLR(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    model = focalnet.FocalNet.build(image_size=8, patch_size=4, in_channels=1, hidden_size=8, num_layers=1,
                                    num_classes=2)
    optim = {"optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-3}, "warmup_lr": 0.0, "min_lr": 0.0, **warmup}
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[RecordLR()])
    trainer.fit(ClassificationModule(model, optim), DataLoader(TensorDataset(torch.randn(20, 1, 8, 8),
                                                                             torch.randint(2, (20,))), batch_size=2))
    assert len(lrs) == 20 and lrs.index(max(lrs)) == peak and max(lrs) == pytest.approx(1e-3)
    assert lrs[: peak + 1] == pytest.approx([1e-3 * step / peak for step in range(peak + 1)])  # linear from 0


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixing_makes_soft_targets_that_match_the_images(mixup, cutmix):
    torch.manual_seed(0)
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8).contiguous()  # image i is all i
    labels = torch.tensor([0, 1, 2, 3])
    mixed, targets = mix_batch(images, labels, 5, mixup, cutmix)
    assert mixed.shape == images.shape and targets.shape == (4, 5)
    assert torch.allclose(targets.sum(1), torch.ones(4))
    # Each image is its own share of itself plus the rest of its partner (the batch reversed), as the target says.
    lam = targets[0, 0]
    assert torch.allclose(mixed[0].mean(), lam * 0 + (1 - lam) * 3, atol=1e-5)
    assert torch.allclose(targets[0, 3], 1 - lam)


# --- end to end --------------------------------------------------------------------------------------------------


def wandb_records(run_dir: Path) -> list[dict]:
    """The records of the run's offline .wandb file, read back with wandb's own reader (`wandb leet inspect`)."""
    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    result = subprocess.run(
        [str(BIN / "wandb"), "leet", "inspect", "--json", str(wandb_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_gradient_clipping_trains_under_bf16_autocast_with_the_fused_optimizer(tmp_path):
    """Lightning refuses to clip gradients of an optimizer that unscales them itself (fused AdamW, our default) under
    mixed precision; the paper's recipe clips (gradient_clip_val 5), so on a bf16 host its first step failed."""
    result = run_cli("focalnet-train", *TINY, "logger=none", "trainer.precision=bf16-mixed",
                     "trainer.gradient_clip_val=1.0", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = read_summary(tmp_path / "run")
    assert summary["status"] == "completed" and summary["precision"] == "bf16-mixed"
    assert "fused: true" in (tmp_path / "run/.hydra/config.yaml").read_text()  # kept; only the step differs


@pytest.mark.precision
def test_training_learns_and_records_the_run(trained_run):
    summary = read_summary(trained_run)
    assert summary["status"] == "completed" and summary["error"] is None
    assert summary["model"] == "focalnet_card" and summary["data"] == "digits" and summary["seed"] == 0
    assert summary["metrics"]["test/acc_top1"] > 0.6  # chance is 0.1
    assert summary["metrics"]["test/acc_top5"] >= summary["metrics"]["test/acc_top1"]
    assert summary["overrides"]["trainer.max_epochs"] == 3 and summary["overrides"]["model.hidden_size"] == 32
    assert summary["params"] > 0 and summary["flops"] > 0 and summary["train_images_per_s"] > 0
    assert summary["best"]["epoch"] in (0, 1, 2) and 0 < summary["best"]["val/acc_top1"] <= 1
    assert summary["command"].startswith("focalnet-train trainer.max_epochs=3")
    assert summary["finished_at"] and summary["wall_time_s"] > 0 and "torch" in summary["versions"]
    # precision=auto (the default) resolved for this machine, and recorded as what ran.
    from focalnet.precision import resolve_precision

    assert summary["precision"] == resolve_precision("auto", "cpu") in ("32-true", "bf16-mixed")
    assert json.loads((trained_run / "summary.json").read_text())["precision"] == summary["precision"]
    # Where the numbers were made: the CPU, whether it has bf16 in hardware, the GPUs.
    machine = summary["machine"]
    assert machine["cpu"] and isinstance(machine["cpu_native_bf16"], bool) and machine["gpu_count"] >= 0
    from focalnet.precision import BF16_CPU_FLAGS, cpu_flags

    assert machine["cpu_native_bf16"] == bool(cpu_flags() & set(BF16_CPU_FLAGS))
    assert (trained_run / ".hydra" / "config.yaml").is_file()
    assert {p.name for p in (trained_run / "checkpoints").glob("*.ckpt")} == {
        "epoch000.ckpt",
        "epoch001.ckpt",
        "epoch002.ckpt",
        "last.ckpt",
    }


def test_checkpoint_optimizer_has_no_decay_on_norms(trained_run):
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    groups = {g["name"]: g for g in checkpoint["optimizer_states"][0]["param_groups"]}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    assert "model.patch_embed.norm.weight" not in groups["decay"]["param_names"]
    assert "patch_embed.norm.weight" in groups["no_decay"]["param_names"]
    assert "head.weight" in groups["decay"]["param_names"]


def test_wandb_offline_run_holds_config_and_metrics(trained_run):
    records = wandb_records(trained_run)
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    steps_with = lambda key: [h for h in history if key in h]  # noqa: E731
    assert len(steps_with("val/acc_top1")) == 3  # one per epoch
    assert len(steps_with("test/acc_top1")) == 1
    assert len(steps_with("train/images_per_s")) == 3
    assert steps_with("lr-AdamW/decay")
    summary = read_summary(trained_run)
    assert steps_with("test/acc_top1")[0]["test/acc_top1"] == pytest.approx(summary["metrics"]["test/acc_top1"])
    config = json.dumps([r for r in records if r["type"] == "config"])
    assert "focal_levels" in config and "hidden_size" in config and '"params"' in config
    # The precision that ran, not "auto".
    assert re.search(r"precision\W+" + summary["precision"], config) and not re.search(r"precision\W+auto", config)


def test_report_reads_the_learning_curve_back_from_the_offline_wandb_run(trained_run):
    from focalnet.studies.runs import learning_curve

    assert not list(trained_run.rglob("metrics.csv"))  # W&B alone: the curve comes from the .wandb file
    logged = [r["history"]["item"] for r in wandb_records(trained_run) if r["type"] == "history"]
    expected = {h["epoch"]: 100 * h["val/acc_top1"] for h in logged if "val/acc_top1" in h}
    assert sorted(expected) == [0, 1, 2] and learning_curve(trained_run) == pytest.approx(expected)


@pytest.mark.precision
def test_eval_reproduces_the_test_accuracy(trained_run, tmp_path):
    summary = read_summary(trained_run)
    result = run_cli(
        "focalnet-eval", f"ckpt_path={summary['best_ckpt']}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = read_summary(tmp_path / "eval")
    assert evaluation["status"] == "completed" and evaluation["task"] == "eval"
    assert evaluation["metrics"]["test/acc_top1"] == pytest.approx(summary["metrics"]["test/acc_top1"], abs=1e-6)
    assert evaluation["metrics"]["test/loss"] == pytest.approx(summary["metrics"]["test/loss"], abs=1e-6)


def test_ddp_on_two_cpu_processes_makes_one_run(tmp_path):
    result = run_cli("focalnet-train", *TINY, "trainer=ddp_cpu", f"paths.log_dir={tmp_path / 'logs'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "train").iterdir()
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and "test/acc_top1" in summary["metrics"]
    assert len(list(tmp_path.rglob("summary.json"))) == 1
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 1
    if "OMP_NUM_THREADS" not in os.environ:  # each rank computes on its share of the cores, as the summary says
        assert summary["threads"]["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)


def test_a_rank_failing_at_start_up_stops_every_rank_within_the_bound(tmp_path):
    # Rank 1 resolves model.num_layers from NUM_LAYERS_1 (its LOCAL_RANK), to 0: it fails before the group forms.
    layers = "model.num_layers='${oc.decode:${oc.env:NUM_LAYERS_${oc.env:LOCAL_RANK,0}}}'"
    env = {"NUM_LAYERS_0": "1", "NUM_LAYERS_1": "0"}
    start = time.monotonic()
    result = run_cli("focalnet-train", *TINY, "trainer=ddp_cpu", layers, "startup_timeout=40",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)  # fmt: skip
    took = time.monotonic() - start
    summary = read_summary(tmp_path / "run")
    assert result.returncode == 1 and summary["status"] == "failed", result.stderr[-3000:]
    assert summary["error"] == ("rank 1 exited with code 1 before the process group formed: model.num_layers=0 must "
                                "be an integer >= 1")  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: model.num_layers=0 must be an integer >= 1", f"error: {summary['error']}"]  # 1, then 0
    assert took < 40, took  # not gloo's 30 minutes: both processes ended as soon as rank 1 did
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(tmp_path).encode() in _read(p)]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
