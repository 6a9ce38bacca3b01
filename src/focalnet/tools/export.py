"""focalnet-export: a model of ours as transformers, timm or the official code load it.

    focalnet-export outputs/train/<run>/checkpoints/last.ckpt --format hf --out my-focalnet
    focalnet-export weights.pth --model focalnet_tiny_srf --format timm --out focalnet_tiny_srf.safetensors
    focalnet-export microsoft/focalnet-tiny --format official --out focalnet_tiny_srf.pth

SOURCE is a focalnet-train checkpoint (its run config rebuilds the model, and its class names label the export),
a weights file of any format load_pretrained reads (ours, official, timm, transformers) with --model NAME
[--set key=value ...], or a transformers folder or hub id (its config.json gives the model).
  hf:       a folder, config.json + model.safetensors: transformers.FocalNetForImageClassification.from_pretrained(OUT)
  timm:     a state dict (.safetensors, else torch.save):
            timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=OUT), num_classes=N)
  official: a .pth with the weights under "model", as microsoft/FocalNet releases them
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import torch

from focalnet.cli import Parser, key_value, one_line
from focalnet.models.weights import FORMATS, export_state_dict, hf_config, read_state_dict


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="focalnet-export", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("source", help="a focalnet-train .ckpt, a weights file (with --model), a transformers folder/hub id")
    p.add_argument("--format", required=True, choices=FORMATS, help="hf (transformers), timm or official")
    p.add_argument("--out", required=True, type=Path, help="the folder (hf) or file (timm, official) to write")
    p.add_argument("--model", help="the registered model name the weights file is for")
    p.add_argument("--set", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="create_model override with --model, e.g. use_postln=true (repeatable)")
    p.add_argument("--class-names", help="a text file, one class name per line (hf id2label)")
    return p


def load_source(source: str, name: str | None, overrides: dict):
    """(model, class names or None) from a focalnet-train checkpoint, a weights file and a name, or a transformers
    folder / hub id."""
    import focalnet

    path = Path(source)
    if path.suffix == ".ckpt" and name is None:
        from focalnet.run.module import model_from_checkpoint

        model, _ = model_from_checkpoint(path)
        return model, torch.load(path, map_location="cpu", mmap=True, weights_only=True).get("class_names")
    if name is None:
        return focalnet.create_model_from_pretrained(source, **overrides), None
    # A weights file carries its head's class count and input channels (in any format's names); the name, the rest.
    state = read_state_dict(source)
    head = next((v for k, v in state.items() if re.search(r"(^|\.)(head(\.fc)?|classifier)\.weight$", k)), None)
    stem = next((v for k, v in state.items() if re.search(r"(patch_embed|stem|patch_embeddings)\.proj", k)), None)
    overrides.setdefault("num_classes", head.shape[0] if head is not None else 0)
    if stem is not None:
        overrides.setdefault("in_channels", stem.shape[1])
    return focalnet.create_model(name, pretrained=source, **overrides), None


def export(model, fmt: str, out: Path, class_names=None) -> Path:
    """Write `model` in `fmt` to `out`; an OSError means `out` cannot be written (no partial file is left)."""
    from safetensors.torch import save

    state = export_state_dict(model, fmt)
    if fmt == "hf":
        config = hf_config(model, class_names)
        write(out / "model.safetensors", lambda f: f.write(save(state, metadata={"format": "pt"})))
        write(out / "config.json", lambda f: f.write((json.dumps(config, indent=2) + "\n").encode()))
    elif fmt == "timm" and out.suffix == ".safetensors":
        write(out, lambda f: f.write(save(state)))
    else:
        write(out, lambda f: torch.save({"model": state} if fmt == "official" else state, f))
    return out


def write(path: Path, save) -> None:
    """save(file) into a file beside `path`, renamed to it at the end: a failed write leaves no partial file. Through
    Python's open, so that an unwritable place fails with the OS's reason (torch.save's own names no path of ours)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as f:
            save(f)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = None
    if args.class_names:
        if not Path(args.class_names).is_file():
            parser.error(f"--class-names {args.class_names}: no such file")
        names = [line.strip() for line in Path(args.class_names).read_text().splitlines() if line.strip()]
    try:  # every failure is the user's input here: one line, exit 2
        model, from_ckpt = load_source(args.source, args.model, dict(args.set))
    except Exception as e:
        parser.error(f"{args.source}: {one_line(e)}")
    try:
        out = export(model.eval(), args.format, args.out, names or from_ckpt)
    except OSError as e:  # export reads nothing: only writing --out fails this way
        parser.error(f"--out {args.out} cannot be written: {e.strerror or one_line(e)}")
    except Exception as e:  # what the format cannot hold of the source's model
        parser.error(f"{args.source}: {one_line(e)}")
    print(out)


if __name__ == "__main__":
    main()
