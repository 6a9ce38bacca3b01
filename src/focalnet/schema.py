"""Every config key's type and range, declared once per config group and checked when a run's config is composed.
The model's switches are declared in the model file alone: `model.*` takes FocalNet's signature for them.

`validate(cfg)` checks a whole run config (focalnet-train calls it before anything is built); `check(group, values)`
checks one group's values, so the data modules and the LightningModule built from Python meet the same rules. A
bad value fails in one line that names the full key, the value and what is allowed:

    trainer.gradient_clip_val=-1 must be a number >= 0 or null

The allowed text is generated from the declared type (bounds included) unless a field gives its own description.
Keys a group does not declare pass unchecked (the option they belong to checks them); unknown keys on the command
line are Hydra's to reject. Checks that need more than one value of a dataset or a model (a kernel's parity,
image size against patch size, a split larger than the data) stay where that knowledge is: in the model and the
data modules. `warnings(cfg)` lists legal settings that are probably mistakes.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from focalnet.models.focalnet import arguments

__all__ = ["check", "check_search", "validate", "warnings", "SCHEMA"]

UNSET: Any = object()  # the default of a key that may be absent but not null (pydantic leaves defaults unchecked)
PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
NonNeg = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]  # open (0, 1)
Probability = Annotated[float, Field(ge=0, le=1)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what Lightning's seed_everything takes (it draws one otherwise)
Size = PosInt | Fraction  # a number of images, or a fraction of them
Batches = NonNegInt | Probability  # Lightning's limit_*_batches: a count, or a fraction of the epoch
Options = dict[str, Any] | bool  # a kornia transform's keyword arguments; true: its defaults, false: off
Precision = Literal[
    "auto", "64-true", "64", 64, "32-true", "32", 32, "16-mixed", "16", 16, "bf16-mixed", "bf16", "16-true",
    "bf16-true", "transformer-engine", "transformer-engine-float16",
]  # fmt: skip


class Group(BaseModel):
    """Strict: "5" is not an int, 1 is not true. Every key may be absent (each option of a group sets its own keys);
    null only where declared."""

    model_config = ConfigDict(strict=True, extra="allow")


class Top(Group):
    task_name: str = UNSET
    seed: Seed | None = None
    ckpt_path: str | None = None
    resume: Literal["auto"] | None = None
    test: bool = UNSET
    fail_fast: bool = UNSET
    startup_timeout: Positive = UNSET
    tags: list[str] = UNSET
    optimized_metric: str | None = None


class ModelRanges(Group):
    """model.* beyond FocalNet's signature: create_model's name and weights, the card's names, the ranges of the
    numbers. `Model` adds every other FocalNet argument with the type it is declared with (its switches: true or
    false, a Literal's values), so a switch is declared once, in the model file."""

    name: str | None = None
    pretrained: str | None = None
    image_size: PosInt | Literal["auto"] = UNSET  # ${data.image_size}: auto until the data has chosen
    patch_size: PosInt | Literal["auto"] = UNSET  # the card's follows the image size (auto with it)
    in_channels: PosInt = UNSET
    hidden_size: PosInt = UNSET
    embed_dim: PosInt = UNSET
    num_layers: PosInt = UNSET
    depths: list[PosInt] = UNSET
    focal_levels: NonNegInt | list[NonNegInt] = UNSET
    focal_kernel: PosInt | list[PosInt] = UNSET
    focal_factor: NonNegInt = UNSET
    num_classes: NonNegInt | Literal["auto"] | None = None  # ${data.num_classes}: auto until the data is counted
    mlp_ratio: Positive = UNSET
    drop_rate: Annotated[float, Field(ge=0, lt=1)] = UNSET
    drop_path_rate: Annotated[float, Field(ge=0, lt=1)] = UNSET
    layerscale_value: Positive = UNSET


Model = create_model(
    "Model",
    __base__=ModelRanges,
    **{name: (kind, UNSET) for name, (kind, _) in arguments().items() if name not in ModelRanges.model_fields},
)


class Augment(Group):
    model_config = ConfigDict(strict=True, extra="forbid")  # a misspelt augmentation would silently be off

    random_resized_crop: Options | None = None
    random_crop: Options | None = None
    affine: Options | None = None
    hflip: Probability | None = None
    color_jitter: NonNeg | None = None
    rand_augment: Options | None = None
    trivial_augment: bool | None = None
    random_erasing: Probability | None = None


class Data(Group):
    root: str | None = None
    download: bool = UNSET
    image_size: PosInt | Literal["auto"] = UNSET  # auto: imagefolder chooses from the images
    num_classes: PosInt | Literal["auto"] | None = None  # null: the dataset's own
    in_channels: PosInt = UNSET
    batch_size: PosInt = UNSET
    num_workers: NonNegInt | None = None
    pin_memory: bool = UNSET
    seed: Seed | None = None
    augment: Augment | str | None = None  # a mapping of options, or a preset's name
    val_fraction: Fraction = UNSET
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = UNSET
    val_size: Size = UNSET
    train_subset: Size | None = None
    split_seed: Seed = UNSET
    split_file: str | None = None
    crop_pct: Annotated[float, Field(gt=0, le=1)] = UNSET
    on_corrupt: Literal["skip", "error"] = UNSET
    num_samples: PosInt = UNSET
    num_eval_samples: PosInt = UNSET


class Optimizer(Group):
    lr: Positive = UNSET
    weight_decay: NonNeg = UNSET
    betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)] = UNSET
    eps: Positive = UNSET
    momentum: NonNeg = UNSET
    fused: bool | None = None


