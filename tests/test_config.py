"""Every config group option composes and builds; the recipes say what the paper says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

import focalnet
from focalnet import schema
from focalnet.cli import config_dir

CONF = Path(config_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(overrides: list[str], tmp_path: Path, config_name: str = "train"):
    """The composed config, with Hydra's runtime set so `${hydra:...}` resolves, outputs going to tmp_path."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(config_name, [f"paths.output_dir={tmp_path}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    schema.validate(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))  # every shipped option is legal
    return cfg


def test_every_group_has_its_options():
    assert set(options("model")) == {"card"} | {m for m in focalnet.list_models() if m != "focalnet_card"}
    assert set(options("trainer")) >= {"cpu", "gpu", "ddp", "ddp_cpu", "multinode"}
    assert set(options("logger")) == {"wandb", "csv", "tensorboard", "none"}
    assert set(options("callbacks")) >= {"default", "early_stopping", "ema"}
    assert set(options("debug")) >= {"default", "fdr", "overfit", "profiler"}
    for group in ("optim", "paths", "hydra", "experiment", "data"):
        assert options(group), group


def test_defaults(tmp_path):
    cfg = compose_train([], tmp_path)
    choices = cfg.hydra.runtime.choices
    assert (choices.data, choices.model, choices.trainer, choices.logger) == ("digits", "card", "cpu", "wandb")
    assert cfg.seed == 0 and cfg.model.focal_levels == 3 and cfg.model.focal_kernel == 3
    assert cfg.model.image_size == cfg.data.image_size and cfg.model.num_classes == cfg.data.num_classes
    assert cfg.logger.wandb.offline is True and cfg.logger.wandb.save_dir == str(tmp_path)
    assert cfg.callbacks.model_checkpoint.monitor == "val/acc_top1" and cfg.callbacks.last_checkpoint.filename == "last"
    assert "early_stopping" not in cfg.callbacks and "ema" not in cfg.callbacks


@pytest.mark.parametrize("name", options("model"))
def test_model_options(name, tmp_path):
    cfg = compose_train([f"model={name}", "data.image_size=32"], tmp_path)
    assert cfg.model.num_classes == 10 and cfg.model.in_channels == 1
    if name != "card":
        assert cfg.model.name == name and cfg.model.pretrained is None
    # Built narrow (8 channels wide) to stay cheap: the structure of every option, not its size.
    model = instantiate(cfg.model, hidden_size=8)
    assert model.num_classes == 10 and model(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_drop_path_rates_follow_the_paper(tmp_path):
    paper = {"tiny": 0.2, "small": 0.3, "base": 0.5}
    paper_iso = {"tiny": 0.2, "small": 0.2, "base": 0.3}
    for size in paper:
        for kind in ("srf", "lrf"):
            assert compose_train([f"model=focalnet_{size}_{kind}"], tmp_path).model.drop_path_rate == paper[size]
        assert compose_train([f"model=focalnet_{size}_iso"], tmp_path).model.drop_path_rate == paper_iso[size]


def test_card_sweep_axes_override(tmp_path):
    cfg = compose_train(["model.focal_levels=1", "model.focal_kernel=5", "model.num_layers=2"], tmp_path)
    model = instantiate(cfg.model)
    assert len(model.layers[0].blocks) == 2
    assert model.layers[0].blocks[0].modulation.kernel_sizes == [5]


@pytest.mark.parametrize("name", options("data"))
def test_data_options(name, tmp_path):
    for folder in ("a_class", "b_class"):  # imagefolder counts its class folders (at least 2), reads an image of each
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "0.png")
    cfg = compose_train([f"data={name}", f"data.root={tmp_path}"], tmp_path)
    datamodule = instantiate(cfg.data, _convert_="all")
    assert datamodule.batch_size == cfg.data.batch_size


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_options(name, tmp_path):
    overrides = [f"trainer={name}"]
    if name in ("gpu", "ddp", "multinode"):  # this machine has no GPU: build the same Trainer on the CPU
        overrides += ["trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=1"]
    from focalnet.run.build import resolve_trainer_precision

    cfg = compose_train(overrides, tmp_path)
    resolve_trainer_precision(cfg)  # as the app does: precision=auto becomes what this machine runs
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    if name == "ddp_cpu":
        assert trainer.world_size == 2 and type(trainer.strategy).__name__ == "DDPStrategy"


