"""The figures of what a FocalNet looks at, as the official notebook (visualize.ipynb) drew them: the modulator
maps (L2 norm over channels, up-sampled over the images), the gates of one block and the depthwise focal kernels.
The `ModulatorMaps` training callback logs them; focalnet-viz draws them for a checkpoint or pretrained weights.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PANEL = 2.0  # inches per image panel


# --- which blocks ----------------------------------------------------------------------------------------------


def parse_blocks(text: str) -> str | list[tuple[int, int]]:
    """`last`, `all`, or comma-separated `stage.block` pairs such as `0.1,3.0`."""
    if text in ("last", "all"):
        return text
    pairs = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        stage, dot, block = item.partition(".")
        if not (dot and stage.isdigit() and block.isdigit()):
            raise argparse.ArgumentTypeError(f"{text!r}: expected last, all or stage.block pairs such as 0.1,3.0")
        pairs.append((int(stage), int(block)))
    if not pairs:
        raise argparse.ArgumentTypeError(f"{text!r}: no stage.block pair")
    return pairs


def select_blocks(depths: list[int], spec: str | list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(stage, block) pairs of a model with `depths` blocks per stage; `last` is the last block of every stage."""
    if spec == "last":
        return [(i, d - 1) for i, d in enumerate(depths)]
    if spec == "all":
        return [(i, j) for i, d in enumerate(depths) for j in range(d)]
    for stage, block in spec:
        if stage >= len(depths) or block >= depths[stage]:
            raise ValueError(f"block {stage}.{block} does not exist: the model's stages have {depths} blocks")
    return list(spec)


def depths_of(model) -> list[int]:
    return [len(stage.blocks) for stage in model.layers]


# --- figures ---------------------------------------------------------------------------------------------------