class Optim(Group):
    optimizer: Optimizer = UNSET
    lr_batch_size: PosInt | None = None
    warmup_epochs: NonNeg | None = UNSET  # null: the warm-up is counted in warmup_steps
    warmup_steps: NonNegInt | None = None
    warmup_ratio: Probability | None = None  # caps warmup_steps at this share of the run's steps; null: no cap
    warmup_lr: NonNeg = UNSET
    min_lr: NonNeg = UNSET
    head_lr_scale: Positive = UNSET
    layer_decay: Annotated[
        Annotated[float, Field(gt=0, le=1)] | None, Field(description="in (0, 1] (null or 1 turns it off)")
    ] = None
    freeze_backbone: bool = UNSET


class Module(Group):
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = UNSET
    mixup_alpha: Annotated[NonNeg, Field(description="a number >= 0 (0 turns it off)")] = UNSET
    cutmix_alpha: Annotated[NonNeg, Field(description="a number >= 0 (0 turns it off)")] = UNSET
    compile: bool = UNSET
    channels_last: bool = UNSET
    on_nonfinite: Literal["stop", "skip"] = UNSET
    max_nonfinite: PosInt = UNSET


class Trainer(Group):
    default_root_dir: str | None = None
    max_epochs: Annotated[int, Field(ge=-1)] | None = None  # -1: no limit
    min_epochs: NonNegInt | None = None
    max_steps: Annotated[int, Field(ge=-1)] = UNSET
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"] = UNSET
    devices: PosInt | Literal[-1] | str | list[NonNegInt] = UNSET  # "auto", "0,1", [0, 1]
    num_nodes: PosInt = UNSET
    strategy: str | dict[str, Any] = UNSET  # "ddp", or a strategy to instantiate (_target_: ...DDPStrategy)
    precision: Precision | None = None
    gradient_clip_val: NonNeg | None = None
    gradient_clip_algorithm: Literal["norm", "value"] | None = None
    accumulate_grad_batches: PosInt = UNSET
    check_val_every_n_epoch: PosInt | None = None
    val_check_interval: Batches | None = None
    limit_train_batches: Batches | None = None
    limit_val_batches: Batches | None = None
    limit_test_batches: Batches | None = None
    log_every_n_steps: PosInt | None = None
    num_sanity_val_steps: Annotated[int, Field(ge=-1)] | None = None
    deterministic: bool | Literal["warn"] | None = None
    benchmark: bool | None = None
    sync_batchnorm: bool = UNSET
    detect_anomaly: bool = UNSET
    fast_dev_run: bool | NonNegInt = UNSET
    overfit_batches: Batches = UNSET
    enable_progress_bar: bool | None = None
    threads: PosInt | None = None  # CPU threads of each process (focalnet.threads); null: what it was given


class ModelCheckpoint(Group):
    dirpath: str | None = None
    filename: str | None = None
    monitor: str | None = None
    mode: Literal["min", "max"] = UNSET
    save_top_k: Annotated[int, Field(ge=-1)] = UNSET
    save_last: bool | Literal["link"] | None = None
    every_n_epochs: NonNegInt | None = None
    tie_breaker: str | None = None  # focalnet.run.callbacks.ModelCheckpoint: a tie goes to its lower value (val/loss)


