"""Image folders, decoded with Pillow in worker processes: ImageNet-style root/{train,val[,test]}/<class>/<image>,
or root/<class>/<image> split into train/val/test here."""

import json
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from focalnet import schema
from focalnet.data.augment import PRESETS
from focalnet.data.base import VisionDataModule
from focalnet.files import write_json

log = logging.getLogger(__name__)

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_AUGMENT = PRESETS["strong"]


def find_images(root: str, class_dir: Path) -> list[Path]:
    """The images of a class folder (`root`, data.root, names it in the error when there are none)."""
    images = [p for p in sorted(class_dir.rglob("*")) if p.suffix.lower() in EXTENSIONS]
    if not images:
        raise FileNotFoundError(f"data.root={root}: class folder {class_dir} holds no images")
    return images


def auto_image_size(paths: list[Path]) -> tuple[int, str]:
    """data.image_size=auto: the size to train at, and why. Few images teach a small model little that a small size
    cannot show, and decoding and augmenting large ones is most of a CPU run's time: 64 px below 1,000 images, 128
    below 10,000, else 224; never above the images' median shorter side (of about 100 spread over the list). A
    multiple of 16, at least 32: the card's patches (image_size / 16, conf/model/card.yaml) then tile it."""
    sides = []
    for path in paths[:: max(1, len(paths) // 100)]:
        try:
            with Image.open(path) as img:  # the header only
                sides.append(min(img.size))
        except Exception:  # unreadable: setup drops it
            continue
    cap = 64 if len(paths) < 1000 else 128 if len(paths) < 10000 else 224
    median = sorted(sides)[len(sides) // 2] if sides else cap
    return max(32, min(cap, median) // 16 * 16), f"{len(paths):,} images, median shorter side {median} px"


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
    """Two layouts. With train/ and val/ (and test/, else val/ again) under `root`, classes are the sorted folder
    names of train/ and val/test may hold a subset of them. Otherwise `root` holds the class folders itself and
    each class is split here: `val_fraction` and `test_fraction` of its images (at least one each; test_fraction=0
    tests on val), drawn by `split_seed`, always keeping one for training. That split is written to `split_file`
    when given, and read back from it when it exists: images added to the folder later change no split.

    `num_classes="auto"` takes the number of class folders (at least 2); a number is checked against it.
    `image_size="auto"` chooses a size from the images (see `auto_image_size`).
    Train images are decoded at `image_size / crop_pct` and cropped on the device (RandomResizedCrop); val/test at
    `image_size / crop_pct` then center-cropped to `image_size` (the usual 256 -> 224 evaluation).
    Unreadable files are found once in `setup` (Pillow `verify`): `on_corrupt=skip` drops and counts them,
    `on_corrupt=error` raises naming the first.
    """

    def __init__(
        self,
        root: str | None = None,
        num_classes: int | str = "auto",
        image_size: int | str = "auto",
        batch_size: int = 16,
        num_workers: int | None = None,
        pin_memory: bool = True,
        augment=IMAGENET_AUGMENT,
        seed: int = 0,
        crop_pct: float = 0.875,
        on_corrupt: str = "skip",
        in_channels: int = 3,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        split_file: str | None = None,
    ) -> None:
        schema.check("data", locals())
        if root is None:
            raise ValueError("data.root is not set; point it at the folder of class folders (or of train/ and val/)")
        if in_channels != 3:
            raise ValueError(f"data.in_channels={in_channels!r} but imagefolder decodes RGB (3)")
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"data.test_fraction={test_fraction!r} must be in [0, 1 - data.val_fraction)")
        self.split_file = Path(split_file).expanduser() if split_file else None
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"data.root={root}: no such folder")
        # A root with train/ or val/ is the ImageNet layout (it then needs both); anything else holds class folders.
        self.presplit = (folder / "train").is_dir() or (folder / "val").is_dir()
        classes = self._find_classes(folder)
        class_root = self._class_root(folder)
        if len(classes) < 2:  # else torchmetrics fails later, in many lines that name neither key nor folder
            raise ValueError(f"data.root={root} has one class folder ({class_root / classes[0]}): a classifier needs "
                             "at least 2 classes")
        # A class without a readable image would train as a class the model never sees: stopped here, before any
        # run folder fills, by finding each class's first readable image (setup checks every file).
        images = {name: find_images(root, class_root / name) for name in classes}
        for name, paths in images.items():
            if all(check_image(path) for path in paths):
                raise ValueError(f"data.root={root}: class folder {class_root / name} holds no readable image "
                                 f"({len(paths)} file(s); {paths[0].name}: {check_image(paths[0])})")
        if image_size == "auto":
            recorded = self._recorded_split()  # a resumed run sees the images its split holds, not new ones
            every = ([folder / p for key in ("train", "val", "test") for p in recorded[key]] if recorded
                     else [path for listed in images.values() for path in listed])  # fmt: skip
            image_size, why = auto_image_size(every)
            log.info(f"data.image_size=auto: {image_size} px ({why})")
        if num_classes == "auto":
            num_classes = len(classes)
        elif num_classes != len(classes):
            raise ValueError(f"data.num_classes={num_classes} but {class_root} has {len(classes)} "
                             "class folders (data.num_classes=auto counts them)")
        super().__init__(
            num_classes=num_classes, in_channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=image_size,
            batch_size=batch_size, num_workers=min(4, os.cpu_count() or 1) if num_workers is None else num_workers,
            pin_memory=pin_memory, augment=augment, seed=seed, root=root,
        )
        self.save_hyperparameters()
        self.classes = classes
        self.class_to_idx = {name: i for i, name in enumerate(classes)}
        self.resize_size = round(image_size / crop_pct)
        self.on_corrupt = on_corrupt
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.num_corrupt = 0

    def _class_root(self, root: Path) -> Path:
        return root / "train" if self.presplit else root

    def _recorded_split(self) -> dict | None:
        if not self.presplit and self.split_file and self.split_file.is_file():
            return json.loads(self.split_file.read_text())
        return None

    def _find_classes(self, root: Path) -> list[str]:
        """The sorted class folder names; a recorded split's own, so that new class folders change nothing."""
        if recorded := self._recorded_split():
            return recorded["classes"]
        for split in ("train", "val") if self.presplit else ():
            if not (root / split).is_dir():
                raise FileNotFoundError(f"data.root={root} has no {split}/ folder (expected {root / split})")
        classes = sorted(p.name for p in self._class_root(root).iterdir() if p.is_dir())
        if not classes:
            raise FileNotFoundError(f"data.root={root} holds no images: expected <root>/<class>/<image> or "
                                    "<root>/train/<class>/<image>")
        return classes

    def _samples(self, split: str) -> list[tuple[Path, int]]:
        folder = Path(self.root).expanduser() / split
        samples = []
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            if class_dir.name not in self.class_to_idx:
                raise ValueError(f"data.root={self.root}: {split} class {class_dir.name!r} has no folder in train/")
            samples += [(p, self.class_to_idx[class_dir.name]) for p in find_images(self.root, class_dir)]
        if not samples:
            raise FileNotFoundError(f"data.root={self.root} has no images under {folder}")
        return samples

    def _split(self) -> dict[str, list[str]]:
        """Per class (stratified), a seeded share of its images for val and for test; paths relative to root.

        Not scikit-learn's stratified split: it refuses a class of one image and a val set smaller than the number
        of classes, and may leave a class with no training image.
        """
        root = Path(self.root).expanduser()
        rng = random.Random(self.split_seed)
        split = {"classes": self.classes, "train": [], "val": [], "test": []}
        for name in self.classes:
            images = [p.relative_to(root).as_posix() for p in find_images(self.root, root / name)]
            rng.shuffle(images)
            spare = len(images) - 1  # one image always stays for training
            n_val = min(spare, max(1, round(len(images) * self.val_fraction)))
            n_test = min(spare - n_val, max(1, round(len(images) * self.test_fraction))) if self.test_fraction else 0
            split["val"] += images[:n_val]
            split["test"] += images[n_val : n_val + n_test]
            split["train"] += images[n_val + n_test :]
        return split

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
        if self.presplit:
            train, val = (self._samples(split) for split in ("train", "val"))
            test = self._samples("test") if (root / "test").is_dir() else None
        else:
            if self.split_file and self.split_file.is_file():
                split = json.loads(self.split_file.read_text())
            else:
                split = self._split()
                if self.split_file:
                    write_json(self.split_file, split)
            train, val, test = (
                [(root / p, self.class_to_idx[p.split("/", 1)[0]]) for p in split[name]] or None
                for name in ("train", "val", "test")
            )
            if not val:
                raise ValueError(f"data.root={self.root}: every class has a single image, none is left for validation")
        skip = self.on_corrupt == "skip"
        train, val = self._drop_corrupt(train), self._drop_corrupt(val)
        test = self._drop_corrupt(test) if test else val
        self.train_set = ImageFolderDataset(train, self.resize_size, self.resize_size, skip)
        self.val_set = ImageFolderDataset(val, self.resize_size, self.image_size, skip)
        self.test_set = ImageFolderDataset(test, self.resize_size, self.image_size, skip)
