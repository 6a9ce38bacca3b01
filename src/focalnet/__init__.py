"""focalnet: train, sweep and ablate FocalNets (Focal Modulation Networks) with Lightning, Hydra and W&B."""

from focalnet.threads import passive_wait_by_default

passive_wait_by_default()  # before torch loads OpenMP, which reads it once

from focalnet.models import (  # noqa: E402 (after the wait policy)
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
