"""focalnet-study on a tiny real study: rounds of seeds, a decided row gets no more, the ledger resumes elsewhere."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli

# lr 1e-9 cannot learn in two epochs (about chance), 4e-3 is about as good as the baseline's 5e-3: after the first
# round the first is decided (worse), the second is not and gets the next seeds, with the baseline.
STUDY = """defaults:
  - train
  - ablation: digits
  - override /logger: [wandb, csv]
  - _self_
hydra:
  sweeper:
    params:
      optim.optimizer.lr: 5e-3,1e-9,4e-3
      seed: 0,1,2
study:
  baseline: {optim.optimizer.lr: 5e-3}
  max_seeds: 6
"""
QUICK = ("trainer.max_epochs=2", "data.batch_size=32", "model.hidden_size=32", "model.num_layers=2")


def rows_of(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_rounds_stop_a_decided_row_and_resume_from_the_ledger(tmp_path):
    study = tmp_path / "experiments" / "lr"
    study.mkdir(parents=True)
    (study / "study.yaml").write_text(STUDY)
    result = run_cli("focalnet-study", "lr", "--data", "digits", "--experiments", "experiments", *QUICK, cwd=tmp_path,
                     timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = study / "digits"
    runs = rows_of(out / "results.csv")
    seeds = {}
    for r in runs:
        assert r["status"] == "completed" and r["precision"] == "32-true" and r["torch"] and r["cpu"]
        seeds.setdefault(r["optim.optimizer.lr"], []).append(int(r["seed"]))
    assert sorted(seeds["1e-09"]) == [0, 1, 2]  # decided after the first round: no more seeds
    assert sorted(seeds["0.004"]) == sorted(seeds["0.005"]) == [0, 1, 2, 3, 4, 5]
    md = (out / "results.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| 1e-09 |"))
    assert "| worse | 0-2 |" in line
    state = json.loads((out / "rounds.json").read_text())
    assert [(r["values"], r["seeds"]) for r in state["rounds"]] == [
        ([0.005, 1e-09, 0.004], [0, 1, 2]), ([0.005, 0.004], [3, 4, 5])]
    assert (out / "forest.png").is_file() and "## Rounds" in md
    # Every job of the study lives in a folder named by its setting and seed, so resume=auto finds it again.
    assert (tmp_path / "outputs/ablation/digits/lr/optim.optimizer.lr-0.004+seed-5/summary.json").is_file()

    # Another machine: no run folders, only the committed ledger. The study is complete there too: nothing to run.
    shutil.rmtree(tmp_path / "outputs")
    again = run_cli("focalnet-study", "lr", "--data", "digits", "--experiments", "experiments", *QUICK, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "round" not in again.stdout and "no row pending" in again.stdout
    assert rows_of(out / "results.csv") == runs
    # Every study's rows in one table, from the committed files alone.
    summary = run_cli("focalnet-study", "--table", "--data", "digits", "--experiments", "experiments", *QUICK,
                      cwd=tmp_path)
    assert summary.returncode == 0, summary.stderr[-3000:]
    (broken,) = [line for line in summary.stdout.splitlines() if "lr=1e-09 vs 0.005" in line]
    assert broken.startswith("| lr | lr=1e-09 vs 0.005 | 3 |") and broken.endswith("| worse | - |")


@pytest.mark.parametrize("args, message", [
    (["nope"], "no study 'nope' in experiments/ (studies: lr)"),
    (["lr", "--data", "mnist_big"], "no ablation data 'mnist_big'; choices:"),
    (["lr", "model.focal_levels=-1"], "model.focal_levels"),
])
def test_bad_input_fails_in_one_line(tmp_path, args, message):
    study = tmp_path / "experiments" / "lr"
    study.mkdir(parents=True)
    (study / "study.yaml").write_text(STUDY)
    result = run_cli("focalnet-study", *args, "--dry-run", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr


def test_the_committed_studies_keep_their_recipe():
    """A change of the defaults (conf/optim, conf/trainer, a new model switch) must not change what a committed
    study's runs computed: the recipe each rounds.json recorded is the one the study composes today."""
    from focalnet.study import load_spec, setting

    states = sorted(Path("experiments").glob("*/fashion_mnist/rounds.json"))
    assert len(states) >= 7
    for path in states:
        state = json.loads(path.read_text())
        spec = load_spec(path.parts[-3], "fashion_mnist")
        # Keys added since (a new switch, off) may be absent from the record; none may differ.
        assert setting(state["reference"], spec.reference) == "{}", path
        assert spec.reference["trainer.precision"] == '"32-true"' and spec.reference["trainer.max_epochs"] == "8"
        assert spec.reference["optim.optimizer.lr"] == "0.004" and spec.reference["data.batch_size"] == "128"
        assert spec.reference["model.weight_init"] == '"official"'


