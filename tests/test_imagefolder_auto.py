"""Bring your own data: data=imagefolder data.root=<folder> alone, in either layout; the split a run drew stays its
split; class names travel to checkpoints, summary.json, W&B and focalnet-eval."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import TINY, read_summary
from focalnet.data import ImageFolderDataModule
from focalnet.run import evaluate, train
from focalnet.run.build import fill_split_file

COLORS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "fox": (0, 0, 255)}


def write_images(folder: Path, color, count: int, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        Image.new("RGB", (36, 36), color).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")


def flat_root(root: Path, per_class: int = 6) -> Path:
    for name, color in COLORS.items():
        write_images(root / name, color, per_class)
    return root


def split_of(dm: ImageFolderDataModule) -> dict[str, list[tuple[str, int]]]:
    root = Path(dm.root)
    return {
        name: [(p.relative_to(root).as_posix(), label) for p, label in dataset.samples]
        for name, dataset in (("train", dm.train_set), ("val", dm.val_set), ("test", dm.test_set))
    }


# --- the data module -------------------------------------------------------------------------------------------


def test_class_folders_are_counted_and_split_stratified_and_seeded(tmp_path):
    root = flat_root(tmp_path / "images", per_class=10)
    dm = ImageFolderDataModule(root=str(root), val_fraction=0.2, test_fraction=0.1, num_workers=0)
    assert dm.num_classes == 3 and dm.classes == ["cat", "dog", "fox"]
    dm.setup()
    split = split_of(dm)
    for name, per_class in (("train", 7), ("val", 2), ("test", 1)):  # of each class's 10 images
        labels = [label for _, label in split[name]]
        assert [labels.count(c) for c in range(3)] == [per_class] * 3, name
        assert all(path.split("/")[0] == dm.classes[label] for path, label in split[name])
    every = [path for samples in split.values() for path, _ in samples]
    assert len(every) == len(set(every)) == 30  # each image in exactly one split
    again = ImageFolderDataModule(root=str(root), val_fraction=0.2, test_fraction=0.1, num_workers=0)
    again.setup()
    assert split_of(again) == split  # split_seed, not the training seed, fixes it
    other = ImageFolderDataModule(root=str(root), val_fraction=0.2, test_fraction=0.1, split_seed=1, seed=0)
    other.setup()
    assert split_of(other)["val"] != split["val"]


def test_every_class_keeps_a_training_image(tmp_path):
    root = tmp_path / "images"
    write_images(root / "one", (1, 1, 1), 1)
    write_images(root / "two", (2, 2, 2), 2)
    write_images(root / "three", (3, 3, 3), 3)
    dm = ImageFolderDataModule(root=str(root), val_fraction=0.1, test_fraction=0.1, num_workers=0)
    dm.setup()
    count = lambda dataset, name: sum(dm.classes[label] == name for _, label in dataset.samples)  # noqa: E731
    assert [count(dm.train_set, n) for n in ("one", "two", "three")] == [1, 1, 1]
    assert [count(dm.val_set, n) for n in ("one", "two", "three")] == [0, 1, 1]
    assert [count(dm.test_set, n) for n in ("one", "two", "three")] == [0, 0, 1]
    no_test = ImageFolderDataModule(root=str(root), test_fraction=0, num_workers=0)
    no_test.setup()
    assert no_test.test_set.samples == no_test.val_set.samples  # test_fraction=0 tests on the validation images


def test_recorded_split_wins_over_images_and_classes_added_later(tmp_path):
    root = flat_root(tmp_path / "images")
    split_file = tmp_path / "run" / "split.json"
    dm = ImageFolderDataModule(root=str(root), split_file=str(split_file), num_workers=0)
    dm.setup()
    recorded = json.loads(split_file.read_text())
    assert recorded["classes"] == ["cat", "dog", "fox"]
    assert sorted(recorded["train"] + recorded["val"] + recorded["test"]) == sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*.*")
    )
    write_images(root / "cat", COLORS["cat"], 4, start=6)
    write_images(root / "owl", (9, 9, 9), 3)
    again = ImageFolderDataModule(root=str(root), split_file=str(split_file), num_workers=0)
    assert again.num_classes == 3 and again.classes == ["cat", "dog", "fox"]
    again.setup()
    assert split_of(again) == split_of(dm)
    assert json.loads(split_file.read_text()) == recorded
    fresh = ImageFolderDataModule(root=str(root), num_workers=0)  # no record: the grown folder, drawn anew
    assert fresh.num_classes == 4


def test_train_val_folders_count_their_classes(tmp_path):
    for name, color in COLORS.items():
        write_images(tmp_path / "train" / name, color, 2)
    write_images(tmp_path / "val" / "dog", COLORS["dog"], 1)
    dm = ImageFolderDataModule(root=str(tmp_path), split_file=str(tmp_path / "split.json"), num_workers=0)
    dm.setup()
    assert dm.num_classes == 3 and [label for _, label in dm.val_set.samples] == [1]
    assert len(dm.train_set) == 6 and dm.test_set.samples == dm.val_set.samples
    assert not (tmp_path / "split.json").exists()  # the folders are the split: nothing to record


def test_split_file_goes_in_the_run_folder_or_comes_from_the_resumed_run(tmp_path):
    old_run, new_run = tmp_path / "old", tmp_path / "new"
    (old_run / "checkpoints").mkdir(parents=True)
    (old_run / "split.json").write_text('{"classes": ["a"]}')
    data = OmegaConf.create({"split_file": None})
    fill_split_file(data, old_run, str(old_run / "checkpoints" / "last.ckpt"))  # resume=auto: the run's own record
    assert data.split_file == str(old_run / "split.json")
    data = OmegaConf.create({"split_file": None})
    new_run.mkdir()
    fill_split_file(data, new_run, str(old_run / "checkpoints" / "epoch000.ckpt"))
    assert data.split_file == str(new_run / "split.json")
    assert (new_run / "split.json").read_text() == '{"classes": ["a"]}'
    given = OmegaConf.create({"split_file": "/elsewhere/split.json"})
    fill_split_file(given, new_run, None)
    assert given.split_file == "/elsewhere/split.json"


def _empty_class(root: Path) -> Path:
    flat_root(root)
    (root / "emu").mkdir()
    (root / "emu" / "notes.txt").write_text("not an image")
    return root / "emu"


def _class_only_in_val(root: Path) -> Path:
    for name, color in COLORS.items():
        write_images(root / "train" / name, color, 1)
    write_images(root / "val" / "owl", (9, 9, 9), 1)
    return root


ERRORS = [
    (lambda root: flat_root(root), {"num_classes": 5}, r"data\.num_classes=5 but {root} has 3 class folders"),
    (_empty_class, {}, r"data\.root={root}: class folder {found} holds no images"),
    (_class_only_in_val, {}, r"data\.root={root}: val class 'owl' has no folder in train/"),
    (lambda root: root, {}, r"data\.root={root} holds no images"),
    (lambda root: (root / "loose.png").touch(), {}, r"data\.root={root} holds no images"),
    (lambda root: flat_root(root, per_class=1), {}, r"data\.root={root}: every class has a single image"),
    (lambda root: flat_root(root), {"num_classes": "many"}, r"data\.num_classes='many' must be an integer >= 1, auto"),
    (lambda root: flat_root(root), {"val_fraction": 1.5}, r"data\.val_fraction=1\.5 must be a number in \(0, 1\)"),
    (lambda root: flat_root(root), {"test_fraction": 0.95}, r"data\.test_fraction=0\.95 must be in \[0, 1 - "),
]


@pytest.mark.parametrize("make,kwargs,message", ERRORS, ids=[m.split(" ")[0][:40] + str(k) for _, k, m in ERRORS])
def test_bad_folders_fail_in_one_line_naming_the_problem(make, kwargs, message, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    found = make(root)
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        ImageFolderDataModule(root=str(root), num_workers=0, **kwargs).setup()
    assert "\n" not in str(error.value)
    assert error.match(message.format(root=root, found=found))


# --- focalnet-train and focalnet-eval end to end -----------------------------------------------------------------


def run_app(app, *overrides: str, cwd: Path) -> int:
    """focalnet-train / focalnet-eval's main() in this process, W&B offline: a subprocess would spend more time on
    its imports than these runs take."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr(sys, "argv", [app.__name__, *overrides])
        for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(cwd),
                            "HYDRA_FULL_ERROR": "0"}.items():  # fmt: skip
            patch.setenv(name, value)
        try:
            app.main()
        except SystemExit as stop:
            return stop.code
    return 0


