"""Checkpoint weight formats of FocalNet: import and export.

Reads weights files (ours, the official release's .pth, timm's .pth / .safetensors, a Lightning .ckpt), transformers
folders and Hugging Face hub ids (downloaded with huggingface_hub), maps their names and layouts onto `FocalNet`'s
(`convert_state_dict`, `load_pretrained`, `create_model_from_pretrained` from a config.json) and writes a model back
out in the official, timm or transformers names (`export_state_dict`, `hf_config`). The model is in `focalnet.py`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from focalnet.models.focalnet import FocalNet, arguments

__all__ = [
    "FORMATS",
    "PAPER_MODULATION",
    "args_from_hf_config",
    "convert_state_dict",
    "create_model_from_pretrained",
    "export_state_dict",
    "hf_config",
    "load_pretrained",
    "read_state_dict",
]

# Checkpoints: ours and the official release (.pth, "model"), timm (.pth / .safetensors), Hugging Face transformers
# (a folder with config.json + model.safetensors, its weights file alone, or a hub id), Lightning and DDP prefixes.
# Every foreign name is computed from ours by `_foreign_name`; importing inverts that map over the target model's
# keys, so each format's names are written once, for both directions.

# FocalNet's arguments that the checkpoint formats hold (`_check_exportable` refuses the values one of them cannot),
# and two that leave the computed function as it is (weight_init, fast).
_HELD = (
    "image_size", "patch_size", "in_channels", "num_classes", "embed_dim", "depths", "mlp_ratio", "drop_rate",
    "drop_path_rate", "focal_levels", "focal_kernel", "focal_factor", "use_layerscale", "layerscale_value",
    "use_postln", "use_postln_in_modulation", "normalize_modulator", "use_conv_embed", "use_global_context",
    "gate_act", "weight_init", "fast",
)  # fmt: skip
# The modulation of the paper and of every checkpoint format: every other argument (Table 13's variants, and any switch
# added since) is an ablation that a model exports only at its default.
PAPER_MODULATION = {name: default for name, (_, default) in arguments().items() if name not in _HELD}
FORMATS = ("official", "timm", "hf")
# Our Linear layers that the format keeps as 1x1 convolutions ([out, in, 1, 1] weights).
_CONV_1X1 = {
    "official": r"modulation\.h\.weight$",
    "timm": r"modulation\.(f|h|proj)\.weight$|mlp\.fc[12]\.weight$",
    "hf": r"modulation\.h\.weight$",
}
_HF_MODULATION = {"f": "projection_in", "h": "projection_context", "proj": "projection_out", "ln": "layernorm"}


def _foreign_name(key: str, fmt: str, postln: bool = False) -> str:
    """Our parameter name `key` as the official release, timm or transformers (its FocalNetForImageClassification)
    names it."""
    if fmt == "timm":
        key = re.sub(r"^patch_embed\.", "stem.", key)
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)
        if postln:
            key = re.sub(r"(blocks\.\d+)\.norm([12])\.", r"\1.norm\2_post.", key)
        key = re.sub(r"\.gamma_([12])$", r".ls\1.gamma", key)
        return key.replace("modulation.ln.", "modulation.norm.").replace("head.", "head.fc.", 1)
    if fmt == "hf":
        if key.startswith("head."):
            return "classifier." + key[len("head.") :]
        key = re.sub(r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection.", key)
        key = re.sub(r"^patch_embed\.norm\.", "embeddings.norm.", key)
        key = re.sub(r"^layers\.(\d+)\.blocks\.(\d+)\.", r"encoder.stages.\1.layers.\2.", key)
        key = re.sub(r"^layers\.(\d+)\.downsample\.proj\.", r"encoder.stages.\1.downsample.projection.", key)
        key = re.sub(r"^layers\.(\d+)\.downsample\.", r"encoder.stages.\1.downsample.", key)
        key = re.sub(r"\.modulation\.(f|h|proj|ln)\.", lambda m: f".modulation.{_HF_MODULATION[m.group(1)]}.", key)
        return "focalnet." + re.sub(r"^norm\.", "layernorm.", key)
    return key


def _format_of(state: dict) -> str:
    if any(k.startswith("stem.") for k in state):
        return "timm"
    if any(k.startswith(("focalnet.embeddings.", "embeddings.patch_embeddings.")) for k in state):
        return "hf"
    return "official"


def convert_state_dict(state: dict[str, torch.Tensor], model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Map official, timm or transformers FocalNet keys (and Lightning `model.` / DDP `module.` prefixes) onto this
    model's names. timm and transformers names are found through `model`'s own names, so they need the model."""
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    fmt = _format_of(state)
    target = model.state_dict() if model is not None else {}
    if fmt == "hf" and not any(k.startswith("focalnet.") for k in state):  # a FocalNetModel: no head, no prefix
        state = {"focalnet." + k: v for k, v in state.items()}
    if fmt != "official":
        if model is None:
            raise ValueError(f"a {fmt} checkpoint is converted through the target model: pass model=")
        postln = bool(getattr(model, "arch", {}).get("use_postln"))
        ours = {_foreign_name(k, fmt, postln): k for k in target}
        state = {ours.get(k, k): v for k, v in state.items()}
    # 1x1 convs (timm's f/h/proj/fc1/fc2, the official and transformers' h) are our Linear layers.
    return {
        k: v.flatten(1) if v.ndim == 4 and v.shape[2:] == (1, 1) and (k not in target or target[k].ndim == 2) else v
        for k, v in state.items()
    }