def to_display(images: torch.Tensor, mean, std) -> np.ndarray:
    """Normalised [N, C, H, W] back to [0, 1]: [N, H, W] for grayscale, [N, H, W, 3] for RGB."""
    shape = (1, -1, 1, 1)
    x = images.detach().float().cpu() * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)
    x = x.clamp(0, 1)
    return x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """[N, h, w] token maps to [N, H, W] pixels, bilinearly (nearest gives chessboard artefacts: FocalNet#6)."""
    return F.interpolate(maps[:, None].float().cpu(), size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def _show_image(ax, image: np.ndarray) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_axis_off()


def _row_label(ax, text: str) -> None:
    # The axis is off, so no ylabel: write beside it.
    ax.text(-0.06, 0.5, text, transform=ax.transAxes, rotation=90, ha="right", va="center", fontsize=9)


def _figure(rows: int, cols: int, width: float, height: float):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # drawn with Agg, whatever pyplot's backend is
    return fig, fig.subplots(rows, cols, squeeze=False)


def modulator_figure(images, rows: list[tuple[str, torch.Tensor]], mean, std, titles=None, alpha=0.5) -> Figure:
    """The images in the first row; then one row per (label, [N, h, w] modulator norm): the map over the image,
    one colour scale per row."""
    shown = to_display(images, mean, std)
    n, size = len(shown), tuple(images.shape[-2:])
    fig, axes = _figure(1 + len(rows), n, max(PANEL * n + 1.0, 4.5), PANEL * (1 + len(rows)) + 0.8)
    for k in range(n):
        _show_image(axes[0, k], shown[k])
        if titles:
            axes[0, k].set_title(titles[k], fontsize=9)
    _row_label(axes[0, 0], "image")
    for r, (label, norm) in enumerate(rows, start=1):
        heat = upsample(norm, size)
        for k in range(n):
            _show_image(axes[r, k], shown[k])
            im = axes[r, k].imshow(heat[k], cmap="turbo", alpha=alpha, vmin=heat.min(), vmax=heat.max())
        _row_label(axes[r, 0], label)
        fig.colorbar(im, ax=axes[r, :].tolist(), shrink=0.85, label="‖modulator‖₂")
    fig.suptitle("Modulator: L2 norm over channels per token\n(bright = strong modulation)", fontsize=11)
    return fig


def gates_figure(images, gates: torch.Tensor, names: list[str], mean, std, titles=None, block: str = "") -> Figure:
    """Per image (a row): the image, then the gate of each focal level and of the global context on every token
    (`gates` [N, h, w, G]), each level on one colour scale shared by all images."""
    shown = to_display(images, mean, std)
    n, size, levels = len(shown), tuple(images.shape[-2:]), gates.shape[-1]
    fig, axes = _figure(n, 1 + levels, PANEL * (1 + levels) + 0.4, PANEL * n + 1.4)
    for k in range(n):
        _show_image(axes[k, 0], shown[k])
        if titles:
            _row_label(axes[k, 0], titles[k].replace("\n", ", "))
    axes[0, 0].set_title("image", fontsize=10)
    for g in range(levels):
        heat = upsample(gates[..., g], size)
        for k in range(n):
            im = axes[k, 1 + g].imshow(heat[k], cmap="viridis", vmin=heat.min(), vmax=heat.max())
            axes[k, 1 + g].set_axis_off()
        axes[0, 1 + g].set_title(names[g], fontsize=10)
        fig.colorbar(im, ax=axes[:, 1 + g].tolist(), location="bottom", shrink=0.9, aspect=12)
    fig.suptitle(f"Gates of {block}:\neach focal level's weight on every token", fontsize=11)
    return fig


def kernels_figure(model) -> Figure:
    """Depthwise kernels of the last block of each stage, mean over channels: a row per level, a column per stage."""
    stages = [stage.blocks[-1].modulation for stage in model.layers]
    levels = max(len(m.focal_layers) for m in stages)
    if levels == 0:
        fig, axes = _figure(1, 1, 5, 1.5)
        axes[0, 0].set_axis_off()
        axes[0, 0].text(0.5, 0.5, "focal_levels=0: no depthwise kernels (global context only)", ha="center")
        return fig
    fig, axes = _figure(levels, len(stages), max(2.6 * len(stages) + 0.4, 4.5), 2.3 * levels + 0.8)
    for i, modulation in enumerate(stages):
        for level in range(levels):
            ax = axes[level, i]
            ax.set_axis_off()
            if level >= len(modulation.focal_layers):
                continue
            kernel = modulation.focal_layers[level][0].weight.detach().float().cpu().mean((0, 1)).numpy()
            bound = float(np.abs(kernel).max()) or 1.0  # symmetric around 0: red adds, blue subtracts
            im = ax.imshow(kernel, cmap="RdBu_r", vmin=-bound, vmax=bound)
            k = kernel.shape[0]
            where = f"stage {i}, block {len(model.layers[i].blocks) - 1}\n" if level == 0 else ""
            ax.set_title(f"{where}level {level + 1} ({k}x{k})", fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle("Depthwise focal kernels, mean over channels\n(last block of each stage)", fontsize=11)
    return fig


def map_figures(model, images, mean, std, blocks="last", gates_block=None, names=None, labels=None,
                classes=None) -> dict[str, Figure]:
    """{"modulator": ..., "gates": ...} for `images` (normalised [N, C, H, W]): one `forward_maps` call, without
    gradients, in eval mode (the model's mode is restored). `gates_block` (stage, block) defaults to the last block.
    Titles name each image (`names`), its class (`labels`) and the prediction, with `classes` as names."""
    depths = depths_of(model)
    chosen = select_blocks(depths, blocks)
    gates_block = gates_block or (len(depths) - 1, depths[-1] - 1)
    select_blocks(depths, [gates_block])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            weight = next(model.parameters())
            logits, maps = model.forward_maps(images.to(weight.device, weight.dtype))
    finally:
        model.train(was_training)
    by_block = {(m["stage"], m["block"]): m for m in maps}
    rows = [(f"stage {s}, block {b}", by_block[s, b]["modulator"].float().norm(dim=-1).cpu()) for s, b in chosen]
    titles = _titles(len(images), names, labels, logits if getattr(model, "num_classes", 0) else None, classes)
    modulation = model.layers[gates_block[0]].blocks[gates_block[1]].modulation
    gate_names = [f"level {lv + 1} ({k}x{k})" for lv, k in enumerate(modulation.kernel_sizes)]
    gate_names += ["global context"] if modulation.use_global_context else []
    gates = by_block[gates_block]["gates"].float().cpu()
    where = f"stage {gates_block[0]}, block {gates_block[1]}"
    return {
        "modulator": modulator_figure(images, rows, mean, std, titles),
        "gates": gates_figure(images, gates, gate_names, mean, std, titles, block=where),
    }


def _titles(n, names, labels, logits, classes) -> list[str]:
    def name(i: int) -> str:
        return classes[i] if classes and i < len(classes) else str(i)

    titles = []
    for k in range(n):
        lines = [names[k]] if names else []
        if labels is not None:
            lines.append(f"true {name(int(labels[k]))}")
        if logits is not None:
            lines.append(f"pred {name(int(logits[k].argmax()))}")
        titles.append("\n".join(lines))
    return titles
