"""Dense layers over channels-last tokens on the fastest GEMM of the machine, chosen by measurement.

On CPUs PyTorch runs an fp32 `F.linear` through MKL and a channels-last 1x1 `conv2d` (timm's FocalNet) through
oneDNN: the same matrix product, by two libraries. Which one is faster depends on the CPU and the shape: on some
CPUs MKL takes a slow path for FocalNet's skinny shapes (60% of oneDNN's speed, docs/performance.md), on others
each is ahead at some shapes. No fixed choice wins everywhere, so `Dense` times both, forward and backward, once per
shape, dtype and thread count, and keeps the faster for the process and in a cache file per machine: every later run
there takes the same kernels without measuring again, and a checkpoint carries the choices its run made, so a resumed
run continues on them.

`FOCALNET_GEMM=linear` or `=conv` fixes the choice on CPUs (tests, A/B timing); `auto` (the default) measures.
GPUs (cuBLAS), torch.compile (Inductor picks its own) and `fast=False` models always take `F.linear`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

__all__ = ["Dense", "adopt_choices", "dense", "gemm_choices", "gemm_policy"]

POLICIES = ("auto", "linear", "conv")
_CHOICES: dict[str, str] = {}  # shape key -> "linear" | "conv", this process
_LOADED: set[Path] = set()


def gemm_policy() -> str:
    policy = os.environ.get("FOCALNET_GEMM", "auto")
    if policy not in POLICIES:
        raise ValueError(f"FOCALNET_GEMM={policy!r} is not one of {POLICIES}")
    return policy


def gemm_choices() -> dict[str, str]:
    """The choices made so far in this process: `"<dtype> M K N bias grad threads" -> "linear" | "conv"`."""
    return dict(_CHOICES)


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) as a channels-last 1x1 convolution (oneDNN on CPUs); same output layout."""
    if x.ndim == 4:  # [B, H, W, K] tokens are an NCHW tensor in channels-last memory as they are
        return F.conv2d(x.permute(0, 3, 1, 2), weight[:, :, None, None], bias).permute(0, 2, 3, 1)
    rows = x.reshape(1, 1, -1, x.shape[-1]).permute(0, 3, 1, 2)  # [1, K, 1, M], channels-last
    out = F.conv2d(rows, weight[:, :, None, None], bias)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[0])


_KERNELS = {"linear": F.linear, "conv": _conv1x1}


def _cache_file() -> Path:
    """One file per machine kind and torch build: the CPU model, the thread count is in each key."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    machine = hashlib.sha1(f"{cpu}|{torch.__version__}|{torch.backends.cpu.get_cpu_capability()}".encode()).hexdigest()
    root = Path(os.environ.get("FOCALNET_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))))
    return root / "focalnet" / f"gemm-{machine[:16]}.json"


def _read(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
        return {k: v for k, v in data.items() if v in _KERNELS} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(key: str, choice: str) -> str:
    """Record `choice` for `key` unless another process recorded one first, and return the recorded one. The first
    writer wins, under a lock: two processes that measured the same shape at once (a busy host's timings differ)
    must not leave a run and its resumed continuation on different kernels, whose results differ in the last bits."""
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = _read(path)
            if key in data:
                choice = data[key]
            else:  # rename, so a reader never sees half a file
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps({**data, key: choice}, indent=0, sort_keys=True))
                os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs the measurement again next run
    _CHOICES[key] = choice
    return choice


def adopt_choices(choices: dict[str, str]) -> None:
    """Take `choices` (a checkpoint's `gemm_choices()`) over this machine's: a resumed run continues on the kernels
    that computed its first part, wherever it resumes."""
    _CHOICES.update({k: v for k, v in choices.items() if v in _KERNELS})


def _measure(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grad: bool) -> str:
    """The faster kernel, forward (and backward when training) on random data of the same shape, alternated."""
    # A generator of its own: measuring must not move the global RNG, or drop-path masks and augmentations would
    # depend on whether this shape was in the cache (a resumed run would stop matching the one that never stopped).
    rng = torch.Generator(x.device).manual_seed(0)
    with torch.no_grad():
        xs = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=rng)
        w = weight.detach().clone()
        b = None if bias is None else bias.detach().clone()
    if grad:
        xs.requires_grad_(), w.requires_grad_()
        if b is not None:
            b.requires_grad_()
    g = torch.randn(*x.shape[:-1], weight.shape[0], dtype=x.dtype, device=x.device, generator=rng)

    def run(kernel) -> float:
        start = time.perf_counter()
        with torch.enable_grad() if grad else torch.no_grad():
            out = _KERNELS[kernel](xs, w, b)
            if grad:
                out.backward(g)
        return time.perf_counter() - start

    times = {k: [] for k in _KERNELS}
    for _ in range(4):  # the first round warms both up and is not counted
        for kernel, ts in times.items():
            ts.append(run(kernel))
    return min(times, key=lambda k: min(times[k][1:]))


def _choose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str:
    if torch.compiler.is_compiling() or x.device.type != "cpu":
        return "linear"
    policy = gemm_policy()
    if policy != "auto":
        return policy
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    M, (N, K) = x.numel() // x.shape[-1], weight.shape
    dtype_name = str(dtype).removeprefix("torch.")
    key = f"{dtype_name} {M} {K} {N} {int(bias is not None)} {int(grad)} {torch.get_num_threads()}"
    if key not in _CHOICES:
        path = _cache_file()
        if path not in _LOADED:
            _LOADED.add(path)
            _CHOICES.update({k: v for k, v in _read(path).items() if k not in _CHOICES})
    if key not in _CHOICES:
        if is_in_torch_dispatch_mode():  # FLOP counting, fake tensors: the measurement's products would count too
            return "linear"
        return _remember(key, _measure(x, weight, bias, grad))  # under the caller's autocast, if any
    return _CHOICES[key]


def dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) on the faster GEMM of this machine for its shape."""
    return _KERNELS[_choose(x, weight, bias)](x, weight, bias)


class Dense(nn.Linear):
    """nn.Linear over the last dimension, same parameters and state-dict keys, on the faster of `F.linear` and a
    channels-last 1x1 conv for its shape on this machine (see the module docstring). `fast=False` is plain Linear."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, fast: bool = True):
        super().__init__(in_features, out_features, bias)
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return F.linear(x, self.weight, self.bias)
        return dense(x, self.weight, self.bias)