def export_state_dict(model: FocalNet, fmt: str) -> dict[str, torch.Tensor]:
    """`model`'s weights in the names and layouts of `fmt`: "official", "timm" or "hf" (transformers)."""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not one of {FORMATS}")
    _check_exportable(model, fmt)
    postln = bool(model.arch["use_postln"])
    return {
        _foreign_name(k, fmt, postln): (v[..., None, None] if re.search(_CONV_1X1[fmt], k) else v).contiguous()
        for k, v in model.state_dict().items()
        if not (fmt == "hf" and k.startswith("head.") and not model.num_classes)
    }


def _check_exportable(model: FocalNet, fmt: str) -> None:
    """A one-line error for what the other library's FocalNet cannot express."""
    a = model.arch
    why = None
    changed = [f"{k}={a.get(k, v)!r}" for k, v in PAPER_MODULATION.items() if a.get(k, v) != v]
    if changed:
        raise ValueError(f"format={fmt} cannot hold this model: {', '.join(changed)} (an ablation variant, such as "
                         "Table 13's; every format holds the paper's modulation only)")
    if fmt == "official":
        return
    if a["gate_act"] != "none" or not a["use_global_context"]:
        why = f"gate_act={a['gate_act']!r}, use_global_context={a['use_global_context']} (it has raw gates and always "
        why += "the global context)"
    elif a["focal_factor"] != 2:
        why = f"focal_factor={a['focal_factor']} (it is fixed at 2)"
    elif fmt == "timm" and (a["patch_size"] != 4 or len(model.layers) == 1):
        why = f"patch_size={a['patch_size']} with {len(model.layers)} stage(s) (timm's FocalNet is hierarchical, "
        why += "stem 4)"
    elif fmt == "hf" and any(d != model.embed_dim[0] * 2**i for i, d in enumerate(model.embed_dim)):
        why = f"embed_dim={model.embed_dim} (its width doubles per stage)"
    elif fmt == "hf" and a["use_conv_embed"] and a["patch_size"] != 4:
        why = f"use_conv_embed with patch_size={a['patch_size']} (its overlapped stem is stride 4)"
    if why:
        raise ValueError(f"format={fmt} cannot hold this model: {why}")


