"""Optuna searches that keep every slot busy and stop bad trials early: the sweeper (AsyncSearch) and the job side
(TrialPruning).

AsyncSearch is a Hydra sweeper of its own (Hydra's Sweeper API; no other sweeper plugin): it keeps `n_jobs` trials in
flight and asks Optuna for the next trial the moment one ends (completed, pruned or failed), through any launcher:
one trial after another in this process (the basic launcher), side by side in worker processes
(hydra/launcher=parallel), or as SLURM jobs (hydra/launcher=slurm*). Each trial is one job folder `<sweep>/<trial>`
that knows its trial (`search.trial`) and the study (`search.storage`, `search.study_name`); its TrialPruning
callback reports the optimised metric after every validation and stops the fit when the study's pruner
(`search.pruner`) says so; the sweeper then tells the study PRUNED.

`n_trials` counts every trial of the study, whichever command asked for it: commands that share the study (several
nodes, one storage) ask under one lock, so the study ends with exactly n_trials. resume=auto first continues the
trials an earlier command left running (each from its last.ckpt), then asks for the rest. SIGINT/SIGTERM stop the
launches: trials in this machine's worker processes get the signal (they save last.ckpt and record "interrupted"),
SLURM jobs are left to finish; the study keeps them RUNNING for resume=auto.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import signal
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from focalnet import schema
from focalnet.cli import one_line
from focalnet.record import Status, read_record, read_status
from focalnet.search import storage
from focalnet.search.space import parse_space

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


class AsyncSearch(Sweeper):
    """hydra.sweeper of hparams_search=...: the settings of conf/hydra/sweeper/focalnet_optuna.yaml (see above)."""

    def __init__(self, sampler: optuna.samplers.BaseSampler | None = None, direction: str = "maximize",
                 storage: str | None = None, study_name: str = "focalnet", n_trials: int = 20, n_jobs: int = 1,
                 max_failure_rate: float = 1.0, params: dict[str, Any] | None = None, batch: bool = False) -> None:
        self.sampler, self.direction, self.storage, self.study_name = sampler, direction, storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params, self.batch = params, batch
        self.stopping: int | None = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        cfg = self.config
        if "search" not in cfg:
            raise ValueError("hydra/sweeper=focalnet_optuna needs the search: block of an hparams_search config")
        # Every error now, before the study is made or any job runs.
        space, fixed = parse_space(self.params, arguments)
        schema.check_search(cfg.search, {"n_trials": self.n_trials, "n_jobs": self.n_jobs})
        make_pruner(cfg.search.get("pruner"), cfg.get("optimized_metric"))
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction={self.direction}: maximize or minimize")
        if not 0 <= self.max_failure_rate <= 1:
            raise ValueError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: a fraction from 0 to 1")
        in_process = type(self.launcher).__name__ == "BasicLauncher"  # each job in this process, one at a time
        if in_process and self.n_jobs > 1:
            raise ValueError(f"hydra.sweeper.n_jobs={self.n_jobs} runs trials side by side, which takes "
                             "hydra/launcher=parallel (this machine) or slurm/slurm_cpu; the basic launcher runs "
                             "one job at a time in this process")  # fmt: skip
        if hasattr(self.launcher, "joblib"):  # a worker process per trial in flight (n_jobs=1 runs in our thread)
            self.launcher.joblib["n_jobs"] = max(self.n_jobs, 2)
        spec = storage.prepare(self.storage)
        try:
            study = optuna.create_study(study_name=self.study_name, storage=storage.open_storage(spec),
                                        sampler=self.sampler, direction=self.direction, load_if_exists=True)
        except Exception as error:
            raise ValueError(f"hydra.sweeper.storage={self.storage}: the study cannot be kept there "
                             f"({one_line(error)})") from None  # fmt: skip
        # With resume=auto the trials an earlier command left running continue first, from their checkpoints;
        # without, they are left alone (another command may be running them) and only new trials are asked for.
        unfinished = [t for t in study.trials if t.state == State.RUNNING] if fixed.get("resume") == "auto" else []
        log.info(f"Optuna study {study.study_name} in {spec}: {len(study.trials)} trial(s) so far"
                 + (f", {len(unfinished)} left running continue first" if unfinished else ""))
        self.study, self.spec, self.space, self.fixed, self.todo = study, spec, space, fixed, deque(unfinished)
        sweep_dir = Path(str(cfg.hydra.sweep.dir))
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._run_in_process() if in_process else self._run_in_threads(sweep_dir)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        write_results(study, sweep_dir)
        if self.stopping is not None:
            log.info("search stopped by a signal: the same command with resume=auto continues it")
            raise SystemExit(128 + self.stopping)
        if self._too_many_failures():
            raise ValueError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: {self._failed()} of "
                             f"{self.n_trials} trials failed, so the search stopped launching")  # fmt: skip

    def _stop(self, signum, frame) -> None:
        self.stopping = signum

    def _failed(self) -> int:
        return sum(t.state == State.FAIL for t in self.study.get_trials(deepcopy=False))

    def _too_many_failures(self) -> bool:
        # Failures only grow: past this count the rate can no longer end at or below max_failure_rate.
        return self._failed() > math.floor(self.max_failure_rate * self.n_trials)

    def _next(self) -> tuple[int, tuple[str, ...]] | None:
        """The next trial's number and overrides: a trial left running (resume=auto), else a new one from Optuna,
        asked under the study's lock so that commands sharing it never ask beyond n_trials; None when none is left."""
        if self.stopping is not None or self._too_many_failures():
            return None
        if self.todo:
            trial = self.todo.popleft()
        else:
            with storage.ask_lock(self.spec):
                if len(self.study.get_trials(deepcopy=False)) >= self.n_trials:
                    return None
                trial = self.study.ask(fixed_distributions=self.space)
        # Literal values, not interpolations of the sweeper's settings: a DDP job's other ranks compose the job's
        # saved config without the sweeper.
        where = (f"search.storage='{self.spec}'", f"search.study_name='{self.study.study_name}'")
        overrides = (*(f"{k}={v}" for k, v in {**trial.params, **self.fixed}.items()), *where,
                     f"search.trial={trial.number}")
        self.validate_batch_is_legal([overrides])
        return trial.number, overrides

    def _run_in_process(self) -> None:
        while (job := self._next()) is not None:
            number, overrides = job
            tell(self.study, number, self.launcher.launch([overrides], initial_job_idx=number)[0])

    def _run_in_threads(self, sweep_dir: Path) -> None:
        """n_jobs trials in flight, each launched by a thread of its own (a launcher blocks until its jobs end);
        Optuna is asked and told here, in the main thread, as each trial ends. batch=true waits for all of them
        before asking again (Hydra's sweepers do), to compare."""
        ended: queue.Queue = queue.Queue()
        running: dict[int, threading.Thread] = {}
        signalled: set[int] = set()

        def launch(number: int, overrides: tuple[str, ...]) -> None:
            try:
                ended.put((number, self.launcher.launch([overrides], initial_job_idx=number)[0]))
            except BaseException as error:  # a worker that died: the trial's record says how it ended
                ended.put((number, error))

        while True:
            fill = not (self.batch and running)  # a batch starts once the one before it has ended
            while fill and len(running) < self.n_jobs and (job := self._next()) is not None:
                # Daemon threads: a stopped search does not wait at exit for SLURM jobs that go on by themselves.
                running[job[0]] = threading.Thread(target=launch, args=job, daemon=True)
                running[job[0]].start()
            if not running:
                return
            if self.stopping is not None:
                if "submitit" in type(self.launcher).__module__:
                    return  # SLURM's jobs run on; resume=auto tells the study how they ended
                signalled |= self._forward(sweep_dir, set(running) - signalled)
            try:
                number, ret = ended.get(timeout=1)  # a timeout, so that a signal is seen within a second
            except queue.Empty:
                continue
            running.pop(number).join()
            tell(self.study, number, ret, sweep_dir / str(number))

    def _forward(self, sweep_dir: Path, numbers: set[int]) -> set[int]:
        """Send the search's stop signal to the worker processes running these trials (the pid in the trial's
        summary.json): each saves last.ckpt and records "interrupted". A trial that has not reached its first step
        (no Lightning handler yet: the signal would kill its worker) gets it at a later look. Returns the trials
        that got it."""
        sent = set()
        for number in numbers:
            try:
                record = read_record(sweep_dir / str(number))
            except ValueError:  # not started yet: the next second's look
                continue
            if record.status != Status.RUNNING or record.time_to_first_step_s is None:
                continue
            if record.pid:
                try:
                    os.kill(record.pid, self.stopping)
                except ProcessLookupError:
                    pass
                sent.add(number)
        return sent


