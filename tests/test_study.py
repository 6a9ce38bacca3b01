"""focalnet-study on a tiny real study: rounds of seeds, a decided row gets no more, the ledger resumes elsewhere."""

import csv
import json
import shutil
import sys
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
    assert "multirun" not in again.stdout and "no row pending" in again.stdout
    assert rows_of(out / "results.csv") == runs
    # Every study's rows in one table, from the committed files alone.
    summary = run_cli("focalnet-study", "--table", "--data", "digits", "--experiments", "experiments", *QUICK,
                      cwd=tmp_path)
    assert summary.returncode == 0, summary.stderr[-3000:]
    (broken,) = [line for line in summary.stdout.splitlines() if "lr=1e-09 vs 0.005" in line]
    assert broken.startswith("| lr | lr=1e-09 vs 0.005 | 3 |") and broken.endswith("| worse | - |")


@pytest.mark.parametrize("args, message", [
    (["nope"], "no study 'nope' in experiments/ (studies: lr)"),
    (["lr", "--data", "mnist_big"], "no benchmark 'mnist_big' (conf/benchmark/); choices:"),
    (["lr", "model.focal_levels=-1"], "model.focal_levels"),
    (["lr", "+study.jobs_per_multirun=0"], "study.jobs_per_multirun=0 must be an integer >= 1, or null"),
])
def test_bad_input_fails_in_one_line(tmp_path, args, message):
    study = tmp_path / "experiments" / "lr"
    study.mkdir(parents=True)
    (study / "study.yaml").write_text(STUDY)
    result = run_cli("focalnet-study", *args, "--dry-run", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr


@pytest.mark.parametrize("args", [["--table"], ["focal_levels", "--dry-run"]])
def test_outside_the_checkout_it_says_where_it_looked_for_studies(tmp_path, args):
    result = run_cli("focalnet-study", *args, cwd=tmp_path)  # no experiments/ here
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"no studies (<name>/study.yaml) in {tmp_path / 'experiments'}/" in result.stderr
    assert "--experiments " in result.stderr and result.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["wandb-home"]  # run_cli's own: nothing written


def test_the_committed_studies_keep_their_recipe():
    """A change of the defaults (conf/optim, conf/trainer, a new model switch) must not change what a committed
    study's runs computed: the recipe each rounds.json recorded is the one the study composes today."""
    from focalnet.studies.design import load_spec, setting

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
    from focalnet.studies.design import load_spec

    reference = load_spec("focal_levels", "digits").reference
    pinned = {"trainer.max_epochs": 15, "trainer.precision": "32-true", "optim.optimizer.lr": 0.004,
              "optim.warmup_epochs": 1, "optim.warmup_steps": None, "optim.warmup_lr": 1e-6, "optim.min_lr": 1e-5,
              "optim.optimizer.weight_decay": 0.05, "data.batch_size": 64, "module.label_smoothing": 0.1,
              "model.weight_init": "official"}
    assert {k: json.loads(reference[k]) for k in pinned} == pinned


def test_a_pair_is_made_on_one_machine():
    """fp32 results differ between CPUs by about seed noise: the next round runs what pairs like with like here."""
    from focalnet.studies.design import Spec
    from focalnet.studies.runs import Run
    from focalnet.studies.sequential import PENDING, Design
    from focalnet.studies.study import needed

    spec = Spec("s", "d", None, "k", [1, 2], 1, Design(rows=1), None, {}, {1: "{}", 2: "{}"})

    def run(value, seed, cpu):
        return Run(status="completed", test_top1=0.9, overrides={"k": value}, seed=seed, cpu=cpu)

    # The baseline's seeds 0-2 ran on Zen 3, the row's on Zen 4 (here): no pair yet, so the first look's seeds of
    # the baseline run here.
    rows = [run(1, s, "zen3") for s in range(3)] + [run(2, s, "zen4") for s in range(3)]
    assert needed(spec, rows, {2: {"verdict": PENDING, "n_pairs": 0}}, here="zen4") == {(0, 1, 2): [1]}
    assert needed(spec, rows, {2: {"verdict": "better", "n_pairs": 3}}, here="zen4") == {}
    # Both on Zen 3: seeds 0-2 pair there; on Zen 4 only seeds 3-5 of both run.
    rows = [run(v, s, "zen3") for v in (1, 2) for s in range(3)]
    assert needed(spec, rows, {2: {"verdict": PENDING, "n_pairs": 3}}, here="zen4") == {(3, 4, 5): [1, 2]}


def test_a_round_runs_in_multiruns_of_at_most_jobs_per_multirun():
    """study.jobs_per_multirun: the report is rewritten after each multirun, so a stop loses only the jobs in flight;
    each multirun is a product of rows and seeds, seed by seed, with at most one short of the size."""
    from focalnet.studies.study import parts

    rows = [f"r{i}" for i in range(11)]
    split = parts(rows, [100, 101, 102], 2)
    assert split[:6] == [(rows[0:2], [100]), (rows[2:4], [100]), (rows[4:6], [100]), (rows[6:8], [100]),
                         (rows[8:10], [100]), (rows[0:2], [101])]
    assert split[-2:] == [(["r10"], [100, 101]), (["r10"], [102])] and len(split) == 17
    jobs = [(r, s) for values, seeds in split for r in values for s in seeds]
    assert sorted(jobs) == sorted((r, s) for r in rows for s in (100, 101, 102))  # each job once
    assert sum(len(v) * len(s) < 2 for v, s in split) == 1
    assert parts(["b", "n"], [0, 1, 2], 2) == [(["b", "n"], [0]), (["b", "n"], [1]), (["b", "n"], [2])]
    assert parts(["b"], [0, 1, 2], 2) == [(["b"], [0, 1]), (["b"], [2])]
    assert parts(rows, [1, 2, 3], None) == [(rows, [1, 2, 3])]  # the default: a round is one multirun


def test_a_look_uses_the_designs_seeds_in_order_up_to_the_first_gap():
    """A look's pairs are fixed before it: the design's first n seeds. A row with seeds 0, 1 and 3 (seed 2 failed)
    is not looked at with those three (2 pairs: below the first look); the look at 3 pairs waits for seed 2."""
    from focalnet.studies.analysis import aggregate, compare
    from focalnet.studies.runs import Run
    from focalnet.studies.sequential import PENDING, Design

    def run(value, seed, top1):
        return Run(status="completed", test_top1=top1, overrides={"k": value}, seed=seed, cpu="zen4")

    rows = [run(1, s, 0.90) for s in range(4)] + [run(2, s, 0.95 + s / 1000) for s in (0, 1, 3)]
    study = {"baseline": {"k": 1}, "design": Design(rows=1), "seeds": list(range(10))}
    for seeds, n, verdict in ((list(range(10)), 2, PENDING), ([0, 1, 3, 2], 3, "better")):
        configs = aggregate(rows, keys=["k"], settings=[(1,), (2,)])
        compare(configs, ["k"], study | {"seeds": seeds})
        row = next(c for c in configs if c["k"] == 2)
        assert (row["n_pairs"], row["verdict"]) == (n, verdict), seeds


def test_a_ledger_without_its_rounds_file_is_refused(tmp_path):
    """results.csv names each run's recipe by id, rounds.json holds the recipe: copied apart (an older rounds.json
    beside a newer ledger) the runs would silently not count; the study says so in one line instead."""
    from focalnet.studies.design import load_spec
    from focalnet.studies.study_runs import recorded_runs

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

    from focalnet.studies.design import compose, load_spec
    from focalnet.studies.study_runs import local_runs

    shutil.copytree(Path("experiments/conv_embed"), tmp_path / "experiments/conv_embed",
                    ignore=shutil.ignore_patterns("fashion_mnist"))
    monkeypatch.chdir(tmp_path)
    spec = load_spec("conv_embed", "fashion_mnist", experiments=Path("experiments"))
    config = OmegaConf.to_container(compose(spec.folder, ["benchmark=fashion_mnist"]), resolve=False)
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
    found = sorted((r.run_dir.split("/")[-2], r.seed, r.status) for r in local_runs(spec))
    assert found == [("conv_embed", 9, "interrupted"), ("normalize_modulator", 8, "completed")]


# --- frozen designs, host classes, the table's family, the replication ---------------------------------------------


def committed_copy(tmp_path, *studies):
    """A copy of committed studies (their files and ledgers, no plots) under tmp_path/experiments."""
    for name in studies:
        shutil.copytree(Path("experiments") / name, tmp_path / "experiments" / name,
                        ignore=shutil.ignore_patterns("*.png"))
    return tmp_path / "experiments"


def test_a_changed_design_after_the_first_look_is_refused_in_one_line(tmp_path):
    experiments = committed_copy(tmp_path, "gates")
    first = run_cli("focalnet-study", "gates", "--data", "fashion_mnist", "--dry-run", cwd=tmp_path)
    assert first.returncode == 0 and "no row pending" in first.stdout, first.stderr[-2000:]
    state = json.loads((experiments / "gates/fashion_mnist/rounds.json").read_text())
    assert state["frozen"]["frozen"] == "recorded after the looks" and state["frozen"]["design"]["hosts"] == "any"
    assert state["verdicts"]["model.use_gates=false"]["verdict"] == "better" and state["closed"]
    before = {p.name: p.read_bytes() for p in (experiments / "gates/fashion_mnist").iterdir()}

    path = experiments / "gates/study.yaml"
    path.write_text(path.read_text().replace("  hosts: any\n", "  hosts: any\n  delta: 0.4\n  max_seeds: 12\n"))
    changed = run_cli("focalnet-study", "gates", "--data", "fashion_mnist", "--dry-run", cwd=tmp_path)
    assert changed.returncode == 2 and len(changed.stderr.strip().splitlines()) == 1, changed.stderr
    assert "the design changed since it was frozen (frozen recorded after the looks" in changed.stderr
    assert "delta 0.5 → 0.4" in changed.stderr and "max_seeds 10 → 12" in changed.stderr
    assert "--new-design" in changed.stderr
    table = run_cli("focalnet-study", "--table", "--data", "fashion_mnist", cwd=tmp_path)  # the table refuses it too
    assert table.returncode == 2 and "delta 0.5 → 0.4" in table.stderr
    # Nothing was rewritten: the verdicts stay the frozen design's.
    assert {p.name: p.read_bytes() for p in (experiments / "gates/fashion_mnist").iterdir()} == before


def test_a_new_design_supersedes_the_old_ledger_and_keeps_its_verdicts(tmp_path):
    experiments = committed_copy(tmp_path, "gates")
    assert run_cli("focalnet-study", "gates", "--data", "fashion_mnist", "--dry-run", cwd=tmp_path).returncode == 0
    same = run_cli("focalnet-study", "gates", "--data", "fashion_mnist", "--dry-run", "--new-design", cwd=tmp_path)
    assert same.returncode == 2 and "nothing to supersede" in same.stderr  # no change: no new ledger
    path = experiments / "gates/study.yaml"
    path.write_text(path.read_text().replace("  hosts: any\n", "  hosts: any\n  delta: 0.4\n"))
    new = run_cli("focalnet-study", "gates", "--data", "fashion_mnist", "--dry-run", "--new-design", cwd=tmp_path)
    assert new.returncode == 0, new.stderr[-2000:]

    state = json.loads((experiments / "gates/fashion_mnist/rounds.json").read_text())
    (old,) = state["superseded"]
    assert old["status"] == "superseded, kept" and old["changes"] == ["delta 0.5 → 0.4"]
    assert old["verdicts"]["model.use_gates=false"] == {"n": 9, "delta": 0.7289, "interval": [0.207, 1.2508],
                                                        "verdict": "better"}
    assert len(old["rounds"]) == 3 and old["frozen"]["design"]["delta"] == 0.5
    assert state["rounds"] == [] and state["frozen"]["frozen"] == "before the first look"
    assert state["frozen"]["design"]["delta"] == 0.4 and state["frozen"]["hash"] != old["frozen"]["hash"]
    md = (experiments / "gates/fashion_mnist/results.md").read_text()
    section = md.split("## Superseded design 1 (kept, not used for decisions)")[1]
    assert "| model.use_gates=false | 9 | +0.73 | [+0.21, +1.25] | better |" in section
    assert "δ = ±0.5 points" in section and "(delta 0.5 → 0.4)" in section
    assert "δ = ±0.4 points" in md.split("## Superseded")[0]  # the table above is the new design's
    # The new ledger is frozen: the next run with the same file goes on, a further change is refused again.
    again = run_cli("focalnet-study", "gates", "--data", "fashion_mnist", "--dry-run", cwd=tmp_path)
    assert again.returncode == 0 and json.loads((experiments / "gates/fashion_mnist/rounds.json").read_text()) \
        == state


def host_runs(tmp_path, spec, runs):
    """Hand-made run folders of the study `spec` (outputs/ablation/<data>/<study>/...): (value, seed, cpu, top-1)."""
    from omegaconf import OmegaConf

    from focalnet.studies.design import compose

    for value, seed, cpu, top1 in runs:
        config = OmegaConf.to_container(compose(spec.folder, ["benchmark=digits", f"{spec.key}={value}"]),
                                        resolve=False)
        config.pop("hydra")
        run = tmp_path / spec.runs / f"{spec.key}-{value}+seed-{seed}+{cpu[:5]}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra/config.yaml").write_text(OmegaConf.to_yaml(config | {"seed": seed}))
        (run / "summary.json").write_text(json.dumps({
            "status": "completed", "seed": seed, "precision": "32-true", "metrics": {"test/acc_top1": top1},
            "machine": {"cpu": cpu}, "versions": {"torch": torch_version()},
            "started_at": f"2026-12-01T10:{seed:02d}:00+00:00", "finished_at": f"2026-12-01T10:{seed:02d}:30+00:00"}))


