"""DataModules: splits, file formats, errors, and the on-device augmentation/normalisation."""

import hashlib
import inspect
import logging
import os
import pickle
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from PIL import Image
from sklearn.datasets import load_digits

from focalnet.data import (
    NO_AUGMENT,
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
DATASETS = ["digits", "cifar10", "cifar100", "imagefolder", "synthetic"]


def load_data_config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=f"data/{name}", overrides=list(overrides)).data


def on_device(dm, batch, training: bool):
    """What Lightning does after moving a batch to the device, with a stand-in trainer."""
    dm.trainer = SimpleNamespace(training=training)
    return dm.on_after_batch_transfer(batch, 0)


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule()
    dm.setup("fit")
    return dm


# --- digits ---------------------------------------------------------------------------------------------------


def test_digits_splits_are_stratified_and_sized(digits):
    assert (len(digits.train_set), len(digits.val_set), len(digits.test_set)) == (1257, 180, 360)
    test_counts = torch.bincount(digits.test_set.tensors[1], minlength=10)
    assert test_counts.min() >= 34 and test_counts.max() <= 38  # 10 classes of ~180 images, 20% each
    val_counts = torch.bincount(digits.val_set.tensors[1], minlength=10)
    assert val_counts.min() >= 17 and val_counts.max() <= 19
    # Together the splits hold every image of every class exactly once.
    all_labels = torch.cat([s.tensors[1] for s in (digits.train_set, digits.val_set, digits.test_set)])
    assert torch.bincount(all_labels).tolist() == np.bincount(load_digits().target).tolist()


def test_digits_batches_are_float_images_in_unit_range(digits):
    images, labels = next(iter(digits.train_dataloader()))
    assert images.shape == (64, 1, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.shape == (64,)
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 32)
    assert digits.classes == [str(i) for i in range(10)]


def test_digits_test_split_is_the_same_for_every_training_seed(digits):
    other = DigitsDataModule(seed=123)
    other.setup()
    assert torch.equal(other.test_set.tensors[0], digits.test_set.tensors[0])
    assert torch.equal(other.test_set.tensors[1], digits.test_set.tensors[1])
    # The training seed changes only the shuffling order, reproducibly.
    first = next(iter(digits.train_dataloader()))[1]
    assert torch.equal(first, next(iter(digits.train_dataloader()))[1])
    assert not torch.equal(first, next(iter(other.train_dataloader()))[1])
    resplit = DigitsDataModule(split_seed=1)
    resplit.setup()
    assert not torch.equal(resplit.test_set.tensors[0], digits.test_set.tensors[0])


def test_digits_upsamples_to_image_size():
    dm = DigitsDataModule(image_size=16, batch_size=8)
    dm.setup()
    images, _ = next(iter(dm.val_dataloader()))
    assert images.shape == (8, 1, 16, 16)


def test_digits_normalisation_gives_zero_mean_unit_std(digits):
    images, labels = digits.train_set.tensors
    out, out_labels = on_device(digits, (images, labels), training=False)
    assert abs(out.mean().item()) < 0.01 and abs(out.std().item() - 1) < 0.02
    assert torch.equal(out_labels, labels)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 0.0}, "data.val_fraction=0.0"),
        ({"test_fraction": 1.5}, "data.test_fraction=1.5"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "data.val_fraction \\+ data.test_fraction"),
        ({"num_classes": 5}, "data.num_classes=5"),
        ({"in_channels": 3}, "data.in_channels=3"),
        ({"batch_size": 0}, "data.batch_size=0"),
        ({"augment": {"hflp": 0.5}}, "data.augment.hflp is not an option; known: random_resized_crop"),
        ({"augment": "fancy"}, "data.augment='fancy'"),
        ({"augment": {**NO_AUGMENT, "rand_augment": {"n": 2, "m": 9}}}, "rand_augment needs RGB"),
    ],
)
def test_digits_bad_options_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DigitsDataModule(**kwargs)


# --- on-device augmentation ------------------------------------------------------------------------------------


def test_augmentation_changes_train_batches_only(digits):
    images, labels = next(iter(digits.val_dataloader()))
    plain = digits.normalize(images)
    val_a, _ = on_device(digits, (images, labels), training=False)
    val_b, _ = on_device(digits, (images, labels), training=False)
    assert torch.equal(val_a, plain) and torch.equal(val_b, plain)
    train_a, train_labels = on_device(digits, (images, labels), training=True)
    train_b, _ = on_device(digits, (images, labels), training=True)
    assert train_a.shape == images.shape and train_a.dtype == torch.float32
    assert torch.equal(train_labels, labels)
    assert (train_a - plain).abs().mean() > 0.05 and not torch.equal(train_a, train_b)


