"""Run a search: an Optuna study whose trials train specs.

Optuna does the sampling, pruning and storage; this module gives it the objective (a trial's
spec trained by the pipeline's own loop, its epochs reported to the pruner) and keeps the study
consistent however a run ends:

- The study lives in its storage (``runs/<search>/study.db`` by default): the same command again
  continues it, finished trials kept. A trial whose process died (SIGKILL, a lost machine) is
  failed and retried with the same parameters, as is one stopped by Ctrl-C or SIGTERM; a trial
  retried counts once in the budget.
- ``budget.parallel`` trials run at once, each worker a process of its own with its share of
  the cores, all on the one storage. Starting a trial (counting the budget, asking Optuna) is
  done under a file lock beside a file storage, so workers never start more trials than the
  budget (workers on other machines sharing a server storage may overshoot by one each).
- A spec that a sampled combination makes invalid, or a training that diverges, is a failed
  trial with its message; the search goes on.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import proc, runlock
from pipeline.errors import Interrupted, PipelineError
from pipeline.search import plot_server, space

if TYPE_CHECKING:
    import optuna

    from pipeline.search.load import LoadedSearch

Log = Callable[[str], None]
RunTrial = Callable[[int, Callable[[], Any]], Any]
"""How a worker runs a trial's training: ``run_trial(number, train)`` calls ``train()`` and
returns what it returns (a Prefect flow makes each a task run this way)."""
LaunchWorkers = Callable[[int, "int | None", "float | None"], None]
"""How a search starts its ``n`` workers and waits for them: ``launch(n, trials, deadline)``
(default: processes on this machine; a Prefect flow: runs of the worker deployment)."""

THREADS_ENV = "PIPELINE_SEARCH_THREADS"
"""The torch threads of a worker process (the coordinator splits the cores between workers)."""

ATTR_WORKER, ATTR_RETRY_OF, ATTR_INTERRUPTED = "worker", "retry_of", "interrupted"
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


class SearchError(PipelineError):
    """A search that cannot run as asked (its storage, its study)."""


class TrialFailed(Exception):
    """A trial that failed for a reason its ``error`` attribute says; the search goes on."""


# ---- the study ---------------------------------------------------------------------------


def _quiet_optuna() -> None:
    """Optuna's own chatter off: its per-trial lines, with the traceback of each failed trial
    (ours say what failed, in a line), and the notes that heartbeats and metric names are
    experimental features."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_storage(url: str) -> Any:
    """The Optuna storage of ``url``: ``journal:<file>`` is a journal file; anything else an
    SQLAlchemy URL, with heartbeats so that a trial whose machine was lost is retried."""
    import optuna

    _quiet_optuna()
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(
            str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path))
        )
        return optuna.storages.JournalStorage(backend)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {},
            heartbeat_interval=30,
            grace_period=120,
            heartbeat_stale_trial_callback=_retry_stale,
        )
    except Exception as err:  # a server that went away since the search file was checked
        raise SearchError(f"cannot open the study's storage {url}: {err}") from None
    if storage.engine.name == "sqlite":
        import sqlalchemy

        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_wal)
        storage.engine.dispose()  # the connections the schema check made: without it
    return storage


def _sqlite_wal(connection: Any, _record: Any) -> None:
    """Each SQLite connection in write-ahead-log mode, synced at checkpoints: a commit costs
    0.03 ms instead of 1.1 ms (an fsync) on a 2-core AMD EPYC's disk, some 260 of them in a
    10-trial search, and readers (optuna-dashboard, other workers) no longer wait for a
    writer. A process killed outright loses no commit; a power cut may lose the last ones.
    SQLite's WAL needs a local disk: on a network file system, use a database server."""
    cursor = connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sampler(loaded: LoadedSearch, seed: int | None) -> Any:
    import optuna

    s = loaded.search.sampler
    startup = {} if s.startup_trials is None else {"n_startup_trials": s.startup_trials}
    if s.type == "grid":
        return optuna.samplers.GridSampler(space.grid(loaded.search), seed=seed)
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.type == "tpe":
        multivariate = len(loaded.search.space) > 1
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=multivariate, constant_liar=True, **startup
        )
    if s.type == "gp":
        return optuna.samplers.GPSampler(seed=seed, **startup)
    if s.type == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, **startup)
    return optuna.samplers.NSGAIISampler(seed=seed)


