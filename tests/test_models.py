import json
import math
import re
import time

import pytest
import torch

import focalnet
from focalnet import FocalNet, create_model, list_models, model_stats

RELEASED = (
    [f"focalnet_{s}_{r}" for s in ("tiny", "small", "base") for r in ("srf", "lrf")]
    + [f"focalnet_{s}_iso" for s in ("tiny", "small", "base")]
    + [f"focalnet_{s}_fl{l}" for s in ("large", "xlarge", "huge") for l in (3, 4)]
)


def test_registry_holds_every_released_model_and_the_card():
    assert set(RELEASED) | {"focalnet_card"} <= set(list_models())


@pytest.mark.parametrize("name", sorted(set(RELEASED) | {"focalnet_card"}))
def test_every_registered_model_gives_logits_and_features(name):
    # The meta device runs shape inference only, so even the 700M-parameter models cost nothing.
    with torch.device("meta"):
        model = create_model(name, num_classes=7)
        assert model(torch.empty(2, 3, 64, 64)).shape == (2, 7)
        feats = create_model(name, num_classes=None)(torch.empty(2, 3, 64, 64))
    assert feats.shape == (2, model.num_features)


def test_small_models_run_for_real():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for name in ("focalnet_tiny_srf", "focalnet_tiny_iso", "focalnet_card"):
        y = create_model(name, num_classes=5, image_size=32)(x)
        assert y.shape == (2, 5) and torch.isfinite(y).all()


def test_card_builder_with_and_without_head():
    x = torch.randn(3, 3, 224, 224)
    feats = FocalNet.build()
    assert feats(x).shape == (3, 256)
    assert FocalNet.output_size() == 256
    logits = FocalNet.build(num_classes=10)
    assert logits(x).shape == (3, 10)
    assert FocalNet.output_size(num_classes=10) == 10
    small = dict(
        image_size=32, patch_size=4, in_channels=1, hidden_size=48, num_layers=2, focal_levels=2, focal_kernel=5
    )
    assert FocalNet.build(**small)(torch.randn(2, 1, 32, 32)).shape == (2, FocalNet.output_size(**small)) == (2, 48)
    m = FocalNet.build(**small, num_classes=4)
    assert m.layers[0].blocks[0].modulation.kernel_sizes == [5, 7]
    assert len(m.layers) == 1 and len(m.layers[0].blocks) == 2


# Official README: params (M) and GMACs at 224 px with a 1000-class head.
TABLE = {
    "focalnet_tiny_srf": (28.4, 4.4),
    "focalnet_tiny_lrf": (28.6, 4.5),
    "focalnet_small_srf": (49.9, 8.6),
    "focalnet_base_lrf": (88.7, 15.4),
    "focalnet_tiny_iso": (5.9, 1.1),
    "focalnet_small_iso": (22.4, 4.3),
    "focalnet_base_iso": (87.2, 16.9),
}


@pytest.mark.parametrize("name", TABLE)
def test_params_and_flops_match_the_official_table(name):
    with torch.device("meta"):
        stats = model_stats(create_model(name, num_classes=1000), 224)
    params, gmacs = TABLE[name]
    assert stats["params"] / 1e6 == pytest.approx(params, rel=0.02)
    assert stats["flops"] / 1e9 == pytest.approx(gmacs, rel=0.02)


def _official_state(model):
    """Our names are the official ones; the official `h` is a 1x1 conv."""
    return {k: (v[..., None, None] if k.endswith("modulation.h.weight") else v) for k, v in model.state_dict().items()}


def _timm_state(model):
    """timm's names and layouts, written out by hand from timm's focalnet.py."""
    out = {}
    for k, v in model.state_dict().items():
        if re.search(r"modulation\.(f|h|proj)\.weight$|mlp\.fc[12]\.weight$", k):
            v = v[..., None, None]
        k = re.sub(r"^patch_embed\.", "stem.", k)
        k = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k)
        if model.layers[0].blocks[0].use_postln:
            k = re.sub(r"\.norm([12])\.", r".norm\1_post.", k)
        k = re.sub(r"\.gamma_([12])$", r".ls\1.gamma", k)
        k = k.replace("modulation.ln.", "modulation.norm.").replace("head.", "head.fc.")
        out[k] = v
    return out


