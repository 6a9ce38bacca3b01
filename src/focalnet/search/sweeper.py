"""Optuna searches that stop bad trials early: the sweeper side (OptunaSearch) and the job side (TrialPruning).

Hydra's Optuna sweeper runs each trial as a whole job and never hands it its trial (hydra #1954), so no pruner can
act. OptunaSearch is that sweeper with the one change that makes pruning possible: every job gets its trial's number
(`search.trial`) and where the study is kept (`search.storage`, `search.study_name`: the sweeper's own settings,
passed as overrides). The job's TrialPruning callback reports the optimised metric to its trial after every
validation and stops the fit when the study's pruner (`search.pruner`) says so; the job is recorded as "pruned" and
the sweeper tells the study PRUNED. Trials run in batches of `n_jobs` through any launcher (side by side, SLURM), all
against the one storage in the sweep folder.

Resuming: `n_trials` counts every trial of the study, finished or not. The same command with resume=auto first
continues the trials an earlier command left running (each in its folder `<sweep>/<trial>`, from its last.ckpt),
then asks for the rest; completed, pruned and failed trials are not touched.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from focalnet import schema
from focalnet.cli import one_line
from focalnet.record import Status, read_status

log = logging.getLogger(__name__)
State = optuna.trial.TrialState
TOLD = {Status.COMPLETED: State.COMPLETE, Status.PRUNED: State.PRUNED, Status.FAILED: State.FAIL}


def make_pruner(spec, metric) -> optuna.pruners.BasePruner | None:
    """The study's pruner from `search.pruner` (null: none), checked against `optimized_metric`, in one-line errors."""
    if spec is None:
        return None
    target = spec.get("_target_") if isinstance(spec, DictConfig) else spec
    try:
        pruner = instantiate(spec)
    except Exception as error:
        if isinstance(error.__cause__, ImportError):
            raise ValueError(f"search.pruner._target_={target}: no such class (an Optuna pruner, e.g. "
                             "optuna.pruners.MedianPruner)") from None  # fmt: skip
        raise ValueError(f"search.pruner: {target} cannot be made ({one_line(error.__cause__ or error)})") from None
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise ValueError(f"search.pruner._target_={target} is not an Optuna pruner (optuna.pruners.*)")
    if not (isinstance(metric, str) and metric.startswith("val/")):
        raise ValueError(f"optimized_metric={'null' if metric is None else metric}: a pruner judges a metric reported "
                         "after every validation, so it must be a val/ metric (e.g. val/acc_top1)")  # fmt: skip
    return pruner


class OptunaSearch(OptunaSweeperImpl):
    """hydra-optuna-sweeper's search space, sampler and study, with trials that know who they are (see above)."""

    def sweep(self, arguments: list[str]) -> None:
        cfg = self.config
        self._process_searchspace_config()
        space, fixed = create_params_from_overrides([*self._parse_sweeper_params_config(), *arguments])
        for name in fixed:  # a value given on the command line is not searched
            space.pop(name, None)
        if "search" not in cfg:
            raise ValueError("hydra/sweeper=focalnet_optuna needs the search: block of an hparams_search config")
        # Their errors now, before the study is made or any job runs.
        schema.check_search(cfg.search, {"n_trials": self.n_trials, "n_jobs": self.n_jobs})
        make_pruner(cfg.search.get("pruner"), cfg.get("optimized_metric"))
        if isinstance(self.storage, str) and self.storage.startswith("sqlite:///"):
            # The jobs run elsewhere (SLURM, another working directory): an absolute path, its folder made here.
            path = Path(self.storage.removeprefix("sqlite:///")).absolute()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ValueError(f"hydra.sweeper.storage={self.storage}: its folder cannot be made ({error.strerror})"
                                 ) from None  # fmt: skip
            self.storage = f"sqlite:///{path}"
        try:
            study = optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                                        directions=self._get_directions(), load_if_exists=True)  # fmt: skip
        except Exception as error:
            raise ValueError(f"hydra.sweeper.storage={self.storage}: the study cannot be kept there "
                             f"({one_line(error)})") from None  # fmt: skip
        # With resume=auto the trials an earlier command left running continue first, from their checkpoints;
        # without, they are left alone (another command may be running them) and only new trials are asked for.
        unfinished = [t for t in study.trials if t.state == State.RUNNING] if fixed.get("resume") == "auto" else []
        log.info(f"Optuna study {study.study_name} in {self.storage}: {len(study.trials)} trial(s) so far"
                 + (f", {len(unfinished)} left running continue first" if unfinished else ""))
        while True:
            if unfinished:
                batch, unfinished = unfinished[: self.n_jobs], unfinished[self.n_jobs :]
                numbers = [t.number for t in batch]
                overrides = [tuple(f"{k}={v}" for k, v in {**t.params, **fixed}.items()) for t in batch]
            else:
                size = min(self.n_jobs, self.n_trials - len(study.trials))
                if size <= 0:
                    break
                trials = [study.ask() for _ in range(size)]
                numbers = [t.number for t in trials]
                overrides = list(self._configure_trials(trials, space, fixed))
            # Literal values, not interpolations of the sweeper's settings: a DDP job's other ranks compose the
            # job's saved config without the sweeper.
            where = (f"search.storage='{self.storage}'", f"search.study_name='{study.study_name}'")
            overrides = [(*o, *where, f"search.trial={n}") for o, n in zip(overrides, numbers)]
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for number, ret in zip(numbers, returns):
                tell(study, number, ret)
        write_results(study, Path(cfg.hydra.sweep.dir))


