"""The CUDA-only branches of the code, checked on a CUDA GPU: `make device-check` runs them (pytest -m gpu).

Every test here is marked `gpu`; tests/conftest.py skips them, with one reason, where torch sees no CUDA GPU. Each
takes seconds to a minute on a GPU: tiny models, the digits data, short runs (QUICK and TINY of conftest.py).
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import QUICK, TINY, job_dir, read_summary, run_cli
from focalnet import create_model
from focalnet.models import focalnet as focalnet_models
from focalnet.models import gemm
from focalnet.precision import resolve_precision
from focalnet.run.callbacks import RNGStateInCheckpoint
from focalnet.run.module import ClassificationModule, host_sync_is_costly
from focalnet.tools import bench
from test_bench import ARGS as BENCH_ARGS
from test_reliability import EPOCH_BATCHES, NAN_AT_STEP, assert_same_metrics, run_signalled

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")
# The card model on 32 px digits-like input: patch 4 gives 8x8 maps, so kernels up to 9 keep every tap (no cropping).
CARD = dict(image_size=32, patch_size=4, in_channels=1, hidden_size=32, num_layers=2, drop_path_rate=0.0)
# focal_kernel=5 with 3 levels: kernels 5, 7 and 9, each of which the CPU sends through _DepthwiseConvCPU.
KERNEL5 = dict(CARD, focal_levels=3, focal_kernel=5)
GPU_RUN = ("trainer=gpu", "logger=csv")


@pytest.fixture
def fp32_exact():
    """Plain fp32 on the GPU. cuDNN convolutions default to TF32 on Ampere and later (10 mantissa bits, about 1e-3
    relative), which would swamp the fp32 tolerances below; cuBLAS matmuls are fp32 by default and stay so. (Not
    monkeypatch: cuBLAS's flag is no plain attribute, and monkeypatch would delete it on undo.)"""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    yield
    cudnn.allow_tf32, matmul.allow_tf32 = saved


def assert_close_to_largest(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str = "") -> None:
    """max |actual - expected| <= rel x max |expected|: a tolerance on the scale of the whole tensor, so entries near
    zero (where an elementwise relative error means nothing) do not decide."""
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    error, scale = (actual - expected).abs().max().item(), expected.abs().max().item()
    assert error <= rel * scale + 1e-12, f"{what}: max error {error:.3g} > {rel:g} x max |expected| {scale:.3g}"


def forward_backward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Logits and every parameter's gradient of one cross-entropy step, on the CPU for comparison."""
    model.zero_grad(set_to_none=True)
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    return logits.detach().cpu(), {name: p.grad.detach().cpu() for name, p in model.named_parameters()}


def tiny_module() -> ClassificationModule:
    model = create_model("focalnet_card", num_classes=10, **dict(CARD, hidden_size=16, num_layers=1))
    return ClassificationModule(model, OmegaConf.load(ROOT / "conf" / "optim" / "adamw.yaml"))


# --- CUDA RNG state in checkpoints (callbacks), the module's non-finite guard without a host sync ---------------------


def test_checkpoints_keep_the_cuda_rng_state_and_a_resumed_run_draws_what_the_uninterrupted_one_would(tmp_path):
    callback = RNGStateInCheckpoint()  # on every focalnet-train Trainer (callbacks.always_on); needs no trainer
    torch.manual_seed(123)
    torch.rand(7, device=CUDA)  # the CUDA generator moved off its seed, as a run's would have
    checkpoint = {}
    callback.on_save_checkpoint(None, None, checkpoint)
    states = checkpoint["rng_states"]["cuda"]
    assert len(states) == torch.cuda.device_count() and all(s.dtype == torch.uint8 for s in states)
    # What the run that never stopped draws next: on the GPU (drop-path masks, on-device augmentation) and the CPU.
    expected = torch.rand(5, device=CUDA), torch.randn(5, device=CUDA), torch.rand(5)
    torch.rand(1000, device=CUDA), torch.rand(10)  # the stopped run's process drew on; a new process starts elsewhere
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)  # through a file, loaded as focalnet-eval and resume load it: weights only
    callback = RNGStateInCheckpoint()  # the resumed run's
    callback.on_load_checkpoint(None, None, torch.load(path, map_location="cpu", weights_only=True))
    callback.on_train_start(None, None)
    drawn = torch.rand(5, device=CUDA), torch.randn(5, device=CUDA), torch.rand(5)
    for got, want in zip(drawn, expected):
        assert torch.equal(got, want)  # the same generator state gives bit-identical draws: no tolerance


