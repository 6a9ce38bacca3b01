"""focalnet.schema: one declaration per config group; messages name the key, the value and what is allowed."""

from __future__ import annotations

import json

import pytest

from conftest import TINY
from focalnet import schema
from focalnet.data import DigitsDataModule


@pytest.mark.parametrize(
    "group,values,message",
    [
        ("trainer", {"gradient_clip_val": -1}, "trainer.gradient_clip_val=-1 must be a number >= 0 or null"),
        ("trainer", {"max_epochs": "abc"}, "trainer.max_epochs='abc' must be an integer >= -1 or null"),
        ("model", {"hidden_size": True}, "model.hidden_size=True must be an integer >= 1"),  # strict: 1 is not true
        ("model", {"focal_levels": [2, -1]}, "model.focal_levels=[2, -1] must be an integer >= 0 or a list, each an "
                                             "integer >= 0"),  # fmt: skip
        # FocalNet's switches: the type its signature declares (a bool, a Literal's values).
        ("model", {"use_gates": 1}, "model.use_gates=1 must be true or false"),
        ("model", {"interaction": "mul"}, "model.interaction='mul' must be multiply or add"),
        ("data", {"val_size": 1.0}, "data.val_size=1.0 must be an integer >= 1 or a number in (0, 1)"),
        ("data", {"batch_size": None}, "data.batch_size=None must be an integer >= 1"),  # absent is fine, null not
        ("data", {"augment": {"hflip": 2}}, "data.augment.hflip=2 must be a number in [0, 1] or null"),
        ("data", {"augment": 5}, "data.augment=5 must be a mapping of options, a string or null"),
        ("optim", {"layer_decay": 0}, "optim.layer_decay=0 must be in (0, 1] (null or 1 turns it off)"),
        ("optim", {"optimizer": {"lr": "fast"}}, "optim.optimizer.lr='fast' must be a number > 0"),
        ("callbacks", {"ema": {"decay": 1}}, "callbacks.ema.decay=1 must be a number in (0, 1)"),
    ],
)
def test_messages_name_the_full_key_the_value_and_what_is_allowed(group, values, message):
    with pytest.raises(ValueError) as error:
        schema.check(group, values)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_keys_a_group_does_not_declare_pass_and_absent_keys_are_fine():
    schema.check("data", {"self": object(), "batch_size": 4})
    schema.check("model", {})
    schema.validate({"seed": None, "model": {"num_classes": None}, "optim": {"optimizer": {"_target_": "x.Y"}}})


def test_every_model_argument_is_a_model_key():
    """model.* follows FocalNet's signature: a switch added there is a checked config key with no schema entry."""
    from focalnet.models.focalnet import arguments

    assert set(arguments()) <= set(schema.Model.model_fields)
    for name, (kind, _) in arguments().items():
        if kind is bool:
            with pytest.raises(ValueError, match=rf"^model\.{name}='yes' must be true or false$"):
                schema.check("model", {name: "yes"})


def test_python_users_meet_the_same_schema():
    with pytest.raises(ValueError, match=r"^data.batch_size=0 must be an integer >= 1$"):
        DigitsDataModule(batch_size=0)


def test_warnings_for_legal_but_suspicious_settings():
    cfg = {"trainer": {"max_epochs": 1}, "optim": {"warmup_epochs": 100},
           "callbacks": {"early_stopping": {"patience": 3}}}  # fmt: skip
    assert schema.warnings(cfg) == [
        "optim.warmup_epochs=100 > trainer.max_epochs=1: the warm-up never ends, the learning rate never reaches "
        "optim.optimizer.lr",
        "callbacks.early_stopping.patience=3 >= trainer.max_epochs=1: early stopping can never stop the run",
    ]
    assert schema.warnings({"trainer": {"max_epochs": 50}, "optim": {"warmup_epochs": 1}}) == []
    # 0.9998 averages over ~5000 steps: a 790-step run's EMA weights are mostly the initial ones.
    assert "about 5000 steps but the run takes 790" in schema.ema_warning(0.9998, 1, 790)
    assert schema.ema_warning(0.99, 1, 790) is None


def test_a_run_records_its_warnings(tmp_path, monkeypatch, capsys):
    from test_reliability import run_in_process

    monkeypatch.chdir(tmp_path)
    code, _ = run_in_process([*TINY, "logger=csv", "test=false", f"hydra.run.dir={tmp_path}/run",
                              "optim.warmup_epochs=100", "data.val_fraction=0.45"], capsys, monkeypatch)  # fmt: skip
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert code == 0 and summary["status"] == "completed"
    # The config's own warnings, then the data module's (digits: 1,797 images, 20% for testing, 45% for validation).
    assert summary["warnings"] == [
        "optim.warmup_epochs=100 > trainer.max_epochs=1: the warm-up never ends, the learning rate never reaches "
        "optim.optimizer.lr",
        "data.val_fraction=0.45 with data.test_fraction=0.2 leaves 628 of 1,797 images to train on (35%), less than "
        "half",
    ]