def _pruner(loaded: LoadedSearch) -> Any:
    import optuna

    p = loaded.search.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs
        )
    if p.type == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, p.warmup_epochs))
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, p.warmup_epochs))
    return optuna.pruners.NopPruner()


def open_study(loaded: LoadedSearch, *, seed_offset: int = 0) -> optuna.Study:
    """The search's study in its storage, created on first use (named after the search)."""
    import optuna

    storage = open_storage(loaded.storage)
    seed = loaded.search.sampler.seed
    probe = optuna.create_study(
        storage=storage,
        study_name=loaded.name,
        directions=loaded.search.directions,
        load_if_exists=True,
    )
    old = probe.directions
    if [d.name.lower() for d in old] != loaded.search.directions:
        raise SearchError(
            f"the study {loaded.name!r} in {loaded.storage} optimizes "
            f"{[d.name.lower() for d in old]}, the search file {loaded.search.directions}: "
            "name the search anew (name: ...) or give it another storage"
        )
    # a continued study draws new points: offset the seed by the trials it has
    if seed is not None:
        seed = seed + seed_offset * 1000 + len(probe.get_trials(deepcopy=False))
    study = optuna.load_study(
        study_name=loaded.name,
        storage=storage,
        sampler=_sampler(loaded, seed),
        pruner=_pruner(loaded),
    )
    if study.metric_names is None:
        study.set_metric_names([o.metric for o in loaded.search.objectives])
    return study


def _retry_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna failed ``trial`` (its heartbeat stopped): run its parameters again."""
    _retry(study, trial)


def _retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    original = trial.user_attrs.get(ATTR_RETRY_OF, trial.number)
    study.enqueue_trial(trial.params, user_attrs={ATTR_RETRY_OF: original}, skip_if_exists=False)


def retried(trials: Sequence[optuna.trial.FrozenTrial]) -> set[int]:
    """The numbers of the trials another trial is a retry of."""
    return {t.user_attrs[ATTR_RETRY_OF] for t in trials if ATTR_RETRY_OF in t.user_attrs}


def counted(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """Trials against the budget: all of them, a retried one once (its retry counts)."""
    again = retried(trials)
    return sum(1 for t in trials if t.number not in again)


def recover(study: optuna.Study, log: Log) -> list[int]:
    """Fail each trial a process of this host left running when it died, and retry each trial
    that died or was interrupted and has no retry yet; the numbers of the trials retried."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    storage = study._storage
    for t in trials:
        tag = t.user_attrs.get(ATTR_WORKER)
        if t.state == TrialState.RUNNING and tag and proc.tag_gone(tag) is not None:
            storage.set_trial_user_attr(t._trial_id, ATTR_INTERRUPTED, True)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    again = retried(trials)
    pending = [
        t
        for t in trials
        if t.state == TrialState.FAIL
        and t.user_attrs.get(ATTR_INTERRUPTED)
        and t.user_attrs.get(ATTR_RETRY_OF, t.number) not in again
        and t.number not in again
    ]
    for t in pending:
        _retry(study, t)
    if pending:
        numbers = ", ".join(str(t.number) for t in pending)
        log(f"{study.study_name}: trial(s) {numbers} did not finish (interrupted or killed): "
            "run again with the same parameters")  # fmt: skip
    return [t.number for t in pending]


# ---- starting trials one at a time -------------------------------------------------------


class _StartLock:
    """Held from counting the budget until Optuna has the trial running (the objective's first
    line releases it), so workers on one storage never start more trials than the budget."""

    def __init__(self, path: Path) -> None:
        self.path, self.fd = path, None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def start_lock_path(loaded: LoadedSearch) -> Path:
    url = loaded.storage
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:") + ".start.lock")
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///") + ".start.lock")
    return loaded.folder / ".start.lock"


