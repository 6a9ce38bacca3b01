"""focalnet-export: a run's checkpoint as transformers, timm and the official code load it, back to the same logits."""

import json
import os
from pathlib import Path

import pytest
import torch

import focalnet
from focalnet.run.module import model_from_checkpoint
from focalnet.tools import export


@pytest.fixture(scope="module")
def checkpoint(trained_run):
    return trained_run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("fmt, out", [("hf", "hf"), ("official", "w.pth")])
def test_a_runs_checkpoint_exports_and_loads_back_with_the_same_logits(checkpoint, tmp_path, capsys, fmt, out):
    export.main([str(checkpoint), "--format", fmt, "--out", str(tmp_path / out)])
    assert capsys.readouterr().out.strip() == str(tmp_path / out)
    model, run_cfg = model_from_checkpoint(checkpoint)
    if fmt == "hf":
        config = json.loads((tmp_path / out / "config.json").read_text())
        assert config["architectures"] == ["FocalNetForImageClassification"]
        assert config["depths"] == [run_cfg.model.num_layers] and config["embed_dim"] == run_cfg.model.hidden_size
        assert len(config["id2label"]) == run_cfg.data.num_classes
        back = focalnet.create_model_from_pretrained(str(tmp_path / out))
    else:
        assert set(torch.load(tmp_path / out, weights_only=True)) == {"model"}
        back = focalnet.FocalNet(**model.arch)
        focalnet.load_pretrained(back, str(tmp_path / out))
    x = torch.randn(3, run_cfg.data.in_channels, run_cfg.data.image_size, run_cfg.data.image_size)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_a_weights_file_exports_with_its_model_name_and_class_names(tmp_path, capsys):
    src = focalnet.create_model("focalnet_tiny_srf", num_classes=2, embed_dim=16, depths=(1, 1, 1, 1))
    torch.save(src.state_dict(), tmp_path / "w.pth")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    export.main([str(tmp_path / "w.pth"), "--model", "focalnet_tiny_srf", "--set", "embed_dim=16",
                 "--set", "depths=[1,1,1,1]", "--format", "hf", "--out", str(tmp_path / "hf"),
                 "--class-names", str(tmp_path / "names.txt")])
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog"}
    export.main([str(tmp_path / "hf"), "--format", "timm", "--out", str(tmp_path / "timm.safetensors")])
    back = focalnet.create_model("focalnet_tiny_srf", num_classes=2, embed_dim=16, depths=(1, 1, 1, 1),
                                 pretrained=str(tmp_path / "timm.safetensors"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x), src.eval()(x), rtol=0, atol=0)


def test_what_cannot_be_exported_fails_in_one_line(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        export.main([str(checkpoint), "--format", "timm", "--out", str(tmp_path / "t.pth")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "format=timm cannot hold this model" in err and "timm's FocalNet is hierarchical" in err
    torch.save({}, tmp_path / "w.pth")
    with pytest.raises(SystemExit):
        export.main([str(tmp_path / "w.pth"), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert "no config.json in" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists() and not (tmp_path / "t.pth").exists()


@pytest.mark.parametrize("fmt, out", [("official", "w.pth"), ("hf", "hf"), ("timm", "w.safetensors")])
def test_an_unwritable_out_is_named_with_the_os_reason(tmp_path, capsys, fmt, out):
    src = focalnet.create_model("focalnet_tiny_srf", num_classes=2, embed_dim=16, depths=(1, 1, 1, 1))
    torch.save(src.state_dict(), tmp_path / "w.pth")
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    if os.access(folder, os.W_OK):  # root ignores the mode; sysfs refuses new files even to root
        folder = Path("/sys")
        if not folder.is_dir():
            pytest.skip("root, and no /sys: no folder it cannot write into")
    with pytest.raises(SystemExit) as exit_:
        export.main([str(tmp_path / "w.pth"), "--model", "focalnet_tiny_srf", "--set", "embed_dim=16",
                     "--set", "depths=[1,1,1,1]", "--format", fmt, "--out", str(folder / out)])  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"focalnet-export: error: --out {folder / out} cannot be written: ")
    assert err.rstrip().endswith(("Permission denied", "Operation not permitted", "Read-only file system"))
    assert not (folder / out).exists() and not list(folder.glob("*.partial"))