class EarlyStopping(Group):
    monitor: str = UNSET
    mode: Literal["min", "max"] = UNSET
    patience: NonNegInt = UNSET
    min_delta: NonNeg = UNSET


class EMA(Group):
    decay: Fraction = UNSET
    update_every_n_steps: PosInt = UNSET
    update_starting_at_step: NonNegInt | None = None


class Callbacks(Group):
    model_checkpoint: ModelCheckpoint | None = None
    last_checkpoint: ModelCheckpoint | None = None
    early_stopping: EarlyStopping | None = None
    ema: EMA | None = None


class Wandb(Group):
    project: str | None = None
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    id: str | None = None
    offline: bool = UNSET
    log_model: bool | Literal["all"] = UNSET


class Logger(Group):
    wandb: Wandb | None = None


class Search(Group):
    """The search: block of hparams_search=... (what a trial's job needs; the sweeper sets all but the pruner)."""

    storage: str | None = None
    study_name: str | None = None
    trial: NonNegInt | None = None
    pruner: Annotated[
        dict[str, Any] | None,
        Field(description="null or {_target_: optuna.pruners.<name>, ...}, <name> one of MedianPruner, "
              "PercentilePruner, SuccessiveHalvingPruner, HyperbandPruner, WilcoxonPruner, ThresholdPruner, "
              "PatientPruner, NopPruner (hparams_search=median, asha, hyperband and wilcoxon set one)"),
    ] = None  # fmt: skip


class Sweeper(Group):
    """hydra.sweeper of hparams_search=... (focalnet.search.sweeper): a count below 1 would run no trial."""

    n_trials: PosInt = UNSET
    n_jobs: PosInt = UNSET


class Run(Top):
    """A whole run config: the top-level keys and one entry per group."""

    data: Data = UNSET  # before model: the model's image_size, in_channels and num_classes are ${data.*}
    model: Model = UNSET
    optim: Optim = UNSET
    module: Module = UNSET
    trainer: Trainer = UNSET
    callbacks: Callbacks | None = None
    logger: Logger | None = None
    search: Search | None = None


SCHEMA: dict[str, type[Group]] = {
    "model": Model, "data": Data, "optim": Optim, "module": Module, "trainer": Trainer, "callbacks": Callbacks,
    "logger": Logger,
}  # fmt: skip


def validate(cfg: Mapping) -> None:
    """Check a whole run config (a resolved dict, or a DictConfig that is resolved here); ValueError in one line."""
    _validate(Run, _plain(cfg), prefix="")


def check(group: str, values: Mapping) -> None:
    """Check one group's values, e.g. check("data", locals()) in a data module; keys the group does not declare
    (self, kwargs, ...) are ignored."""
    _validate(SCHEMA[group], _plain(values), prefix=f"{group}.")


def check_search(search: Mapping, sweeper: Mapping) -> None:
    """An Optuna search's settings, checked by its sweeper before any trial: the search: block and hydra.sweeper."""
    _validate(Search, _plain(search), prefix="search.")
    _validate(Sweeper, _plain(sweeper), prefix="hydra.sweeper.")


def warnings(cfg: Mapping) -> list[str]:
    """Legal settings that are probably mistakes, one line each."""
    cfg = _plain(cfg)
    trainer, optim, callbacks = (cfg.get(k) or {} for k in ("trainer", "optim", "callbacks"))
    max_epochs, found = trainer.get("max_epochs"), []
    if isinstance(max_epochs, int) and max_epochs > 0:
        warmup = optim.get("warmup_epochs") or 0
        if warmup > max_epochs:
            found.append(f"optim.warmup_epochs={warmup} > trainer.max_epochs={max_epochs}: the warm-up never ends, "
                         "the learning rate never reaches optim.optimizer.lr")  # fmt: skip
        patience = (callbacks.get("early_stopping") or {}).get("patience")
        if isinstance(patience, int) and patience >= max_epochs:
            found.append(f"callbacks.early_stopping.patience={patience} >= trainer.max_epochs={max_epochs}: "
                         "early stopping can never stop the run")  # fmt: skip
    return found


