"""focalnet-viz: what a FocalNet looks at, as the official notebook (visualize.ipynb) drew it.

    focalnet-viz outputs/train/<run>/checkpoints/last.ckpt --split test --num 6 [--blocks last|all|0.1,3.0]
    focalnet-viz outputs/train/<run>/checkpoints/last.ckpt --images DIR
    focalnet-viz --model focalnet_tiny_srf --pretrained focalnet_tiny_srf.pth --images DIR [--set key=value]

Writes three PNGs into --out (default: viz/ beside the checkpoint or the weights): modulator.png, the L2 norm over
channels of chosen blocks' modulators, bilinearly up-sampled and laid over the images; gates.png, one block's gate
per focal level and for the global context on every token; kernels.png, each stage's depthwise focal kernels,
averaged over channels. A checkpoint of focalnet-train brings its model and data (the run config inside it); images
are normalised as that run normalised them (ImageNet's mean/std with --pretrained). The figures are
focalnet.run.maps's, which the `ModulatorMaps` training callback logs too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from focalnet.cli import Parser, key_value, positive_int
from focalnet.run.maps import (
    depths_of,
    kernels_figure,
    map_figures,
    parse_blocks,
    select_blocks,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# --- the command -----------------------------------------------------------------------------------------------


def load_checkpoint(path: Path):
    """(model, datamodule) of a focalnet-train checkpoint, rebuilt from its run config as focalnet-eval does."""
    from hydra.utils import instantiate

    from focalnet.run.module import model_from_checkpoint

    model, run_cfg = model_from_checkpoint(path)
    return model, instantiate(run_cfg.data, _convert_="all")


def read_images(folder: Path, size: int, channels: int, mean, std) -> tuple[torch.Tensor, list[str]]:
    """Every image file in `folder` (sorted by name), resized to size x size and normalised: [N, C, H, W], names."""
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"--images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for path in files:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
            images.append(torch.from_numpy(np.array(img, dtype=np.float32) / 255).reshape(size, size, -1))
    x = torch.stack(images).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1), [p.name for p in files]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="focalnet-viz", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", type=Path, help="a focalnet-train checkpoint (.ckpt)")
    p.add_argument("--model", help="a registered model name (with --pretrained, instead of a checkpoint)")
    p.add_argument("--pretrained", help="weights create_model takes: official/timm .pth, .safetensors, hub id")
    p.add_argument("--set", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="create_model override with --model, e.g. image_size=64 (repeatable)")
    p.add_argument("--images", type=Path, metavar="DIR", help="a folder of image files")
    p.add_argument("--split", choices=("val", "test"), help="the first --num images of the run's split")
    p.add_argument("--num", type=positive_int, default=4, help="images with --split (default 4)")
    p.add_argument("--blocks", type=parse_blocks, default="last",
                   help="modulator maps of: last (the last block of every stage, default), all, or 0.1,3.0")
    p.add_argument("--gates-block", type=parse_blocks, metavar="STAGE.BLOCK", help="gates of (default: last block)")
    p.add_argument("--out", type=Path, help="output folder (default: viz/ beside the checkpoint or weights)")
    return p


def main(argv: list[str] | None = None) -> None:
    from focalnet.cli import one_line

    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.model is None):
        parser.error("give a checkpoint, or --model NAME --pretrained FILE")
    if args.model and not args.pretrained:
        parser.error("--model needs --pretrained (weights to look at)")
    if (args.images is None) == (args.split is None):
        parser.error("give --images DIR or --split val|test")
    if args.model and args.split:
        parser.error("--split needs a checkpoint (its run's data); with --model use --images DIR")
    if args.images is not None and not args.images.is_dir():
        parser.error(f"--images {args.images}: no such folder")
    gates_block = None
    if args.gates_block is not None:
        if not isinstance(args.gates_block, list) or len(args.gates_block) != 1:
            parser.error(f"--gates-block: one stage.block pair, not {args.gates_block}")
        gates_block = args.gates_block[0]

    labels = classes = names = None
    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            parser.error(f"{args.checkpoint}: no such checkpoint")
        try:
            model, datamodule = load_checkpoint(args.checkpoint)
        except Exception as e:
            parser.error(f"{args.checkpoint}: {one_line(e)}")
        mean, std, size, channels = datamodule.mean, datamodule.std, datamodule.image_size, datamodule.in_channels
        out = args.out or args.checkpoint.parent / "viz"
    else:
        import focalnet
        from focalnet.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD

        try:
            model = focalnet.create_model(args.model, pretrained=args.pretrained, **dict(args.set))
        except Exception as e:
            parser.error(one_line(e))
        mean, std, size = IMAGENET_MEAN, IMAGENET_STD, model.image_size
        channels = model.patch_embed.proj.in_channels
        mean, std = (mean, std) if channels == 3 else (mean[:channels], std[:channels])
        weights = Path(args.pretrained)
        out = args.out or (weights.parent / "viz" if weights.is_file() else Path("viz"))
    try:
        select_blocks(depths_of(model), args.blocks)
        if gates_block:
            select_blocks(depths_of(model), [gates_block])
        if args.images is not None:
            images, names = read_images(args.images, size, channels, mean, std)
        else:
            datamodule.setup("validate" if args.split == "val" else "test")
            dataset = datamodule.val_set if args.split == "val" else datamodule.test_set
            raw, labels = zip(*(dataset[i] for i in range(min(args.num, len(dataset)))))
            # What the module sees in validation and test: resized and normalised by the data module itself.
            images, labels = datamodule.transform_batch(torch.stack(raw)), torch.as_tensor(labels)
            classes = datamodule.classes
    except Exception as e:
        parser.error(one_line(e))

    figures = map_figures(model, images, mean, std, args.blocks, gates_block, names, labels, classes)
    figures["kernels"] = kernels_figure(model)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png", dpi=110)
        print(out / f"{name}.png")


if __name__ == "__main__":
    main()
