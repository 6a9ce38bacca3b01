"""Parameter and FLOP counts. FLOPs are multiply-adds (as fvcore and the FocalNet paper count them)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, image_size: int, in_channels: int = 3, batch: int = 1) -> int:
    """Multiply-adds of one forward pass per image (torch's counter reports 2 FLOPs per multiply-add)."""
    param = next(model.parameters())
    x = torch.zeros(batch, in_channels, image_size, image_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2 // batch


def model_stats(model: nn.Module, image_size: int, in_channels: int = 3) -> dict[str, int]:
    """{"params": trainable + frozen parameter count, "flops": multiply-adds per image at image_size}."""
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "flops": count_macs(model, image_size, in_channels),
    }