class Worker:
    """One process's share of a search: starts trials until the budget or the deadline."""

    def __init__(
        self,
        loaded: LoadedSearch,
        *,
        trials: int | None,
        deadline: float | None,
        index: int = 0,
        log: Log = print,
        run_trial: RunTrial | None = None,
        study: optuna.Study | None = None,
    ) -> None:
        self.loaded, self.budget, self.deadline, self.log = loaded, trials, deadline, log
        self.run_trial = run_trial or (lambda _number, train: train())
        self.study = study or open_study(loaded, seed_offset=index)  # the coordinator's, or own
        self.lock = _StartLock(start_lock_path(loaded))
        self.prepared: dict[str, Any] = {}
        objectives = loaded.search.objectives
        self.report_metric = objectives[0].metric if len(objectives) == 1 else None

    def _more(self) -> bool:
        from optuna.trial import TrialState

        if self.deadline is not None and time.time() >= self.deadline:
            return False
        trials = self.study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return True  # a retry waits: it is already in the count
        return self.budget is None or counted(trials) < self.budget

    def run(self) -> int:
        """Run trials; how many this worker ran."""
        ran = 0
        while True:
            self.lock.acquire()
            try:
                if not self._more():
                    return ran
                self.study.optimize(self._objective, n_trials=1, catch=(TrialFailed,))
            finally:
                self.lock.release()
            ran += 1

    # ---- one trial -------------------------------------------------------------------

    def _objective(self, trial: optuna.Trial) -> float | list[float]:
        self.lock.release()  # the trial is RUNNING in the storage: others count it now
        began = time.monotonic()
        trial.set_user_attr(ATTR_WORKER, proc.process_tag())
        run_dir = self.loaded.folder / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        try:
            values = space.suggest(trial, self.loaded.search)
            settings = space.overrides(self.loaded.search, values)
            trial.set_user_attr("overrides", settings)
            return self._train(trial, settings, run_dir)
        except Interrupted:
            trial.set_user_attr(ATTR_INTERRUPTED, True)
            raise
        except (PipelineError, MemoryError, RuntimeError) as err:  # RuntimeError: out of memory
            trial.set_user_attr("error", _message(err))
            self.log(f"trial {trial.number} failed: {_message(err)}")
            raise TrialFailed(str(err)) from None
        finally:
            trial.set_user_attr("duration_s", round(time.monotonic() - began, 3))

    def _train(self, trial: optuna.Trial, settings: list[str], run_dir: Path) -> Any:
        import optuna

        from pipeline.spec.load import load_spec
        from pipeline.train.loop import train

        spec = load_spec(self.loaded.base_file, settings)
        prepared = self._prepared(spec)
        pruned: list[str] = []

        def on_epoch(row: dict[str, Any]) -> str | None:
            value = row.get(self.report_metric) if self.report_metric else None
            if not isinstance(value, int | float) or math.isnan(value):
                return None
            trial.report(float(value), step=int(row["epoch"]))
            if trial.should_prune():
                pruned.append(
                    f"pruned at epoch {row['epoch']} ({self.report_metric} {value:.4f}, "
                    f"{self.loaded.search.pruner.type} pruner)"
                )
                return pruned[-1]
            return None

        n = trial.number
        result = self.run_trial(
            n,
            lambda: train(
                spec, prepared=prepared, out=run_dir, log=lambda m: self.log(f"[trial {n}] {m}"),
                on_epoch=on_epoch,
            ),
        )  # fmt: skip
        trial.set_user_attr("epochs", len(result.history))
        if pruned:
            self.log(f"trial {n}: {pruned[0]}")
            raise optuna.TrialPruned(pruned[0])
        values = [self._value(o.metric, spec, result, prepared, run_dir) for o in self.objectives]
        shown = ", ".join(
            f"{o.metric} {v:.4g}" for o, v in zip(self.objectives, values, strict=True)
        )
        self.log(f"trial {n} finished: {shown} ({len(result.history)} epochs)")
        return values[0] if len(values) == 1 else values

    @property
    def objectives(self) -> list[Any]:
        return self.loaded.search.objectives

    def _prepared(self, spec: Any) -> Any:
        from pipeline.data.prepare import data_key, prepare

        key = data_key(spec)
        if key not in self.prepared:
            self.prepared[key] = prepare(spec)
        return self.prepared[key]

    def _value(self, metric: str, spec: Any, result: Any, prepared: Any, run_dir: Path) -> float:
        """The objective ``metric`` of a finished training: its history at the monitored
        (best) epoch, the parameter count, or the test metric (evaluating the trial once)."""
        if metric == "params":
            return float(sum(p.numel() for p in result.model.parameters() if p.requires_grad))
        history = result.history
        row = history[result.best_epoch - 1] if result.best_epoch else history[-1]
        if metric in row:
            return float(row[metric])
        if not hasattr(self, "_tested") or self._tested[0] != run_dir:
            from pipeline.evaluate import evaluate

            metrics = evaluate(spec, out=run_dir, prepared=prepared, log=lambda m: None)
            self._tested = (run_dir, metrics)
        metrics = self._tested[1]
        if metric not in metrics:
            known = sorted(k for k in {*row, *metrics} if "/" not in k)
            raise PipelineError(f"the trial records no metric {metric!r}; it records: {known}")
        return float(metrics[metric])