def ema_warning(decay: float, every: int, steps: int) -> str | None:
    """EMA weights that average over more optimizer steps than the run takes are mostly the initial weights."""
    horizon = every / (1 - decay)
    if steps < horizon:
        return (f"callbacks.ema.decay={decay} averages over about {horizon:.0f} steps but the run takes {steps}: "
                "the EMA weights are mostly the initial ones (lower the decay)")  # fmt: skip
    return None


# --- one-line messages from pydantic's errors ------------------------------------------------------------------


def _plain(cfg: Mapping) -> dict:
    """Plain containers (pydantic's strict mode takes no DictConfig/ListConfig), interpolations resolved."""
    from omegaconf import Container, OmegaConf

    if isinstance(cfg, Container):
        return OmegaConf.to_container(cfg, resolve=True)
    return {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, Container) else v for k, v in cfg.items()}


def _validate(schema: type[Group], values: dict, prefix: str) -> None:
    try:
        schema.model_validate(values)
    except ValidationError as error:
        raise ValueError(_message(schema, values, error.errors(), prefix)) from None


def _message(schema: type[Group], values: dict, errors: list[dict], prefix: str) -> str:
    """The first bad key in declaration order (a value copied by interpolation fails where it was set: seed before
    data.seed), and of its errors the most specific (pydantic reports a union's value once per member)."""
    located = []
    for error in errors:
        keys, field = _locate(schema, error["loc"])
        unknown = error["type"] == "extra_forbidden"
        located.append((keys + [error["loc"][-1]] if unknown else keys, field, error, unknown))
    first = located[0][0][:1]
    keys, field, error, unknown = max((item for item in located if item[0][:1] == first), key=lambda i: len(i[0]))
    key = prefix + ".".join(keys)
    if unknown:
        known = ", ".join(_model_of(field.annotation).model_fields) if field else ""
        return f"{key} is not an option; known: {known}"
    value = values
    for part in keys:
        value = value.get(part) if isinstance(value, Mapping) else None
    return f"{key}={value!r} must be {_allowed(field) if field else error['msg']}"


def _locate(schema: type[BaseModel], loc: tuple) -> tuple[list[str], FieldInfo | None]:
    """The config key an error's location names, and its field; union member tags and list indices are skipped."""
    keys, field, model = [], None, schema
    for part in loc:
        if isinstance(part, int):
            break
        fields = model.model_fields if model else {}
        if part in fields:
            field = fields[part]
        else:
            continue  # a union member's tag ('constrained-int', 'Augment') or an unknown key
        keys.append(part)
        model = _model_of(field.annotation)
    return keys, field


def _model_of(annotation) -> type[BaseModel] | None:
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _members(annotation) -> list:
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return [m for a in get_args(annotation) for m in _members(a)]
    return [annotation]


def _allowed(field: FieldInfo) -> str:
    if field.description:
        return field.description
    return _describe(Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation)


def _describe(annotation) -> str:
    """'an integer >= 1 or null', 'a number in [0, 1)', 'stop or skip', ... from a type."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        base, meta = args[0], [m for info in args[1:] for m in getattr(info, "metadata", [info])]
        if any(getattr(info, "description", None) for info in args[1:]):
            return next(info.description for info in args[1:] if getattr(info, "description", None))
        bounds = {k: v for m in meta if dataclasses.is_dataclass(m) for k, v in dataclasses.asdict(m).items()}
        return _bounded(_describe(base), bounds)
    if origin in (Union, types.UnionType):
        parts = [_describe(a) for a in args if a is not type(None)]
        parts += ["null"] if type(None) in args else []
        return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]
    if origin is Literal:
        words = list(dict.fromkeys(str(v) for v in args))
        return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]
    if origin is list:
        return f"a list, each {_describe(args[0])}" if args else "a list"
    if origin is dict or annotation is dict:
        return "a mapping of options"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping of options"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(annotation, "valid")


def _bounded(base: str, bounds: dict) -> str:
    low = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    high = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if low and high:
        return f"{base} in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"{base} {'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{base} {'<=' if high[0] == ']' else '<'} {high[1]}"
    if "min_length" in bounds and bounds.get("max_length") == bounds["min_length"]:
        return base.replace("a list", f"a list of {bounds['min_length']}", 1)
    return base
