"""ImageNet-style folders: root/{train,val[,test]}/<class>/<image>, decoded with Pillow in worker processes."""

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from focalnet.data.augment import PRESETS
from focalnet.data.base import VisionDataModule

log = logging.getLogger(__name__)

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_AUGMENT = PRESETS["strong"]


def check_image(path: Path) -> str | None:
    """Why Pillow cannot read the file, or None. verify() parses headers and checksums without decoding."""
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, struct.error, ...) for bad files
        return f"{type(e).__name__}: {e}"
    return None


class ImageFolderDataset(Dataset):
    """(path, label) samples -> uint8 [3, crop, crop]: resize the shorter side to `resize`, then center-crop `crop`."""

    def __init__(self, samples: list[tuple[Path, int]], resize: int, crop: int, skip_corrupt: bool) -> None:
        self.samples = samples
        self.resize = resize
        self.crop = crop
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: Path) -> torch.Tensor:
        with Image.open(path) as img:
            img.draft("RGB", (self.resize, self.resize))  # JPEG: decode at a reduced scale when that is enough
            img = ImageOps.fit(img.convert("RGB"), (self.resize, self.resize), Image.Resampling.BILINEAR)
        if self.crop != self.resize:
            left = (self.resize - self.crop) // 2
            img = img.crop((left, left, left + self.crop, left + self.crop))
        return torch.from_numpy(np.array(img)).permute(2, 0, 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            return self.load(path), label
        except Exception as e:  # data that passed verify() but does not decode, e.g. a truncated JPEG
            if not self.skip_corrupt:
                raise ValueError(f"corrupt image {path}: {e}") from e
            log.warning("corrupt image %s: %s; using the next image instead", path, e)
            return self[(index + 1) % len(self)]


class ImageFolderDataModule(VisionDataModule):
    """Classes are the sorted folder names of train/; val/ (and test/, else val/ again) may hold a subset of them.

    Train images are decoded at `image_size / crop_pct` and cropped on the device (RandomResizedCrop); val/test at
    `image_size / crop_pct` then center-cropped to `image_size` (the usual 256 -> 224 evaluation).
    Unreadable files are found once in `setup` (Pillow `verify`): `on_corrupt=skip` drops and counts them,
    `on_corrupt=error` raises naming the first.
    """

    def __init__(
        self,
        root: str | None = None,
        num_classes: int = 1000,
        image_size: int = 224,
        batch_size: int = 128,
        num_workers: int | None = None,
        pin_memory: bool = True,
        augment=IMAGENET_AUGMENT,
        seed: int = 0,
        crop_pct: float = 0.875,
        on_corrupt: str = "skip",
        in_channels: int = 3,
    ) -> None:
        if root is None:
            raise ValueError("data.root is not set; point it at the folder holding train/ and val/")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"data.num_classes={num_classes!r} must be set to the number of class folders in train/")
        if in_channels != 3:
            raise ValueError(f"data.in_channels={in_channels!r} but imagefolder decodes RGB (3)")
        if on_corrupt not in ("skip", "error"):
            raise ValueError(f"data.on_corrupt={on_corrupt!r} must be 'skip' or 'error'")
        if not 0 < crop_pct <= 1:
            raise ValueError(f"data.crop_pct={crop_pct!r} must be in (0, 1]")
        super().__init__(
            num_classes=num_classes, in_channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=image_size,
            batch_size=batch_size, num_workers=min(4, os.cpu_count() or 1) if num_workers is None else num_workers,
            pin_memory=pin_memory, augment=augment, seed=seed, root=root,
        )
        self.save_hyperparameters()
        self.resize_size = round(image_size / crop_pct)
        self.on_corrupt = on_corrupt
        self.num_corrupt = 0

    def _samples(self, split: str) -> list[tuple[Path, int]]:
        folder = Path(self.root).expanduser() / split
        samples = []
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            if class_dir.name not in self.class_to_idx:
                raise ValueError(f"data.root={self.root}: {split} class {class_dir.name!r} has no folder in train/")
            label = self.class_to_idx[class_dir.name]
            samples += [(p, label) for p in sorted(class_dir.rglob("*")) if p.suffix.lower() in EXTENSIONS]
        if not samples:
            raise FileNotFoundError(f"data.root={self.root} has no images under {folder}")
        return samples

    def _drop_corrupt(self, samples: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
        with ThreadPoolExecutor(max_workers=8) as pool:  # I/O bound: threads overlap the file reads
            reasons = list(pool.map(check_image, (path for path, _ in samples)))
        bad = [(path, why) for (path, _), why in zip(samples, reasons) if why]
        if bad and self.on_corrupt == "error":
            raise ValueError(f"corrupt image {bad[0][0]}: {bad[0][1]}")
        if bad:
            self.num_corrupt += len(bad)
            log.warning("skipping %d corrupt image(s), the first %s (%s)", len(bad), bad[0][0], bad[0][1])
        return [sample for sample, why in zip(samples, reasons) if not why]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        root = Path(self.root).expanduser()
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise FileNotFoundError(f"data.root={self.root} has no {split}/ folder (expected {root / split})")
        train_dir = root / "train"
        classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
        if len(classes) != self.num_classes:
            raise ValueError(f"data.num_classes={self.num_classes} but {train_dir} has {len(classes)} class folders")
        self.classes = classes
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        skip = self.on_corrupt == "skip"
        train, val = (self._drop_corrupt(self._samples(split)) for split in ("train", "val"))
        test = self._drop_corrupt(self._samples("test")) if (root / "test").is_dir() else val
        self.train_set = ImageFolderDataset(train, self.resize_size, self.resize_size, skip)
        self.val_set = ImageFolderDataset(val, self.resize_size, self.image_size, skip)
        self.test_set = ImageFolderDataset(test, self.resize_size, self.image_size, skip)
