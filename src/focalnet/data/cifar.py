"""CIFAR-10/100 from the official python-pickle batches, held in memory as uint8 tensors."""

import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from focalnet import schema
from focalnet.data.augment import NO_AUGMENT
from focalnet.data.base import VisionDataModule, check_fixed, check_train_share, download_checked

CIFAR_AUGMENT = {**NO_AUGMENT, "random_crop": {"padding": 4}, "hflip": 0.5}


def download_and_extract(url: str, root: Path, md5: str) -> None:
    with tarfile.open(download_checked(url, root, md5)) as tar:
        tar.extractall(root, filter="data")


def read_batches(files: list[Path], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for file in files:
        with open(file, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[label_key])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)


class CIFAR10DataModule(VisionDataModule):
    """Validation is a fixed `val_size` images of the official train set (chosen by `split_seed`), test the official
    test set. Files are read from `root`; `download=True` fetches the official tarball when they are missing."""

    folder = "cifar-10-batches-py"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    md5 = "c58f30108f718f92721af3b95e74349a"
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    test_files = ["test_batch"]
    meta_file, names_key, label_key = "batches.meta", b"label_names", b"labels"
    classes_total = 10
    dataset_mean, dataset_std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

    def __init__(
        self,
        root: str | None = "data",
        download: bool = False,
        image_size: int = 32,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = True,
        augment=CIFAR_AUGMENT,
        seed: int = 0,
        val_size: int | float = 0.1,
        split_seed: int = 0,
        num_classes: int | None = None,
        in_channels: int = 3,
    ) -> None:
        schema.check("data", locals())
        name = type(self).__name__.removesuffix("DataModule").lower()
        check_fixed("num_classes", self.classes_total if num_classes is None else num_classes, self.classes_total, name)
        check_fixed("in_channels", in_channels, 3, name)
        if root is None:
            raise ValueError(f"data.root is not set; point it at the folder holding {self.folder}")
        super().__init__(
            num_classes=self.classes_total, in_channels=3, mean=self.dataset_mean, std=self.dataset_std,
            image_size=image_size, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
            augment=augment, seed=seed, root=root,
        )
        self.save_hyperparameters()
        self.download = download
        self.val_size = val_size
        self.split_seed = split_seed

    @property
    def base(self) -> Path:
        return Path(self.root).expanduser() / self.folder

    def prepare_data(self) -> None:
        if self.download and not (self.base / self.train_files[0]).exists():
            download_and_extract(self.url, self.base.parent, self.md5)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        for file in [*self.train_files, *self.test_files, self.meta_file]:
            if not (self.base / file).exists():
                hint = "call prepare_data() first" if self.download else "set data.download=true when online"
                raise FileNotFoundError(
                    f"data.root={self.root} has no {self.folder} (looked for {self.base / file}); {hint}"
                )
        with open(self.base / self.meta_file, "rb") as f:
            self.classes = [n.decode() for n in pickle.load(f, encoding="bytes")[self.names_key]]
        images, labels = read_batches([self.base / f for f in self.train_files], self.label_key)
        val_size = round(self.val_size * len(labels)) if isinstance(self.val_size, float) else self.val_size
        if not 0 < val_size < len(labels):
            raise ValueError(f"data.val_size={self.val_size} must be smaller than the {len(labels)} train images")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        train, val = order[val_size:], order[:val_size]
        check_train_share(f"data.val_size={self.val_size}", len(train), len(labels),
                          "a fraction, e.g. data.val_size=0.1, scales with the data")
        self.train_set = TensorDataset(images[train], labels[train])
        self.val_set = TensorDataset(images[val], labels[val])
        self.test_set = TensorDataset(*read_batches([self.base / f for f in self.test_files], self.label_key))


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 with its 100 fine labels."""

    folder = "cifar-100-python"
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    md5 = "eb9058c3a382ffc7106e4002c42a8d85"
    train_files = ["train"]
    test_files = ["test"]
    meta_file, names_key, label_key = "meta", b"fine_label_names", b"fine_labels"
    classes_total = 100
    dataset_mean, dataset_std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
