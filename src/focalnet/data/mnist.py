"""Fashion-MNIST and MNIST from the four standard IDX files (gzipped or plain), held in memory as uint8 tensors."""

import gzip
import math
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from focalnet import schema
from focalnet.data.augment import NO_AUGMENT
from focalnet.data.base import VisionDataModule, check_fixed, check_train_share, download_checked

# Shifts of up to 2 px, plus mirroring for clothes; digits are not mirror-symmetric.
FASHION_AUGMENT = {**NO_AUGMENT, "random_crop": {"padding": 2}, "hflip": 0.5}
MNIST_AUGMENT = {**NO_AUGMENT, "random_crop": {"padding": 2}}
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An IDX file of unsigned bytes: magic 0x0000080<ndim>, ndim big-endian uint32 sizes, then the data."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:  # a truncated or corrupt gzip stream
        raise ValueError(f"{path}: cannot read it ({error})") from None
    header, magic = 4 + 4 * ndim, 0x800 + ndim
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise ValueError(f"{path}: magic number 0x{data[:4].hex()}, expected 0x{magic:08x} (IDX, {ndim}-d uint8)")
    shape = tuple(np.frombuffer(data, ">u4", count=ndim, offset=4).tolist())
    if math.prod(shape) != len(data) - header:
        size = f"{'x'.join(map(str, shape))} = {math.prod(shape)}"
        raise ValueError(f"{path}: header says {size} bytes of data, the file holds {len(data) - header}")
    return torch.from_numpy(np.frombuffer(data, np.uint8, offset=header).reshape(shape).copy())


class FashionMNISTDataModule(VisionDataModule):
    """The official test set is the test split; validation is `val_size` train images and `train_subset` (if set)
    a part of the rest, both stratified and fixed by `split_seed`. The IDX files are read from `root` or, as
    torchvision lays them out, `root/<folder>/raw`; `download=True` fetches the missing ones into the latter."""

    folder = "FashionMNIST"
    url = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    md5 = {  # of the official gzipped files
        "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    class_names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
    dataset_mean, dataset_std = (0.2860,), (0.3530,)

    def __init__(
        self,
        root: str | None = None,
        download: bool = False,
        image_size: int = 28,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = True,
        augment=FASHION_AUGMENT,
        seed: int = 0,
        val_size: int | float = 0.1,
        train_subset: int | float | None = None,
        split_seed: int = 0,
        num_classes: int = 10,
        in_channels: int = 1,
    ) -> None:
        schema.check("data", locals())
        name = type(self).__name__.removesuffix("DataModule").lower()
        check_fixed("num_classes", num_classes, 10, name)
        check_fixed("in_channels", in_channels, 1, name)
        if root is None:
            raise ValueError(f"data.root is not set; point it at the folder holding the {name} IDX files")
        super().__init__(
            num_classes=10, in_channels=1, mean=self.dataset_mean, std=self.dataset_std, image_size=image_size,
            batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, augment=augment, seed=seed,
            root=root,
        )
        self.save_hyperparameters()
        self.classes = list(self.class_names)
        self.download = download
        self.val_size = val_size
        self.train_subset = train_subset
        self.split_seed = split_seed

    @property
    def folders(self) -> tuple[Path, Path]:
        root = Path(self.root).expanduser()
        return root, root / self.folder / "raw"

    def find(self, name: str) -> Path | None:
        return next((f for d in self.folders for f in (d / f"{name}.gz", d / name) if f.exists()), None)

    def prepare_data(self) -> None:
        if self.download:
            for name, md5 in self.md5.items():
                if self.find(name) is None:
                    download_checked(f"{self.url}{name}.gz", self.folders[1], md5)

    def read_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [N, 1, 28, 28] images and int64 [N] labels, checked against each other."""
        paths = [self.find(name) for name in SPLITS[split]]
        for name, path in zip(SPLITS[split], paths, strict=True):
            if path is None:
                hint = "call prepare_data() first" if self.download else "data.download=true fetches it"
                root, raw = self.folders
                raise FileNotFoundError(f"data.root={self.root}: no {name}(.gz) in {root} or {raw} ({hint})")
        images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1).long()
        if images.shape[1:] != (28, 28):
            raise ValueError(f"{paths[0]}: {images.shape[1]}x{images.shape[2]} images, expected 28x28")
        if len(images) != len(labels):
            raise ValueError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
        if len(labels) and labels.max() >= self.num_classes:
            raise ValueError(f"{paths[1]}: label {labels.max().item()} out of range for {self.num_classes} classes")
        return images.unsqueeze(1), labels

    def split(self, key: str, size: int | float, indices: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
        """`indices` less `size` of them, and those, stratified by label and fixed by split_seed."""
        try:
            return train_test_split(indices, test_size=size, stratify=labels[indices], random_state=self.split_seed)
        except ValueError as error:  # more than there are, or too few to hold every class
            raise ValueError(f"data.{key}={size!r}: {error}") from None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = self.read_split("train")
        train, val = self.split("val_size", self.val_size, np.arange(len(labels)), labels.numpy())
        check_train_share(f"data.val_size={self.val_size}", len(train), len(labels),
                          "a fraction, e.g. data.val_size=0.1, scales with the data")
        if self.train_subset is not None:
            train = self.split("train_subset", self.train_subset, train, labels.numpy())[1]
        train, val = torch.from_numpy(train), torch.from_numpy(val)
        self.train_set = TensorDataset(images[train], labels[train])
        self.val_set = TensorDataset(images[val], labels[val])
        self.test_set = TensorDataset(*self.read_split("test"))


class MNISTDataModule(FashionMNISTDataModule):
    """MNIST's handwritten digits; the same files, layout and splits as Fashion-MNIST."""

    folder = "MNIST"
    url = "https://ossci-datasets.s3.amazonaws.com/mnist/"
    md5 = {
        "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    class_names = [str(i) for i in range(10)]
    dataset_mean, dataset_std = (0.1307,), (0.3081,)

    # Only the augmentation's default differs (no flip); the other arguments are Fashion-MNIST's.
    def __init__(self, root: str | None = None, augment=MNIST_AUGMENT, **kwargs) -> None:
        super().__init__(root=root, augment=augment, **kwargs)