def test_hflip_mirrors_and_presets_resolve():
    dm = SyntheticDataModule(image_size=8, num_samples=4, num_eval_samples=4, augment={"hflip": 1.0})
    dm.setup()
    images, labels = dm.train_set.tensors
    out, _ = on_device(dm, (images, labels), training=True)
    assert torch.allclose(out, dm.normalize(images.flip(-1).float() / 255), atol=1e-6)
    assert SyntheticDataModule(augment="none").augmentation is None
    names = [type(m).__name__ for m in SyntheticDataModule(augment="strong").augmentation.children()]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "RandAugment", "RandomErasing"]


def test_rgb_augmentation_keeps_shape_and_resizes():
    dm = SyntheticDataModule(image_size=24, num_samples=8, num_eval_samples=8, augment="strong")
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    out, _ = on_device(dm, (images, torch.zeros(8, dtype=torch.long)), training=True)
    assert out.shape == (8, 3, 24, 24) and out.dtype == torch.float32
    val, _ = on_device(dm, (images, torch.zeros(8, dtype=torch.long)), training=False)
    assert val.shape == (8, 3, 24, 24)


# --- synthetic -------------------------------------------------------------------------------------------------


def test_synthetic_shapes_and_determinism():
    dm = SyntheticDataModule(image_size=16, num_classes=7, in_channels=2, num_samples=40, num_eval_samples=8, seed=3)
    dm.setup()
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (40, 2, 16, 16) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 7
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (40, 8, 8)
    same, other = (
        SyntheticDataModule(image_size=16, num_classes=7, in_channels=2, num_samples=40, seed=seed) for seed in (3, 4)
    )
    same.setup()
    other.setup()
    assert torch.equal(same.train_set.tensors[0], dm.train_set.tensors[0])
    assert not torch.equal(other.train_set.tensors[0], dm.train_set.tensors[0])


# --- CIFAR -----------------------------------------------------------------------------------------------------


def pixel_rows(labels: list[int]) -> np.ndarray:
    """Rows in the CIFAR layout (1024 red, 1024 green, 1024 blue): red = 10 * label, green = 200, blue = 7."""
    rows = np.zeros((len(labels), 3072), dtype=np.uint8)
    rows[:, :1024] = np.array(labels)[:, None] * 10 % 256
    rows[:, 1024:2048], rows[:, 2048:] = 200, 7
    return rows


