from focalnet.models.factory import create_model
from focalnet.models.focalnet import MODEL_CONFIGS, FocalNet, list_models
from focalnet.models.stats import model_stats
from focalnet.models.weights import (
    convert_state_dict,
    create_model_from_pretrained,
    export_state_dict,
    hf_config,
    load_pretrained,
)

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