def test_the_digits_studies_keep_the_recipe_of_their_committed_results():
    """experiments/focal_levels/digits/ ran with the default recipe of November 2026; the default has changed since
    (80 warm-up steps, PyTorch's init), the digits studies' recipe must not."""
    from focalnet.study import load_spec

    reference = load_spec("focal_levels", "digits").reference
    pinned = {"trainer.max_epochs": 15, "trainer.precision": "32-true", "optim.optimizer.lr": 0.004,
              "optim.warmup_epochs": 1, "optim.warmup_steps": None, "optim.warmup_lr": 1e-6, "optim.min_lr": 1e-5,
              "optim.optimizer.weight_decay": 0.05, "data.batch_size": 64, "module.label_smoothing": 0.1,
              "model.weight_init": "official"}
    assert {k: json.loads(reference[k]) for k in pinned} == pinned


def test_a_pair_is_made_on_one_machine():
    """fp32 results differ between CPUs by about seed noise: the next round runs what pairs like with like here."""
    from focalnet.sequential import PENDING, Design
    from focalnet.study import Spec, needed

    spec = Spec("s", "d", None, "k", [1, 2], 1, Design(rows=1), None, {}, {1: "{}", 2: "{}"})

    def run(value, seed, cpu):
        return {"status": "completed", "test/acc_top1": 0.9, "overrides": {"k": value}, "seed": seed, "cpu": cpu}

    # The baseline's seeds 0-2 ran on Zen 3, the row's on Zen 4 (here): no pair yet, so the first look's seeds of
    # the baseline run here.
    rows = [run(1, s, "zen3") for s in range(3)] + [run(2, s, "zen4") for s in range(3)]
    assert needed(spec, rows, {2: {"verdict": PENDING, "n_pairs": 0}}, here="zen4") == {(0, 1, 2): [1]}
    assert needed(spec, rows, {2: {"verdict": "better", "n_pairs": 3}}, here="zen4") == {}
    # Both on Zen 3: seeds 0-2 pair there; on Zen 4 only seeds 3-5 of both run.
    rows = [run(v, s, "zen3") for v in (1, 2) for s in range(3)]
    assert needed(spec, rows, {2: {"verdict": PENDING, "n_pairs": 3}}, here="zen4") == {(3, 4, 5): [1, 2]}


def test_a_ledger_without_its_rounds_file_is_refused(tmp_path):
    """results.csv names each run's recipe by id, rounds.json holds the recipe: copied apart (an older rounds.json
    beside a newer ledger) the runs would silently not count; the study says so in one line instead."""
    from focalnet.study import load_spec, recorded_runs

    folder = tmp_path / "gate_act"
    shutil.copytree(Path("experiments/gate_act"), folder, ignore=shutil.ignore_patterns("*.png"))
    spec = load_spec("gate_act", "fashion_mnist", experiments=tmp_path)
    ledger = rows_of(folder / "fashion_mnist/results.csv")
    assert len(recorded_runs(spec)) == sum(r["status"] == "completed" for r in ledger) > 0

    state = json.loads((folder / "fashion_mnist/rounds.json").read_text())
    (folder / "fashion_mnist/rounds.json").write_text(json.dumps(state | {"recipe": "0123456789ab"}))
    with pytest.raises(ValueError, match=r"results.csv: run .* names recipe '[0-9a-f]{12}' but the rounds.json "
                                         r"beside it '0123456789ab'; copy the two together"):
        recorded_runs(spec)


def test_another_studys_unfinished_job_is_not_a_row(tmp_path, monkeypatch):
    """Studies on one data set share the baseline's runs: a completed one of another study's folder counts, but its
    job still running (two studies side by side) is no row of this one (it showed as 'running' in every report)."""
    from omegaconf import OmegaConf

    from focalnet.study import compose, load_spec, local_runs

    shutil.copytree(Path("experiments/conv_embed"), tmp_path / "experiments/conv_embed",
                    ignore=shutil.ignore_patterns("fashion_mnist"))
    monkeypatch.chdir(tmp_path)
    spec = load_spec("conv_embed", "fashion_mnist", experiments=Path("experiments"))
    config = OmegaConf.to_container(compose(spec.folder, ["ablation=fashion_mnist"]), resolve=False)
    config.pop("hydra")  # what a job's .hydra/config.yaml holds

    def job(folder, seed, status):
        run = Path("outputs/ablation/fashion_mnist") / folder / f"seed-{seed}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra/config.yaml").write_text(OmegaConf.to_yaml(config))
        metrics = {"test/acc_top1": 0.9} if status == "completed" else {}
        (run / "summary.json").write_text(json.dumps({"status": status, "seed": seed, "precision": "32-true",
                                                      "metrics": metrics}))

    job("normalize_modulator", 8, "completed")
    job("normalize_modulator", 9, "running")
    job("conv_embed", 9, "interrupted")
    found = sorted((r["run_dir"].split("/")[-2], r["seed"], r["status"]) for r in local_runs(spec))
    assert found == [("conv_embed", 9, "interrupted"), ("normalize_modulator", 8, "completed")]
