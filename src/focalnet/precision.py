"""`precision: auto`: bf16 mixed precision where the hardware runs bf16 natively, full fp32 elsewhere.

With bf16 instructions (AVX512-BF16, AMX) bf16 autocast makes the 224 px training step 2.3x faster; without them
(AVX2) oneDNN emulates bf16 and the same GEMMs run 8x slower than in fp32 (docs/performance.md). So the choice
follows the instruction set, not the library's support.
FOCALNET_PRECISION_AUTO fixes what `auto` becomes, for tests of the bf16 path on any CPU and for users who want it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# x86: AVX512-BF16 (Cooper Lake, Sapphire Rapids, Zen 4/5) or AMX; Arm: the BF16 extension (Graviton 3, Neoverse V1+).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(device_type: str) -> bool:
    """Whether `device_type` ("cpu", "cuda", "gpu") computes in bf16 in hardware."""
    if device_type in ("cuda", "gpu"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        return bool(cpu_flags() & set(BF16_CPU_FLAGS))
    return False


# What `auto` resolves to where this is set, whatever the hardware: FOCALNET_PRECISION_AUTO=bf16-mixed runs the bf16
# path of a bf16 host on any CPU (emulated, about 8x slower, on AVX2), as the tests of that path do in CI;
# =32-true keeps fp32 on a bf16 host.
AUTO_ENV = "FOCALNET_PRECISION_AUTO"
AUTO_CHOICES = ("32-true", "bf16-mixed", "16-mixed")


def resolve_precision(precision, accelerator: str = "auto") -> str:
    """Lightning's precision for `precision`; "auto" becomes bf16-mixed on native-bf16 hardware, else 32-true
    (or what FOCALNET_PRECISION_AUTO says). Other values pass through: Lightning checks them."""
    if precision != "auto":
        return precision
    forced = os.environ.get(AUTO_ENV)
    if forced:
        if forced not in AUTO_CHOICES:
            raise ValueError(f"{AUTO_ENV}={forced!r} must be one of {', '.join(AUTO_CHOICES)} (or unset)")
        return forced
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    return "bf16-mixed" if native_bf16(accelerator) else "32-true"
