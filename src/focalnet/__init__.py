"""focalnet: train, sweep and ablate FocalNets (Focal Modulation Networks) with Lightning, Hydra and W&B."""

from focalnet.models import (
    MODEL_CONFIGS,
    FocalNet,
    convert_state_dict,
    create_model,
    create_model_from_pretrained,
    export_state_dict,
    hf_config,
    list_models,
    load_pretrained,
    model_stats,
)

__version__ = "0.1.0"
__all__ = [
    "MODEL_CONFIGS",
    "FocalNet",
    "convert_state_dict",
    "create_model_from_pretrained",
    "export_state_dict",
    "hf_config",
    "create_model",
    "list_models",
    "load_pretrained",
    "model_stats",
]