FAST = (*TINY, "data=imagefolder", "data.image_size=32", "data.batch_size=4", "data.num_workers=0",
        "data.val_fraction=0.2", "data.test_fraction=0.2")  # fmt: skip


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(cwd, images, run folder) of a 1-epoch run on 3 class folders of 6 images, W&B offline."""
    cwd = tmp_path_factory.mktemp("own-data")
    root = flat_root(cwd / "images")
    assert run_app(train, *FAST, f"data.root={root}", f"hydra.run.dir={cwd / 'run'}", cwd=cwd) == 0
    return cwd, root, cwd / "run"


def test_a_folder_alone_trains_and_the_classes_travel(flat_run):
    cwd, root, run = flat_run
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["classes"] == ["cat", "dog", "fox"]
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert OmegaConf.to_container(config)["model"]["num_classes"] == "${data.num_classes}"
    assert config.data.num_classes == "auto"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["state_dict"]["model.head.weight"].shape[0] == 3  # the head followed the folder
    assert checkpoint["class_names"] == ["cat", "dog", "fox"]
    run_config = checkpoint["hyper_parameters"]["run_config"]["data"]
    assert run_config["num_classes"] == 3 and run_config["split_file"] == str(run / "split.json")
    split = json.loads((run / "split.json").read_text())
    assert [len(split[name]) for name in ("train", "val", "test")] == [12, 3, 3]  # 6 per class: 4 / 1 / 1
    # W&B's confusion matrix of the 3 test images, by class name (wandb.plot.confusion_matrix's table).
    (table_file,) = run.glob("wandb/offline-run-*/files/media/table/test/confusion_matrix_table_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["Actual", "Predicted", "nPredictions"]
    assert {actual for actual, _, _ in table["data"]} == {"cat", "dog", "fox"}
    assert sum(n for _, _, n in table["data"]) == 3
    correct = sum(n for actual, predicted, n in table["data"] if actual == predicted)
    assert correct / 3 == pytest.approx(summary["metrics"]["test/acc_top1"])


def test_eval_and_resume_see_the_recorded_split_after_the_folder_grew(flat_run, capsys):
    cwd, root, run = flat_run
    # 4 more cats (a fresh draw would test on 2 of them) and a fourth class.
    write_images(root / "cat", COLORS["cat"], 4, start=6)
    write_images(root / "owl", (9, 9, 9), 6)
    code = run_app(evaluate, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={cwd / 'eval'}", cwd=cwd)
    output = capsys.readouterr()
    assert code == 0, output.err[-3000:]
    evaluation, trained = read_summary(cwd / "eval"), read_summary(run)
    assert evaluation["classes"] == ["cat", "dog", "fox"]
    assert {name: c["images"] for name, c in evaluation["per_class"].items()} == {"cat": 1, "dog": 1, "fox": 1}
    accuracy = evaluation["metrics"]["test/acc_top1"]
    assert accuracy == pytest.approx(trained["metrics"]["test/acc_top1"], abs=1e-6)
    assert sum(c["acc"] * c["images"] for c in evaluation["per_class"].values()) / 3 == pytest.approx(accuracy)
    for name in ("cat", "dog", "fox"):
        assert f"  {name}  acc=" in output.out
    code = run_app(evaluate, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "split=val",
                   f"hydra.run.dir={cwd / 'eval_val'}", cwd=cwd)  # fmt: skip
    assert code == 0, capsys.readouterr().err[-3000:]
    on_val = read_summary(cwd / "eval_val")
    assert {name: c["images"] for name, c in on_val["per_class"].items()} == {"cat": 1, "dog": 1, "fox": 1}
    assert sum(c["acc"] for c in on_val["per_class"].values()) / 3 == pytest.approx(on_val["metrics"]["val/acc_top1"])

    resumed = cwd / "resumed"
    two_epochs = [o for o in FAST if not o.startswith("trainer.max_epochs")] + ["trainer.max_epochs=2"]
    code = run_app(train, *two_epochs, f"data.root={root}", "logger=csv",
                   f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={resumed}", cwd=cwd)  # fmt: skip
    assert code == 0, capsys.readouterr().err[-3000:]
    assert read_summary(resumed)["classes"] == ["cat", "dog", "fox"]
    assert (resumed / "split.json").read_text() == (run / "split.json").read_text()
    checkpoint = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["class_names"] == ["cat", "dog", "fox"]