def hf_config(model: FocalNet, class_names: Sequence[str] | None = None) -> dict:
    """transformers' FocalNetConfig (config.json) for `model`; `class_names` become id2label."""
    _check_exportable(model, "hf")
    a, blocks = model.arch, [stage.blocks[0].modulation for stage in model.layers]
    names = list(class_names) if class_names else [f"LABEL_{i}" for i in range(model.num_classes)]
    if len(names) != model.num_classes:
        raise ValueError(f"{len(names)} class names for a head of {model.num_classes} classes")
    return {
        "model_type": "focalnet",
        "architectures": ["FocalNetForImageClassification" if model.num_classes else "FocalNetModel"],
        "image_size": model.image_size,
        "patch_size": a["patch_size"],
        "num_channels": model.patch_embed.proj.in_channels,
        "embed_dim": model.embed_dim[0],
        "hidden_sizes": model.embed_dim[1:] + model.embed_dim[-1:],
        "depths": [len(stage.blocks) for stage in model.layers],
        "focal_levels": [m.focal_level for m in blocks],
        "focal_windows": [m.kernel_sizes[0] if m.kernel_sizes else a["focal_kernel"] for m in blocks],
        "mlp_ratio": a["mlp_ratio"],
        "hidden_act": "gelu",
        "hidden_dropout_prob": a["drop_rate"],
        "drop_path_rate": a["drop_path_rate"],
        "use_conv_embed": a["use_conv_embed"],
        "use_layerscale": a["use_layerscale"],
        "layerscale_value": a["layerscale_value"],
        "use_post_layernorm": a["use_postln"],
        "use_post_layernorm_in_modulation": a["use_postln_in_modulation"],
        "normalize_modulator": a["normalize_modulator"],
        "layer_norm_eps": 1e-5,
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }


def args_from_hf_config(config: dict) -> dict:
    """FocalNet arguments for a transformers config.json (a dict)."""
    if config.get("model_type") != "focalnet":
        raise ValueError(f"config.json has model_type={config.get('model_type')!r}, not 'focalnet'")
    if config.get("hidden_act", "gelu") != "gelu" or config.get("layer_norm_eps", 1e-5) != 1e-5:
        raise ValueError(
            f"config.json has hidden_act={config.get('hidden_act')!r}, layer_norm_eps={config.get('layer_norm_eps')}: "
            "this FocalNet has GELU and LayerNorm eps 1e-5"
        )
    size = config.get("image_size", 224)
    classify = "FocalNetForImageClassification" in config.get("architectures", ["FocalNetForImageClassification"])
    return dict(
        image_size=size if isinstance(size, int) else size[0],
        patch_size=config.get("patch_size", 4),
        in_channels=config.get("num_channels", 3),
        num_classes=(len(config.get("id2label") or {}) or config.get("num_labels", 2)) if classify else 0,
        embed_dim=config.get("embed_dim", 96),
        depths=config.get("depths", [2, 2, 6, 2]),
        mlp_ratio=config.get("mlp_ratio", 4.0),
        drop_rate=config.get("hidden_dropout_prob", 0.0),
        drop_path_rate=config.get("drop_path_rate", 0.1),
        focal_levels=config.get("focal_levels", [2, 2, 2, 2]),
        focal_kernel=config.get("focal_windows", [3, 3, 3, 3]),
        use_conv_embed=config.get("use_conv_embed", False),
        use_layerscale=config.get("use_layerscale", False),
        layerscale_value=config.get("layerscale_value", 1e-4),
        use_postln=config.get("use_post_layernorm", False),
        use_postln_in_modulation=config.get("use_post_layernorm_in_modulation", False),
        normalize_modulator=config.get("normalize_modulator", False),
    )


def create_model_from_pretrained(source: str, **overrides) -> FocalNet:
    """The model a transformers folder (or hub id) describes, with its weights: config.json gives the architecture.

    `overrides` replace FocalNet arguments, e.g. num_classes=10 for a new head (the old one is dropped)."""
    import json

    config = _hf_file(source, "config.json")
    model = FocalNet(**{**args_from_hf_config(json.loads(Path(config).read_text())), **overrides})
    return load_pretrained(model, source)


# Weights files of a transformers folder or hub repository, in the order they are looked for.
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_LAYOUTS = ("a torch.save'd state dict, alone or under model, state_dict or model_ema (.pth, .pt, .bin, a Lightning "
            ".ckpt), a .safetensors file, a transformers folder or a hub id")


