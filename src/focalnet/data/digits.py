"""scikit-learn's 1797 real 8x8 handwritten digits: ships with scikit-learn, so training needs no download."""

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from focalnet import schema
from focalnet.data.augment import NO_AUGMENT
from focalnet.data.base import VisionDataModule, check_fixed, check_train_share

# Of the images up-sampled to 32x32 in [0, 1] (bilinear keeps the mean, shrinks the std a little).
DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3236,)
# Digits are not mirror-symmetric: no flip, only a mild zoom.
DIGITS_AUGMENT = {**NO_AUGMENT, "random_resized_crop": {"scale": [0.85, 1.0], "ratio": [0.9, 1.1]}}


class DigitsDataModule(VisionDataModule):
    """Stratified train/val/test split fixed by `split_seed` (not the training seed), so every run tests on the
    same images; up-sampled once in `setup` and kept in memory as float tensors in [0, 1]."""

    def __init__(
        self,
        image_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = True,
        augment=DIGITS_AUGMENT,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        num_classes: int = 10,
        in_channels: int = 1,
        root: str | None = None,
    ) -> None:
        schema.check("data", locals())
        check_fixed("num_classes", num_classes, 10, "digits")
        check_fixed("in_channels", in_channels, 1, "digits")
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction} leaves no train")
        super().__init__(
            num_classes=10, in_channels=1, mean=DIGITS_MEAN, std=DIGITS_STD, image_size=image_size,
            batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, augment=augment, seed=seed,
        )
        self.save_hyperparameters()
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        digits = load_digits()
        images = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # pixel values are 0..16
        images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        labels = torch.from_numpy(digits.target).long()
        split = {"random_state": self.split_seed}
        rest, test = train_test_split(
            np.arange(len(labels)), test_size=self.test_fraction, stratify=digits.target, **split
        )
        val_share = self.val_fraction / (1 - self.test_fraction)
        train, val = train_test_split(rest, test_size=val_share, stratify=digits.target[rest], **split)
        check_train_share(f"data.val_fraction={self.val_fraction} with data.test_fraction={self.test_fraction}",
                          len(train), len(labels))
        self.train_set, self.val_set, self.test_set = (
            TensorDataset(images[i], labels[i]) for i in map(torch.from_numpy, (train, val, test))
        )
