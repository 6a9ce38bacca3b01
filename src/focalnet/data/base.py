"""Shared base: DataLoaders plus the on-device transform (to float, resize, augment while training, normalise)."""

import hashlib
import itertools
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import kornia.augmentation as K
import lightning as L
import torch
from kornia.geometry.transform import resize
from torch.hub import download_url_to_file
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from focalnet.data.augment import build_augment

# Lightning warns on every mid-epoch resume that a loader without state_dict() starts its epoch over; ours does not
# (VisionDataModule.state_dict).
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")

log = logging.getLogger(__name__)


def check_train_share(setting: str, train: int, total: int, hint: str = "") -> None:
    """A split that leaves less than half of the images to train on is legal but rarely meant (a fixed validation
    size taken from a small set): it is said in the log, and focalnet-train puts it in summary.json's warnings."""
    if total and train < total / 2:
        log.warning(f"{setting} leaves {train:,} of {total:,} images to train on ({train / total:.0%}), less than half"
                    + (f" ({hint})" if hint else ""))


class VisionDataModule(L.LightningDataModule):
    """Loaders yield (uint8 or float [B, C, H, W], int64 [B]); `on_after_batch_transfer` finishes the batch on the
    device, so the CPU side stays a cheap tensor gather and the GPU does the per-pixel work."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        augment,
        seed: int,
        root: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(image_size, int):  # data.image_size=auto is imagefolder's; the others have a size
            raise ValueError(f"data.image_size={image_size!r} must be an integer >= 1 for this data set (auto is "
                             "imagefolder's)")
        self.num_classes = num_classes
        self.classes = [str(i) for i in range(num_classes)]  # names, where the dataset has them, after setup()
        self.in_channels = in_channels
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.root = root
        self.augmentation = build_augment(augment, image_size, in_channels)
        self.normalize = K.Normalize(torch.tensor(self.mean), torch.tensor(self.std))
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self._resume_at: dict | None = None

    # Lightning keeps the datamodule's state_dict() in every checkpoint and restores it before it builds the loaders.
    # A plain loader would start a mid-epoch checkpoint's epoch over (a preempted run), training on its first batches
    # twice; resumed, this one leaves out by index, reading none of them, the batches done. The epoch matters too:
    # with worker processes the first pass draws its indices before Lightning sets the sampler's epoch.
    def state_dict(self) -> dict[str, int]:
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress
        if progress.is_last_batch:  # the epoch's training batches are done: a resumed run starts the next epoch
            return {"epoch": self.trainer.current_epoch + 1, "batches": 0}
        return {"epoch": self.trainer.current_epoch, "batches": progress.current.completed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = state or None

    def transform_batch(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        """uint8 [0, 255] or float [0, 1] images -> normalised float at image_size, augmented when `train`."""
        images = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        size = (self.image_size, self.image_size)
        if tuple(images.shape[-2:]) != size:
            images = resize(images, size, antialias=True)
        if train and self.augmentation is not None:
            images = self.augmentation(images)
        return self.normalize(images)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.transform_batch(images, train=training), labels

    def _loader(self, dataset: Dataset | None, train: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for its dataloaders")
        sampler = None
        if train:
            # Shuffled by data.seed + epoch (Lightning calls set_epoch), whatever else drew from the global RNG: a run
            # resumed at epoch e draws the order the uninterrupted run drew. Lightning keeps a DistributedSampler as is.
            world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
            sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
            if self._resume_at:  # a run resumed from a checkpoint: start where it stopped (see state_dict)
                sampler.set_epoch(self._resume_at["epoch"])
                sampler.start = self._resume_at["batches"] * self.batch_size
                self._resume_at = None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            # Each iterator draws its workers' base seed from this generator, not from the global RNG, which then
            # holds only the augmentation's and the model's draws: the same in a resumed run as in an unbroken one.
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)


class ResumableSampler(DistributedSampler):
    """A DistributedSampler whose next pass can start part-way through its epoch's order (seed + epoch)."""

    start = 0  # indices of the next pass to leave out: those a resumed run already trained on

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return itertools.islice(super().__iter__(), start, None)


def check_fixed(key: str, value, expected, dataset: str) -> None:
    """The yaml carries num_classes/in_channels for the model config; for a fixed dataset they must match it."""
    if value != expected:
        raise ValueError(f"data.{key}={value!r} but {dataset} has {expected}")


def download_checked(url: str, folder: Path, md5: str) -> Path:
    """Fetch `url` into `folder`; a file whose MD5 is not `md5` is removed and the call fails in one line."""
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / url.rsplit("/", 1)[-1]
    download_url_to_file(url, str(file))
    digest = hashlib.md5(file.read_bytes()).hexdigest()
    if digest != md5:
        file.unlink()
        raise RuntimeError(f"{url} downloaded with MD5 {digest}, expected {md5}; removed it, try again")
    return file
