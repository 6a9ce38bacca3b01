"""focalnet-bench: training and inference throughput, achieved FLOP/s, fraction of the machine's matmul peak and
peak memory of any FocalNet config; with `--data`, the train loader's throughput next to the model's.

    focalnet-bench --model focalnet_tiny_srf --img 224 --batch 8 --mode eager,compile
    focalnet-bench --model focalnet_tiny_srf --img 224 --batch 8 --set fast=false --profile 12
    focalnet-bench --model focalnet_card --set hidden_size=128 --set num_layers=4 --set patch_size=4 \\
        --data digits --img 32 --batch 128 --json bench.json

Every list option takes commas or repeats (`--mode eager,compile`, `--img 32 --img 224`); one row is measured for
each combination. Models keep their own defaults (drop_path_rate included); `--set key=value` passes any
`create_model` override, e.g. `--set drop_path_rate=0`. bf16 is mixed precision (fp32 weights, torch.autocast),
as Lightning's "bf16-mixed" trains. Images/s are the median over `--repeats` runs of `--steps` steps, after
`--warmup` steps that are not timed (in compile mode the first of them compiles: `compile_s`). "flops" are
multiply-adds per image (as in summary.json and the paper); a training step costs 3 forwards and a multiply-add
2 FLOP. The peak is the fastest of the device's GEMMs (on CPUs MKL's `mm` and oneDNN's 1x1 conv, both reported)
on a square product in the same dtype, best of `--repeats`, measured in this run. Peak memory is
torch.cuda.max_memory_allocated on CUDA; on the CPU it is the process's peak RSS (ru_maxrss), a high-water mark
of the whole process that earlier rows in the same call also raise.

On a CPU shared with other jobs, OpenMP threads that spin at every barrier lose whole scheduler slices to the
other processes; `OMP_WAIT_POLICY=PASSIVE focalnet-bench ...` (or `--threads 1`) keeps such numbers meaningful.
compile_s is smaller on a rerun: Inductor keeps compiled graphs in an on-disk cache (TORCHINDUCTOR_CACHE_DIR).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

import focalnet
from focalnet.cli import Parser, config_dir, key_value, list_of, positive_int

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODES = ("eager", "compile")
DEVICES = ("auto", "cpu", "cuda")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def _time_repeats(step, steps: int, repeats: int, device: torch.device) -> list[float]:
    """Seconds for `steps` calls of `step`, once per repeat."""
    seconds = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def _summary(prefix: str, rates: list[float]) -> dict:
    return {
        f"{prefix}_images_per_s": statistics.median(rates),
        f"{prefix}_images_per_s_min": min(rates),
        f"{prefix}_images_per_s_max": max(rates),
        f"{prefix}_images_per_s_repeats": rates,
    }


def matmul_peaks(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of a size^3 matrix product by each GEMM the device has, best of `repeats` timed runs after a warm-up:
    `mm` (torch.mm: MKL for fp32 on CPUs, oneDNN for bf16, cuBLAS on GPUs) and, on CPUs, `conv1x1` (a channels-last
    1x1 conv: oneDNN). The model's dense layers take the faster per shape (focalnet.models.gemm)."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    iters = 20 if device.type == "cuda" else 1  # a GPU matmul takes ~1 ms: time a few so the clock resolves it
    kernels = {"mm": lambda: torch.mm(a, b)}
    if device.type == "cpu":
        rows, weight = a.reshape(1, 1, size, size).permute(0, 3, 1, 2), b[:, :, None, None]  # [1, K, 1, M] NHWC
        kernels["conv1x1"] = lambda: F.conv2d(rows, weight)
    peaks = {}
    for name, kernel in kernels.items():
        kernel()
        peaks[name] = 2 * size**3 * iters / min(_time_repeats(kernel, iters, repeats, device))
    return peaks


def prepare_model(name: str, overrides: dict, image_size: int, mode: str, device: torch.device):
    """(eager model, the model to run): the second is torch.compile of the first in compile mode."""
    model = focalnet.create_model(name, image_size=image_size, **overrides).to(device)
    if mode == "compile":
        torch._dynamo.reset()  # every row traces afresh, so no row runs into Dynamo's recompile limit
        return model, torch.compile(model)
    return model, model


def bench_model(
    name: str,
    overrides: dict,
    image_size: int,
    batch_size: int,
    precision: str,
    mode: str,
    device: torch.device,
    channels_last: bool = False,
    steps: int = 10,
    warmup: int = 3,
    repeats: int = 5,
    profile_ops: int = 0,
) -> dict:
    """One row: training step (forward, cross-entropy, backward, AdamW) and inference throughput, memory, FLOPs."""
    eager, model = prepare_model(name, overrides, image_size, mode, device)
    stats = focalnet.model_stats(eager, image_size, overrides.get("in_channels", 3))
    x = torch.randn(batch_size, overrides.get("in_channels", 3), image_size, image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, eager.num_classes, (batch_size,), device=device)
    optimizer = torch.optim.AdamW(eager.parameters(), lr=1e-4, weight_decay=0.05, fused=True)  # as conf/optim trains
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def train_step():
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer_step():
        with autocast:
            model(x)

    row = {}
    for phase, step in (("infer", infer_step), ("train", train_step)):  # inference first: CPU RSS only grows
        model.train(phase == "train")
        _reset_peak_memory(device)
        _sync(device)
        start = time.perf_counter()
        step()  # compiles in compile mode
        _sync(device)
        row[f"{phase}_first_step_s"] = time.perf_counter() - start
        for _ in range(warmup - 1):
            step()
        seconds = _time_repeats(step, steps, repeats, device)
        row.update(_summary(phase, [steps * batch_size / s for s in seconds]))
        row[f"{phase}_peak_mem_bytes"] = _peak_memory(device)

    if profile_ops:
        row["train_profile"] = profile_step(train_step, device, profile_ops)
    forward_flop = 2 * stats["flops"]
    row.update(
        params=stats["params"],
        flops=stats["flops"],
        forward_flop_per_image=forward_flop,
        train_flop_per_image=3 * forward_flop,
        train_flop_per_s=row["train_images_per_s"] * 3 * forward_flop,
        infer_flop_per_s=row["infer_images_per_s"] * forward_flop,
        compile_s=row["train_first_step_s"] + row["infer_first_step_s"] if mode == "compile" else None,
    )
    return row


def load_datamodule(name: str, **overrides):
    """conf/data/<name>.yaml through Hydra's instantiate, so the bench sees training's defaults."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(config_dir())
    if (path := conf / "data" / f"{name}.yaml").exists():
        # Nested under a root, as in the training config: `seed: ${oc.select:..seed,0}` looks one level up.
        cfg = OmegaConf.create({"data": OmegaConf.load(path)})
        return instantiate(cfg.data, **overrides)
    known = sorted(p.stem for p in (conf / "data").glob("*.yaml"))
    raise ValueError(f"--data {name}: no such data config; known: {', '.join(known)}")