SMALL = dict(embed_dim=16, depths=(1, 1, 2, 1), image_size=64)


@pytest.mark.parametrize("name", ["focalnet_tiny_lrf", "focalnet_huge_fl4", "focalnet_base_iso"])
@pytest.mark.parametrize("fmt", ["official", "timm"])
def test_checkpoints_in_both_formats_load_and_give_the_same_logits(tmp_path, name, fmt):
    torch.manual_seed(0)
    kw = dict(SMALL) if "iso" not in name else dict(embed_dim=[32], depths=(2,), image_size=64)
    src = create_model(name, num_classes=10, **kw).eval()
    state = _official_state(src) if fmt == "official" else _timm_state(src)
    if fmt == "timm":
        assert "stem.proj.weight" in state and "head.fc.weight" in state
        assert any(".ls1.gamma" in k for k in state) == (src.layers[0].blocks[0].gamma_1 is not None)
        path = tmp_path / "w.safetensors"
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        path = tmp_path / "w.pth"
        torch.save({"model": state, "epoch": 3}, path)
    dst = create_model(name, num_classes=10, pretrained=str(path), **kw).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_head_of_another_size_is_dropped_with_a_warning(tmp_path):
    src = create_model("focalnet_tiny_srf", num_classes=21842, **SMALL)
    path = tmp_path / "in22k.pth"
    torch.save(src.state_dict(), path)
    with pytest.warns(UserWarning, match="21842 classes.*re-initialised"):
        dst = create_model("focalnet_tiny_srf", num_classes=10, pretrained=str(path), **SMALL)
    assert dst.head.weight.shape == (10, dst.num_features)
    torch.testing.assert_close(dst.layers[2].blocks[1].modulation.f.weight, src.layers[2].blocks[1].modulation.f.weight)


def test_checkpoint_of_another_model_names_the_first_bad_key(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(create_model("focalnet_tiny_srf", num_classes=10, **SMALL).state_dict(), path)
    with pytest.raises(
        ValueError, match=r"layers\.0\.blocks\.0\.modulation\.f\.weight has shape \(35, 16\).*\(36, 16\)"
    ):
        create_model("focalnet_tiny_lrf", num_classes=10, pretrained=str(path), **SMALL)


def test_hub_id_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError) as err:
        create_model("focalnet_tiny_srf", num_classes=10, pretrained="timm/focalnet_tiny_srf.ms_in1k", **SMALL)
    msg = str(err.value)
    assert "\n" not in msg and "timm/focalnet_tiny_srf.ms_in1k" in msg and "Hugging Face hub" in msg


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = create_model("focalnet_huge_fl4", num_classes=5, drop_path_rate=0.1, **SMALL)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead


