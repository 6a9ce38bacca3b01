"""The default recipe scaled down: a warm-up capped by the run's length, ties between checkpoints broken by the
validation loss, own images at a size chosen from them, bad folders refused before training; and the default digits
run's schedule unchanged by any of it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from conftest import TINY, read_summary
from focalnet.data.imagefolder import auto_image_size
from focalnet.run import train
from focalnet.run.callbacks import ModelCheckpoint
from focalnet.run.module import warmup_steps_for
from test_config import compose_train
from test_imagefolder_auto import run_app

# --- the warm-up ---------------------------------------------------------------------------------------------------


def test_the_default_digits_run_keeps_its_schedule(tmp_path):
    """focalnet-train with no arguments: 20 steps an epoch for 15 epochs, 80 warm-up steps, then cosine, as before
    optim.warmup_ratio (0.3 of 300 steps is 90: no cap)."""
    cfg = compose_train([], tmp_path)
    digits = instantiate(cfg.data, _convert_="all")
    digits.setup()
    total = math.ceil(len(digits.train_set) / cfg.data.batch_size) * cfg.trainer.max_epochs
    assert total == 300
    model = instantiate(cfg.model, _convert_="all")
    module = instantiate(cfg.module, model=model, optim=cfg.optim, _recursive_=False)
    module.trainer = SimpleNamespace(estimated_stepping_batches=total, max_epochs=cfg.trainer.max_epochs,
                                     gradient_clip_val=None, precision_plugin=None, is_global_zero=True)  # fmt: skip
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert module.warmup_steps == 80
    lrs = []
    for _ in range(total + 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lr, start, floor = 4e-3, 1e-6, 1e-5  # the schedule as it was: linear over 80 steps, cosine over the other 220
    warmup = [start + (lr - start) * s / 80 for s in range(80)]
    cosine = [floor + (lr - floor) * (1 + math.cos(math.pi * s / 220)) / 2 for s in range(221)]
    assert lrs == pytest.approx(warmup + cosine, rel=1e-6)


def test_a_short_run_gets_a_short_warmup():
    default = {"warmup_epochs": None, "warmup_steps": 80, "warmup_ratio": 0.3}
    assert warmup_steps_for(default, total_steps=45, max_epochs=15) == 13  # 40 images in batches of 16, 15 epochs
    assert warmup_steps_for(default, total_steps=15, max_epochs=15) == 4  # ... in batches of 128
    assert warmup_steps_for(default, total_steps=2, max_epochs=2) == 0  # a 2-epoch trial of a search
    assert warmup_steps_for(default, total_steps=1000, max_epochs=15) == 80
    assert warmup_steps_for({**default, "warmup_ratio": None}, total_steps=15, max_epochs=15) == 80
    assert warmup_steps_for({**default, "warmup_epochs": 1}, total_steps=30, max_epochs=15) == 2  # epochs: no cap


def test_the_warnings_the_readme_promises_are_in_the_summary(tmp_path, monkeypatch, capsys):
    """A warm-up longer than training (in steps), early-stopping patience as long as training, an EMA decay that
    averages over more steps than the run takes: each in summary.json's warnings (the warm-up in epochs:
    tests/test_schema.py)."""
    from test_reliability import run_in_process

    monkeypatch.chdir(tmp_path)
    code, err = run_in_process([*TINY, "logger=csv", "test=false", f"hydra.run.dir={tmp_path}/run",
                                "optim.warmup_ratio=null", "callbacks=[default,ema,early_stopping]"], capsys,
                               monkeypatch)  # fmt: skip
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert code == 0 and summary["status"] == "completed", err[-3000:]
    assert summary["warmup_steps"] == 80
    assert summary["warnings"] == [
        "callbacks.early_stopping.patience=10 >= trainer.max_epochs=1: early stopping can never stop the run",
        "callbacks.ema.decay=0.9998 averages over about 5000 steps but the run takes 2: the EMA weights are mostly the "
        "initial ones (lower the decay)",
        "optim.warmup_steps=80 > the run's 2 optimizer steps: the warm-up never ends, the learning rate never reaches "
        "optim.optimizer.lr",
    ]


# --- ties between checkpoints ----------------------------------------------------------------------------------------

# Epochs 1, 2 and 3 tie on val/acc_top1; epoch 2 has the lowest val/loss; epoch 4 has the lowest loss but a lower top-1.
ACC = [0.5, 1.0, 1.0, 1.0, 0.5]
LOSS = [0.9, 0.6, 0.4, 0.5, 0.1]


class Scripted(L.LightningModule):
    """Logs the fabricated validation metrics of each epoch."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.weight - 1).pow(2).sum()

    def validation_step(self, batch, batch_idx):
        self.log_dict({"val/acc_top1": ACC[self.current_epoch], "val/loss": LOSS[self.current_epoch]})

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_scripted(callback, tmp_path) -> None:
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(1, 1)))
    trainer = L.Trainer(max_epochs=len(ACC), accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[callback],
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(Scripted(), data, data)


@pytest.mark.parametrize("save_top_k,kept", [(1, [2]), (2, [2, 3]), (-1, [0, 1, 2, 3, 4])])
def test_a_tie_on_the_monitored_metric_goes_to_the_lower_val_loss(save_top_k, kept, tmp_path):
    callback = ModelCheckpoint(dirpath=tmp_path, filename="epoch{epoch:03d}", monitor="val/acc_top1", mode="max",
                               save_top_k=save_top_k, auto_insert_metric_name=False)  # fmt: skip
    fit_scripted(callback, tmp_path)
    assert Path(callback.best_model_path).name == "epoch002.ckpt" and callback.best_model_score == 1.0
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == [f"epoch{e:03d}.ckpt" for e in kept]
    assert callback.tie_values[callback.best_model_path] == pytest.approx(0.4)
    # A resumed run knows the losses of the checkpoints it kept.
    resumed = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc_top1", mode="max", save_top_k=save_top_k)
    resumed.load_state_dict(callback.state_dict())
    assert resumed.tie_values == callback.tie_values and resumed.best_model_path == callback.best_model_path


def test_without_a_tie_breaker_the_first_best_epoch_stays_the_best(tmp_path):
    callback = ModelCheckpoint(dirpath=tmp_path, filename="epoch{epoch:03d}", monitor="val/acc_top1", mode="max",
                               auto_insert_metric_name=False, tie_breaker=None)  # fmt: skip
    fit_scripted(callback, tmp_path)
    assert Path(callback.best_model_path).name == "epoch001.ckpt"  # Lightning's own choice


# --- own images: the size, bad folders -------------------------------------------------------------------------------


def write_photo_crops(root: Path, per_class: int = 24, seed: int = 0) -> Path:
    """scikit-learn's two sample photos (china.jpg, flower.jpg) as two classes: `per_class` random crops of each,
    96-256 px on a side, written as JPEGs."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images()
    for name, photo in zip(("china", "flower"), photos.images, strict=True):
        (root / name).mkdir(parents=True)
        height, width = photo.shape[:2]
        for i in range(per_class):
            h, w = rng.integers(96, 257, size=2)
            y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            Image.fromarray(photo[y : y + h, x : x + w]).save(root / name / f"{i:02d}.jpg", quality=90)
    return root


def test_the_image_size_is_chosen_from_the_images(tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 50)).save(small)
    large = tmp_path / "large.jpg"
    Image.new("RGB", (500, 375)).save(large)
    assert auto_image_size([small] * 10) == (32, "10 images, median shorter side 40 px")  # small images: 32
    assert auto_image_size([large] * 10)[0] == 64  # few images: 64
    assert auto_image_size([large] * 5000)[0] == 128
    assert auto_image_size([large] * 20000)[0] == 224


def test_two_classes_of_24_photos_learn_with_the_default_recipe(tmp_path, capsys):
    """What a user with a small folder types: data=imagefolder data.root=<folder>, nothing else (CSV logs and no
    progress bar only to keep the test quiet). 40 training images in batches of 16: 45 optimizer steps."""
    root = write_photo_crops(tmp_path / "photos")
    run = tmp_path / "run"
    code = run_app(train, "data=imagefolder", f"data.root={root}", "logger=csv", "callbacks.progress_bar=null",
                   f"hydra.run.dir={run}", cwd=tmp_path)  # fmt: skip
    assert code == 0, capsys.readouterr().err[-3000:]
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["classes"] == ["china", "flower"]
    # 64 px (48 images of 96-256 px), the card's 4-px patches: 16x16 tokens; 13 warm-up steps of the 45.
    assert (summary["image_size"], summary["patch_size"], summary["warmup_steps"]) == (64, 4, 13)
    assert "data.image_size=auto: 64 px (48 images, median shorter side" in (run / "train.log").read_text()
    print(f"test/loss={summary['metrics']['test/loss']:.4f} test/acc_top1={summary['metrics']['test/acc_top1']:.4f}")
    assert summary["metrics"]["test/loss"] < 0.5 and summary["metrics"]["test/acc_top1"] == 1.0
    assert set(summary["best"]) == {"val/acc_top1", "val/loss", "epoch"}


def _corrupt_only_class(root: Path) -> tuple[Path, str]:
    write_photo_crops(root, per_class=4)
    (root / "noise").mkdir()
    (root / "noise" / "only.jpg").write_bytes(b"not a JPEG at all")
    return root / "noise", "holds no readable image (1 file(s); only.jpg: UnidentifiedImageError"


def _one_class(root: Path) -> tuple[Path, str]:
    write_photo_crops(root, per_class=4)
    for path in (root / "flower").iterdir():
        path.unlink()
    (root / "flower").rmdir()
    return root / "china", "a classifier needs at least 2 classes"


@pytest.mark.parametrize("make", [_corrupt_only_class, _one_class])
def test_a_folder_that_cannot_make_a_classifier_fails_before_training(make, tmp_path, capsys):
    root = tmp_path / "photos"
    folder, message = make(root)
    run = tmp_path / "run"
    code = run_app(train, "data=imagefolder", f"data.root={root}", "logger=csv", f"hydra.run.dir={run}", cwd=tmp_path)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and error.startswith("error: ") and f"data.root={root}" in error, error
    assert str(folder) in error and message in error
    summary = read_summary(run)
    assert summary["status"] == "failed" and f"error: {summary['error']}" == error
    # Nothing but the failed run's record (its config, summary, log, traceback, git diff): no split, no checkpoint,
    # no metrics of a run that never started.
    assert {p.name for p in run.iterdir()} <= {".hydra", ".lock", "summary.json", "train.log", "error.log", "git.diff"}