def torch_version():
    import torch

    return torch.__version__


def two_host_study(tmp_path, monkeypatch, hosts):
    """The lr study with hand-made runs: seeds 0-2 on this machine's CPU (4e-3 about +0.2 points), seeds 3-5 on
    another CPU (+1.0 points), each pair on one CPU."""
    from focalnet.host import machine
    from focalnet.studies.design import load_spec

    study = tmp_path / "experiments" / "lr"
    study.mkdir(parents=True)
    (study / "study.yaml").write_text(STUDY.replace("  max_seeds: 6\n", f"  max_seeds: 6\n  hosts: {hosts}\n"))
    monkeypatch.chdir(tmp_path)
    spec = load_spec("lr", "digits", list(QUICK), Path("experiments"))
    here, other = machine()["cpu"], "Other CPU (family 9, model 9)"
    base = [0.900, 0.910, 0.905, 0.902, 0.908, 0.904]
    up = [0.002, 0.003, 0.001, 0.011, 0.009, 0.010]
    runs = [(0.005, s, here if s < 3 else other, b) for s, b in enumerate(base)]
    runs += [(0.004, s, here if s < 3 else other, b + d) for s, (b, d) in enumerate(zip(base, up))]
    runs += [(1e-9, s, here if s < 3 else other, 0.1) for s in range(6)]
    host_runs(tmp_path, spec, runs)
    return spec, here, other