def test_modulator_and_gates_on_request_and_stage_features():
    model = create_model("focalnet_tiny_lrf", num_classes=5, **SMALL).eval()
    mod = model.layers[1].blocks[0].modulation
    x = torch.randn(2, 3, 64, 64)
    model(x)
    assert mod.modulator is None and mod.gates is None  # nothing kept unless asked
    model.set_store_modulator(True)
    model(x)
    assert mod.modulator.shape == (2, 8, 8, 32) and mod.gates.shape == (2, 8, 8, 4)  # 3 levels + global
    feats = model.forward_intermediates(x)
    assert [tuple(f.shape) for f in feats] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]
    torch.testing.assert_close(
        model.forward_features(x).permute(0, 3, 1, 2), model.norm(feats[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    )


def test_ablation_knobs_change_the_function_and_keep_shapes():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    base = dict(image_size=32, patch_size=4, in_channels=1, hidden_size=32, num_layers=2, num_classes=3)
    ref = FocalNet.build(**base).eval()
    # Same parameters, other function: the output must move.
    for knob in [dict(gate_act="sigmoid"), dict(normalize_modulator=True), dict(use_postln=True)]:
        m = FocalNet.build(**base, **knob).eval()
        m.load_state_dict(ref.state_dict())
        assert not torch.allclose(m.forward_features(x), ref.forward_features(x), rtol=1e-3, atol=0), knob
    for knob in [
        dict(use_global_context=False),
        dict(use_postln_in_modulation=True),
        dict(mlp_ratio=2.0),
        dict(use_layerscale=True, layerscale_value=0.5),
        dict(use_conv_embed=True),
        dict(focal_levels=0),
        dict(focal_factor=0),
        dict(weight_init="timm"),
        dict(drop_path_rate=0.2),
    ]:
        assert FocalNet.build(**base, **knob)(x).shape == (2, 3), knob
    zero = FocalNet.build(**base, focal_levels=0)
    assert zero.layers[0].blocks[0].modulation.f.out_features == 2 * 32 + 1  # only the global gate
    assert FocalNet.build(**base, use_global_context=False).layers[0].blocks[0].modulation.f.out_features == 2 * 32 + 3


@pytest.mark.parametrize("variant", ["add", "top_level", "no_gates"])
def test_table_13_variants_compute_what_they_say(variant):
    """The paper's Table 13 variants, against the modulation written out from the module's own weights."""
    import torch.nn.functional as F

    from focalnet.models.focalnet import FocalModulation

    torch.manual_seed(0)
    knob = {"add": dict(interaction="add"), "top_level": dict(context="top_level"),
            "no_gates": dict(use_gates=False)}[variant]
    m = FocalModulation(8, focal_level=2, focal_window=3, **knob).eval()
    x = torch.randn(2, 5, 5, 8)
    C = 8
    projected = F.linear(x, m.f.weight, m.f.bias)
    q, ctx = projected[..., :C], projected[..., C : 2 * C].permute(0, 3, 1, 2)
    gates = projected[..., 2 * C :].permute(0, 3, 1, 2)
    levels = []
    for layer in m.focal_layers:
        ctx = layer(ctx)
        levels.append(ctx)
    glob = F.gelu(ctx.mean((2, 3), keepdim=True))
    if variant == "top_level":
        assert m.f.out_features == 2 * C  # no gates to produce
        context = levels[-1]
    elif variant == "no_gates":
        assert m.f.out_features == 2 * C
        context = levels[0] + levels[1] + glob
    else:
        assert m.f.out_features == 2 * C + 3
        context = levels[0] * gates[:, 0:1] + levels[1] * gates[:, 1:2] + glob * gates[:, 2:3]
    modulator = F.linear(context.permute(0, 2, 3, 1), m.h.weight, m.h.bias)
    expected = q + modulator if variant == "add" else q * modulator
    expected = F.linear(expected, m.proj.weight, m.proj.bias)
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-6)


def test_table_13_variants_are_off_by_default_and_refused_by_the_exports():
    model = create_model("focalnet_tiny_srf", num_classes=3, **SMALL)
    assert (model.arch["interaction"], model.arch["context"], model.arch["use_gates"]) == ("multiply", "all_levels",
                                                                                            True)
    for knob, shown in ((dict(interaction="add"), "interaction='add'"), (dict(context="top_level"),
                        "context='top_level'"), (dict(use_gates=False), "use_gates=False")):
        variant = create_model("focalnet_tiny_srf", num_classes=3, **SMALL, **knob)
        for fmt in ("official", "timm", "hf"):
            with pytest.raises(ValueError, match=f"^format={fmt} cannot hold this model: {re.escape(shown)} "):
                focalnet.export_state_dict(variant, fmt)
    with pytest.raises(ValueError, match="interaction='mul' is not one of"):
        create_model("focalnet_tiny_srf", interaction="mul", **SMALL)
    # Derived from FocalNet's signature: every argument no format holds, at its default.
    paper = {"interaction": "multiply", "context": "all_levels", "use_gates": True}
    assert paper.items() <= focalnet.models.weights.PAPER_MODULATION.items()
    with pytest.raises(ValueError, match="context='top_level' with focal_levels=0"):
        create_model("focalnet_card", context="top_level", focal_levels=0)


def test_per_stage_lists():
    m = create_model("focalnet_tiny_srf", focal_levels=[1, 2, 3, 4], focal_kernel=[3, 3, 5, 5], **SMALL)
    assert [s.blocks[0].modulation.kernel_sizes for s in m.layers] == [[3], [3, 5], [5, 7, 9], [5, 7, 9, 11]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=30, patch_size=4), r"image_size=30 is not divisible by patch_size=4"),
        (dict(focal_levels=-1), r"focal_levels=-1 must be an integer >= 0"),
        (dict(focal_kernel=4), r"focal_kernel=4 must be an odd integer >= 1"),
        (dict(focal_kernel=0), r"focal_kernel=0 must be an odd integer >= 1"),
        (dict(gate_act="relu"), r"gate_act='relu' is not one of"),
        (dict(focal_levels=0, use_global_context=False), r"focal_levels=0 with use_global_context=False"),
        (dict(focal_factor=3), r"focal_factor=3 must be an even integer"),
    ],
)
def test_card_builder_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FocalNet.build(**{"image_size": 32, "patch_size": 4, **kwargs})