@pytest.mark.parametrize("name", options("logger"))
def test_logger_options(name, tmp_path):
    from focalnet.run.build import instantiate_all

    cfg = compose_train([f"logger={name}"], tmp_path)
    loggers = instantiate_all(cfg.get("logger"))
    assert len(loggers) == (0 if name == "none" else 1)
    for logger in loggers:
        assert Path(logger.save_dir) == tmp_path


@pytest.mark.parametrize("name", options("callbacks"))
def test_callback_options(name, tmp_path):
    from focalnet.run.build import instantiate_all

    selection = "default" if name == "default" else f"[default,{name}]"
    cfg = compose_train([f"callbacks={selection}"], tmp_path)
    callbacks = instantiate_all(cfg.callbacks)
    names = {type(c).__name__ for c in callbacks}
    assert {"ModelCheckpoint", "LearningRateMonitor"} <= names
    expected = {"early_stopping": "EarlyStopping", "ema": "EMAWeightAveraging"}.get(name)
    assert expected is None or expected in names


@pytest.mark.parametrize("name", options("debug"))
def test_debug_options(name, tmp_path):
    from focalnet.record import RunRecord, Status
    from focalnet.run.build import build_trainer

    cfg = compose_train([f"debug={name}"], tmp_path)
    trainer = build_trainer(cfg, RunRecord(status=Status.RUNNING))
    assert trainer.loggers == [] and trainer.world_size == 1
    # Whatever the config: exact resume, W&B continuity and train/images_per_s depend on them.
    always = {"Throughput", "RNGStateInCheckpoint", "WandbRunIdInCheckpoint", "WandbConfusionMatrix"}
    assert always <= {type(c).__name__ for c in trainer.callbacks}


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_options(name, tmp_path):
    cfg = compose_train([f"experiment={name}"], tmp_path)
    OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def test_imagenet_recipe_is_the_papers(tmp_path):
    sizes = {"tiny": 0.2, "small": 0.3, "base": 0.5}
    for size, drop_path in sizes.items():
        cfg = compose_train([f"experiment=imagenet_focalnet_{size}_srf"], tmp_path)
        assert cfg.hydra.runtime.choices.data == "imagefolder"
        assert cfg.model.name == f"focalnet_{size}_srf" and cfg.model.drop_path_rate == drop_path
    o = cfg.optim
    assert o.optimizer._target_ == "torch.optim.AdamW"
    assert (o.optimizer.lr, o.lr_batch_size, o.min_lr, o.warmup_epochs) == (1e-3, 1024, 1e-5, 20)
    assert o.optimizer.weight_decay == 0.05 and cfg.trainer.max_epochs == 300
    assert cfg.trainer.gradient_clip_val == 5.0
    assert (cfg.module.label_smoothing, cfg.module.mixup_alpha, cfg.module.cutmix_alpha) == (0.1, 0.8, 1.0)
    assert cfg.data.augment.rand_augment == {"n": 2, "m": 9} and cfg.data.augment.random_erasing == 0.25
    assert cfg.data.image_size == 224 and cfg.data.num_classes == 1000


def test_eval_config_composes(tmp_path):
    cfg = compose_train(["ckpt_path=x.ckpt"], tmp_path, config_name="eval")
    assert cfg.ckpt_path == "x.ckpt" and cfg.get("data") is None and cfg.get("model") is None


def test_hydra_cli_override_example(tmp_path):
    cfg = compose_train(["model.focal_levels=2", "data=cifar10"], tmp_path)
    assert cfg.model.focal_levels == 2 and cfg.model.in_channels == 3 and cfg.model.num_classes == 10
