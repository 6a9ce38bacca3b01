"""On-device augmentation: a small kornia pipeline described by the config, applied to whole batches."""

import kornia.augmentation as K
from kornia.augmentation.auto import RandAugment, TrivialAugment
from omegaconf import DictConfig, OmegaConf

# Every option, switched off; a config lists them all so each can be overridden from the command line.
NO_AUGMENT: dict = {
    "random_resized_crop": None,  # {scale: [lo, hi], ratio: [lo, hi]}
    "random_crop": None,  # {padding: 4}: the classic CIFAR pad-and-crop
    "affine": None,  # {degrees: 10, translate: [0.1, 0.1], scale: [0.9, 1.1]} (slow on CPU)
    "hflip": 0.0,  # probability
    "color_jitter": 0.0,  # brightness = contrast = saturation strength
    "rand_augment": None,  # {n: 2, m: 9}, RGB only
    "trivial_augment": False,
    "random_erasing": 0.0,  # probability
}
# Named recipes for `data.augment=<name>`.
PRESETS: dict[str, dict] = {
    "none": NO_AUGMENT,
    "light": {**NO_AUGMENT, "random_resized_crop": {"scale": [0.8, 1.0]}, "hflip": 0.5},
    # The FocalNet/DeiT ImageNet recipe minus mixup/cutmix (those change the labels: the LightningModule's job).
    "strong": {
        **NO_AUGMENT,
        "random_resized_crop": {"scale": [0.08, 1.0]},
        "hflip": 0.5,
        "rand_augment": {"n": 2, "m": 9},
        "random_erasing": 0.25,
    },
}


def _kwargs(value) -> dict | None:
    """null/false = off, true = the kornia defaults, a mapping = keyword arguments (lists become tuples)."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}


def resolve_augment(augment) -> dict:
    """Turn a preset name, a dict/DictConfig or null into a plain dict, rejecting unknown names and keys."""
    if augment is None or augment is False:
        return {}
    if isinstance(augment, str):
        if augment not in PRESETS:
            raise ValueError(f"data.augment={augment!r} is not a preset; use a dict or one of {sorted(PRESETS)}")
        return dict(PRESETS[augment])
    if isinstance(augment, DictConfig):
        augment = OmegaConf.to_container(augment, resolve=True)
    return dict(augment)  # its options' names and values are focalnet.schema's to check


def build_augment(augment, image_size: int, in_channels: int) -> K.AugmentationSequential | None:
    """The training-time pipeline on float images in [0, 1] (before normalisation); None when nothing is on."""
    cfg = resolve_augment(augment)
    size = (image_size, image_size)
    steps = []
    if (kw := _kwargs(cfg.get("random_resized_crop"))) is not None:
        steps.append(K.RandomResizedCrop(size, **kw))
    if (kw := _kwargs(cfg.get("random_crop"))) is not None:
        steps.append(K.RandomCrop(size, **{"padding_mode": "reflect", **kw}))
    if (kw := _kwargs(cfg.get("affine"))) is not None:
        steps.append(K.RandomAffine(**{"degrees": 0.0, "p": 1.0, **kw}))
    if p := cfg.get("hflip"):
        steps.append(K.RandomHorizontalFlip(p=p))
    if s := cfg.get("color_jitter"):
        steps.append(K.ColorJitter(s, s, s))
    if (kw := _kwargs(cfg.get("rand_augment"))) is not None:
        if in_channels != 3:
            raise ValueError(f"data.augment.rand_augment needs RGB images, this dataset has {in_channels} channel(s)")
        steps.append(RandAugment(**{"n": 2, "m": 9, **kw}))
    if cfg.get("trivial_augment"):
        steps.append(TrivialAugment())
    if p := cfg.get("random_erasing"):
        steps.append(K.RandomErasing(p=p))
    return K.AugmentationSequential(*steps) if steps else None