def test_the_nonfinite_guard_on_cuda_keeps_the_first_bad_step_on_the_device_without_a_host_sync():
    assert host_sync_is_costly(CUDA) and not host_sync_is_costly(torch.device("cpu"))
    module = tiny_module().to(CUDA)
    stub = SimpleNamespace(global_step=0)
    module._trainer = stub
    module._note_nonfinite(torch.tensor(2.3, device=CUDA))  # the first call allocates its device tensor (one copy)
    losses = [1.9, 1.7, float("nan"), 1.5, float("inf")]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host copy or synchronisation from here on raises
    try:
        for step, value in enumerate(losses, start=1):
            stub.global_step = step
            module._note_nonfinite(torch.full((), value, device=CUDA))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    step, loss = module._first_nonfinite.tolist()
    assert module._first_nonfinite.device.type == "cuda"
    assert step == 3 and math.isnan(loss)  # the first non-finite step (NaN at step 3), not the later inf


def test_a_nan_loss_on_cuda_stops_at_epoch_end_naming_its_step_and_the_last_good_checkpoint(tmp_path):
    # tests/test_reliability.py fakes this mode on the CPU (host_sync_is_costly patched); here it runs for real.
    run_dir = tmp_path / "run"
    overrides = [*TINY, *GPU_RUN, "trainer.max_epochs=2", "trainer.limit_train_batches=3", "module.on_nonfinite=stop",
                 f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = dict(os.environ, WANDB_MODE="offline")
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run([sys.executable, "-c", NAN_AT_STEP.format(step=4, deferred=False), *overrides],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    assert result.returncode == 1, result.stderr[-3000:]
    # Batch 1 of epoch 1 (step 4) is NaN; on cuda the guard looks only every log_every_n_steps (10) steps and at the
    # epoch's end (step 6), before that epoch's checkpoint is written.
    assert result.stderr.strip().splitlines()[-1] == (
        "error: non-finite loss (nan) at step 4 (seen at step 6: on cuda the loss is checked every "
        "trainer.log_every_n_steps steps, not to wait for the device at each one); last good checkpoint: "
        f"{last} (module.on_nonfinite=skip skips such batches)"
    )
    assert read_summary(run_dir)["status"] == "failed"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3  # epoch 0's, untouched


# --- the model's CUDA paths -----------------------------------------------------------------------------------------


def test_depthwise_levels_5_7_9_on_cuda_take_cudnn_and_match_the_cpu_and_the_reference(fp32_exact, monkeypatch,
                                                                                        tmp_path):  # fmt: skip
    monkeypatch.setenv("FOCALNET_GEMM", "linear")  # the CPU side: no GEMM measurement, no cache file
    monkeypatch.setenv("FOCALNET_CACHE", str(tmp_path))
    calls = []
    apply = focalnet_models._DepthwiseConvCPU.apply
    monkeypatch.setattr(focalnet_models._DepthwiseConvCPU, "apply",
                        lambda x, *args: calls.append(x.device.type) or apply(x, *args))  # fmt: skip
    torch.manual_seed(0)
    cpu = create_model("focalnet_card", num_classes=10, **KERNEL5)
    gpu = copy.deepcopy(cpu).to(CUDA)
    reference = create_model("focalnet_card", num_classes=10, fast=False, **KERNEL5).to(CUDA)
    reference.load_state_dict(cpu.state_dict())
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 3, 7, 9])

    cpu_logits, cpu_grads = forward_backward(cpu, x, y)
    assert calls == ["cpu"] * 6  # 2 blocks x 3 levels (5, 7, 9) through _DepthwiseConvCPU on the CPU
    calls.clear()
    gpu_logits, gpu_grads = forward_backward(gpu, x.to(CUDA), y.to(CUDA))
    assert calls == []  # on cuda every level is F.conv2d (cuDNN)
    ref_logits, ref_grads = forward_backward(reference, x.to(CUDA), y.to(CUDA))

    # The same function in fp32 on two devices: only the order of the sums differs (a few ulps per op), so 1e-4
    # relative to the logits and to each gradient's largest entry (fp32 eps is 1.2e-7) leaves a wide margin.
    torch.testing.assert_close(gpu_logits, cpu_logits, rtol=1e-4, atol=1e-5)
    for name, grad in cpu_grads.items():
        assert_close_to_largest(gpu_grads[name], grad, 1e-4, name)
    # fast=False (the official op order: NCHW copies, full kernels, h as a 1x1 conv) on cuda: the tolerances of
    # tests/test_models.py's CPU check of the same pair (sums over every token in another order).
    torch.testing.assert_close(gpu_logits, ref_logits, rtol=1e-4, atol=1e-5)
    for name, grad in ref_grads.items():
        assert_close_to_largest(gpu_grads[name], grad, 1e-3, name)


