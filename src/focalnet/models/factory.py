"""`create_model`: a FocalNet by its registered name (focalnet.py's MODEL_CONFIGS), with weights (weights.py) when
asked; as timm's factory, the one place that stands on both the model and the weight formats."""

from __future__ import annotations

import difflib

from focalnet.models.focalnet import MODEL_CONFIGS, FocalNet, list_models
from focalnet.models.weights import create_model_from_pretrained, load_pretrained

__all__ = ["create_model"]


def create_model(
    name: str | None, num_classes: int | None = 1000, pretrained: str | None = None, **overrides
) -> FocalNet:
    """Build a registered FocalNet; `overrides` replace any FocalNet argument; `pretrained` loads weights.

    The card's names are accepted too: hidden_size -> embed_dim, num_layers -> depths, in_channels as is.
    With no name, a transformers folder or hub id as `pretrained` gives the architecture (its config.json).
    """
    if name is None:
        if not pretrained:
            raise ValueError("create_model: give a model name, or a transformers folder or hub id as pretrained=")
        return create_model_from_pretrained(pretrained, num_classes=num_classes, **overrides)
    if name not in MODEL_CONFIGS:
        close = difflib.get_close_matches(name, MODEL_CONFIGS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(list_models())}"
        raise ValueError(f"unknown model name={name!r}{hint}")
    kwargs = dict(MODEL_CONFIGS[name])
    if "hidden_size" in overrides:
        kwargs["embed_dim"] = (
            [overrides.pop("hidden_size")] if len(kwargs["depths"]) == 1 else overrides.pop("hidden_size")
        )
    if "num_layers" in overrides:
        layers = overrides.pop("num_layers")
        kwargs["depths"] = [layers] if isinstance(layers, int) else layers
    kwargs.update(overrides)
    model = FocalNet(num_classes=num_classes, **kwargs)
    if pretrained:
        load_pretrained(model, pretrained)
    return model
