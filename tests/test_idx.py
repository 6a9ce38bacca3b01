"""Fashion-MNIST / MNIST: the IDX reader, its layouts and errors, the seeded stratified splits, download, configs."""

import gzip
import hashlib
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from focalnet.data import FashionMNISTDataModule, MNISTDataModule

CONF = Path(__file__).resolve().parents[1] / "conf"
NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
N_TRAIN, N_TEST = 100, 20  # 10 and 2 images per class


def idx_bytes(array: np.ndarray, magic: int | None = None, shape: tuple | None = None) -> bytes:
    magic = 0x800 + array.ndim if magic is None else magic
    shape = array.shape if shape is None else shape
    return struct.pack(f">I{len(shape)}I", magic, *shape) + array.astype(np.uint8).tobytes()


def write_idx(folder: Path, name: str, data: bytes, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"{name}.gz" if gz else name)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random images whose first pixel is their index, labels cycling over the 10 classes."""
    images = np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)
    return images, np.arange(n) % 10


def write_dataset(folder: Path, gz: bool = True, **replace: bytes) -> dict[str, np.ndarray]:
    """The four files in `folder`, any of them replaced by the given bytes; returns what they hold."""
    (train_x, train_y), (test_x, test_y) = arrays(N_TRAIN), arrays(N_TEST, seed=1)
    content = dict(zip(NAMES, (train_x, train_y, test_x, test_y), strict=True))
    for name, array in content.items():
        write_idx(folder, name, replace.get(name, idx_bytes(array)), gz)
    return content


def on_device(dm, batch, training: bool):
    dm.trainer = SimpleNamespace(training=training)
    return dm.on_after_batch_transfer(batch, 0)


# --- reading ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("raw", [False, True])
def test_reads_gzipped_and_plain_files_in_both_layouts(tmp_path, gz, raw):
    content = write_dataset(tmp_path / "FashionMNIST" / "raw" if raw else tmp_path, gz=gz)
    dm = FashionMNISTDataModule(root=str(tmp_path), val_size=20)
    dm.setup()
    images, labels = dm.test_set.tensors
    assert images.dtype == torch.uint8 and images.shape == (N_TEST, 1, 28, 28)
    assert torch.equal(images[:, 0], torch.from_numpy(content["t10k-images-idx3-ubyte"]))
    assert labels.dtype == torch.int64 and labels.tolist() == content["t10k-labels-idx1-ubyte"].tolist()
    assert (len(dm.train_set), len(dm.val_set)) == (80, 20)
    # Train and validation hold every train image once, each with its own label.
    train_x = torch.cat([dm.train_set.tensors[0], dm.val_set.tensors[0]])[:, 0]
    train_y = torch.cat([dm.train_set.tensors[1], dm.val_set.tensors[1]])
    index = train_x[:, 0, 0].long()
    assert sorted(index.tolist()) == list(range(N_TRAIN)) and torch.equal(train_y, index % 10)
    assert torch.equal(train_x, torch.from_numpy(content["train-images-idx3-ubyte"])[index])
    assert dm.classes[0] == "T-shirt/top" and dm.classes[9] == "Ankle boot" and len(dm.classes) == 10


def test_mnist_reads_its_own_folder_and_names_digits(tmp_path):
    write_dataset(tmp_path / "MNIST" / "raw")
    dm = MNISTDataModule(root=str(tmp_path), val_size=20)
    dm.setup()
    assert len(dm.test_set) == N_TEST and dm.classes == [str(i) for i in range(10)]
    assert (dm.mean, dm.std) == ((0.1307,), (0.3081,))
    with pytest.raises(FileNotFoundError, match="FashionMNIST/raw"):  # MNIST's folder is not Fashion-MNIST's
        FashionMNISTDataModule(root=str(tmp_path), val_size=20).setup()


# --- errors: one line naming the file --------------------------------------------------------------------------

train_x, train_y = arrays(N_TRAIN)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("train-images-idx3-ubyte", idx_bytes(train_x, magic=0x804), "magic number 0x00000804, expected 0x00000803"),
        ("train-labels-idx1-ubyte", b"\x00\x00", "magic number 0x0000, expected 0x00000801"),
        ("train-images-idx3-ubyte", idx_bytes(train_x, shape=(101, 28, 28)), "header says 101x28x28 = 79184 bytes of"
         " data, the file holds 78400"),
        ("train-images-idx3-ubyte", idx_bytes(train_x.reshape(100, 49, 16)), "49x16 images, expected 28x28"),
        ("train-labels-idx1-ubyte", idx_bytes(train_y[:99]), "has 100 images but .* has 99 labels"),
        ("train-labels-idx1-ubyte", idx_bytes(np.minimum(train_y * 2, 255)), "label 18 out of range for 10 classes"),
    ],
)
def test_bad_files_fail_in_one_line_naming_the_file(tmp_path, name, data, message):
    write_dataset(tmp_path, **{name: data})
    with pytest.raises(ValueError, match=message) as error:
        FashionMNISTDataModule(root=str(tmp_path), val_size=20).setup()
    assert "\n" not in str(error.value) and f"{tmp_path / name}.gz" in str(error.value)


def test_truncated_gzip_names_the_file(tmp_path):
    write_dataset(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"^{path}: cannot read it") as error:
        FashionMNISTDataModule(root=str(tmp_path), val_size=20).setup()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("download", "hint"), [(False, "data.download=true fetches it"), (True, "call prepare_data() first")]
)
def test_missing_file_is_one_line_naming_file_and_folders(tmp_path, download, hint):
    write_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as error:
        FashionMNISTDataModule(root=str(tmp_path), val_size=20, download=download).setup()
    assert str(error.value) == (
        f"data.root={tmp_path}: no t10k-labels-idx1-ubyte(.gz) in {tmp_path} or {tmp_path}/FashionMNIST/raw ({hint})"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"root": None}, "data.root is not set"),
        ({"val_size": 0}, "data.val_size=0 must be"),
        ({"val_size": 1.0}, "data.val_size=1.0 must be"),
        ({"val_size": True}, "data.val_size=True must be"),
        ({"train_subset": -5}, "data.train_subset=-5 must be"),
        ({"num_classes": 100}, "data.num_classes=100 but fashionmnist has 10"),
        ({"in_channels": 3}, "data.in_channels=3 but fashionmnist has 1"),
    ],
)
def test_bad_options_name_the_key(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        FashionMNISTDataModule(**{"root": str(tmp_path), **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_size": 100}, "data.val_size=100: .*smaller than the number of samples 100"),
        ({"val_size": 5}, "data.val_size=5: .*number of classes = 10"),
        ({"train_subset": 80}, "data.train_subset=80: .*smaller than the number of samples 80"),
    ],
)
def test_splits_that_cannot_be_made_name_the_key(tmp_path, kwargs, message):
    write_dataset(tmp_path)
    with pytest.raises(ValueError, match=message):
        FashionMNISTDataModule(root=str(tmp_path), **{"val_size": 20, **kwargs}).setup()


# --- splits ----------------------------------------------------------------------------------------------------


def split_of(root: Path, **kwargs) -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(root=str(root), **kwargs)
    dm.setup()
    return dm


def test_val_split_is_stratified_sized_and_seeded(tmp_path):
    write_dataset(tmp_path)
    dm = split_of(tmp_path, val_size=30)
    assert (len(dm.train_set), len(dm.val_set)) == (70, 30)
    assert torch.bincount(dm.val_set.tensors[1]).tolist() == [3] * 10
    assert split_of(tmp_path, val_size=0.2).val_set.tensors[1].bincount().tolist() == [2] * 10  # a fraction
    same, other = split_of(tmp_path, val_size=30, seed=5), split_of(tmp_path, val_size=30, split_seed=1)
    assert torch.equal(same.val_set.tensors[0], dm.val_set.tensors[0])  # the run's seed does not move the split
    assert not torch.equal(other.val_set.tensors[0], dm.val_set.tensors[0])


def test_train_subset_is_a_stratified_part_of_the_train_split(tmp_path):
    write_dataset(tmp_path)
    full = split_of(tmp_path, val_size=20)
    for subset, size in ((30, 30), (0.5, 40)):
        dm = split_of(tmp_path, val_size=20, train_subset=subset)
        assert len(dm.train_set) == size and torch.bincount(dm.train_set.tensors[1]).tolist() == [size // 10] * 10
        assert torch.equal(dm.val_set.tensors[0], full.val_set.tensors[0])  # the same validation images
        pixels = {x.numpy().tobytes() for x in full.train_set.tensors[0]}
        assert all(x.numpy().tobytes() in pixels for x in dm.train_set.tensors[0])
    first, again = (split_of(tmp_path, val_size=20, train_subset=30, seed=s).train_set.tensors[0] for s in (0, 1))
    assert torch.equal(first, again)  # fixed by split_seed, whatever the run's seed


# --- batches ---------------------------------------------------------------------------------------------------


def test_loader_yields_uint8_and_the_device_step_normalises(tmp_path):
    write_dataset(tmp_path)
    dm = split_of(tmp_path, val_size=20, batch_size=16)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (16, 1, 28, 28)
    assert labels.dtype == torch.int64 and labels.shape == (16,)
    out, out_labels = on_device(dm, (images, labels), training=False)
    assert out.dtype == torch.float32 and out.shape == (16, 1, 28, 28) and torch.equal(out_labels, labels)
    assert torch.allclose(out, (images.float() / 255 - 0.2860) / 0.3530, atol=1e-5)
    trained, _ = on_device(dm, (images, labels), training=True)  # shifted (and maybe mirrored): other pixels
    assert trained.shape == out.shape and not torch.equal(trained, out)
    resized = split_of(tmp_path, val_size=20, batch_size=4, image_size=32)
    assert on_device(resized, next(iter(resized.val_dataloader())), training=False)[0].shape == (4, 1, 32, 32)


# --- download --------------------------------------------------------------------------------------------------


def test_download_checks_md5_into_the_raw_folder(tmp_path, monkeypatch):
    write_dataset(tmp_path / "mirror")
    md5 = {name: hashlib.md5((tmp_path / "mirror" / f"{name}.gz").read_bytes()).hexdigest() for name in NAMES}
    monkeypatch.setattr(FashionMNISTDataModule, "url", (tmp_path / "mirror").as_uri() + "/")
    monkeypatch.setattr(FashionMNISTDataModule, "md5", {**md5, NAMES[0]: "0" * 32})
    bad = FashionMNISTDataModule(root=str(tmp_path / "bad"), download=True, val_size=20)
    with pytest.raises(RuntimeError, match="train-images-idx3-ubyte.gz downloaded with MD5 .* expected 00000000"):
        bad.prepare_data()
    assert not (tmp_path / "bad" / "FashionMNIST" / "raw" / f"{NAMES[0]}.gz").exists()
    monkeypatch.setattr(FashionMNISTDataModule, "md5", md5)
    dm = FashionMNISTDataModule(root=str(tmp_path / "good"), download=True, val_size=20)
    dm.prepare_data()
    dm.setup()
    assert sorted(p.name for p in (tmp_path / "good" / "FashionMNIST" / "raw").iterdir()) == sorted(
        f"{name}.gz" for name in NAMES
    )
    assert len(dm.test_set) == N_TEST


# --- configs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls", "hflip"), [("fashion_mnist", FashionMNISTDataModule, 0.5), ("mnist", MNISTDataModule, 0.0)]
)
def test_config_lists_every_option_with_the_code_default(tmp_path, name, cls, hflip):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=f"data/{name}", overrides=[f"data.root={tmp_path}"]).data
    assert cfg.root == str(tmp_path) and (cfg.image_size, cfg.in_channels, cfg.num_classes) == (28, 1, 10)
    dm = instantiate(cfg, _convert_="all")
    assert type(dm) is cls and dict(dm.hparams) == dict(cls(root=str(tmp_path)).hparams)
    assert dm.hparams.augment["hflip"] == hflip and dm.hparams.augment["random_crop"] == {"padding": 2}


def test_the_validation_split_scales_with_the_data_and_a_small_train_share_warns(tmp_path, caplog):
    """The default is a fraction (54,000/6,000 on the standard 60,000, 90/10 here); a fixed size that leaves less
    than half of the images to train on is legal, and said."""
    write_dataset(tmp_path)
    dm = split_of(tmp_path)
    assert (len(dm.train_set), len(dm.val_set)) == (90, 10)
    with caplog.at_level("WARNING", logger="focalnet"):
        split_of(tmp_path, val_size=60)
    assert caplog.messages == ["data.val_size=60 leaves 40 of 100 images to train on (40%), less than half (a "
                               "fraction, e.g. data.val_size=0.1, scales with the data)"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="focalnet"):
        split_of(tmp_path, val_size=50)
    assert caplog.messages == []  # half is fine
