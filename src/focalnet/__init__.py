"""focalnet: train, sweep and ablate FocalNets (Focal Modulation Networks) with Lightning, Hydra and W&B."""

from focalnet.threads import passive_wait_by_default

passive_wait_by_default()  # before torch loads OpenMP, which reads it once

from focalnet import models  # noqa: E402 (after the wait policy)
from focalnet.models import *  # noqa: E402, F403 (the public API is focalnet.models's __all__)

__version__ = "0.1.0"
__all__ = models.__all__