def bench_loader(dm, device: torch.device, batches: int = 50, repeats: int = 5) -> dict:
    """Images/s of `batches` train-loader batches moved to `device` and put through the training-time transform."""
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    # Epochs restart as a training loop restarts them, iterator creation (shuffle) included.
    stream = itertools.chain.from_iterable(iter(loader) for _ in itertools.count())

    def run(n: int) -> int:
        images_seen = 0
        for images, labels in itertools.islice(stream, n):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            # on_after_batch_transfer augments only while a Trainer fits; this is the transform it then applies.
            dm.transform_batch(images, train=True)
            images_seen += len(labels)  # the last batch of an epoch may be short
        _sync(device)
        return images_seen

    run(min(batches, 3))
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        rates.append(run(batches) / (time.perf_counter() - start))
    return _summary("loader", rates)


def _environment(device: torch.device) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo")
        models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        name = models[0] if models else platform.processor()
    return {
        "device": str(device),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_1m_start": os.getloadavg()[0],
        "memory": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS (ru_maxrss)",
    }


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".strip()


def _kernels(peaks: dict[str, float]) -> str:
    return ", ".join(f"{k} {_si(v)}" for k, v in peaks.items())


def _spread(row: dict, prefix: str) -> str:
    lo, mid, hi = (row[f"{prefix}_images_per_s{s}"] for s in ("_min", "", "_max"))
    return f"{mid:.1f}\n({lo:.1f}-{hi:.1f})"


