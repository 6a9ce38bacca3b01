"""What the model looks at: FocalNet.forward_maps, focalnet-viz and the ModulatorMaps training callback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import focalnet
from conftest import TINY, read_summary, run_cli
from focalnet.run import maps
from focalnet.tools import viz
from test_train import wandb_records

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("modulator", "gates", "kernels")
SMALL_SRF = dict(num_classes=10, image_size=64, embed_dim=16, depths=(1, 1, 1, 1))  # 4 stages, 2 levels


def isotropic(**more) -> focalnet.FocalNet:
    torch.manual_seed(0)
    return focalnet.FocalNet.build(image_size=32, patch_size=4, in_channels=1, hidden_size=16, num_layers=2,
                                   num_classes=10, **more).eval()


def hierarchical(**more) -> focalnet.FocalNet:
    torch.manual_seed(0)
    return focalnet.create_model("focalnet_tiny_srf", **SMALL_SRF, **more).eval()


def modulations(model) -> list:
    return [block.modulation for stage in model.layers for block in stage.blocks]


def assert_valid_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100, (path, img.size)


# --- forward_maps ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("global_context", [True, False])
def test_maps_of_an_isotropic_model(fast, global_context):
    model = isotropic(focal_levels=3, fast=fast, use_global_context=global_context)
    x = torch.randn(2, 1, 32, 32)
    out, maps = model.forward_maps(x)
    assert [(m["stage"], m["block"]) for m in maps] == [(0, 0), (0, 1)]
    for m in maps:  # 32 px / patch 4 = 8x8 tokens of width 16; 3 levels (+ the global context)
        assert m["gates"].shape == (2, 8, 8, 3 + global_context) and m["modulator"].shape == (2, 8, 8, 16)
    assert torch.equal(out, model(x))


def test_maps_of_the_card_model_by_name():
    model = focalnet.create_model("focalnet_card", num_classes=10, image_size=32, patch_size=4, in_channels=1,
                                  hidden_size=16, num_layers=1, focal_levels=2)
    out, maps = model.forward_maps(torch.randn(1, 1, 32, 32))
    assert out.shape == (1, 10) and len(maps) == 1
    assert maps[0]["gates"].shape == (1, 8, 8, 3) and maps[0]["modulator"].shape == (1, 8, 8, 16)


@pytest.mark.parametrize("fast", [True, False])
def test_maps_of_a_hierarchical_model_follow_each_stage(fast):
    model = hierarchical(fast=fast)
    x = torch.randn(2, 3, 64, 64)
    out, maps = model.forward_maps(x)
    assert [(m["stage"], m["block"]) for m in maps] == [(0, 0), (1, 0), (2, 0), (3, 0)]
    for i, m in enumerate(maps):  # stride 4 then halved per stage; width 16 doubled per stage; 2 levels + global
        side, width = 16 >> i, 16 << i
        assert m["gates"].shape == (2, side, side, 3) and m["modulator"].shape == (2, side, side, width)
    assert torch.equal(out, model(x))


def test_returned_maps_are_what_the_store_mechanism_keeps():
    model = hierarchical()
    x = torch.randn(2, 3, 64, 64)
    model.set_store_modulator(True)
    model(x)
    stored = [(m.gates.clone(), m.modulator.clone()) for m in modulations(model)]
    out, maps = model.forward_maps(x)
    for (gates, modulator), m, mod in zip(stored, maps, modulations(model)):
        assert torch.equal(m["gates"], gates) and torch.equal(m["modulator"], modulator)
        assert m["gates"] is mod.gates and mod.store_modulator  # storing was on before: it stays on
    model.set_store_modulator(False)
    model.forward_maps(x)
    assert all(not mod.store_modulator and mod.gates is None and mod.modulator is None for mod in modulations(model))


def test_a_plain_forward_stores_nothing():
    model = hierarchical()
    model.forward_maps(torch.randn(1, 3, 64, 64))
    model(torch.randn(1, 3, 64, 64))
    assert all(mod.gates is None and mod.modulator is None for mod in modulations(model))


# --- figures in-process ----------------------------------------------------------------------------------------


def test_images_are_shown_de_normalised():
    pixels = torch.rand(2, 3, 8, 8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normalised = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    shown = maps.to_display(normalised, mean, std)
    assert shown.shape == (2, 8, 8, 3) and np.allclose(shown, pixels.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    assert maps.to_display(normalised[:, :1], mean[:1], std[:1]).shape == (2, 8, 8)  # grayscale: no channel axis


def test_blocks_are_chosen_by_name_or_stage_dot_block():
    assert maps.select_blocks([2, 3], maps.parse_blocks("last")) == [(0, 1), (1, 2)]
    assert maps.select_blocks([2, 1], maps.parse_blocks("all")) == [(0, 0), (0, 1), (1, 0)]
    assert maps.select_blocks([2, 3], maps.parse_blocks("0.1,1.0")) == [(0, 1), (1, 0)]
    with pytest.raises(ValueError, match="block 1.3 does not exist"):
        maps.select_blocks([2, 3], maps.parse_blocks("1.3"))


def test_figures_hold_a_panel_per_image_block_and_level():
    model = hierarchical()
    images, labels = torch.randn(3, 3, 64, 64), torch.tensor([1, 2, 3])
    figures = maps.map_figures(model.train(), images, (0.5,) * 3, (0.25,) * 3, "all", labels=labels)
    assert model.training  # its mode is given back
    panels = lambda fig: [ax for ax in fig.axes if ax.images]  # noqa: E731  (colour bars hold no image)
    assert len(panels(figures["modulator"])) == 3 * (1 + 4)  # images, then a row per block
    assert len(panels(figures["gates"])) == 3 * (1 + 3)  # image, 2 levels, the global context
    assert [ax.get_title() for ax in figures["gates"].axes[1:4]] == ["level 1 (3x3)", "level 2 (5x5)", "global context"]
    assert figures["modulator"].axes[0].get_title().startswith("true 1\npred ")
    assert len(panels(maps.kernels_figure(model))) == 4 * 2  # a column per stage, a row per level


# --- focalnet-viz and the callback, on one tiny training run -------------------------------------------------------


@pytest.fixture(scope="module")
def run_with_maps(tmp_path_factory) -> Path:
    """2 short epochs with the callback on every epoch and W&B offline; its checkpoint also feeds focalnet-viz (one
    training run for the whole file keeps it fast)."""
    cwd = tmp_path_factory.mktemp("viz")
    run = cwd / "run"
    result = run_cli("focalnet-train", *TINY, "trainer.max_epochs=2", "callbacks=[default,modulator_maps]",
                     "callbacks.modulator_maps.every_n_epochs=1", "callbacks.modulator_maps.num_images=3",
                     f"hydra.run.dir={run}", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def write_images(folder: Path) -> Path:
    folder.mkdir()
    Image.fromarray(np.tile(np.arange(0, 240, 12, dtype=np.uint8), (20, 1))).save(folder / "a.png")  # gray, 20x20
    Image.fromarray(np.zeros((30, 40, 3), np.uint8) + 128).save(folder / "b.png")  # RGB, another size
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_callback_logs_the_maps_to_wandb_and_the_run_folder(run_with_maps):
    assert read_summary(run_with_maps)["status"] == "completed"
    for epoch in (0, 1):
        for kind in ("modulator", "gates"):
            assert_valid_png(run_with_maps / "viz" / f"epoch{epoch:03d}_{kind}.png")
    history = [r["history"]["item"] for r in wandb_records(run_with_maps) if r["type"] == "history"]
    for kind in ("modulator", "gates"):
        logged = [h for h in history if f"viz/{kind}._type" in h]
        assert len(logged) == 2 and all(h[f"viz/{kind}.count"] == 1 for h in logged)  # one figure per epoch
        (media,) = {Path(f).parent for h in logged for f in h[f"viz/{kind}.filenames"]}
        files = list(run_with_maps.glob(f"wandb/offline-run-*/files/{media}/{kind}_*.png"))
        assert len(files) == 2 and all(f.read_bytes()[:8] == PNG_SIGNATURE for f in files)


# The command runs in this process (its main takes argv): a subprocess would spend ~10 s importing Lightning.
def test_viz_draws_a_checkpoint_on_its_validation_split(run_with_maps, tmp_path, capsys):
    viz.main([str(run_with_maps / "checkpoints" / "last.ckpt"), "--split", "val", "--num", "2", "--blocks", "all",
              "--out", str(tmp_path / "out")])
    assert capsys.readouterr().out.split() == [str(tmp_path / "out" / f"{kind}.png") for kind in FIGURES]
    for kind in FIGURES:
        assert_valid_png(tmp_path / "out" / f"{kind}.png")


def test_viz_draws_a_checkpoint_on_image_files_beside_it(run_with_maps, tmp_path):
    ckpt = run_with_maps / "checkpoints" / "last.ckpt"
    viz.main([str(ckpt), "--images", str(write_images(tmp_path / "imgs"))])
    for kind in FIGURES:  # the default folder: viz/ beside the checkpoint
        assert_valid_png(ckpt.parent / "viz" / f"{kind}.png")


def test_viz_draws_pretrained_weights_of_a_hierarchical_rgb_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(hierarchical().state_dict(), tmp_path / "weights.pth")
    viz.main(["--model", "focalnet_tiny_srf", "--pretrained", str(tmp_path / "weights.pth"), "--set", "num_classes=10",
              "--set", "image_size=64", "--set", "embed_dim=16", "--set", "depths=[1,1,1,1]",
              "--images", str(write_images(tmp_path / "imgs"))])
    for kind in FIGURES:
        assert_valid_png(tmp_path / "viz" / f"{kind}.png")


@pytest.mark.parametrize(
    "args, message",
    [
        (["no/such.ckpt", "--split", "val"], "no/such.ckpt: no such checkpoint"),
        (["--model", "focalnet_tiny_srf", "--pretrained", "w.pth", "--images", "empty"], "no image files"),
        (["--model", "focalnet_tiny_srf", "--pretrained", "w.pth", "--images", "empty", "--blocks", "0-1"],
         "argument --blocks: '0-1': expected last, all or stage.block pairs"),
        (["--model", "focalnet_tiny_srf", "--pretrained", "w.pth", "--images", "empty", "--blocks", "4.0"],
         "block 4.0 does not exist"),
        (["--images", "empty"], "give a checkpoint, or --model NAME --pretrained FILE"),
    ],
)
def test_viz_bad_input_fails_in_one_line(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    torch.save(hierarchical().state_dict(), tmp_path / "w.pth")
    with pytest.raises(SystemExit) as stop:
        viz.main([*args, "--set", "num_classes=10", "--set", "image_size=64", "--set", "embed_dim=16",
                  "--set", "depths=[1,1,1,1]"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and message in err, err