def tell(study: optuna.Study, number: int, ret: JobReturn | BaseException, folder: Path | None = None) -> None:
    """Tell the study how trial `number` ended, from its job's summary.json: completed (with the job's value),
    pruned (Optuna takes its last reported value), failed. A trial interrupted, or still run by another command,
    stays RUNNING (resume=auto continues it)."""
    if isinstance(ret, JobReturn):
        folder = Path(ret.hydra_cfg.hydra.runtime.output_dir)
    status = (read_status(folder) if folder is not None else None) or Status.FAILED  # no record: it failed
    state = TOLD.get(status)
    if state is None:
        return
    value = None
    if state == State.COMPLETE:
        try:
            value = float(ret.return_value)
        except (AttributeError, TypeError, ValueError):  # no metric: the job raised, or the metric was never logged
            state = State.FAIL
    study.tell(number, value, state=state, skip_if_finished=True)


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
        store = optuna.storages.get_storage(storage.open_storage(self.search.storage))
        study_id = store.get_study_id_from_name(self.search.study_name)
        trial_id = store.get_trial_id_from_study_id_trial_number(study_id, int(self.search.trial))
        study = optuna.load_study(study_name=self.search.study_name, storage=store,
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


def plot_study(spec: str, study_name: str, out: Path) -> list[Path]:
    """Optuna's own figures of the study: optimization_history.png, intermediate_values.png (each trial's metric by
    epoch, the pruned ones cut short) and param_importances.png once two trials have completed (Optuna needs them to
    fit the importances); a figure Optuna cannot draw is left out, with a line why."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as figures

    try:
        study = storage.load_study(spec, study_name)
    except Exception as error:  # the storage moved or is gone: the trial table stands without the figures
        log.warning(f"no Optuna figures: the study {study_name} cannot be read from {spec} ({one_line(error)})")
        return []
    paths = []
    complete = [t for t in study.trials if t.state == State.COMPLETE]
    for name, draw, ready in (("optimization_history", figures.plot_optimization_history, bool(complete)),
                              ("intermediate_values", figures.plot_intermediate_values,
                               any(t.intermediate_values for t in study.trials)),
                              ("param_importances", figures.plot_param_importances, len(complete) >= 2)):
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
