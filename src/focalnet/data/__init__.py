"""LightningDataModules: loaders yield raw batches, `on_after_batch_transfer` augments and normalises on the device."""

from focalnet.data.augment import NO_AUGMENT, PRESETS, build_augment
from focalnet.data.base import VisionDataModule
from focalnet.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from focalnet.data.digits import DigitsDataModule
from focalnet.data.imagefolder import ImageFolderDataModule
from focalnet.data.mnist import FashionMNISTDataModule, MNISTDataModule
from focalnet.data.synthetic import SyntheticDataModule

__all__ = [
    "NO_AUGMENT",
    "PRESETS",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "SyntheticDataModule",
    "VisionDataModule",
    "build_augment",
]