def write_batch(path: Path, labels: list[int], label_key: bytes, name: bytes) -> None:
    batch = {
        b"batch_label": name,
        label_key: labels,
        b"data": pixel_rows(labels),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [label // 5 for label in labels]
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar10(root: Path) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for b in range(1, 6):
        write_batch(base / f"data_batch_{b}", [(4 * b + i) % 10 for i in range(4)], b"labels", b"training batch")
    write_batch(base / "test_batch", [3, 1, 4, 1, 5], b"labels", b"testing batch 1 of 1")
    names = [n.encode() for n in "airplane automobile bird cat deer dog frog horse ship truck".split()]
    meta = {b"num_cases_per_batch": 4, b"label_names": names, b"num_vis": 3072}
    (base / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return base


def write_cifar100(root: Path) -> None:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    write_batch(base / "train", [7 * i % 100 for i in range(30)], b"fine_labels", b"training batch 1 of 1")
    write_batch(base / "test", [99, 0, 42], b"fine_labels", b"testing batch 1 of 1")
    meta = {b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": [b"x"] * 20}
    (base / "meta").write_bytes(pickle.dumps(meta, protocol=2))


def test_cifar10_reads_the_pickle_batches(tmp_path):
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=5, batch_size=64)
    dm.setup("fit")
    assert dm.classes[3] == "cat" and dm.num_classes == 10 and dm.in_channels == 3
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (15, 5, 5)
    all_labels = sorted(torch.cat([dm.train_set.tensors[1], dm.val_set.tensors[1]]).tolist())
    assert all_labels == sorted((4 * b + i) % 10 for b in range(1, 6) for i in range(4))
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.uint8 and labels.tolist() == [3, 1, 4, 1, 5]
    # The channel planes land where the CIFAR layout puts them.
    assert torch.equal(images[:, 0, 5, 9], torch.tensor([30, 10, 40, 10, 50], dtype=torch.uint8))
    assert (images[:, 1] == 200).all() and (images[:, 2] == 7).all()
    # The held-out validation images depend on split_seed only.
    again = CIFAR10DataModule(root=str(tmp_path), val_size=5, seed=9)
    again.setup()
    assert torch.equal(again.val_set.tensors[0], dm.val_set.tensors[0])


def test_cifar_resizes_on_the_device(tmp_path):
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=5, image_size=48)
    dm.setup()
    out, _ = on_device(dm, next(iter(dm.train_dataloader())), training=True)
    assert out.shape == (15, 3, 48, 48) and out.dtype == torch.float32


def test_cifar100_reads_fine_labels(tmp_path):
    write_cifar100(tmp_path)
    dm = CIFAR100DataModule(root=str(tmp_path), val_size=10)
    dm.setup()
    assert dm.num_classes == 100 and dm.classes[42] == "c42"
    assert (len(dm.train_set), len(dm.val_set)) == (20, 10)
    assert dm.test_set.tensors[1].tolist() == [99, 0, 42]
    assert dm.test_set.tensors[0][0, 0].unique().tolist() == [99 * 10 % 256]


def test_cifar_missing_files_give_one_clear_error(tmp_path):
    dm = CIFAR10DataModule(root=str(tmp_path / "nowhere"))
    dm.prepare_data()  # download is off: nothing happens
    expected = (
        f"data.root={tmp_path / 'nowhere'} has no cifar-10-batches-py "
        f"(looked for {tmp_path / 'nowhere' / 'cifar-10-batches-py' / 'data_batch_1'}); "
        "set data.download=true when online"
    )
    with pytest.raises(FileNotFoundError) as err:
        dm.setup()
    assert str(err.value) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_size": 0}, "data.val_size=0"),
        ({"num_classes": 100}, "data.num_classes=100 but cifar10 has 10"),
        ({"root": None}, "data.root is not set"),
    ],
)
def test_cifar_bad_options_name_the_key(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        CIFAR10DataModule(**{"root": str(tmp_path), **kwargs})


def test_cifar_val_size_larger_than_train(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(ValueError, match="data.val_size=20 must be smaller than the 20 train images"):
        CIFAR10DataModule(root=str(tmp_path), val_size=20).setup()


def test_cifar_download_checks_md5_and_extracts(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(CIFAR10DataModule, "url", archive.as_uri())
    monkeypatch.setattr(CIFAR10DataModule, "md5", "0" * 32)
    bad = CIFAR10DataModule(root=str(tmp_path / "bad"), download=True, val_size=5)
    with pytest.raises(RuntimeError, match="expected 00000000"):
        bad.prepare_data()
    assert not (tmp_path / "bad" / "cifar-10-python.tar.gz").exists()
    monkeypatch.setattr(CIFAR10DataModule, "md5", hashlib.md5(archive.read_bytes()).hexdigest())
    dm = CIFAR10DataModule(root=str(tmp_path / "good"), download=True, val_size=5)
    dm.prepare_data()
    dm.setup()
    assert len(dm.test_set) == 5


# --- image folders ---------------------------------------------------------------------------------------------

COLORS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "fox": (0, 0, 255)}


def write_image(path: Path, color, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


@pytest.fixture
def image_root(tmp_path):
    for name, color in COLORS.items():
        write_image(tmp_path / "train" / name / "a.JPEG", color)
        write_image(tmp_path / "train" / name / "b.jpg", color, size=(30, 50))
        write_image(tmp_path / "train" / name / "c.png", color, size=(64, 64))
    for name in ("cat", "dog"):
        write_image(tmp_path / "val" / name / "v.png", COLORS[name], size=(50, 40))
    (tmp_path / "train" / "cat" / "bad.jpg").write_bytes(b"this is not an image")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored: not an image extension")
    return tmp_path


def test_imagefolder_decodes_and_skips_corrupt(image_root, caplog):
    dm = ImageFolderDataModule(root=str(image_root), num_classes=3, image_size=32, batch_size=16, num_workers=0)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert dm.num_corrupt == 1
    assert "1 corrupt image(s)" in caplog.text and "bad.jpg" in caplog.text
    assert dm.classes == ["cat", "dog", "fox"]
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (9, 2, 2)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (9, 3, 37, 37) and images.dtype == torch.uint8  # 32 / 0.875, cropped on the device
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [0, 1]
    means = images.float().mean(dim=(2, 3))
    assert means[0, 0] > 240 and means[0, 1:].max() < 15  # cat is red
    assert means[1, 1] > 240 and means[1, [0, 2]].max() < 15  # dog is green
    out, _ = on_device(dm, next(iter(dm.train_dataloader())), training=True)
    assert out.shape == (9, 3, 32, 32)


def test_imagefolder_error_mode_names_the_file(image_root):
    dm = ImageFolderDataModule(root=str(image_root), num_classes=3, on_corrupt="error", num_workers=0)
    with pytest.raises(ValueError, match=r"corrupt image .*bad\.jpg: "):
        dm.setup()


def test_imagefolder_undecodable_image_after_verify(image_root, caplog):
    # A JPEG cut short in its pixel data passes Pillow's verify() and fails only when decoded, in the loader.
    path = image_root / "train" / "dog" / "a.JPEG"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-2000])
    (image_root / "train" / "cat" / "bad.jpg").unlink()
    dm = ImageFolderDataModule(root=str(image_root), num_classes=3, image_size=16, num_workers=0)
    dm.setup()
    index = [p.name for p, _ in dm.train_set.samples].index("a.JPEG", 3)
    with caplog.at_level(logging.WARNING):
        image, label = dm.train_set[index]
    assert "a.JPEG" in caplog.text and label == 1 and image.shape == (3, 18, 18)
    dm.train_set.skip_corrupt = False
    with pytest.raises(ValueError, match=r"corrupt image .*a\.JPEG"):
        dm.train_set[index]


def test_imagefolder_uses_test_folder_when_present(image_root):
    write_image(image_root / "test" / "fox" / "t.png", COLORS["fox"])
    dm = ImageFolderDataModule(root=str(image_root), num_classes=3, num_workers=0)
    dm.setup()
    assert [label for _, label in dm.test_set.samples] == [2]


def test_imagefolder_errors_name_the_problem(image_root, tmp_path):
    with pytest.raises(ValueError, match="data.num_classes=5 but .* has 3 class folders"):
        ImageFolderDataModule(root=str(image_root), num_classes=5).setup()
    write_image(image_root / "val" / "owl" / "o.png", (9, 9, 9))
    with pytest.raises(ValueError, match="val class 'owl' has no folder in train/"):
        ImageFolderDataModule(root=str(image_root), num_classes=3).setup()
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=f"data.root={missing}: no such folder"):
        ImageFolderDataModule(root=str(missing), num_classes=3)
    (image_root / "train").rename(image_root / "training")
    with pytest.raises(FileNotFoundError, match=f"data.root={image_root} has no train/ folder"):
        ImageFolderDataModule(root=str(image_root), num_classes=3)
    with pytest.raises(ValueError, match="data.on_corrupt='ignore'"):
        ImageFolderDataModule(root=str(image_root), num_classes=3, on_corrupt="ignore")


