import json
import shutil

import pytest
import torch

import focalnet
from focalnet.tools import bench

TINY = {"hidden_size": 32, "num_layers": 2}
# One repeat of one step on a 2-block, width-32 card model at 32 px: seconds, and no timed assertions.
ARGS = ["--model", "focalnet_card", "--set", "hidden_size=32", "--set", "num_layers=2", "--img", "32", "--batch", "4",
        "--repeats", "1", "--steps", "1", "--warmup", "1", "--peak-size", "512"]


def run_bench(tmp_path, *extra) -> dict:
    path = tmp_path / "bench.json"
    bench.main([*ARGS, *extra, "--device", "cpu", "--json", str(path)])
    return json.loads(path.read_text())


def test_json_has_every_field_with_consistent_numbers(tmp_path):
    report = run_bench(tmp_path)
    (row,) = report["results"]
    stats = focalnet.model_stats(focalnet.create_model("focalnet_card", image_size=32, **TINY), 32)
    assert (row["model"], row["overrides"], row["image_size"], row["batch_size"]) == ("focalnet_card", TINY, 32, 4)
    assert (row["precision"], row["mode"], row["device"], row["compile_s"]) == ("fp32", "eager", "cpu", None)
    assert row["params"] == stats["params"] and row["flops"] == stats["flops"]
    assert row["forward_flop_per_image"] == 2 * stats["flops"]
    assert row["train_flop_per_image"] == 6 * stats["flops"]
    peak = report["env"]["peak_flop_per_s"]["fp32"]
    by_kernel = report["env"]["peak_flop_per_s_by_kernel"]["fp32"]
    assert set(by_kernel) == {"mm", "conv1x1"} and row["peak_flop_per_s"] == peak == max(by_kernel.values()) > 0
    for phase, flop in (("train", row["train_flop_per_image"]), ("infer", row["forward_flop_per_image"])):
        rate = row[f"{phase}_images_per_s"]
        assert rate > 0 and row[f"{phase}_images_per_s_repeats"] == [rate]
        assert row[f"{phase}_images_per_s_min"] <= rate <= row[f"{phase}_images_per_s_max"]
        assert row[f"{phase}_flop_per_s"] == pytest.approx(rate * flop)
        assert row[f"{phase}_fraction_of_peak"] == pytest.approx(row[f"{phase}_flop_per_s"] / peak)
        assert 0 < row[f"{phase}_fraction_of_peak"] < 1.5
        assert row[f"{phase}_peak_mem_bytes"] > 2**20  # a process with torch loaded holds far more than 1 MiB
        assert row[f"{phase}_first_step_s"] > 0
    assert report["env"]["threads"] == torch.get_num_threads() == row["threads"]


def test_one_json_line_and_a_row_per_combination(capsys):
    bench.main([*ARGS, "--device", "cpu", "--img", "16", "--precision", "fp32,bf16", "--json", "-"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    combos = [(r["image_size"], r["precision"]) for r in report["results"]]
    assert combos == [(32, "fp32"), (32, "bf16"), (16, "fp32"), (16, "bf16")]
    assert set(report["env"]["peak_flop_per_s"]) == {"fp32", "bf16"}


def test_loader_throughput_on_digits_next_to_the_model(tmp_path):
    report = run_bench(tmp_path, "--data", "digits", "--loader-batches", "2")
    (row,) = report["results"]
    # The model takes the data's channels and classes.
    assert row["overrides"] == {"in_channels": 1, "num_classes": 10, **TINY}
    model = focalnet.create_model("focalnet_card", 10, image_size=32, in_channels=1, **TINY)
    assert row["params"] == focalnet.model_stats(model, 32, 1)["params"]
    assert row["data"] == "digits" and row["loader_images_per_s"] > 0
    assert row["loader_share"] == pytest.approx(row["train_images_per_s"] / (row["train_images_per_s"] +
                                                                            row["loader_images_per_s"]))


@pytest.mark.skipif(not shutil.which("c++"), reason="torch.compile on the CPU needs a C++ compiler (c++)")
def test_compiled_model_gives_the_eager_logits():
    torch.manual_seed(0)
    opts = {"hidden_size": 16, "num_layers": 1, "num_classes": 10}
    eager, compiled = bench.prepare_model("focalnet_card", opts, 32, "compile", torch.device("cpu"))
    assert compiled is not eager
    eager.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "focalnet_tiny_srff"], "did you mean focalnet_tiny_srf"),
        (["--model", "focalnet_card,nope"], "unknown model name='nope'"),
        (["--precision", "fp16"], "invalid choice 'fp16'"),
        (["--mode", "eager,jit"], "invalid choice 'jit'"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
        (["--batch", "0"], "'0' is not a positive integer"),
        (["--set", "hidden_size"], "expected key=value, got 'hidden_size'"),
        (["--set", "focal_lvls=2"], "focal_lvls"),
        (["--set", "focal_kernel=4"], "focal_kernel=4"),
        (["--img", "30"], "image_size=30"),
        (["--data", "mnistt"], "--data mnistt: no such data config"),
        (["--data", "cifar10", "--data-root", "/nonexistent"], "data.root=/nonexistent has no cifar-10-batches-py"),
    ],
)
def test_bad_input_fails_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*ARGS, *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_fails_with_one_line(capsys):
    with pytest.raises(SystemExit):
        bench.main([*ARGS, "--device", "cuda"])
    err = capsys.readouterr().err.strip()
    assert err == "focalnet-bench: error: --device cuda: CUDA is not available on this machine"


def test_profile_lists_the_costliest_operators_of_a_training_step(tmp_path, capsys):
    (row,) = run_bench(tmp_path, "--profile", "4")["results"]
    ops = row["train_profile"]
    assert len(ops) == 4 and all(op["calls"] >= 1 for op in ops)
    assert any(op["op"].startswith("aten::") for op in ops)
    assert [op["self_ms"] for op in ops] == sorted((op["self_ms"] for op in ops), reverse=True)
    assert 0 < sum(op["share"] for op in ops) <= 1
    assert "operators by self time" in capsys.readouterr().out