def test_dense_on_cuda_takes_f_linear_without_measuring(monkeypatch, tmp_path):
    monkeypatch.setenv("FOCALNET_CACHE", str(tmp_path))

    def no_measuring(*args):
        raise AssertionError("Dense measured GEMMs on the GPU (cuBLAS is the one GEMM there)")

    monkeypatch.setattr(gemm, "_measure", no_measuring)
    before = gemm.gemm_choices()
    torch.manual_seed(0)
    layer = gemm.Dense(32, 48).to(CUDA)
    x = torch.randn(2, 8, 8, 32, device=CUDA, requires_grad=True)
    for policy in ("auto", "conv"):  # FOCALNET_GEMM=conv fixes the choice on CPUs only
        monkeypatch.setenv("FOCALNET_GEMM", policy)
        assert gemm._choose(x, layer.weight, layer.bias) == "linear"
        out = layer(x)
        assert torch.equal(out, F.linear(x, layer.weight, layer.bias))  # the very same kernel: bit for bit
    out.sum().backward()
    assert x.grad.shape == x.shape and layer.weight.grad.device.type == "cuda"
    assert gemm.gemm_choices() == before and not list(tmp_path.rglob("*.json"))  # nothing chosen, nothing cached


def test_compiled_model_on_cuda_gives_the_eager_logits_and_gradients(fp32_exact):
    torch.manual_seed(0)
    options = {k: v for k, v in KERNEL5.items() if k != "image_size"} | {"num_classes": 10}  # bench's overrides
    eager, compiled = bench.prepare_model("focalnet_card", options, 32, "compile", CUDA)
    assert compiled is not eager
    x, y = torch.randn(8, 1, 32, 32, device=CUDA), torch.randint(0, 10, (8,), device=CUDA)
    eager.eval()
    with torch.no_grad():
        # Inductor fuses the norms and reductions into Triton kernels that sum in another order: fp32 rounding only.
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-5)
    eager.train()
    compiled_logits = compiled(x)  # a training step through the compiled graph: its gradients land on eager's weights
    F.cross_entropy(compiled_logits, y).backward()
    compiled_grads = {name: p.grad.detach().cpu() for name, p in eager.named_parameters()}
    eager_logits, eager_grads = forward_backward(eager, x, y)
    torch.testing.assert_close(compiled_logits.detach().cpu(), eager_logits, rtol=1e-4, atol=1e-5)
    for name, grad in eager_grads.items():
        assert_close_to_largest(compiled_grads[name], grad, 1e-3, name)  # as fast vs reference: reordered sums


def test_bf16_mixed_training_step_on_cuda_agrees_with_fp32(fp32_exact):
    torch.manual_seed(0)
    model = create_model("focalnet_card", num_classes=10, **KERNEL5).to(CUDA)
    x, y = torch.randn(32, 1, 32, 32, device=CUDA), torch.randint(0, 10, (32,), device=CUDA)

    def step(bf16: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):  # what precision=bf16-mixed runs
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g.dtype == torch.float32 for g in grads)  # fp32 weights keep fp32 gradients under autocast
        return logits, loss.item(), torch.cat([g.flatten() for g in grads])

    low_logits, low_loss, low_grad = step(bf16=True)
    logits, loss, grad = step(bf16=False)
    assert low_logits.dtype == torch.bfloat16 and logits.dtype == torch.float32
    # bf16 keeps 8 mantissa bits (0.4% per rounding); the loss, reduced in fp32, within 2% of fp32's.
    assert abs(low_loss - loss) <= 0.02 * loss, (low_loss, loss)
    # The update's direction: the whole gradient vector's cosine similarity with fp32's above 0.99.
    assert F.cosine_similarity(low_grad, grad, dim=0).item() > 0.99
    # And the logits within 5% of their largest magnitude (tests/test_models.py's bf16 bound on the CPU).
    assert_close_to_largest(low_logits, logits, 0.05, "logits")


