"""experiment=finetune: our checkpoint with another class count gets a new head; layer-wise and head lrs; a linear
probe; bad fine-tuning options fail in one line."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import focalnet
from conftest import TINY, read_summary, run_cli
from focalnet.run.module import ClassificationModule, param_groups, warmup_cosine
from test_config import compose_train
from test_reliability import run_in_process

SMALL = ("model.hidden_size=16", "model.num_layers=2")  # the card model, 2 blocks: digits' 32x32 gives 8x8 tokens


def fit(module: L.LightningModule, steps: int, num_classes: int, tmp_path) -> L.Trainer:
    """One epoch of `steps` optimizer steps on random one-channel 32x32 images, batches of 4."""
    images, labels = torch.randn(4 * steps, 1, 32, 32), torch.randint(num_classes, (4 * steps,))
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=4))
    return trainer


def build(overrides: list[str], tmp_path) -> ClassificationModule:
    """The module focalnet-train would build from these overrides."""
    cfg = compose_train([*SMALL, *overrides], tmp_path)
    model = instantiate(cfg.model, _convert_="all")
    return instantiate(cfg.module, model=model, optim=cfg.optim, _recursive_=False)


@pytest.fixture
def ours(tmp_path) -> str:
    """A Lightning checkpoint of ours (focalnet-train's module) of the small card model on 5 classes."""
    module = build(["data=synthetic", "data.image_size=32", "data.in_channels=1", "data.num_classes=5"], tmp_path)
    trainer = fit(module, 1, 5, tmp_path)
    trainer.save_checkpoint(tmp_path / "ours.ckpt")
    return str(tmp_path / "ours.ckpt")


# --- a new head on our weights -----------------------------------------------------------------------------------


def test_finetune_starts_from_our_backbone_with_a_new_head(ours, tmp_path):
    saved = torch.load(ours, map_location="cpu", weights_only=True)["state_dict"]
    cfg = compose_train(["experiment=finetune", f"model.pretrained={ours}", *SMALL], tmp_path)  # digits: 10 classes
    with pytest.warns(UserWarning, match="pretrained head has 5 classes, the model 10: head re-initialised"):
        model = instantiate(cfg.model, _convert_="all")
    state = model.state_dict()
    backbone = {k for k in state if not k.startswith("head.")}
    assert {f"model.{k}" for k in backbone} == {k for k in saved if not k.startswith("model.head.")}
    assert all(torch.equal(state[k], saved[f"model.{k}"]) for k in backbone)
    assert state["head.weight"].shape == (10, 16) and saved["model.head.weight"].shape == (5, 16)
    assert torch.all(state["head.bias"] == 0) and 0.01 < state["head.weight"].std() < 0.03  # fresh: trunc-normal 0.02


def test_the_finetune_command_trains_from_our_checkpoint(ours, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    code, stderr = run_in_process(
        ["experiment=finetune", f"model.pretrained={ours}", *SMALL, "trainer.max_epochs=1",
         "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "test=false", "logger=none",
         "callbacks.progress_bar=null", f"hydra.run.dir={run_dir}"],
        capsys, monkeypatch,
    )  # fmt: skip
    assert code == 0, stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3 and checkpoint["state_dict"]["model.head.weight"].shape == (10, 16)
    lr = 1e-4 * 64 / 128  # the recipe's lr per 128 images, at digits' batch of 64
    peak = {g["name"]: g["initial_lr"] for g in checkpoint["optimizer_states"][0]["param_groups"]}
    # 2 blocks: the stem 0.8^3, block 0 0.8^2, block 1 0.8, the final norm 1 (no matrices: no decay group), head 10.
    scales = {"layer0": 0.8**3, "layer1": 0.8**2, "layer2": 0.8, "head": 10.0}
    expected = {f"{kind}_{part}": lr * s for part, s in scales.items() for kind in ("decay", "no_decay")}
    assert peak == pytest.approx({**expected, "no_decay_layer3": lr})


# --- learning rates ----------------------------------------------------------------------------------------------


def test_layer_decay_and_head_lr_scale_give_each_parameter_its_lr(tmp_path):
    model = focalnet.create_model("focalnet_tiny_srf", num_classes=3, in_channels=1, embed_dim=8, depths=(1, 2, 1, 1))
    optim = {
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.05},
        "warmup_epochs": 0, "warmup_lr": 1e-6, "min_lr": 1e-5, "head_lr_scale": 10.0, "layer_decay": 0.5,
    }  # fmt: skip
    trainer = fit(ClassificationModule(model, optim), 1, 3, tmp_path)
    groups = trainer.optimizers[0].param_groups
    scale = {n: g["initial_lr"] / 1e-3 for g in groups for n in g["param_names"]}
    d = 0.5  # 5 blocks: d^(6 - layer id); the stem is 0, a stage's downsampling goes with the next stage's first block
    expected = {
        "patch_embed.proj.weight": d**6,
        "layers.0.blocks.0.mlp.fc1.weight": d**5,
        "layers.0.downsample.proj.weight": d**4,
        "layers.1.blocks.0.modulation.f.weight": d**4,
        "layers.1.blocks.1.norm1.weight": d**3,
        "layers.1.downsample.norm.bias": d**2,
        "layers.2.blocks.0.mlp.fc2.bias": d**2,
        "layers.2.downsample.proj.weight": d,
        "layers.3.blocks.0.mlp.fc1.weight": d,
        "norm.weight": 1.0,
        "head.weight": 10.0,
        "head.bias": 10.0,
    }
    assert {n: scale[n] for n in expected} == pytest.approx(expected)
    # Every parameter in one group; weight decay still on matrices alone.
    assert sorted(scale) == sorted(n for n, _ in model.named_parameters())
    decay = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert (decay["head.weight"], decay["head.bias"], decay["norm.weight"], decay["patch_embed.proj.weight"]) == (
        0.05, 0.0, 0.0, 0.05,
    )  # fmt: skip


def test_the_schedule_scales_each_groups_warmup_peak_and_floor():
    base, early = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [base]}, {"params": [early], "lr": 1e-5}], lr=1e-3)  # a 0.01x group
    scheduler = warmup_cosine(optimizer, total_steps=100, warmup_steps=10, warmup_lr=1e-6, min_lr=1e-5)
    lrs = []
    for _ in range(101):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    at = [lrs[i][0] for i in (0, 5, 10, 55, 100)]  # the optimizer's lr: warm-up, peak, half-way, floor as before
    assert at == pytest.approx([1e-6, (1e-6 + 1e-3) / 2, 1e-3, (1e-3 + 1e-5) / 2, 1e-5])
    assert all(small == pytest.approx(0.01 * lr) for lr, small in lrs)
    assert lrs[100][1] == pytest.approx(1e-7)  # its own floor, not min_lr: CosineAnnealingLR would raise it 100x