def _message(err: BaseException) -> str:
    format_ = getattr(err, "format", None)
    if callable(format_):
        with contextlib.suppress(Exception):
            return str(format_(source=False))
    return str(err)


# ---- the coordinator ---------------------------------------------------------------------


def _set_pdeathsig() -> None:
    """In a worker: SIGTERM when the coordinator dies, so no worker outlives its search."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    proc.end_with_parent()


def worker_command(loaded: LoadedSearch, *, trials: int | None, deadline: float | None,
                   index: int) -> list[str]:  # fmt: skip
    cmd = [sys.executable, "-m", "pipeline", "search", str(loaded.file), "--worker", str(index)]
    if trials is not None:
        cmd += ["--trials", str(trials)]
    if deadline is not None:
        cmd += ["--deadline", repr(deadline)]
    return cmd


@contextlib.contextmanager
def _forwarding(children: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """SIGTERM to the coordinator reaches every worker (Ctrl-C reaches them as it reaches us:
    the terminal signals the whole process group)."""

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_workers(loaded: LoadedSearch, n: int, trials: int | None, deadline: float | None,
                 log: Log) -> None:  # fmt: skip
    threads = max(1, proc.cores() // n)
    env = {**os.environ, THREADS_ENV: str(threads), "OMP_NUM_THREADS": str(threads)}
    log(f"{loaded.name}: {n} workers, {threads} thread(s) each")
    children: list[subprocess.Popen[bytes]] = []
    try:
        with _forwarding(children):
            for i in range(n):
                children.append(
                    subprocess.Popen(
                        worker_command(loaded, trials=trials, deadline=deadline, index=i),
                        env=env,
                        preexec_fn=_set_pdeathsig,
                    )
                )
            codes = [child.wait() for child in children]
    except KeyboardInterrupt:
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=60)
        raise
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    if failed:
        if all(c in (130, 143, -2, -15) for _, c in failed):
            raise Interrupted(signal.SIGTERM if 143 in dict(failed).values() else signal.SIGINT)
        raise SearchError(
            f"{loaded.name}: worker(s) " + ", ".join(f"{i} (exit {c})" for i, c in failed)
            + " failed; their messages are above; the study keeps every finished trial: "
            f"run `pipeline search {loaded.file}` again to go on"
        )  # fmt: skip


def tally(study: optuna.Study) -> dict[str, int]:
    """Trials by state (a retried trial under ``retried``)."""
    trials = study.get_trials(deepcopy=False)
    again = retried(trials)
    out: dict[str, int] = {}
    for t in trials:
        key = "retried" if t.number in again else t.state.name.lower()
        out[key] = out.get(key, 0) + 1
    return out


def run_search(
    loaded: LoadedSearch,
    *,
    trials: int | None = None,
    parallel: int | None = None,
    timeout: float | None = None,
    log: Log = print,
    run_trial: RunTrial | None = None,
    launch_workers: LaunchWorkers | None = None,
) -> dict[str, Any]:
    """Run (or continue) the search until its budget: ``trials`` in all, no new trial after
    ``timeout`` seconds, ``parallel`` at once (each default: the search file's budget). Then
    write its report (trials.csv, best.yaml, plots) and record its trials as DVC experiments.
    Returns a summary: the study, trials by state, the best, the files written.
    ``run_trial`` and ``launch_workers`` are how a Prefect flow runs trials and workers."""
    b = loaded.search.budget
    trials = trials if trials is not None else b.trials
    if loaded.search.sampler.type == "grid" and loaded.grid_size:  # each combination once
        trials = min(trials or loaded.grid_size, loaded.grid_size)
    parallel = parallel or b.parallel
    timeout = timeout if timeout is not None else b.timeout
    deadline = time.time() + timeout if timeout else None
    with runlock.hold(loaded.folder):
        study = open_study(loaded)
        recover(study, log)
        done = tally(study)
        if done:
            log(f"{loaded.name}: continuing the study in {loaded.storage}: {_counts(done)}")
        _prepare_base(loaded, log)
        plot_server.warm()  # the report's drawing imports, made while the trials train
        interrupted: Interrupted | None = None
        try:
            if launch_workers is not None:
                launch_workers(parallel, trials, deadline)
            elif parallel == 1:
                Worker(
                    loaded, trials=trials, deadline=deadline, log=log, run_trial=run_trial,
                    study=study,
                ).run()  # fmt: skip
            else:
                _run_workers(loaded, parallel, trials, deadline, log)
        except KeyboardInterrupt as stop:  # Ctrl-C (a plain KeyboardInterrupt) or SIGTERM
            interrupted = stop if isinstance(stop, Interrupted) else Interrupted(signal.SIGINT)
        files = finish(loaded, study, log)
        counts = tally(study)
        if interrupted is not None:
            interrupted.kept = (
                f"the study in {loaded.storage} keeps {_counts(counts)}; an interrupted trial is "
                "run again when the search goes on"
            )
            interrupted.resumable = False  # the search goes on by running it again
            raise interrupted from None
        return {
            "study": loaded.name,
            "storage": loaded.storage,
            "trials": counts,
            "best": best(loaded, study),
            "files": files,
        }


def best(loaded: LoadedSearch, study: optuna.Study) -> list[dict[str, Any]]:
    """The best trial (several objectives: the Pareto front): number, values, spec values."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    front = study.best_trials if len(study.directions) > 1 else [study.best_trial]
    return [
        {
            "number": t.number,
            "values": dict(
                zip((o.metric for o in loaded.search.objectives), t.values, strict=True)
            ),
            "params": space.from_params(loaded.search, t.params),
        }
        for t in front
    ]


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def _prepare_base(loaded: LoadedSearch, log: Log) -> None:
    """Prepare the base spec's data once, before workers start (they find it prepared)."""
    from pipeline.data.prepare import prepare

    prepare(loaded.base, progress=log)


def finish(loaded: LoadedSearch, study: optuna.Study, log: Log) -> dict[str, str]:
    """Write the report of the study as it stands and record its trials in DVC."""

    from pipeline.search.report import write_report

    files = {k: str(v) for k, v in write_report(study, loaded).items()}
    record = _record_experiments(loaded, study, log)
    if record:
        files["dvc_experiments"] = ", ".join(record)
    return files


def _record_experiments(loaded: LoadedSearch, study: optuna.Study, log: Log) -> list[str]:
    """Each finished (complete or pruned) trial not yet recorded, as a DVC experiment named
    ``<search>-<number>``; nothing outside a DVC repository or with ``dvc: false``."""
    if loaded.search.dvc is False:
        return []
    try:
        from pipeline.search import experiments
    except ImportError:  # pragma: no cover - experiments is optional while it lands
        return []
    repo = experiments.in_dvc_repo(loaded.file.parent)
    if repo is None:
        if loaded.search.dvc:
            log(f"{loaded.name}: dvc: true, but {loaded.file} is in no DVC repository")
        return []
    from optuna.trial import TrialState

    have = experiments.recorded(repo)
    made: list[str] = []
    refused: dict[str, list[int]] = {}  # each reason once, with the trials it refused
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        name = f"{loaded.name}-{t.number:04d}"
        run_dir = Path(t.user_attrs.get("run_dir", ""))
        if name in have or not run_dir.is_dir():
            continue
        try:
            experiments.record_trial(
                repo,
                base_file=loaded.base_file,
                overrides=list(t.user_attrs.get("overrides", [])),
                trial_run=run_dir,
                exp_name=name,
                message=f"search {loaded.name}, trial {t.number} ({t.state.name.lower()})",
            )
        except PipelineError as err:
            refused.setdefault(str(err), []).append(t.number)
            continue
        made.append(name)
    for why, numbers in refused.items():
        which = ", ".join(map(str, numbers))
        log(f"{loaded.name}: trial(s) {which} not recorded as DVC experiments: {why}")
    if made:
        log(f"{loaded.name}: recorded {len(made)} DVC experiment(s): dvc exp show lists them")
    return made