def test_by_default_a_study_pairs_and_decides_within_its_host_class(tmp_path, monkeypatch, capsys):
    from focalnet.studies.study import run

    spec, here, other = two_host_study(tmp_path, monkeypatch, "same")
    assert run(spec, dry_run=True) == 0
    md = (spec.out / "results.md").read_text()
    state = json.loads((spec.out / "rounds.json").read_text())
    # Only this host's seeds 0-2 pair: the other CPU's 3-5 are named, not used.
    assert state["verdicts"]["optim.optimizer.lr=0.004"]["n"] == 3
    assert state["verdicts"]["optim.optimizer.lr=1e-09"]["verdict"] == "worse"
    assert f"Made elsewhere, not used (another host class than the study's): 9 run(s) on {other}, 32-true" in md
    assert "Host class: not fixed yet: the first round's host becomes the study's (hosts: same)." in md
    assert "## Δ per host class" not in md
    line = next(x for x in md.splitlines() if x.startswith("| 0.004 |"))
    assert "| 0-2 |" in line
    # The next round trains seeds 3-5 here (the other CPU's do not count), for the row and the baseline.
    assert "seed=3,4,5" in capsys.readouterr().out


def test_hosts_any_pools_host_classes_and_reports_delta_per_class(tmp_path, monkeypatch):
    from scipy import stats

    from focalnet.studies.study import run

    spec, here, other = two_host_study(tmp_path, monkeypatch, "any")
    assert run(spec, dry_run=True) == 0
    md = (spec.out / "results.md").read_text()
    state = json.loads((spec.out / "rounds.json").read_text())
    assert state["verdicts"]["optim.optimizer.lr=0.004"]["n"] == 6  # both classes' pairs
    section = md.split("## Δ per host class")[1]
    mine = next(x for x in section.splitlines() if x.startswith(f"| lr=0.004 | {here}, 32-true"))
    theirs = next(x for x in section.splitlines() if x.startswith(f"| lr=0.004 | {other}, 32-true"))
    assert "| 3 | 0-2 | +0.20 |" in mine and "| 3 | 3-5 | +1.00 |" in theirs
    welch = stats.ttest_ind([0.2, 0.3, 0.1], [1.1, 0.9, 1.0], equal_var=False)
    assert f"Welch's t-test: t = {welch.statistic:+.2f}" in mine and f"p = {welch.pvalue:.3f}" in mine
    assert "Made elsewhere" not in md and "Hosts: any: the verdicts pool the host classes" in md