def _is_hub_id(source: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", source)) and not source.startswith((".", "/", "~"))


def _hf_file(source: str, name: str) -> Path:
    """`name` inside the transformers folder `source` (or beside its weights file), or fetched from the hub."""
    path = Path(source).expanduser()
    if path.exists():
        found = (path if path.is_dir() else path.parent) / name
        if not found.is_file():
            raise FileNotFoundError(f"pretrained={source}: no {name} in {found.parent}")
        return found
    if not _is_hub_id(source):
        raise FileNotFoundError(f"pretrained={source}: no such file or folder")
    return _download_from_hub(source, name)


def read_state_dict(source: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (.pth/.pt/.bin, .safetensors, a Lightning .ckpt), a transformers folder or a hub
    id, as they are stored (convert_state_dict maps their names)."""
    path = Path(source).expanduser()
    if path.is_dir():
        found = [path / name for name in _HF_WEIGHTS if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"pretrained={source}: a folder without {' or '.join(_HF_WEIGHTS)}")
        path = found[0]
    elif not path.exists():
        if not _is_hub_id(source):
            raise FileNotFoundError(f"pretrained={source}: no such file")
        path = _download_from_hub(source, *_HF_WEIGHTS)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's and safetensors' own errors do not say that the file is not a checkpoint
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"pretrained={source} is not a checkpoint in any known layout: {_LAYOUTS} "
                         f"({type(e).__name__}: {reason[:160]})") from None  # fmt: skip
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if not (isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())):
        raise ValueError(f"pretrained={source} is not a checkpoint in any known layout: {_LAYOUTS} (it holds no "
                         "tensors by name)")  # fmt: skip
    return ckpt


def _download_from_hub(repo_id: str, *names: str) -> Path:
    """The first of `names` the hub repository has."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError
    except ImportError as e:
        raise RuntimeError(
            f"pretrained={repo_id} is a hub id but huggingface_hub is not installed (pip install focalnet[hub])"
        ) from e
    try:
        for name in names[:-1]:
            try:
                return Path(hf_hub_download(repo_id, name))
            except EntryNotFoundError:
                continue
        return Path(hf_hub_download(repo_id, names[-1]))
    except Exception as e:  # offline, unknown repo, no network: one line that says which
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(
            f"pretrained={repo_id}: could not fetch {names[-1] if len(names) == 1 else ' or '.join(names)} from the "
            f"Hugging Face hub (offline? {type(e).__name__}: {reason[:160]}); pass a local file or folder instead"
        ) from None


def load_pretrained(model: FocalNet, source: str | dict) -> FocalNet:
    """Load our, official, timm or transformers weights into `model` (a file, a transformers folder or a hub id);
    a head with another class count is dropped and re-initialised."""
    state = convert_state_dict(read_state_dict(source) if isinstance(source, (str, Path)) else source, model)
    own = model.state_dict()
    head_keys = [k for k in ("head.weight", "head.bias") if k in state]
    # Only another class count makes a new head; a head of another width is a shape error, like any other key.
    got = state["head.weight"].shape[0] if "head.weight" in state else None
    new_head = bool(head_keys) and ("head.weight" not in own or own["head.weight"].shape[0] != got)
    if new_head:
        state = {k: v for k, v in state.items() if k not in head_keys}
    own_head = {k for k in own if k.startswith("head.")} if new_head else set()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise ValueError(
                f"checkpoint key {k} has shape {tuple(v.shape)} but the model expects {tuple(own[k].shape)}"
            )
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and k not in own_head]
    if unexpected or missing:
        first = f"unexpected key {unexpected[0]}" if unexpected else f"missing key {missing[0]}"
        raise ValueError(
            f"checkpoint does not fit the model: {first} ({len(unexpected)} unexpected, {len(missing)} missing)"
        )
    if new_head:  # said once the rest is known to fit: the message is no use before an error
        warnings.warn(
            f"pretrained head has {got} classes, the model {model.num_classes}: head re-initialised", stacklevel=2
        )
    model.load_state_dict(state, strict=not own_head)
    return model