def test_the_default_optim_keeps_one_lr_and_two_groups(tmp_path):
    cfg = compose_train([], tmp_path)
    assert (cfg.optim.head_lr_scale, cfg.optim.layer_decay, cfg.optim.freeze_backbone) == (1.0, None, False)
    model = instantiate(cfg.model, _convert_="all")
    groups = param_groups(model, 0.05, cfg.optim.head_lr_scale, cfg.optim.layer_decay)
    assert [(g["name"], g["lr_scale"]) for g in groups] == [("decay", 1.0), ("no_decay", 1.0)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


# --- a linear probe ------------------------------------------------------------------------------------------------


def test_freeze_backbone_trains_the_head_alone(tmp_path):
    module = build(["experiment=finetune", "optim.freeze_backbone=true"], tmp_path)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = fit(module, 3, 10, tmp_path)
    after = module.model.state_dict()
    assert {k for k in before if not torch.equal(before[k], after[k])} == {"head.weight", "head.bias"}
    names = [n for g in trainer.optimizers[0].param_groups for n in g["param_names"]]
    assert sorted(names) == ["head.bias", "head.weight"]


# --- bad input -----------------------------------------------------------------------------------------------------

OPTIM = {"optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-3}, "warmup_epochs": 0, "warmup_lr": 0, "min_lr": 0}


@pytest.mark.parametrize(
    "options,message",
    [
        ({"layer_decay": 0}, "optim.layer_decay=0 must be in (0, 1] (null or 1 turns it off)"),
        ({"layer_decay": 1.5}, "optim.layer_decay=1.5 must be in (0, 1] (null or 1 turns it off)"),
        ({"layer_decay": "high"}, "optim.layer_decay='high' must be in (0, 1] (null or 1 turns it off)"),
        ({"head_lr_scale": 0}, "optim.head_lr_scale=0 must be a number > 0"),
        ({"head_lr_scale": -10}, "optim.head_lr_scale=-10 must be a number > 0"),
        ({"freeze_backbone": "yes"}, "optim.freeze_backbone='yes' must be true or false"),
        ({"warmup_steps": 2.5}, "optim.warmup_steps=2.5 must be an integer >= 0 or null"),
    ],
)
def test_bad_fine_tuning_options_fail_in_one_line(options, message):
    model = focalnet.FocalNet.build(image_size=32, patch_size=4, hidden_size=16, num_layers=1, num_classes=10)
    with pytest.raises(ValueError) as error:
        ClassificationModule(model, {**OPTIM, **options})
    assert str(error.value) == message


def test_a_linear_probe_needs_a_head():
    model = focalnet.FocalNet.build(image_size=32, patch_size=4, hidden_size=16, num_layers=1, num_classes=None)
    with pytest.raises(ValueError) as error:
        ClassificationModule(model, {**OPTIM, "freeze_backbone": True})
    assert str(error.value) == "optim.freeze_backbone=true needs a model with a head (model.num_classes is 0)"


def test_layer_decay_needs_focalnet_parameter_names():
    with pytest.raises(ValueError) as error:
        param_groups(nn.Sequential(nn.Linear(2, 2)), 0.05, layer_decay=0.5)
    assert str(error.value) == (
        "optim.layer_decay needs FocalNet parameter names (patch_embed, layers, norm, head), not 0.weight"
    )


def test_finetune_without_weights_fails_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    code, stderr = run_in_process(
        ["experiment=finetune", *SMALL, "logger=none", f"hydra.run.dir={run_dir}"], capsys, monkeypatch
    )
    assert code == 1 and "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        "error: model.pretrained is not set: experiment=finetune starts from weights (a .pth, .safetensors or "
        "focalnet-train .ckpt file, or a hub id)"
    ]
    assert not list(run_dir.rglob("*.ckpt"))


def test_a_pretrained_file_that_is_no_checkpoint_fails_in_one_line(tmp_path):
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    result = run_cli("focalnet-train", *TINY, "logger=none", f"model.pretrained={tmp_path / 'passwd'}",
                     "hydra.run.dir=run", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith(
        f"error: model.pretrained={tmp_path / 'passwd'} is not a checkpoint in any known layout: a torch.save'd state "
        "dict, alone or under model, state_dict or model_ema (.pth, .pt, .bin, a Lightning .ckpt), a .safetensors "
        "file, a transformers folder or a hub id ("
    )  # fmt: skip
    assert read_summary(tmp_path / "run")["status"] == "failed" and not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("classes", [10, 5])  # digits' count: the head fits but for its width; another count
def test_weights_of_another_width_fail_on_the_first_key_without_a_new_head(tmp_path, classes):
    wider = focalnet.create_model("focalnet_card", num_classes=classes, image_size=32, patch_size=4, in_channels=1,
                                  hidden_size=32, num_layers=1)  # fmt: skip
    torch.save(wider.state_dict(), tmp_path / "w32.pth")
    result = run_cli("focalnet-train", *TINY, "logger=none", f"model.pretrained={tmp_path / 'w32.pth'}",
                     "hydra.run.dir=run", cwd=tmp_path)  # TINY: model.hidden_size=16  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [
        "error: checkpoint key patch_embed.proj.weight has shape (32, 1, 4, 4) but the model expects (16, 1, 4, 4)"
    ]
    assert "re-initialised" not in result.stderr
    assert read_summary(tmp_path / "run")["status"] == "failed" and not list(tmp_path.rglob("*.ckpt"))