def profile_step(step, device: torch.device, top: int) -> list[dict]:
    """The `top` operators of one step by self time (torch.profiler), with their share of the step's time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        step()
        _sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    # Every event, not only aten ones: in compile mode Inductor's generated kernels run as "Call CompiledFxGraph".
    ops = list(prof.key_averages())
    total = sum(getattr(e, attr) for e in ops) or 1.0
    ops.sort(key=lambda e: -getattr(e, attr))
    return [{"op": e.key, "self_ms": getattr(e, attr) / 1e3, "calls": e.count, "share": getattr(e, attr) / total}
            for e in ops[:top]]


def print_table(results: list[dict], env: dict, console: Console) -> None:
    table = Table(title=f"focalnet-bench on {env['device_name']} ({env['device']}, {env['threads']} threads)")
    columns = ["model", "img batch prec mode", "train img/s", "infer img/s", "train FLOP/s", "infer FLOP/s", "peak mem"]
    if any(r["compile_s"] is not None for r in results):
        columns.append("compile s")
    if any("loader_images_per_s" in r for r in results):
        columns.append("loader img/s")
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in results:
        sets = "".join(f" {k}={v}" for k, v in r["overrides"].items())
        cells = [
            f"{r['model']}{sets}\n{_si(r['params'])} params, {_si(r['flops'])}MAC",
            f"{r['image_size']} {r['batch_size']} {r['precision']} {r['mode']}" + (" CL" if r["channels_last"] else ""),
            _spread(r, "train"),
            _spread(r, "infer"),
            f"{_si(r['train_flop_per_s'])}\n{r['train_fraction_of_peak']:.1%} of peak",
            f"{_si(r['infer_flop_per_s'])}\n{r['infer_fraction_of_peak']:.1%} of peak",
            _si(r["train_peak_mem_bytes"], "B"),
        ]
        if "compile s" in columns:
            cells.append("-" if r["compile_s"] is None else f"{r['compile_s']:.1f}")
        if "loader img/s" in columns:
            cells.append(f"{_spread(r, 'loader')}\n{100 * r['loader_share']:.2g}% of a step")
        table.add_row(*cells)
    table.caption = (
        "img/s: median (min-max) over repeats; peak: the fastest square matrix product, "
        + ", ".join(f"{p} {_si(v)}FLOP/s ({_kernels(env['peak_flop_per_s_by_kernel'][p])})"
                    for p, v in env["peak_flop_per_s"].items())
        + f"; mem: {env['memory']}"
        + ("; loader: share of a serial step's time spent loading and augmenting" if "loader img/s" in columns else "")
    )
    console.print(table)
    for r in results:
        if r.get("train_profile"):
            title = (f"one training step of {r['model']} {r['image_size']} px, batch {r['batch_size']}, "
                     f"{r['precision']} {r['mode']}: operators by self time")
            # Rich wraps a title to the table's width, which short operator names make narrow.
            prof = Table(title=title, title_justify="left", min_width=min(len(title), console.width))
            for col in ("operator", "self ms", "calls", "share"):
                prof.add_column(col, justify="left" if col == "operator" else "right")
            for op in r["train_profile"]:
                prof.add_row(op["op"], f"{op['self_ms']:.1f}", str(op["calls"]), f"{op['share']:.1%}")
            console.print(prof)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="focalnet-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=list_of(str), action="extend", help="registered names (default focalnet_card)")
    p.add_argument("--set", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="create_model override, e.g. hidden_size=128 or drop_path_rate=0 (repeatable)")
    p.add_argument("--img", type=list_of(positive_int), action="extend", help="sizes (default 224, or the data's)")
    p.add_argument("--batch", type=list_of(positive_int), action="extend", help="sizes (default 32, or the data's)")
    p.add_argument("--precision", type=list_of(str, PRECISIONS), action="extend", help="fp32, bf16 (default fp32)")
    p.add_argument("--mode", type=list_of(str, MODES), action="extend", help="eager, compile (default eager)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--channels-last", action="store_true", help="feed channels_last input")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    p.add_argument("--steps", type=positive_int, default=10, help="timed steps per repeat")
    p.add_argument("--warmup", type=positive_int, default=3, help="untimed steps first (compile mode compiles here)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed repeats; the median is reported")
    p.add_argument("--peak-size", type=positive_int, help="matmul side for the peak (default 4096 CPU, 8192 CUDA)")
    p.add_argument("--data", help="also time this data config's train loader + on-device augmentation (conf/data)")
    p.add_argument("--data-root", help="data.root for datasets on disk (cifar10, imagefolder)")
    p.add_argument("--loader-batches", type=positive_int, default=50, help="loader batches per repeat")
    p.add_argument("--profile", type=positive_int, metavar="N",
                   help="also profile one training step and list its N costliest operators")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON; '-' prints one JSON line")
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = dict(args.set)

    data_config = {}
    if args.data:
        try:
            probe = load_datamodule(args.data, **({"root": args.data_root} if args.data_root else {}))
        except ValueError as e:
            parser.error(str(e))
        data_config = {"image_size": probe.image_size, "batch_size": probe.batch_size}
        # The model is benchmarked on the data's images and classes unless --set says otherwise.
        overrides = {"in_channels": probe.in_channels, "num_classes": probe.num_classes, **overrides}
    models = args.model or ["focalnet_card"]
    sizes = args.img or [data_config.get("image_size", 224)]
    batches = args.batch or [data_config.get("batch_size", 32)]
    for name, size in itertools.product(models, sizes):
        try:
            with torch.device("meta"):  # validates names and options without allocating the weights
                model = focalnet.create_model(name, image_size=size, **overrides)
        except (ValueError, TypeError) as e:
            parser.error(str(e))
        if not model.num_classes:
            parser.error(f"num_classes={model.num_classes}: the training step needs a classification head")

    env = _environment(device)
    loaders = {}
    if args.data:  # first, so a missing dataset fails before minutes of model timing
        root = {"root": args.data_root} if args.data_root else {}
        for size, batch in itertools.product(sizes, batches):
            try:
                dm = load_datamodule(args.data, image_size=size, batch_size=batch, **root)
                rates = bench_loader(dm, device, args.loader_batches, args.repeats)
            except (ValueError, FileNotFoundError) as e:
                parser.error(str(e))
            loaders[size, batch] = {"data": args.data, **rates}

    peak_size = args.peak_size or (8192 if device.type == "cuda" else 4096)
    peaks, kernel_peaks, results = {}, {}, []
    for name, size, batch, precision, mode in itertools.product(
        models, sizes, batches, args.precision or ["fp32"], args.mode or ["eager"]
    ):
        if precision not in peaks:
            kernel_peaks[precision] = matmul_peaks(device, PRECISIONS[precision], peak_size, args.repeats)
            peaks[precision] = max(kernel_peaks[precision].values())
        row = {"model": name, "overrides": overrides, "image_size": size, "batch_size": batch, "precision": precision,
               "mode": mode, "device": str(device), "channels_last": args.channels_last, "threads": env["threads"],
               "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats}
        row.update(bench_model(name, overrides, size, batch, precision, mode, device, args.channels_last,
                               args.steps, args.warmup, args.repeats, args.profile or 0))
        row["peak_flop_per_s"] = peaks[precision]
        row["train_fraction_of_peak"] = row["train_flop_per_s"] / peaks[precision]
        row["infer_fraction_of_peak"] = row["infer_flop_per_s"] / peaks[precision]
        if loaders:
            row.update(loaders[size, batch])
            # With the loader in the training process, a step waits for both: this share of its time is loading.
            train, load = row["train_images_per_s"], row["loader_images_per_s"]
            row["loader_share"] = train / (train + load)
        results.append(row)
        gc.collect()  # the last row's model and optimizer state
        if device.type == "cuda":
            torch.cuda.empty_cache()

    env["load_avg_1m_end"] = os.getloadavg()[0]
    env["peak_flop_per_s"] = peaks
    env["peak_flop_per_s_by_kernel"] = kernel_peaks
    env["peak_matmul"] = f"best of {args.repeats} timed {peak_size}x{peak_size} matrix products, fastest kernel"
    report = {"env": env, "results": results}
    # Piped into a file or a log, rich would squeeze the table into 80 columns.
    print_table(results, env, Console(width=None if sys.stdout.isatty() else 140))
    if args.json == "-":
        print(json.dumps(report))
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
