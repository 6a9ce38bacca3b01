from focalnet.models.focalnet import (
    MODEL_CONFIGS,
    FocalNet,
    convert_state_dict,
    create_model,
    create_model_from_pretrained,
    export_state_dict,
    hf_config,
    list_models,
    load_pretrained,
)
from focalnet.models.stats import model_stats

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
