"""FocalNet: Focal Modulation Networks (Yang et al., NeurIPS 2022, arXiv 2203.11926).

One implementation for the isotropic models (one stage, patch 16) and the hierarchical ones (four stages that
halve the resolution and double the width). Tokens stay channels-last, `[B, H, W, C]`, from the stem to the
head, so every dense layer is a matrix product over tokens (`gemm.Dense`: MKL's or oneDNN's, whichever is faster
for the shape on this machine) and no layout permute costs a copy; the depthwise convolutions see the same memory
as an NCHW tensor in `channels_last` format.

Parameter names follow the official release (`patch_embed`, `layers.i.blocks.j.modulation.f`,
`layers.i.downsample` at the end of stage i, `gamma_1`, `modulation.ln`, `head`), so official checkpoints load
as they are; `convert_state_dict` maps timm's names and 1x1-conv weights onto them.
Checkpoint formats (official, timm, transformers: import and export), weights files and hub download: `weights.py`;
`create_model` (a registered name, optionally with weights): `factory.py`.

Weight init for training from scratch follows the official code: truncated normal (std 0.02) on every Linear,
LayerNorm to ones/zeros, and PyTorch's default for the convolutions. timm's choice (truncated normal on the
convolutions too) is `weight_init="timm"`; with std 0.02 on a 3x3 depthwise kernel each focal level shrinks its
input about tenfold, so the deeper levels start out nearly silent. `weight_init="torch"` keeps PyTorch's defaults
everywhere (a Linear's weights uniform in +-1/sqrt(fan_in)): at the card's width 64 that is 3.6x the official std,
and the modulation q * h(ctx), a product of two such outputs, starts about 13x stronger; small models trained for a
few hundred steps learn from the first epochs instead of after a few (docs/recipe.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal, get_args, get_origin, get_type_hints

import torch
import torch.nn.functional as F
from torch import nn

from focalnet.models.gemm import Dense, dense

__all__ = [
    "FocalNet",
    "arguments",
    "list_models",
]


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep.div_(1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class FocalModulation(nn.Module):
    """The token mixer: q * h(sum_l gate_l * ctx_l + gate_L * global context), then a projection.

    Levels are stacked: level l applies a depthwise conv of size `focal_factor * l + focal_window` and a GELU to
    the output of level l-1, so the receptive field grows with every level. The global context is GELU of the
    spatial mean of the last level (of the projected context itself when focal_level=0). Gates are the raw outputs
    of `f` (gate_act="none", the paper's code) or passed through a sigmoid (gate_act="sigmoid", the design card).

    The paper's Table 13 variants, each off by default (the official formula above):
    interaction="add" gives q + h(...) in place of q * h(...); use_gates=False sums the levels and the global
    context with weight 1 each (`f` then has no gate outputs); context="top_level" makes the modulator h(ctx_L),
    the last level's context alone: no sum over levels, no global context, no gates. The paper gives no code for
    them; these are our reading of its Section 4.3.
    """

    def __init__(
        self,
        dim: int,
        focal_level: int = 2,
        focal_window: int = 3,
        focal_factor: int = 2,
        bias: bool = True,
        proj_drop: float = 0.0,
        use_postln_in_modulation: bool = False,
        normalize_modulator: bool = False,
        use_global_context: bool = True,
        gate_act: str = "none",
        interaction: str = "multiply",
        context: str = "all_levels",
        use_gates: bool = True,
        fast: bool = True,
    ):
        super().__init__()
        self.dim = dim
        self.fast = fast
        self.focal_level = focal_level
        self.top_level = context == "top_level"
        self.use_global_context = use_global_context and not self.top_level
        self.use_gates = use_gates and not self.top_level
        # The context terms the modulator sums: the levels (the top one alone with context="top_level") and the
        # global context; each has a gate unless use_gates=False.
        self.num_terms = 1 if self.top_level else focal_level + int(self.use_global_context)
        self.num_gates = self.num_terms if self.use_gates else 0
        self.normalize_modulator = normalize_modulator
        self.gate_act = gate_act
        self.additive = interaction == "add"
        self.kernel_sizes = [focal_factor * k + focal_window for k in range(focal_level)]

        self.f = Dense(dim, 2 * dim + self.num_gates, bias=bias, fast=fast)
        self.focal_layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, bias=False), nn.GELU())
            for k in self.kernel_sizes
        )
        self.h = Dense(dim, dim, bias=bias, fast=fast)
        self.ln = nn.LayerNorm(dim) if use_postln_in_modulation else None
        self.proj = Dense(dim, dim, fast=fast)
        self.proj_drop = nn.Dropout(proj_drop)
        # Analysis only: when set, forward keeps `gates` and `modulator` (both [B, H, W, *]) on the module.
        self.store_modulator = False
        self.gates: torch.Tensor | None = None
        self.modulator: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C = self.dim
        q, ctx, gates = self.f(x).split([C, C, self.num_gates], dim=-1)
        if self.gate_act == "sigmoid":
            gates = gates.sigmoid()
        modulator = self.h(self._context(ctx, gates)) if self.fast else self._modulator_reference(ctx, gates)
        if self.store_modulator:
            self.gates, self.modulator = gates, modulator
        out = q + modulator if self.additive else q * modulator
        if self.ln is not None:
            out = self.ln(out)
        return self.proj_drop(self.proj(out))

    def _context(self, ctx: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """The gated sum of the levels and the global context, [B, H, W, C], with no layout copy."""
        # [B, C, H, W] views of channels-last memory: the convs take them as they are.
        ctx = ctx.permute(0, 3, 1, 2)
        g = gates.permute(0, 3, 1, 2)
        ctx_all = ctx_global = None
        if self.use_global_context and self.focal_level == 0:
            ctx_global = F.gelu(ctx.mean((2, 3), keepdim=True))
        for level, (conv, act) in enumerate(self.focal_layers):
            ctx = act(_depthwise_conv(conv, ctx))
            if self.use_global_context and level == self.focal_level - 1:
                # Taken before the gated sum reads ctx, so that autograd adds the mean's broadcast gradient into
                # the sum's channels-last one and not the reverse: the gradient then stays channels-last, and
                # this level's GELU and 5x5 conv backward run 3x faster than on an NCHW gradient (docs/performance.md).
                ctx_global = F.gelu(ctx.mean((2, 3), keepdim=True))
            if not self.top_level:
                ctx_all = _gated_add(ctx_all, ctx, g[:, level : level + 1] if self.use_gates else None)
        if self.top_level:
            ctx_all = ctx
        if ctx_global is not None:
            ctx_all = _gated_add(ctx_all, ctx_global, g[:, self.focal_level :] if self.use_gates else None)
        if self.normalize_modulator:
            ctx_all = ctx_all / self.num_terms
        return ctx_all.permute(0, 2, 3, 1)

    def _modulator_reference(self, ctx: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """h(gated context) as the official code computes it: NCHW copies, a multiply and an add per level, the
        global context after the sum, h as a 1x1 conv. `fast=False` runs it, to check and time the fast path."""
        ctx = ctx.permute(0, 3, 1, 2).contiguous()
        g = gates.permute(0, 3, 1, 2).contiguous()
        ones = torch.ones_like(ctx[:, :1]).expand(-1, self.num_terms, -1, -1)
        g = g if self.use_gates else ones
        ctx_all = 0
        for level, layer in enumerate(self.focal_layers):
            ctx = layer(ctx)
            if not self.top_level:
                ctx_all = ctx_all + ctx * g[:, level : level + 1]
        if self.top_level:
            ctx_all = ctx
        if self.use_global_context:
            ctx_global = F.gelu(ctx.mean(2, keepdim=True).mean(3, keepdim=True))
            ctx_all = ctx_all + ctx_global * g[:, self.focal_level :]
        if self.normalize_modulator:
            ctx_all = ctx_all / self.num_terms
        modulator = F.conv2d(ctx_all, self.h.weight[:, :, None, None], self.h.bias)
        return modulator.permute(0, 2, 3, 1)

    def extra_repr(self) -> str:
        variants = "".join(
            f", {name}" for name, on in (("additive", self.additive), ("top_level", self.top_level),
                                         ("no gates", not self.use_gates and not self.top_level)) if on
        )
        return (
            f"dim={self.dim}, kernel_sizes={self.kernel_sizes}, global_context={self.use_global_context}, "
            f"gate_act={self.gate_act}{variants}"
        )


def _gated_add(total: torch.Tensor | None, term: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """total + term * gate (gate None: weight 1), fused where it can be; total None starts the sum."""
    if gate is None:
        return term if total is None else total + term
    return term * gate if total is None else torch.addcmul(total, term, gate)


def _depthwise_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for a focal level ("same" padding, stride 1, no bias), the fast way on this device.

    Kernel taps that only ever meet padding (a 5x5 level on the 2x2 and 1x1 maps of the last stages at 32 px) are
    left out: they multiply zeros, and oneDNN runs such shapes up to 18x slower than the cropped kernel
    (docs/performance.md). On the CPU, kernels of 5 and more get their weight gradient from `_DepthwiseConvCPU`.
    """
    k, H, W = conv.kernel_size[0], x.shape[-2], x.shape[-1]
    ph, pw = min(k // 2, H - 1), min(k // 2, W - 1)
    weight = conv.weight
    if (ph, pw) != (k // 2, k // 2):
        weight = weight[:, :, k // 2 - ph : k // 2 + ph + 1, k // 2 - pw : k // 2 + pw + 1]
    if x.device.type == "cpu" and max(weight.shape[-2:]) >= 5:
        return _DepthwiseConvCPU.apply(x, weight, (ph, pw))
    return F.conv2d(x, weight, None, padding=(ph, pw), groups=x.shape[1])


class _DepthwiseConvCPU(torch.autograd.Function):
    """Depthwise conv whose weight gradient is computed as another conv: one group per (image, channel) with the
    output gradient as its kernel, summed over images. oneDNN's own weight gradient for 5x5 and 7x7 depthwise
    kernels is up to 14x slower on the maps of FocalNet's stages (docs/performance.md); for 3x3 it is the faster
    one."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            # As autocast would cast them for the conv: backward's aten ops take no mixed dtypes (the gradient comes
            # back in autocast's dtype; autograd casts the weight's to the parameter's).
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, None, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        B, C, H, W = x.shape
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], C, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            per_image = F.conv2d(
                x.contiguous().view(1, B * C, H, W),
                grad.contiguous().view(B * C, 1, H, W),
                padding=ctx.padding,
                groups=B * C,
            )
            grad_w = per_image.view(B, C, *weight.shape[-2:]).sum(0).unsqueeze(1)
        return grad_x, grad_w, None


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0, fast: bool = True):
        super().__init__()
        self.fc1 = Dense(dim, hidden, fast=fast)
        self.act = nn.GELU()
        self.fc2 = Dense(hidden, dim, fast=fast)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class FocalNetBlock(nn.Module):
    """x + DP(g1 * FM(LN(x))), then x + DP(g2 * MLP(LN(x))); with post-norm the LayerNorms follow FM and MLP."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        use_layerscale: bool = False,
        layerscale_value: float = 1e-4,
        use_postln: bool = False,
        **modulation,
    ):
        super().__init__()
        self.use_postln = use_postln
        self.norm1 = nn.LayerNorm(dim)
        self.modulation = FocalModulation(dim, proj_drop=drop, **modulation)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop, fast=modulation.get("fast", True))
        self.drop_path = DropPath(drop_path)
        if use_layerscale:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layerscale_value)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layerscale_value)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def _residual(self, x: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
        if gamma is not None:
            if self.drop_path.p == 0.0 or not self.training:
                return torch.addcmul(x, y, gamma)
            y = y * gamma
        return x + self.drop_path(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_postln:
            x = self._residual(x, self.norm1(self.modulation(x)), self.gamma_1)
            return self._residual(x, self.norm2(self.mlp(x)), self.gamma_2)
        x = self._residual(x, self.modulation(self.norm1(x)), self.gamma_1)
        return self._residual(x, self.mlp(self.norm2(x)), self.gamma_2)


class PatchEmbed(nn.Module):
    """Strided conv + LayerNorm, NHWC out. `overlapped` uses k7 s4 p2 for the stem and k3 s2 p1 between stages;
    otherwise (kernel = stride) the fast path computes the conv as a Linear over gathered patches."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        patch_size: int,
        overlapped: bool = False,
        nhwc_in: bool = True,
        fast: bool = True,
    ):
        super().__init__()
        self.nhwc_in = nhwc_in
        self.patch_size = patch_size
        # Non-overlapping patches are a matmul over gathered patches: forward + backward up to 4.4x faster than
        # oneDNN's strided conv at FocalNet's shapes, most on small maps; slower only for the first downsampling
        # at 224 px (docs/performance.md).
        self.as_linear = fast and not overlapped
        kernel, padding = patch_size, 0
        if overlapped:
            kernel, padding = {4: (7, 2), 2: (3, 1)}.get(
                patch_size, (patch_size + 1 + patch_size % 2, (patch_size + 1) // 2)
            )
        self.proj = nn.Conv2d(in_dim, out_dim, kernel, stride=patch_size, padding=padding)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.as_linear:
            return self.norm(self._patches_times_weight(x))
        if self.nhwc_in:
            x = x.permute(0, 3, 1, 2)
        else:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.norm(self.proj(x).permute(0, 2, 3, 1))

    def _patches_times_weight(self, x: torch.Tensor) -> torch.Tensor:
        """self.proj(x) for kernel == stride, as one Linear over [B, H/s, W/s, s*s*C] patches, NHWC out."""
        s, w = self.patch_size, self.proj.weight
        if self.nhwc_in:
            B, H, W, C = x.shape
            x = x[:, : H - H % s, : W - W % s]  # the conv drops the remainder rows and columns too
            # Patches ordered (row, column, channel): contiguous C-runs gather fast; the weight is reordered to match.
            x = x.reshape(B, H // s, s, W // s, s, C).transpose(2, 3).reshape(B, H // s, W // s, s * s * C)
            return dense(x, w.permute(0, 2, 3, 1).reshape(w.shape[0], -1), self.proj.bias)
        B, C, H, W = x.shape
        x = x[:, :, : H - H % s, : W - W % s]
        # Patches ordered (channel, row, column), the conv weight's own order.
        x = x.reshape(B, C, H // s, s, W // s, s).permute(0, 2, 4, 1, 3, 5).reshape(B, H // s, W // s, C * s * s)
        return dense(x, w.reshape(w.shape[0], -1), self.proj.bias)


class FocalNetStage(nn.Module):
    def __init__(
        self,
        dim: int,
        depth: int,
        out_dim: int | None,
        downsample_overlapped: bool,
        drop_path: Sequence[float],
        fast: bool = True,
        **block,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(FocalNetBlock(dim, drop_path=dp, fast=fast, **block) for dp in drop_path[:depth])
        self.downsample = PatchEmbed(dim, out_dim, 2, downsample_overlapped, fast=fast) if out_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


def _per_stage(name: str, value, stages: int) -> list:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value] * stages
    value = list(value)
    if len(value) != stages:
        raise ValueError(f"{name}={value} has {len(value)} entries but the model has {stages} stages")
    return value


class FocalNet(nn.Module):
    """FocalNet backbone + optional linear head.

    Args:
        image_size: input size the model is built for (checked against the total stride; any multiple works).
        patch_size: stem stride (16 for isotropic models, 4 for hierarchical ones).
        in_channels: image channels.
        num_classes: classes of the linear head; None (or 0) returns pooled features `[B, num_features]`.
        embed_dim: width; an int doubles per stage (hierarchical), a list sets each stage.
        depths: blocks per stage; one stage is the isotropic model.
        mlp_ratio: MLP hidden width / width.
        drop_rate: dropout after the MLP and the modulation projection.
        drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
        focal_levels: L, the number of stacked depthwise-conv levels (int for all stages, or a list per stage).
            0 keeps only the global context: the modulator is h(GELU(mean(ctx)) * gate), one vector per image.
        focal_kernel: the first level's kernel; level l uses `focal_factor * l + focal_kernel` (int or list).
        focal_factor: kernel growth per level (even, so every kernel stays odd).
        use_layerscale / layerscale_value: learnable per-channel residual scales, initialised to the value.
        use_postln: LayerNorm after the modulation and the MLP instead of before.
        use_postln_in_modulation: LayerNorm on q * modulator before the projection.
        normalize_modulator: divide the gated context sum by the number of gates.
        use_conv_embed: overlapped (convolutional) patch embedding in the stem and downsampling layers.
        use_global_context: add the gated global (mean-pooled) context level.
        gate_act: "none" (raw gates, the paper's code) or "sigmoid" (the design card's sketch).
        interaction: "multiply" (q * h(context), the paper) or "add" (q + h(context), Table 13's additive variant).
        context: "all_levels" (the gated sum of every level and the global context, the paper) or "top_level"
            (h of the last level's context alone, Table 13's "top level only").
        use_gates: False sums the context terms with weight 1 each (Table 13's "no gating").
        weight_init: "official" (trunc-normal 0.02 on Linears, convs keep PyTorch's default), "timm" (trunc-normal
            0.02 on convs too) or "torch" (PyTorch's defaults everywhere: wider at small widths).
        fast: True (default) runs the fast path: the modulator channels-last with fused gated sums, patch
            embeddings as a Linear over patches, depthwise kernels without the taps that only meet padding.
            False runs the official code's op order (NCHW copies, h as a 1x1 conv, conv embeddings, full kernels).
            Same function and parameters: a reference to check and time the fast path against.
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 4,
        in_channels: int = 3,
        num_classes: int | None = 1000,
        embed_dim: int | Sequence[int] = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        focal_levels: int | Sequence[int] = 2,
        focal_kernel: int | Sequence[int] = 3,
        focal_factor: int = 2,
        use_layerscale: bool = False,
        layerscale_value: float = 1e-4,
        use_postln: bool = False,
        use_postln_in_modulation: bool = False,
        normalize_modulator: bool = False,
        use_conv_embed: bool = False,
        use_global_context: bool = True,
        gate_act: Literal["none", "sigmoid"] = "none",
        interaction: Literal["multiply", "add"] = "multiply",
        context: Literal["all_levels", "top_level"] = "all_levels",
        use_gates: bool = True,
        weight_init: Literal["official", "timm", "torch"] = "official",
        fast: bool = True,
    ):
        # The arguments as given: exports (transformers' config.json, timm's post-norm names) need the options that
        # leave no trace in the weights, such as use_postln and normalize_modulator.
        arch = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        self.arch = arch
        depths = [int(d) for d in _per_stage("depths", depths, 1)] if isinstance(depths, int) else list(depths)
        stages = len(depths)
        if stages == 0 or any(d < 1 for d in depths):
            raise ValueError(f"depths={depths} must be a non-empty list of positive block counts")
        if isinstance(embed_dim, int):
            dims = [embed_dim * 2**i for i in range(stages)]
        else:
            dims = _per_stage("embed_dim", embed_dim, stages)
        levels = _per_stage("focal_levels", focal_levels, stages)
        kernels = _per_stage("focal_kernel", focal_kernel, stages)
        for lv in levels:
            if not isinstance(lv, int) or lv < 0:
                raise ValueError(f"focal_levels={lv} must be an integer >= 0")
            if lv == 0 and not use_global_context:
                raise ValueError("focal_levels=0 with use_global_context=False leaves no context to modulate with")
        for k in kernels:
            if not isinstance(k, int) or k < 1 or k % 2 == 0:
                raise ValueError(f"focal_kernel={k} must be an odd integer >= 1")
        if not isinstance(focal_factor, int) or focal_factor < 0 or focal_factor % 2:
            raise ValueError(f"focal_factor={focal_factor} must be an even integer >= 0 (kernels must stay odd)")
        if patch_size < 1:
            raise ValueError(f"patch_size={patch_size} must be >= 1")
        stride = patch_size * 2 ** (stages - 1)
        if image_size % stride:
            what = (
                f"patch_size={patch_size}"
                if stages == 1
                else f"the total stride {stride} (patch_size={patch_size} x 2^{stages - 1})"
            )
            raise ValueError(f"image_size={image_size} is not divisible by {what}")
        for name, (kind, _) in arguments().items():  # a choice takes the values its Literal declares, no others
            if get_origin(kind) is Literal and arch[name] not in get_args(kind):
                raise ValueError(f"{name}={arch[name]!r} is not one of {get_args(kind)}")
        if context == "top_level" and 0 in levels:
            raise ValueError("context='top_level' with focal_levels=0: there is no top level to take the context from")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={drop_path_rate} must be in [0, 1)")

        self.image_size = image_size
        self.num_classes = num_classes or 0
        self.embed_dim = dims
        self.num_features = dims[-1]
        self.patch_embed = PatchEmbed(in_channels, dims[0], patch_size, use_conv_embed, nhwc_in=False, fast=fast)
        self.pos_drop = nn.Dropout(drop_rate)
        n = sum(depths)
        dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        self.layers = nn.ModuleList()
        for i in range(stages):
            self.layers.append(
                FocalNetStage(
                    dims[i],
                    depths[i],
                    out_dim=dims[i + 1] if i < stages - 1 else None,
                    downsample_overlapped=use_conv_embed,
                    drop_path=dpr[sum(depths[:i]) :],
                    mlp_ratio=mlp_ratio,
                    drop=drop_rate,
                    use_layerscale=use_layerscale,
                    layerscale_value=layerscale_value,
                    use_postln=use_postln,
                    focal_level=levels[i],
                    focal_window=kernels[i],
                    focal_factor=focal_factor,
                    use_postln_in_modulation=use_postln_in_modulation,
                    normalize_modulator=normalize_modulator,
                    use_global_context=use_global_context,
                    gate_act=gate_act,
                    interaction=interaction,
                    context=context,
                    use_gates=use_gates,
                    fast=fast,
                )
            )
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, self.num_classes) if self.num_classes else nn.Identity()
        self.apply(lambda m: _init_weights(m, weight_init))

    # The design card's builder: the isotropic model with the card's names.
    @classmethod
    def build(
        cls,
        image_size: int = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        hidden_size: int = 256,
        num_layers: int = 4,
        focal_levels: int = 3,
        focal_kernel: int = 3,
        num_classes: int | None = None,
        **more,
    ) -> FocalNet:
        """The design card's isotropic FocalNet.

        Args:
            image_size: input height and width; must be divisible by patch_size.
            patch_size: side of the square, non-overlapping patches of the embedding.
            in_channels: channels of the input image.
            hidden_size: token width of every block.
            num_layers: number of focal-modulation blocks.
            focal_levels: stacked depthwise-conv levels per block (0 = global context only).
            focal_kernel: kernel of the first level; level l uses 2*l + focal_kernel.
            num_classes: None returns [batch, hidden_size] features; an int adds a linear head, [batch, num_classes].
            **more: any other FocalNet argument; drop_path_rate defaults to 0 here.
        """
        more.setdefault("drop_path_rate", 0.0)
        return cls(
            image_size=image_size,
            patch_size=patch_size,
            in_channels=in_channels,
            num_classes=num_classes,
            embed_dim=[hidden_size],
            depths=[num_layers],
            focal_levels=focal_levels,
            focal_kernel=focal_kernel,
            **more,
        )

    @staticmethod
    def output_size(num_classes: int | None = None, hidden_size: int = 256, **_) -> int:
        """Width of `build(**opts)`'s output: num_classes if set, else hidden_size."""
        return num_classes if num_classes else hidden_size

    def set_store_modulator(self, enabled: bool = True) -> FocalNet:
        """Keep every block's `modulation.gates` and `modulation.modulator` after each forward (analysis)."""
        for m in self.modules():
            if isinstance(m, FocalModulation):
                m.store_modulator = enabled
                if not enabled:
                    m.gates = m.modulator = None
        return self

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        """`forward(x)` and what every block's focal modulation computed, for analysis and figures (focalnet.tools.viz).

        Returns `(output, maps)`, `maps` one dict per block in forward order: `stage` and `block` (indices),
        `gates` `[B, H, W, L+1]`: the weight each token gives focal level l = 0..L-1 and, last, the global
        context (`[B, H, W, L]` without global context); `modulator` `[B, H, W, C]`: h(gated context sum), what
        multiplies each token's query; its L2 norm over channels is the paper's modulator map. H, W are the
        stage's token grid. Storing is on for this call only (the previous setting is restored), so a plain
        forward keeps nothing; gradients flow as in `forward` (wrap it in `torch.no_grad()` to keep none).
        """
        blocks = [(i, j, blk.modulation) for i, stage in enumerate(self.layers) for j, blk in enumerate(stage.blocks)]
        before = [m.store_modulator for _, _, m in blocks]
        self.set_store_modulator(True)
        try:
            out = self(x)
            maps = [{"stage": i, "block": j, "gates": m.gates, "modulator": m.modulator} for i, j, m in blocks]
        finally:
            for (_, _, m), store in zip(blocks, before):
                m.store_modulator = store
                if not store:
                    m.gates = m.modulator = None
        return out, maps

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at the end of every stage (before its downsampling), NCHW, for dense-prediction heads."""
        x = self.pos_drop(self.patch_embed(x))
        feats = []
        for stage in self.layers:
            x = stage(x)
            feats.append(x.permute(0, 3, 1, 2))
            if stage.downsample is not None:
                x = stage.downsample(x)
        return feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final normed tokens, [B, H, W, C]."""
        x = self.pos_drop(self.patch_embed(x))
        for stage in self.layers:
            x = stage(x)
            if stage.downsample is not None:
                x = stage.downsample(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((1, 2))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            _init_weights(self.head, "official")


def arguments() -> dict[str, tuple[Any, Any]]:
    """FocalNet's arguments, name -> (annotation, default), from its signature: a switch's one declaration. A
    Literal's values are the ones FocalNet accepts, and the config schema's `model.*` keys follow them all."""
    hints = get_type_hints(FocalNet.__init__)
    params = list(inspect.signature(FocalNet.__init__).parameters.values())[1:]  # without self
    return {p.name: (hints[p.name], p.default) for p in params}


def _init_weights(m: nn.Module, scheme: str) -> None:
    if scheme == "torch":  # the layers' own reset_parameters() already ran
        return
    if isinstance(m, nn.Linear) or (scheme == "timm" and isinstance(m, nn.Conv2d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------------------
# Registry: the released models and the card's default. Values are FocalNet arguments.

_HIER = dict(patch_size=4, focal_kernel=3)
_LARGE = dict(_HIER, depths=(2, 2, 18, 2), use_conv_embed=True, use_postln=True, use_layerscale=True)
_ISO = dict(patch_size=16, depths=(12,), focal_levels=3, focal_kernel=3)

MODEL_CONFIGS: dict[str, dict] = {
    "focalnet_tiny_srf": dict(_HIER, depths=(2, 2, 6, 2), embed_dim=96, focal_levels=2, drop_path_rate=0.2),
    "focalnet_tiny_lrf": dict(_HIER, depths=(2, 2, 6, 2), embed_dim=96, focal_levels=3, drop_path_rate=0.2),
    "focalnet_small_srf": dict(_HIER, depths=(2, 2, 18, 2), embed_dim=96, focal_levels=2, drop_path_rate=0.3),
    "focalnet_small_lrf": dict(_HIER, depths=(2, 2, 18, 2), embed_dim=96, focal_levels=3, drop_path_rate=0.3),
    "focalnet_base_srf": dict(_HIER, depths=(2, 2, 18, 2), embed_dim=128, focal_levels=2, drop_path_rate=0.5),
    "focalnet_base_lrf": dict(_HIER, depths=(2, 2, 18, 2), embed_dim=128, focal_levels=3, drop_path_rate=0.5),
    "focalnet_tiny_iso": dict(_ISO, embed_dim=[192], drop_path_rate=0.2),
    "focalnet_small_iso": dict(_ISO, embed_dim=[384], drop_path_rate=0.2),
    "focalnet_base_iso": dict(_ISO, embed_dim=[768], use_layerscale=True, use_postln=True, drop_path_rate=0.3),
    "focalnet_large_fl3": dict(_LARGE, embed_dim=192, focal_levels=3, focal_kernel=5),
    # The official fl4 configs set normalize_modulator; timm's large/xlarge_fl4 leave it out.
    "focalnet_large_fl4": dict(_LARGE, embed_dim=192, focal_levels=4, normalize_modulator=True),
    "focalnet_xlarge_fl3": dict(_LARGE, embed_dim=256, focal_levels=3, focal_kernel=5),
    "focalnet_xlarge_fl4": dict(_LARGE, embed_dim=256, focal_levels=4, normalize_modulator=True),
    "focalnet_huge_fl3": dict(_LARGE, embed_dim=352, focal_levels=3, use_postln_in_modulation=True),
    "focalnet_huge_fl4": dict(_LARGE, embed_dim=352, focal_levels=4, use_postln_in_modulation=True),
    # The design card's default: FocalNet.build() as it stands.
    "focalnet_card": dict(
        patch_size=16, embed_dim=[256], depths=(4,), focal_levels=3, focal_kernel=3, drop_path_rate=0.0
    ),
}


def list_models() -> list[str]:
    return sorted(MODEL_CONFIGS)