def tell(study: optuna.Study, number: int, ret) -> None:
    """Tell the study how trial `number` ended, from its job's summary.json: completed (with the job's value),
    pruned (Optuna takes its last reported value), failed. A job another command still runs is left RUNNING."""
    status = read_status(Path(ret.hydra_cfg.hydra.runtime.output_dir)) or Status.FAILED  # no record: it failed
    state = TOLD.get(status)
    if state is None:
        return
    value = None
    if state == State.COMPLETE:
        try:
            value = float(ret.return_value)
        except (TypeError, ValueError):  # no metric: the job raised, or the metric was never logged
            state = State.FAIL
    if study.trials[number].state == State.RUNNING:
        study.tell(number, value, state=state)


def write_results(study: optuna.Study, sweep_dir: Path) -> None:
    """<sweep>/optimization_results.yaml: the best trial and how many trials ended each way."""
    counts = {s.name.lower(): sum(t.state == s for t in study.trials) for s in State}
    results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "trials": counts}
    complete = [t for t in study.trials if t.state == State.COMPLETE]
    if complete:
        best = study.best_trial
        results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
        log.info(f"Best trial {best.number}: {best.value} with {best.params}")
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")


class TrialPruning(Callback):
    """Report `monitor` to the Optuna trial after every validation; stop the fit when the pruner says so.

    Only rank 0 talks to the storage; its decision is broadcast, so every rank stops at the same epoch.
    """

    def __init__(self, search: DictConfig, monitor: str) -> None:
        self.search, self.monitor = search, monitor
        self.trial: optuna.trial.Trial | None = None
        self.pruned_at: int | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        storage = optuna.storages.get_storage(self.search.storage)
        study_id = storage.get_study_id_from_name(self.search.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(self.search.trial))
        study = optuna.load_study(study_name=self.search.study_name, storage=storage,
                                  pruner=make_pruner(self.search.get("pruner"), self.monitor)
                                  or optuna.pruners.NopPruner())
        self.trial = optuna.trial.Trial(study, trial_id)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:  # on every rank, so that none waits for the others at the broadcast
            logged = ", ".join(sorted(k for k in trainer.callback_metrics if k.startswith("val/")))
            raise ValueError(f"optimized_metric={self.monitor} is not logged at validation, so the pruner has nothing "
                             f"to judge (logged: {logged})")  # fmt: skip
        prune = False
        if self.trial is not None:
            # The step is the epochs trained (1 after the first epoch): the resource that min_resource, the rungs of
            # successive halving and Hyperband's max_resource count.
            self.trial.report(float(value), step=trainer.current_epoch + 1)
            prune = self.trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True


def plot_study(storage: str, study_name: str, out: Path) -> list[Path]:
    """Optuna's own figures of the study: optimization_history.png, and param_importances.png once two trials have
    completed (Optuna needs them to fit the importances); a figure Optuna cannot draw is left out, with a line why."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as figures

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception as error:  # the storage moved or is gone: the trial table stands without the figures
        log.warning(f"no Optuna figures: the study {study_name} cannot be read from {storage} ({one_line(error)})")
        return []
    paths = []
    complete = [t for t in study.trials if t.state == State.COMPLETE]
    for name, draw, ready in (("optimization_history", figures.plot_optimization_history, bool(complete)),
                              ("param_importances", plot_importances, len(complete) >= 2)):
        if not ready:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning: the matplotlib figures are marked experimental
                ax = draw(study)
        except Exception as error:  # e.g. every completed trial had the same parameters: no importance to fit
            print(f"focalnet-report: no {name}.png: {one_line(error)}", file=sys.stderr)
            continue
        path = out / f"{name}.png"
        ax.figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
        paths.append(path)
    return paths


def plot_importances(study: optuna.Study):
    """Optuna's parameter importances as bars. Optuna 2.x's own figure calls a matplotlib function gone since 3.9,
    and its default evaluator (fANOVA) fails under numpy 2: its random-forest evaluator, drawn here."""
    import matplotlib.pyplot as plt

    evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(importances)))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set(xlabel="importance for the objective (Optuna, mean decrease in impurity)", title="parameter importances")
    return ax