def test_hierarchical_bad_arguments():
    with pytest.raises(ValueError, match=r"focal_levels=\[2, 2, 2\] has 3 entries but the model has 4 stages"):
        create_model("focalnet_tiny_srf", focal_levels=[2, 2, 2])
    with pytest.raises(ValueError, match=r"image_size=48 is not divisible by the total stride 32"):
        create_model("focalnet_tiny_srf", image_size=48)
    with pytest.raises(ValueError, match=r"unknown model name='focalnet_tiny_sfr'; did you mean focalnet_tiny_srf"):
        create_model("focalnet_tiny_sfr")


def test_public_api_is_importable_without_frameworks():
    import sys

    assert focalnet.FocalNet is FocalNet
    for module in (focalnet.models.focalnet, focalnet.models.weights, focalnet.models.factory):
        src = open(module.__file__).read()
        assert "lightning" not in src and "hydra" not in src
    assert "focalnet.models.focalnet" in sys.modules
    assert "focalnet.models.weights" in sys.modules


@pytest.mark.parametrize(
    "name, overrides, size",
    [
        # 64 px: the last stage is 2x2, where the 5x5 level loses its dead taps; 7x7 levels take the CPU weight grad.
        ("focalnet_tiny_srf", dict(SMALL), 64),
        ("focalnet_tiny_lrf", dict(SMALL), 64),
        # 32 px: 1x1 last stage; 40 px: 10 -> 5 -> 2 (odd maps, the conv drops a row and a column) -> 1.
        ("focalnet_tiny_lrf", dict(SMALL, normalize_modulator=True, gate_act="sigmoid"), 32),
        ("focalnet_tiny_lrf", dict(SMALL, use_postln=True, use_layerscale=True, layerscale_value=0.5), 40),
        ("focalnet_tiny_srf", dict(SMALL, use_conv_embed=True, use_postln_in_modulation=True), 64),
        ("focalnet_card", dict(hidden_size=16, num_layers=2, patch_size=4, focal_levels=0), 32),
        ("focalnet_card", dict(hidden_size=16, num_layers=2, patch_size=4, focal_levels=4), 28),
        # Table 13's variants.
        ("focalnet_card", dict(hidden_size=16, num_layers=2, patch_size=4, interaction="add", use_gates=False), 28),
        ("focalnet_card", dict(hidden_size=16, num_layers=2, patch_size=4, context="top_level"), 28),
    ],
)
@pytest.mark.parametrize("gemm", ["linear", "conv", "auto"])
def test_fast_path_gives_the_official_op_orders_logits_and_gradients(
    name, overrides, size, gemm, monkeypatch, tmp_path
):
    # fast=False is the official code op for op (NCHW copies, conv patch embedding, full kernels, h as a 1x1
    # conv); the fast path must be the same function to fp32 rounding, gradients included, on either GEMM.
    monkeypatch.setenv("FOCALNET_GEMM", gemm)
    monkeypatch.setenv("FOCALNET_CACHE", str(tmp_path))
    torch.manual_seed(0)
    fast = create_model(name, num_classes=5, drop_path_rate=0.0, **overrides)
    ref = create_model(name, num_classes=5, drop_path_rate=0.0, fast=False, **overrides)
    ref.load_state_dict(fast.state_dict())
    x, y = torch.randn(3, 3, size, size), torch.tensor([0, 3, 4])
    logits = [m(x) for m in (fast, ref)]
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-5)
    for out in logits:
        torch.nn.functional.cross_entropy(out, y).backward()
    for (n, p), q in zip(fast.named_parameters(), ref.parameters()):
        # Sums over every token in another order: equal to 1e-3 of the tensor's largest gradient.
        assert (p.grad - q.grad).abs().max() <= 1e-3 * q.grad.abs().max(), n