def test_imagefolder_default_workers(image_root):
    dm = ImageFolderDataModule(root=str(image_root), num_classes=3)
    assert dm.num_workers == min(4, os.cpu_count())
    dm.setup()
    loader = dm.train_dataloader()  # not iterated: no worker processes start
    assert loader.persistent_workers is True
    assert loader.pin_memory is torch.cuda.is_available()


# --- Hydra configs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DATASETS)
def test_config_lists_every_option_with_the_code_default(name):
    cfg = load_data_config(name)
    for key in ("image_size", "num_classes", "in_channels", "batch_size", "num_workers", "root"):
        assert key in cfg, f"conf/data/{name}.yaml lacks {key}"
    params = inspect.signature(get_class(cfg._target_)).parameters
    values = OmegaConf.to_container(cfg, resolve=True)
    del values["_target_"]
    assert set(values) == set(params)
    for key, value in values.items():
        if key == "num_classes" and params[key].default is None:
            continue  # CIFAR's code default means "the dataset's own count"
        assert value == params[key].default, f"conf/data/{name}.yaml {key}={value!r}"


def test_config_instantiates_and_follows_the_run_seed():
    cfg = load_data_config("synthetic", "+seed=5", "data.image_size=8", "data.num_samples=4", "data.augment=light")
    dm = instantiate(cfg)
    assert isinstance(dm, SyntheticDataModule) and dm.seed == 5 and dm.image_size == 8
    assert [type(m).__name__ for m in dm.augmentation.children()] == ["RandomResizedCrop", "RandomHorizontalFlip"]
    digits = instantiate(load_data_config("digits", "data.augment.hflip=0.5"))
    assert isinstance(digits, DigitsDataModule) and digits.seed == 0
    assert [type(m).__name__ for m in digits.augmentation.children()] == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
    ]
