"""The LightningModule: image classification with any model that maps images to logits (every FocalNet does)."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import get_class
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from focalnet import schema
from focalnet.checkpoint import CheckpointError, read_checkpoint
from focalnet.cli import one_line

log = logging.getLogger(__name__)


def layer_id(name: str, depths: Sequence[int]) -> int:
    """Depth of a FocalNet parameter for layer-wise lr decay, numbered as in BEiT and ConvNeXt: the stem 0, the N
    blocks 1..N in order, the final norm and the head N + 1. A stage's downsampling, applied after its blocks, goes
    with the next stage's first block (as timm groups it)."""
    match = re.match(r"layers\.(\d+)\.(?:blocks\.(\d+)|downsample)\.", name)
    if match:
        stage, block = int(match[1]), match[2]
        return sum(depths[:stage]) + (int(block) + 1 if block is not None else depths[stage] + 1)
    if name.startswith("patch_embed."):
        return 0
    if name.startswith(("norm.", "head.")):
        return sum(depths) + 1
    raise ValueError(f"optim.layer_decay needs FocalNet parameter names (patch_embed, layers, norm, head), not {name}")


def param_groups(
    model: nn.Module, weight_decay: float, head_lr_scale: float = 1.0, layer_decay: float | None = None
) -> list[dict]:
    """Weight decay on weight matrices and kernels only; norms, biases and layer-scale gammas (ndim <= 1) get none.
    Only trainable parameters (optim.freeze_backbone leaves the head).

    Each group's `lr_scale` multiplies the optimizer's lr: `head_lr_scale` for `head.*`, and with `layer_decay` d
    over N blocks, d^(N + 1 - layer_id): the stem d^(N + 1), block i (from 0) d^(N - i), the final norm and head 1.
    Groups are named decay / no_decay, plus _layer<id> and _head when scaled (the LR monitor's names), and hold
    `(name, parameter)` pairs, so `optimizer.param_groups[i]["param_names"]` says what went where.
    """
    decayed = layer_decay not in (None, 1)
    depths = [len(stage.blocks) for stage in getattr(model, "layers", [])] if decayed else []
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind, part, scale = ("no_decay" if p.ndim <= 1 else "decay"), "", 1.0
        if decayed:
            layer = layer_id(name, depths)
            part, scale = f"_layer{layer}", layer_decay ** (sum(depths) + 1 - layer)
        if head_lr_scale != 1 and name.startswith("head."):
            part, scale = "_head", scale * head_lr_scale
        key, decay = kind + part, weight_decay if kind == "decay" else 0.0
        group = groups.setdefault(key, {"params": [], "weight_decay": decay, "name": key, "lr_scale": scale})
        group["params"].append((name, p))
    return list(groups.values())


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, warmup_lr: float, min_lr: float
) -> LRScheduler:
    """Linear warm-up from warmup_lr to the optimizer's lr over warmup_steps, then cosine decay to min_lr.

    A group with another lr (optim.head_lr_scale, optim.layer_decay) follows the same curve scaled by its lr / the
    optimizer's: warm-up start, peak and floor alike. Hence a LambdaLR factor: CosineAnnealingLR's eta_min is one
    absolute floor for every group, which would lift the small lrs of the early layers.
    """
    lr = optimizer.defaults["lr"]
    cosine_steps = max(total_steps - warmup_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (warmup_lr + (lr - warmup_lr) * step / warmup_steps) / lr
        progress = min(step - warmup_steps, cosine_steps) / cosine_steps
        return (min_lr + (lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2) / lr

    return LambdaLR(optimizer, factor)


def warmup_steps_for(optim: Mapping, total_steps: int, max_epochs: int | None) -> int:
    """The run's warm-up in optimizer steps: `warmup_epochs` when set, else `warmup_steps` capped at `warmup_ratio`
    of the run (null: no cap), so that a step count made for a large data set does not fill a small one's run."""
    warmup_epochs = optim.get("warmup_epochs")
    if warmup_epochs is not None:
        return round(warmup_epochs * total_steps / max_epochs) if max_epochs and max_epochs > 0 else 0
    steps, ratio = optim.get("warmup_steps") or 0, optim.get("warmup_ratio")
    return steps if ratio is None else min(steps, int(ratio * total_steps))


def mix_batch(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, mixup_alpha: float, cutmix_alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeiT-style batch mixing: mixup or cutmix (half the batches each when both are on) with the batch reversed,
    lam ~ Beta(alpha, alpha); returns mixed images and soft targets.

    kornia's RandomMixUpV2 draws lam uniformly per sample, not from Beta(alpha), so the paper's recipe is written here.
    """
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or torch.rand(()).item() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = torch.distributions.Beta(alpha, alpha).sample().item()
    other = images.flip(0)
    if use_cutmix:
        h, w = images.shape[-2:]
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = torch.randint(h, ()).item(), torch.randint(w, ()).item()
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        images = images.clone()
        images[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually kept
    else:
        images = other.lerp(images, lam)
    target = F.one_hot(labels, num_classes).to(images.dtype)
    return images, target.flip(0).lerp(target, lam)


def _accuracy(num_classes: int) -> MetricCollection:
    return MetricCollection(
        {
            "acc_top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "acc_top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
        }
    )


def host_sync_is_costly(device: torch.device) -> bool:
    """Whether reading a step's result on the host waits for queued work: on accelerators, not on CPUs."""
    return device.type != "cpu"


class ClassificationModule(L.LightningModule):
    """Cross-entropy training of `model` with AdamW, warm-up + cosine schedule, optional mixup/cutmix.

    Args:
        model: the network; needs a `num_classes` attribute (every FocalNet has one).
        optim: the `optim` config group: `optimizer` (a `_target_` spec, e.g. torch.optim.AdamW with lr,
            weight_decay, betas), `warmup_epochs` (when null, `warmup_steps`, capped at `warmup_ratio` of the run's
            steps; see `warmup_steps_for`), `warmup_lr`, `min_lr`, and `lr_batch_size` (when set, lr, warmup_lr and
            min_lr scale linearly by the global batch / lr_batch_size, as in the paper); for fine-tuning
            `head_lr_scale`, `layer_decay` (see `param_groups`) and `freeze_backbone` (only the head trains: a
            linear probe).
        label_smoothing: cross-entropy label smoothing.
        mixup_alpha / cutmix_alpha: Beta parameters of mixup and cutmix; 0 turns each off.
        compile: torch.compile the model in place (parameter names and checkpoints stay the same).
        channels_last: keep the model's weights in channels-last memory format.
        run_config: the run's resolved config; it travels inside checkpoints, so focalnet-eval rebuilds the model and
            the data from the checkpoint alone.
        on_nonfinite: what a NaN/inf loss does: "stop" the run with an error naming the step and the last good
            checkpoint, or "skip" the batch (no optimizer step) up to `max_nonfinite` times, then stop.
    """

    def __init__(
        self,
        model: nn.Module,
        optim: Mapping,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        compile: bool = False,
        channels_last: bool = False,
        run_config: Mapping | None = None,
        on_nonfinite: str = "stop",
        max_nonfinite: int = 10,
    ):
        super().__init__()
        schema.check("module", locals())
        schema.check("optim", optim)
        freeze_backbone = optim.get("freeze_backbone", False)
        if freeze_backbone:
            head = [p for name, p in model.named_parameters() if name.startswith("head.")]
            if not head:
                raise ValueError("optim.freeze_backbone=true needs a model with a head (model.num_classes is 0)")
            # Here, not in configure_optimizers: DDP, which wraps the model in between, syncs the gradients of the
            # parameters that required them when it was built.
            model.requires_grad_(False)
            for p in head:
                p.requires_grad_(True)
        # Plain containers only: checkpoints must load with torch.load(weights_only=True).
        optim = OmegaConf.to_container(optim, resolve=True) if isinstance(optim, DictConfig) else dict(optim)
        if isinstance(run_config, DictConfig):
            run_config = OmegaConf.to_container(run_config, resolve=True)
        self.save_hyperparameters(ignore=["model"], logger=False)
        self.model = model
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile:
            self.model.compile()
        self.num_classes = model.num_classes
        metrics = _accuracy(self.num_classes)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self._nonfinite = 0
        self.warmup_steps: int | None = None  # the run's, from configure_optimizers (optim.warmup_ratio may cap it)
        self._first_nonfinite: torch.Tensor | None = None  # accelerators: [step, loss] of the first non-finite loss
        self.class_names: list[str] | None = None  # the data's, from setup(); checkpoints keep them
        self._outputs: list[torch.Tensor] = []
        self.predictions: torch.Tensor | None = None  # [2, N] labels and predicted classes of the last test pass

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is not None and getattr(datamodule, "classes", None):
            self.class_names = list(datamodule.classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        targets = labels
        if self.hparams.mixup_alpha > 0 or self.hparams.cutmix_alpha > 0:
            images, targets = mix_batch(
                images, labels, self.num_classes, self.hparams.mixup_alpha, self.hparams.cutmix_alpha
            )
        logits = self(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)
        if self.hparams.on_nonfinite == "stop" and host_sync_is_costly(loss.device):
            self._note_nonfinite(loss)
        elif not self._finite_or_skip(loss, batch_idx):
            return None  # Lightning skips the backward pass and the optimizer step
        self.train_metrics.update(logits, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def _finite_or_skip(self, loss: torch.Tensor, batch_idx: int) -> bool:
        """True for a finite loss; False to skip the batch (on_nonfinite=skip); else a one-line error. Decided on all
        ranks together, so DDP never waits on a rank that skipped."""
        if self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True):
            return True
        self._nonfinite += 1
        where = f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
        if self.hparams.on_nonfinite == "skip" and self._nonfinite <= self.hparams.max_nonfinite:
            rank_zero_warn(f"non-finite loss at {where}: batch skipped ({self._nonfinite} of module.max_nonfinite)")
            return False
        raise FloatingPointError(self._nonfinite_message(loss.item(), where))

    def _nonfinite_message(self, loss: float, where: str) -> str:
        # The newest checkpoint any ModelCheckpoint wrote (last.ckpt has its own callback, see conf/callbacks/).
        saved = {p for c in self.trainer.checkpoint_callbacks for p in (c.last_model_path, c.best_model_path) if p}
        last = max((p for p in saved if os.path.exists(p)), key=os.path.getmtime, default=None)
        return f"non-finite loss ({loss}) at {where}; last good checkpoint: {last or 'none yet'}" + (
            "" if self.hparams.on_nonfinite == "skip" else " (module.on_nonfinite=skip skips such batches)"
        )

    # On accelerators, on_nonfinite=stop keeps the first non-finite step on the device and looks every
    # trainer.log_every_n_steps steps, at epoch end and before a checkpoint is written: no host sync per step, and no
    # checkpoint of weights a non-finite step reached. (skip needs the answer before the backward pass: it syncs.)
    def _note_nonfinite(self, loss: torch.Tensor) -> None:
        if self._first_nonfinite is None:
            self._first_nonfinite = torch.tensor([-1.0, 0.0], device=loss.device)  # step, loss
        step = self._first_nonfinite[0]
        first = ~torch.isfinite(loss.detach()) & (step < 0)
        now = torch.stack([torch.full_like(step, self.global_step), loss.detach().float()])  # kernels, no copies
        self._first_nonfinite = torch.where(first, now, self._first_nonfinite)

    def _stop_if_nonfinite_was_seen(self) -> None:
        if self._first_nonfinite is None:
            return
        step, value = self._first_nonfinite.tolist()
        if self.trainer.strategy.reduce_boolean_decision(step >= 0, all=False):  # on any rank
            where = (f"step {int(step)}" if step >= 0 else "another rank") + (
                f" (seen at step {self.global_step}: on {self.device.type} the loss is checked every "
                "trainer.log_every_n_steps steps, not to wait for the device at each one)"
            )
            raise FloatingPointError(self._nonfinite_message(value if step >= 0 else float("nan"), where))

    def _evaluate(self, batch, metrics: MetricCollection, stage: str) -> None:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        metrics.update(logits, labels)
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=len(labels))
        self.log_dict(metrics, prog_bar=stage == "val")
        if self.trainer.state.fn != TrainerFn.FITTING:  # for focalnet-eval and the test's confusion matrix only
            self._outputs.append(torch.stack([labels, logits.argmax(1)]))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    def on_test_epoch_start(self) -> None:
        self._outputs = []

    def on_validation_epoch_end(self) -> None:
        self._gather_predictions()

    def on_test_epoch_end(self) -> None:
        self._gather_predictions()

    def _gather_predictions(self) -> None:
        """Every rank's labels and predictions, for per-class accuracy (focalnet-eval) and the confusion matrix
        (callbacks.WandbConfusionMatrix)."""
        if not self._outputs:
            return
        outputs, self._outputs = torch.cat(self._outputs, dim=1), []
        if self.trainer.world_size > 1:  # DistributedSampler gives every rank the same number of images
            outputs = self.all_gather(outputs).transpose(0, 1).flatten(1)
        self.predictions = outputs.cpu()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.global_step % self.trainer.log_every_n_steps == 0:
            self._stop_if_nonfinite_was_seen()

    def on_train_epoch_end(self) -> None:
        self._stop_if_nonfinite_was_seen()

    def configure_optimizers(self):
        optim = self.hparams.optim
        total_steps = int(self.trainer.estimated_stepping_batches)
        scale = 1.0
        if optim.get("lr_batch_size"):
            batch = self.trainer.train_dataloader.batch_size
            scale = batch * self.trainer.world_size * self.trainer.accumulate_grad_batches / optim["lr_batch_size"]
        kwargs = dict(optim["optimizer"])
        groups = param_groups(
            self.model, kwargs.pop("weight_decay", 0.0), optim.get("head_lr_scale", 1.0), optim.get("layer_decay")
        )
        if kwargs.get("fused") and self.trainer.gradient_clip_val and isinstance(self.trainer.precision_plugin,
                                                                                 MixedPrecision):
            # Lightning refuses to clip the gradients of an optimizer that unscales them itself (fused AdamW) under
            # mixed precision: the first step of the paper's recipe (gradient_clip_val 5) would fail on a bf16 host.
            # fused is only a speed choice; the per-tensor step computes the same update.
            kwargs["fused"] = False
        try:
            optimizer_class = get_class(kwargs.pop("_target_"))
            kwargs["lr"] *= scale
            for group in groups:
                group["lr"] = kwargs["lr"] * group["lr_scale"]
            optimizer = optimizer_class(groups, **kwargs)
        except Exception as error:
            raise ValueError(f"optim.optimizer: {one_line(error)}") from error
        self.warmup_steps = warmup_steps_for(optim, total_steps, self.trainer.max_epochs)
        # Through focalnet's logger, not Python's warnings: focalnet-train lists these in summary.json's warnings. A
        # warm-up in epochs longer than the run is schema.warnings' to report, naming the key that was set.
        if self.trainer.is_global_zero:
            ema = ((self.hparams.run_config or {}).get("callbacks") or {}).get("ema")
            if ema and (warning := schema.ema_warning(ema["decay"], ema.get("update_every_n_steps", 1), total_steps)):
                log.warning(warning)
            asked = optim.get("warmup_steps") or 0
            if optim.get("warmup_epochs") is None and self.warmup_steps > total_steps:
                log.warning(f"optim.warmup_steps={asked} > the run's {total_steps} optimizer steps: the warm-up "
                            "never ends, the learning rate never reaches optim.optimizer.lr")
            elif optim.get("warmup_epochs") is None and self.warmup_steps < asked:
                log.info(f"optim.warmup_steps={asked} capped at {self.warmup_steps}: optim.warmup_ratio="
                         f"{optim['warmup_ratio']} of the run's {total_steps} optimizer steps")
        scheduler = warmup_cosine(
            optimizer, total_steps, self.warmup_steps, optim["warmup_lr"] * scale, optim["min_lr"] * scale
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # The run's other checkpoint entries come from focalnet.run.callbacks (rng_states, wandb_run_id), which every
    # focalnet-train and focalnet-eval Trainer gets.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._stop_if_nonfinite_was_seen()
        checkpoint["class_names"] = self.class_names  # what the outputs mean, for whoever loads the checkpoint
        # The metrics so far: a run resumed after its training had finished (stopped in the test phase) reports them.
        checkpoint["metrics"] = {k: float(v) for k, v in self.trainer.callback_metrics.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.class_names = self.class_names or checkpoint.get("class_names")  # the data's, when set up, win


def check_checkpoint(path: str, module: nn.Module) -> None:
    """A one-line error naming `path` unless it is a readable training checkpoint of `module`'s architecture
    (Lightning's own errors span many lines and name neither the file nor the option)."""
    state = read_checkpoint(path).get("state_dict")
    if state is None:
        raise CheckpointError(path, "not a training checkpoint (it holds no state_dict)")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    for key in sorted(own.keys() | shapes.keys()):
        if own.get(key) != shapes.get(key):
            there, here = shapes.get(key, "absent"), own.get(key, "absent")
            raise CheckpointError(path, f"a checkpoint of another model: {key} is {there} there, {here} here")


def model_for_checkpoint(model_cfg: DictConfig) -> nn.Module:
    """The network a run's model config describes, without its pretrained weights: the checkpoint overwrites them,
    and a fine-tuned run's weights file need not exist any more."""
    from hydra.utils import instantiate

    return instantiate(model_cfg, **({"pretrained": None} if "pretrained" in model_cfg else {}), _convert_="all")


def module_from_checkpoint(path: str | os.PathLike) -> tuple[ClassificationModule, DictConfig, int | None]:
    """The ClassificationModule of a focalnet-train checkpoint, rebuilt from the run config stored in it; that config;
    the epoch it was saved at."""
    checkpoint = read_checkpoint(path)
    run_cfg = checkpoint.get("hyper_parameters", {}).get("run_config")
    if run_cfg is None:
        raise ValueError(f"ckpt_path={path} holds no run config: not a focalnet-train checkpoint")
    run_cfg = OmegaConf.create(run_cfg)
    model = model_for_checkpoint(run_cfg.model)
    module = ClassificationModule.load_from_checkpoint(path, model=model, map_location="cpu")
    return module, run_cfg, checkpoint.get("epoch")


def model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, DictConfig]:
    """The trained network of a focalnet-train checkpoint, rebuilt from the run config stored in it, and that config."""
    module, run_cfg, _ = module_from_checkpoint(path)
    return module.model, run_cfg