@pytest.mark.parametrize("gemm", ["linear", "conv"])
def test_bf16_autocast_agrees_with_the_reference_on_either_gemm(gemm, monkeypatch):
    # What precision=auto runs on bf16 hardware: the fast path under autocast against fp32 fast=False.
    monkeypatch.setenv("FOCALNET_GEMM", gemm)
    torch.manual_seed(0)
    fast = create_model("focalnet_tiny_lrf", num_classes=5, drop_path_rate=0.0, **SMALL)
    ref = create_model("focalnet_tiny_lrf", num_classes=5, drop_path_rate=0.0, fast=False, **SMALL)
    ref.load_state_dict(fast.state_dict())
    x, y = torch.randn(3, 3, 64, 64), torch.tensor([0, 3, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = fast(x)
        torch.nn.functional.cross_entropy(low, y).backward()  # the 5x5 and 7x7 levels take _DepthwiseConvCPU
    logits = ref(x)
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert low.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: logits agree to a few hundredths of their spread, gradients to a tenth.
    assert (low.float() - logits).abs().max() <= 0.05 * logits.abs().max()
    for (n, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert p.grad.dtype == torch.float32, n
        assert (p.grad - q.grad).abs().max() <= 0.1 * q.grad.abs().max() + 1e-6, n


def test_gemm_choice_is_measured_once_per_shape_and_reused_from_the_machine_cache(monkeypatch, tmp_path):
    from focalnet.models import gemm

    monkeypatch.setenv("FOCALNET_GEMM", "auto")
    monkeypatch.setenv("FOCALNET_CACHE", str(tmp_path))
    monkeypatch.setattr(gemm, "_CHOICES", {})
    monkeypatch.setattr(gemm, "_LOADED", set())
    calls = []
    monkeypatch.setattr(gemm, "_measure", lambda x, w, b, grad: calls.append((x.shape, grad)) or "conv")
    layer = gemm.Dense(8, 16)
    x = torch.randn(2, 5, 5, 8)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    layer(x).sum().backward()
    with torch.no_grad():
        layer(x)
    assert calls == [((2, 5, 5, 8), True)] * 1 + [((2, 5, 5, 8), False)]  # training and inference shapes, once each
    (cache,) = tmp_path.glob("focalnet/gemm-*.json")
    assert set(json.loads(cache.read_text()).values()) == {"conv"}
    # A new process (fresh in-memory table) takes the cached choices without measuring.
    monkeypatch.setattr(gemm, "_CHOICES", {})
    monkeypatch.setattr(gemm, "_LOADED", set())
    monkeypatch.setattr(gemm, "_measure", lambda *a: pytest.fail("measured again"))
    layer(x)
    assert set(gemm.gemm_choices().values()) == {"conv"}


def test_gemm_choice_recorded_first_wins_and_a_checkpoint_carries_the_choices(monkeypatch, tmp_path):
    """Two processes that measured one shape at once keep the first recorded choice (a run and its resumed part must
    compute alike), and a checkpoint's choices win over the machine's cache in the process that loads it."""
    from focalnet.models import gemm
    from focalnet.run.callbacks import GemmChoicesInCheckpoint

    monkeypatch.setenv("FOCALNET_GEMM", "auto")
    monkeypatch.setenv("FOCALNET_CACHE", str(tmp_path))
    monkeypatch.setattr(gemm, "_CHOICES", {})
    monkeypatch.setattr(gemm, "_LOADED", set())
    key = f"float32 10 8 16 1 1 {torch.get_num_threads()}"  # Dense(8, 16) on [10, 8] inputs, training
    assert gemm._remember(key, "conv") == "conv"
    monkeypatch.setattr(gemm, "_CHOICES", {})  # another process, which measured "linear" for the same shape
    assert gemm._remember(key, "linear") == "conv" and gemm.gemm_choices() == {key: "conv"}
    checkpoint = {}
    GemmChoicesInCheckpoint().on_save_checkpoint(None, None, checkpoint)
    assert checkpoint["gemm_choices"] == {key: "conv"}

    # A new process that resumes from a checkpoint whose run chose "linear": the machine's "conv" gives way.
    monkeypatch.setattr(gemm, "_CHOICES", {})
    monkeypatch.setattr(gemm, "_LOADED", set())
    monkeypatch.setattr(gemm, "_measure", lambda *a: pytest.fail("measured again"))
    GemmChoicesInCheckpoint().on_load_checkpoint(None, None, {"gemm_choices": {key: "linear"}})
    gemm.Dense(8, 16)(torch.randn(10, 8, requires_grad=True))
    assert gemm.gemm_choices()[key] == "linear"


def test_gemm_measurement_leaves_flop_counts_alone(monkeypatch, tmp_path):
    from focalnet.models import gemm

    monkeypatch.setenv("FOCALNET_GEMM", "auto")
    monkeypatch.setenv("FOCALNET_CACHE", str(tmp_path))
    monkeypatch.setattr(gemm, "_CHOICES", {})
    model = FocalNet.build(32, 4, 1, 16, 2, num_classes=3)
    first = model_stats(model, 32, 1)  # nothing measured yet: the first count must not include the measurement
    assert first == model_stats(model, 32, 1) and first["flops"] == model_stats(model, 32, 1)["flops"]
    monkeypatch.setenv("FOCALNET_GEMM", "linear")
    assert first == model_stats(model, 32, 1)


def test_gemm_measurement_picks_the_faster_kernel(monkeypatch):
    from focalnet.models import gemm

    slow = gemm._KERNELS["linear"]

    def slower(*args):
        time.sleep(0.01)
        return slow(*args)

    monkeypatch.setitem(gemm._KERNELS, "linear", slower)
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    state = torch.get_rng_state()
    assert gemm._measure(x, w, None, grad=True) == gemm._measure(x, w, None, grad=False) == "conv"
    # Measuring draws from a generator of its own: drop-path and augmentation draws stay those of a cached run.
    assert torch.equal(torch.get_rng_state(), state)


def test_bad_gemm_policy_fails_in_one_line(monkeypatch):
    from focalnet.models import gemm

    monkeypatch.setenv("FOCALNET_GEMM", "mkl")
    with pytest.raises(ValueError, match=r"^FOCALNET_GEMM='mkl' is not one of \('auto', 'linear', 'conv'\)$"):
        gemm.Dense(4, 4)(torch.randn(2, 4))


@pytest.mark.parametrize(
    "flags, accelerator, cuda_bf16, expected",
    [
        ({"avx2", "fma"}, "cpu", False, "32-true"),  # Zen 3: bf16 only emulated
        ({"avx512f", "avx512_bf16"}, "cpu", False, "bf16-mixed"),  # Zen 4/5, Cooper Lake
        ({"avx512f", "amx_bf16"}, "auto", False, "bf16-mixed"),  # Sapphire Rapids, no GPU
        ({"avx2"}, "gpu", True, "bf16-mixed"),  # A100/H100
        ({"avx2"}, "gpu", False, "32-true"),  # V100, T4
    ],
)
def test_precision_auto_follows_the_hardware(flags, accelerator, cuda_bf16, expected, monkeypatch):
    from focalnet import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: accelerator == "gpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda_bf16)
    assert precision.resolve_precision("auto", accelerator) == expected
    assert precision.resolve_precision("16-mixed", accelerator) == "16-mixed"  # an explicit choice stays


def test_the_switch_makes_auto_resolve_as_told(monkeypatch):
    """FOCALNET_PRECISION_AUTO: the bf16 path of a bf16 host on any CPU (and fp32 on a bf16 host); never an explicit
    choice; a bad value fails in one line naming it."""
    from focalnet import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    monkeypatch.setenv("FOCALNET_PRECISION_AUTO", "bf16-mixed")
    assert precision.resolve_precision("auto", "cpu") == "bf16-mixed"
    assert precision.resolve_precision("32-true", "cpu") == "32-true"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setenv("FOCALNET_PRECISION_AUTO", "32-true")
    assert precision.resolve_precision("auto", "cpu") == "32-true"
    monkeypatch.setenv("FOCALNET_PRECISION_AUTO", "bf17")
    with pytest.raises(ValueError, match="^FOCALNET_PRECISION_AUTO='bf17' must be one of 32-true, bf16-mixed"):
        precision.resolve_precision("auto", "cpu")


@pytest.mark.parametrize("kernel, padding", [(5, (2, 2)), (7, (3, 3)), (5, (1, 2))])
def test_cpu_depthwise_weight_gradient_is_exact(kernel, padding):
    from focalnet.models.focalnet import _DepthwiseConvCPU

    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 2 * padding[0] + 1, 2 * padding[1] + 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: _DepthwiseConvCPU.apply(x, w, padding), (x, w))


def test_model_compiles_without_graph_breaks():
    for model in (create_model("focalnet_tiny_lrf", num_classes=5, **SMALL), FocalNet.build(32, 4, 1, 16, 2)):
        explained = torch._dynamo.explain(model)(torch.randn(2, model.patch_embed.proj.in_channels, 32, 32))
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


# --- transformers' layout, and exports to every format ----------------------------------------------------------


def _hf_state(model):
    """transformers' FocalNetForImageClassification names and layouts, written out by hand from modeling_focalnet.py."""
    sub = [
        (r"^patch_embed\.proj\.", "focalnet.embeddings.patch_embeddings.projection."),
        (r"^patch_embed\.norm\.", "focalnet.embeddings.norm."),
        (r"^layers\.(\d+)\.blocks\.(\d+)\.", r"focalnet.encoder.stages.\1.layers.\2."),
        (r"^layers\.(\d+)\.downsample\.proj\.", r"focalnet.encoder.stages.\1.downsample.projection."),
        (r"^layers\.(\d+)\.downsample\.norm\.", r"focalnet.encoder.stages.\1.downsample.norm."),
        (r"modulation\.f\.", "modulation.projection_in."),
        (r"modulation\.h\.", "modulation.projection_context."),
        (r"modulation\.proj\.", "modulation.projection_out."),
        (r"modulation\.ln\.", "modulation.layernorm."),
        (r"^norm\.", "focalnet.layernorm."),
        (r"^head\.", "classifier."),
    ]
    out = {}
    for k, v in model.state_dict().items():
        v = v[..., None, None] if k.endswith("modulation.h.weight") else v
        for pattern, repl in sub:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def _hf_folder(folder, model, **config):
    """A folder as transformers' save_pretrained writes it: config.json (only the keys that differ from its
    defaults, as save_pretrained writes them) and model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir()
    labels = {str(i): f"LABEL_{i}" for i in range(model.num_classes)}
    (folder / "config.json").write_text(json.dumps({"model_type": "focalnet", "id2label": labels, **config}))
    save_file({k: v.contiguous() for k, v in _hf_state(model).items()}, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("name", ["focalnet_tiny_srf", "focalnet_large_fl4", "focalnet_huge_fl3"])
def test_transformers_folders_and_weights_files_load_with_the_same_logits(tmp_path, name):
    torch.manual_seed(0)
    src = create_model(name, num_classes=7, **SMALL).eval()
    a = src.arch
    config = dict(
        image_size=64, embed_dim=16, depths=[1, 1, 2, 1], focal_levels=[a["focal_levels"]] * 4,
        focal_windows=[a["focal_kernel"]] * 4, use_conv_embed=a["use_conv_embed"], use_layerscale=a["use_layerscale"],
        use_post_layernorm=a["use_postln"], use_post_layernorm_in_modulation=a["use_postln_in_modulation"],
        normalize_modulator=a["normalize_modulator"], drop_path_rate=0.0,
    )
    folder = _hf_folder(tmp_path / "hf", src, **config)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = src(x)
        # the architecture from config.json alone, and the weights into a named model, from the folder or the file
        for model in (
            focalnet.create_model_from_pretrained(str(folder)),
            create_model(None, num_classes=7, pretrained=str(folder)),
            create_model(name, num_classes=7, pretrained=str(folder), **SMALL),
            create_model(name, num_classes=7, pretrained=str(folder / "model.safetensors"), **SMALL),
        ):
            torch.testing.assert_close(model.eval()(x), want, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["focalnet_tiny_lrf", "focalnet_huge_fl4", "focalnet_base_iso"])
@pytest.mark.parametrize("fmt", ["official", "timm", "hf"])
def test_exports_have_the_libraries_names_and_round_trip_to_the_same_logits(tmp_path, name, fmt):
    torch.manual_seed(0)
    kw = dict(SMALL) if "iso" not in name else dict(embed_dim=[32], depths=(2,), image_size=64)
    src = create_model(name, num_classes=10, **kw).eval()
    if fmt == "timm" and "iso" in name:
        with pytest.raises(ValueError, match=r"format=timm cannot hold this model: patch_size=16 with 1 stage"):
            focalnet.export_state_dict(src, fmt)
        return
    state = focalnet.export_state_dict(src, fmt)
    by_hand = {"official": _official_state, "timm": _timm_state, "hf": _hf_state}[fmt](src)
    assert state.keys() == by_hand.keys()
    assert all(torch.equal(state[k], by_hand[k]) for k in state)
    path = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(path))
    dst = create_model(name, num_classes=10, pretrained=str(path), **kw).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_hf_config_describes_the_model_and_refuses_what_transformers_lacks():
    model = create_model("focalnet_large_fl4", num_classes=3, **SMALL)
    config = focalnet.hf_config(model, ["cat", "dog", "eel"])
    assert config["depths"] == [1, 1, 2, 1] and config["focal_levels"] == [4] * 4 and config["focal_windows"] == [3] * 4
    assert config["normalize_modulator"] and config["use_post_layernorm"] and config["use_conv_embed"]
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "eel"} and config["label2id"]["eel"] == 2
    rebuilt = focalnet.models.weights.args_from_hf_config(config)
    assert FocalNet(**rebuilt).state_dict().keys() == model.state_dict().keys()
    with pytest.raises(ValueError, match=r"format=hf cannot hold this model: gate_act='sigmoid'"):
        focalnet.hf_config(create_model("focalnet_tiny_srf", num_classes=3, gate_act="sigmoid", **SMALL))
    with pytest.raises(ValueError, match=r"format=hf cannot hold this model: embed_dim=\[16, 24, 48, 96\]"):
        focalnet.hf_config(create_model("focalnet_tiny_srf", num_classes=3, **{**SMALL, "embed_dim": [16, 24, 48, 96]}))
    with pytest.raises(ValueError, match=r"config.json has model_type='swin', not 'focalnet'"):
        focalnet.models.weights.args_from_hf_config({"model_type": "swin"})


def test_a_folder_without_weights_and_a_missing_config_fail_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"a folder without model.safetensors or pytorch_model.bin"):
        create_model("focalnet_tiny_srf", num_classes=10, pretrained=str(tmp_path / "empty"), **SMALL)
    with pytest.raises(FileNotFoundError, match=r"no config.json in"):
        focalnet.create_model_from_pretrained(str(tmp_path / "empty"))


def test_weight_init_schemes():
    """official: trunc-normal 0.02 on every Linear; torch: PyTorch's own uniform +-1/sqrt(fan_in), 3.6x wider at
    width 64 (the card recipe's default: the modulation is not silent at the start); a bad name fails naming it."""
    torch.manual_seed(0)
    official = FocalNet.build(image_size=32, patch_size=4, hidden_size=64, num_classes=10)
    torch.manual_seed(0)
    default = FocalNet.build(image_size=32, patch_size=4, hidden_size=64, num_classes=10, weight_init="torch")
    f_official, f_default = official.layers[0].blocks[0].modulation.f, default.layers[0].blocks[0].modulation.f
    assert f_official.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert f_default.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 64), rel=0.05)
    assert f_default.weight.abs().max().item() <= 1 / math.sqrt(64)
    # The init changes no shape or name: checkpoints of either load into the other.
    official.load_state_dict(default.state_dict())
    with pytest.raises(ValueError, match="weight_init='kaiming' is not one of"):
        FocalNet.build(image_size=32, patch_size=4, weight_init="kaiming")
