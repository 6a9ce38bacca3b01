"""focalnet-eval ckpt_path=<run>/checkpoints/<file>.ckpt: test a checkpoint written by focalnet-train.

The model and the data are rebuilt from the run config stored in the checkpoint (data=<name> tests on other data).
The results go to summary.json in this evaluation's own run folder (outputs/eval/<time>/).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from focalnet.cli import config_dir, run_app
from focalnet.record import RunRecord
from focalnet.run.build import build_trainer, choices, class_summary
from focalnet.run.job import launches_processes, rerun_this_job_in_children, run_job


def evaluate(cfg: DictConfig, record: RunRecord) -> None:
    import lightning as L
    from hydra.utils import instantiate, to_absolute_path

    from focalnet.run.module import module_from_checkpoint

    if cfg.split not in ("test", "val"):
        raise ValueError(f"split={cfg.split!r} must be test or val")
    ckpt_path = Path(to_absolute_path(cfg.ckpt_path))
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such file")
    module, run_cfg, epoch = module_from_checkpoint(ckpt_path)
    data_cfg = cfg.data if cfg.get("data") is not None else run_cfg.data
    record.tests_checkpoint(str(ckpt_path), epoch)
    record.describe(model=run_cfg.model.get("name") or "focalnet_card",
                    data=choices().get("data") or OmegaConf.select(run_cfg, "choices.data"),
                    seed=L.seed_everything(cfg.seed, workers=True))

    if data_cfg.get("image_size") == "auto":  # other images (data=imagefolder): at the size the model trained at
        data_cfg.image_size = run_cfg.data.image_size
    datamodule = instantiate(data_cfg, _convert_="all")
    if datamodule.num_classes != module.num_classes:
        raise ValueError(f"data.num_classes={datamodule.num_classes} but the checkpoint's model has "
                         f"{module.num_classes} classes")
    trainer = build_trainer(cfg, record)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if launches_processes(trainer):
        rerun_this_job_in_children(Path(record.run_dir))
    run = trainer.test if cfg.split == "test" else trainer.validate
    metrics = run(module, datamodule=datamodule, verbose=False)[0]
    per_class = per_class_accuracy(module.predictions, datamodule.classes)
    record.results(metrics, classes=class_summary(datamodule.classes), per_class=per_class)
    if trainer.is_global_zero:
        shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(record.metrics.items()))
        print(f"\nrun folder: {record.run_dir}\nmetrics:    {shown}")
        if isinstance(record.classes, list):  # beyond 50 classes the table stays in summary.json
            width = max(map(len, per_class), default=0)
            print(f"per class ({cfg.split}):")
            for name, result in per_class.items():
                print(f"  {name:<{width}}  acc={result['acc']:.4f}  images={result['images']}")


def per_class_accuracy(predictions, names: list[str]) -> dict[str, dict]:
    """{class name: {"acc", "images"}} from the [2, N] labels and predictions; classes with no image are left out."""
    import torch
    from torchmetrics.functional.classification import multiclass_accuracy

    labels, predicted = predictions
    accuracy = multiclass_accuracy(predicted, labels, len(names), average=None)
    counts = torch.bincount(labels, minlength=len(names))
    return {
        name: {"acc": acc, "images": n}
        for name, acc, n in zip(names, accuracy.tolist(), counts.tolist(), strict=True)
        if n
    }


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    run_job("focalnet-eval", cfg, evaluate)


def main() -> None:
    run_app(_hydra_main)


if __name__ == "__main__":
    main()