def test_the_table_names_its_family_and_family_table_splits_alpha_over_every_row(tmp_path):
    from focalnet.studies.table import table

    experiments = committed_copy(tmp_path, "gates", "focal_levels")
    per_study = table("fashion_mnist", experiments)
    lines = per_study.splitlines()
    assert lines[-1] == ("> Family: per study: α = 0.05 family-wise over each study's own rows (K = its rows); "
                         "`--family table` splits α over all 5 rows of the table.")
    gates = next(x for x in lines if x.startswith("| gates |"))
    assert gates == "| gates | use_gates=false vs true | 9 | +0.73 | [+0.21, +1.25] | better | -0.4 |"
    whole = table("fashion_mnist", experiments, family="table").splitlines()
    assert whole[-1].startswith("> Family: the table: α = 0.05 family-wise over all 5 rows of its 2 studies (K = 5")
    gates = next(x for x in whole if x.startswith("| gates |"))
    low, high = (float(x) for x in gates.split(" | ")[4].strip("[]").split(", "))
    assert low < 0.21 and high > 1.25  # α/5 per row, not α/1: wider
    assert whole[:2] == lines[:2] and len(whole) == len(lines)


def test_the_replication_is_defined_before_any_of_its_runs(tmp_path):
    """experiments/replication: 10 rows over several keys against the one common baseline, K = 10, obf, δ 0.5, cap
    20, seeds 100-119; its dry run writes the frozen design and plans seeds 100-102 for every row and the baseline,
    and the re-runs of seeds 0-8 of the baseline and no gating (no other study here: none exist)."""
    from focalnet.studies.design import load_spec, setting
    from focalnet.studies.ledger import settle_design

    spec = load_spec("replication", "fashion_mnist")
    assert spec.group and spec.key == "row" and spec.baseline == "baseline" and len(spec.values) == 11
    assert (spec.design.rows, spec.design.alpha, spec.design.delta, spec.design.procedure) == (10, 0.05, 0.5, "obf")
    assert (spec.design.seeds_per_round, spec.design.max_seeds, spec.seeds) == (3, 20, list(range(100, 120)))
    assert spec.budget_hours == 50 and spec.hosts == "same" and spec.jobs_per_multirun == 2
    settings = {v: json.loads(s) for v, s in spec.settings.items()}
    assert settings == {"baseline": {}, "depth2": {"model.num_layers": 2}, "kernel5": {"model.focal_kernel": 5},
                        "kernel7": {"model.focal_kernel": 7}, "kernel9": {"model.focal_kernel": 9},
                        "levels2": {"model.focal_levels": 2}, "levels4": {"model.focal_levels": 4},
                        "normalize_modulator": {"model.normalize_modulator": True},
                        "context_top_level": {"model.context": "top_level"}, "no_gates": {"model.use_gates": False},
                        "interaction_add": {"model.interaction": "add"}}
    # The baseline is the committed studies' own: their runs are its runs (seeds 0-9, outside the replication's).
    assert setting(load_spec("gates", "fashion_mnist").reference, spec.reference) == "{}"
    for path in Path("experiments").glob("*/fashion_mnist/results.csv"):  # the replication's own ledger aside
        assert path.parts[1] == "replication" or not {int(r["seed"]) for r in rows_of(path)} & set(spec.seeds), path

    committed_copy(tmp_path, "replication")
    shutil.rmtree(tmp_path / "experiments/replication/fashion_mnist", ignore_errors=True)
    dry = run_cli("focalnet-study", "replication", "--data", "fashion_mnist", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    commands = [line.split(": ", 2)[2] for line in dry.stdout.splitlines() if ": multirun " in line]
    head = "focalnet-train -m --config-dir experiments/replication --config-name study benchmark=fashion_mnist"
    rows = ["baseline,depth2", "kernel5,kernel7", "kernel9,levels2", "levels4,normalize_modulator",
            "context_top_level,no_gates"]
    # Two jobs a multirun (jobs_per_multirun: 2), the re-runs first, then seed by seed; the odd row last.
    assert commands == ([f"{head} row=baseline,no_gates seed={s} {TAIL}" for s in range(9)]
                        + [f"{head} row={r} seed={s} {TAIL}" for s in (100, 101, 102) for r in rows]
                        + [f"{head} row=interaction_add seed={s} {TAIL}" for s in ("100,101", "102")])
    state = json.loads((tmp_path / "experiments/replication/fashion_mnist/rounds.json").read_text())
    frozen = state["frozen"]
    assert frozen["frozen"] == "before the first look" and frozen["design"]["host_class"] is None
    assert frozen["design"]["seeds"] == list(range(100, 120)) and frozen["design"]["K"] == 10
    assert frozen["design"]["looks"] == [3, 6, 9, 12, 15, 18, 20] and frozen["design"]["procedure"] == "obf"
    assert frozen["design"]["reruns"] == {"row=baseline": list(range(9)), "row=no_gates": list(range(9))}
    assert frozen["design"]["rows"]["row=depth2"] == {"model.num_layers": 2} and state["rounds"] == []
    # The calibration is part of the design: its method, seed, paths and the critical values themselves.
    calibration = frozen["design"]["calibration"]
    assert (calibration["method"], calibration["skew"], calibration["seed"], calibration["paths"]) == (
        "obf-t-1", 0.5, 1, 1_000_000)
    assert calibration["c"] == spec.design.calibration(False)["c"] and len(calibration["c_eq"]) == 7

    # Changed before any round ran or any pair was looked at: refused all the same, and --new-design only replaces
    # the design (no verdict to keep).
    path = tmp_path / "experiments/replication/study.yaml"
    path.write_text(path.read_text().replace("  delta: 0.5\n", "  delta: 0.4\n"))
    changed = load_spec("replication", "fashion_mnist", experiments=tmp_path / "experiments")
    with pytest.raises(ValueError, match=r"delta 0.5 → 0.4; refused .* \(no round has run yet: it only replaces"):
        settle_design(changed, json.loads(json.dumps(state)), [])
    renewed = settle_design(changed, json.loads(json.dumps(state)), [], new_design=True)
    assert "superseded" not in renewed and renewed["frozen"]["design"]["delta"] == 0.4


TAIL = ("hydra.sweep.dir=outputs/ablation/fashion_mnist/replication "
        "'hydra.sweep.subdir=row-${hydra:runtime.choices.row}+seed-${seed}' resume=auto callbacks.progress_bar=null")


def test_rows_of_several_keys_compose_from_a_config_group(tmp_path):
    """A study whose swept key is a config group of its folder: each option a row setting as many keys as it needs."""
    from focalnet.studies.design import load_spec

    study = tmp_path / "experiments" / "pair"
    (study / "row").mkdir(parents=True)
    (study / "study.yaml").write_text("defaults:\n  - /study_common\n  - row: base\n  - _self_\nhydra:\n  sweeper:\n"
                                      "    params:\n      row: base,both\nstudy:\n  name: pair\n"
                                      "  baseline: {row: base}\n")
    (study / "row/base.yaml").write_text("# @package _global_\n{}\n")
    (study / "row/both.yaml").write_text("# @package _global_\nmodel:\n  num_layers: 2\n  focal_kernel: 5\n")
    spec = load_spec("pair", "digits", experiments=tmp_path / "experiments")
    assert json.loads(spec.settings["both"]) == {"model.focal_kernel": 5, "model.num_layers": 2}
    assert spec.settings["base"] == "{}" and spec.design.rows == 1 and spec.seeds == list(range(10))


def test_a_regenerated_report_names_no_absolute_path_and_regenerates_byte_for_byte(tmp_path):
    """Every committed study's report from its committed files alone, run from elsewhere with an absolute
    --experiments: relative paths only (the commands from rounds.json, focalnet-train, experiments/<study>), and the
    same files again on a second run."""
    names = sorted(p.parts[1] for p in Path("experiments").glob("*/fashion_mnist/rounds.json"))
    experiments = committed_copy(tmp_path, *names)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def regenerate():
        for name in ("gates", "interaction"):
            result = run_cli("focalnet-study", name, "--data", "fashion_mnist", "--dry-run", "--experiments",
                             str(experiments), cwd=elsewhere)
            assert result.returncode == 0, result.stderr[-2000:]
        return {p: p.read_bytes() for p in experiments.glob("*/fashion_mnist/*")}

    first = regenerate()
    for name in ("gates", "interaction"):
        for path in (experiments / name / "fashion_mnist").iterdir():
            text = path.read_text(errors="replace") if path.suffix != ".png" else ""
            for bad in (str(tmp_path), "/tmp", "/work", "/home", sys.executable):
                assert bad not in text, (path, bad)
        md = (experiments / name / "fashion_mnist/results.md").read_text()
        assert "- `focalnet-train -m --config-dir experiments/" + name + " --config-name study" in md
    assert regenerate() == first
    assert "hydra.sweep.dir=outputs/repro/zen4_fp32" in (experiments / "interaction/fashion_mnist/results.md"
                                                          ).read_text()  # a command no round ran, kept
