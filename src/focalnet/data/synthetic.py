"""Random uint8 images and labels for throughput runs: no I/O, deterministic by `seed`."""

import torch
from torch.utils.data import TensorDataset

from focalnet import schema
from focalnet.data.augment import NO_AUGMENT
from focalnet.data.base import VisionDataModule


class SyntheticDataModule(VisionDataModule):
    """`num_samples` train and `num_eval_samples` val/test images of uniform noise (labels carry no signal)."""

    def __init__(
        self,
        image_size: int = 224,
        num_classes: int = 1000,
        in_channels: int = 3,
        num_samples: int = 2048,
        num_eval_samples: int = 256,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = True,
        augment=NO_AUGMENT,
        seed: int = 0,
        root: str | None = None,
    ) -> None:
        schema.check("data", locals())
        # Uniform uint8 noise has mean 0.5 and std 0.29 per channel once scaled to [0, 1].
        super().__init__(
            num_classes=num_classes, in_channels=in_channels, mean=(0.5,) * in_channels, std=(0.29,) * in_channels,
            image_size=image_size, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
            augment=augment, seed=seed,
        )
        self.save_hyperparameters()
        self.num_samples = num_samples
        self.num_eval_samples = num_eval_samples

    def _random_set(self, n: int, generator: torch.Generator) -> TensorDataset:
        shape = (n, self.in_channels, self.image_size, self.image_size)
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        return TensorDataset(images, torch.randint(0, self.num_classes, (n,), generator=generator))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        generator = torch.Generator().manual_seed(self.seed)
        self.train_set = self._random_set(self.num_samples, generator)
        self.val_set = self._random_set(self.num_eval_samples, generator)
        self.test_set = self.val_set