# --- training runs on the GPU --------------------------------------------------------------------------------------


def test_sigterm_mid_epoch_on_the_gpu_then_resume_gives_the_uninterrupted_metrics(tmp_path):
    # deterministic=warn: cuDNN and cuBLAS pick deterministic kernels (the weight gradients of convolutions otherwise
    # add with atomics in any order), so two runs agree bit for bit; warn, not true, so that an op with no
    # deterministic CUDA kernel warns rather than stops the run.
    gpu = [*QUICK, *GPU_RUN, "trainer.deterministic=warn"]
    reference = tmp_path / "reference"
    result = run_cli("focalnet-train", *gpu, f"hydra.run.dir={reference}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_summary(reference)["precision"] == resolve_precision("auto", "gpu")  # bf16-mixed where native

    run_dir = tmp_path / "run"
    result = run_signalled("training", 20, *gpu, f"hydra.run.dir={run_dir}", cwd=tmp_path)  # SIGTERM in batch 20
    assert result.returncode == 143, result.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert 20 <= checkpoint["global_step"] < EPOCH_BATCHES and checkpoint["epoch"] == 0  # really mid-epoch
    assert len(checkpoint["rng_states"]["cuda"]) == torch.cuda.device_count()  # the GPU's generator travels

    result = run_cli("focalnet-train", *gpu, f"hydra.run.dir={run_dir}", "resume=auto", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_summary(run_dir)["status"] == "completed"
    assert_same_metrics(run_dir, reference)  # every train/val/test metric to 1e-6


def test_bench_on_cuda_reports_throughput_and_peak_memory(tmp_path):
    path = tmp_path / "bench.json"
    result = run_cli("focalnet-bench", *BENCH_ARGS, "--device", "cuda", "--precision", "fp32,bf16", "--json", str(path),
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(path.read_text())
    env = report["env"]
    assert env["device"] == "cuda" and env["device_name"] == torch.cuda.get_device_name(0)
    assert env["memory"] == "cuda max_memory_allocated" and set(env["peak_flop_per_s"]) == {"fp32", "bf16"}
    assert set(env["peak_flop_per_s_by_kernel"]["fp32"]) == {"mm"}  # cuBLAS alone: no CPU conv1x1 on a GPU
    total = torch.cuda.get_device_properties(0).total_memory
    assert [row["precision"] for row in report["results"]] == ["fp32", "bf16"]
    for row in report["results"]:
        assert row["device"] == "cuda"
        for phase in ("train", "infer"):
            assert row[f"{phase}_images_per_s"] > 0 and row[f"{phase}_flop_per_s"] > 0
            # torch.cuda.max_memory_allocated of this row: the tiny model's tensors, far below the card's memory.
            assert 0 < row[f"{phase}_peak_mem_bytes"] < total
            assert 0 < row[f"{phase}_fraction_of_peak"] < 1.5


def test_each_parallel_worker_trains_on_its_own_gpu(tmp_path):
    gpus = torch.cuda.device_count()
    if gpus < 2:
        pytest.skip(f"needs 2 GPUs: this host has {gpus}, and PinDevices pins workers only to 2 groups or more "
                    "(the 1-GPU case: tests/test_resumable_sweeps.py::test_each_parallel_worker_gets_its_own_gpus)")
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="no hydra-joblib-launcher (extra: parallel)")
    sweep = tmp_path / "sweep"
    result = run_cli("focalnet-train", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "seed=0,1", *TINY,
                     *GPU_RUN, f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (read_summary(job_dir(sweep, n)) for n in range(2))
    assert first["status"] == second["status"] == "completed"
    assert first["pid"] != second["pid"]  # two worker processes
    # Each process saw one GPU (CUDA_VISIBLE_DEVICES pinned before CUDA started), and the second worker found the
    # first group's lock held and took the next group: two locks, two GPUs.
    assert first["machine"]["gpu_count"] == second["machine"]["gpu_count"] == 1
    assert sorted(p.name for p in (sweep / ".gpu_locks").iterdir()) == ["0.lock", "1.lock"]
