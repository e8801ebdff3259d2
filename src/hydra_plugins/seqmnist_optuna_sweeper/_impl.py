"""The implementation of seqmnist's Optuna sweeper (:mod:`.sweeper` is the thin plugin class
Hydra finds; it imports this module, and Optuna, only when a search starts): pruning,
persistent storage, many workers.

``python -m seqmnist.train hparams_search=optuna hydra.sweeper.n_trials=20`` asks the study
for trials, launches each as a job through the configured launcher (basic, joblib, submitit,
SLURM) and tells the study how each ended: complete (its ``optimized_metric``), pruned (the job's
pruning callback stopped it) or failed. Jobs report to their trial through the storage, so
the pruner works whatever process or machine runs them.

The study lives in its storage (default: ``sqlite:///<sweep dir>/optuna.db``). Running the
same command again against the same storage and study name continues it: finished trials
stay, trials whose sweep died are marked failed once their heartbeat is stale, and the study
ends when it holds ``n_trials`` finished (complete or pruned) trials. Several sweeps started
with the same storage and study name share the study and together run ``n_trials`` trials.

Under a launcher that runs jobs in processes of their own (joblib, submitit, SLURM) the
sweeper keeps ``n_jobs`` trials in flight: each is launched alone, from a thread of its own,
and the moment one ends (or is pruned) the next is asked for and started. Hydra's launcher
interface runs a batch until its slowest job ends, which would leave a pruned trial's slot
idle. The basic launcher runs jobs in this process, one after the other: batches as before.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import OverrideParseException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from seqmnist.core.compat import optimized_metric
from seqmnist.core.errors import ConfigError, SeqMNISTError
from seqmnist.core.internals import joblib_worker_env, optuna_trial_id
from seqmnist.core.rundir import RunDir
from seqmnist.jobs.search import (
    HEARTBEAT_ATTR,
    PASSWORD_ENV,
    REQUEUED_ATTR,
    STUDY_PRUNER_ATTR,
    make_pruner,
    make_sampler,
    open_storage,
    record_heartbeat,
    shown,
    still_queued,
    without_password,
)

log = logging.getLogger("seqmnist.optuna")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
NOT_RUN = "seqmnist:not_run"  # a trial asked for but closed unrun (study full, or a repeat)
TRIAL_KEY = "optuna_trial"  # the job config's node naming its study and trial
_ABSENT = object()
EXHAUSTED = object()  # _ask's answer when the space has nothing new to offer


# -- the search space ----------------------------------------------------------------------
def distribution(override: Override) -> BaseDistribution | None:
    """The Optuna distribution of a sweep override; None for a fixed value."""
    if not override.is_sweep_override():
        return None
    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, RangeSweep):
        # range(a, b, step) excludes b, as Python's range and Hydra's do: the highest value
        # is the last one Hydra's range gives (b - step would drop it when step does not
        # divide b - a, since Optuna rounds its high down onto the step grid).
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{key}: {override.input_line!r} is an empty range")
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(
                float(values[0]), round(float(values[-1]), 12), step=float(value.step)
            )
        return IntDistribution(int(values[0]), int(values[-1]), step=int(value.step))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ConfigError(f"{key}: {override.input_line!r} is not a sweep the Optuna sweeper takes")


def parse_search_space(
    lines: Sequence[str], config: DictConfig | None = None
) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """``key=choice(...)`` lines -> (distributions, fixed ``key=value`` overrides).

    Hydra's grammar makes every ``interval`` a float one; on a key whose value in ``config``
    is an integer (``hidden``, ``layers``) an interval of whole numbers is searched as
    integers, and one with a fraction is refused.
    """
    parser = OverridesParser.create()
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for line in lines:
        try:
            (override,) = parser.parse_overrides([line])
        except OverrideParseException as e:
            first = " ".join(str(e).split())[:200]
            raise ConfigError(
                f"hydra.sweeper.params: {line!r} is not a search-space expression ({first}). "
                "Fix: choice(a, b), interval(low, high), tag(log, interval(low, high)) or "
                "range(start, stop, step)."
            ) from None
        try:
            dist = distribution(override)
        except ValueError as e:  # Optuna refuses the bounds (low > high, log of 0, ...)
            raise ConfigError(f"hydra.sweeper.params: {line!r}: {e}") from None
        key = override.get_key_element()
        if dist is None:
            fixed[key] = override.get_value_element_as_str()
        else:
            space[key] = integer_if_the_key_is(key, dist, line, config)
    return space, fixed


def integer_if_the_key_is(
    key: str, dist: BaseDistribution, line: str, config: DictConfig | None
) -> BaseDistribution:
    if not isinstance(dist, FloatDistribution) or config is None:
        return dist
    current = OmegaConf.select(config, key.lstrip("+~"), default=None)
    if not isinstance(current, int) or isinstance(current, bool):
        return dist
    if not (float(dist.low).is_integer() and float(dist.high).is_integer()):
        raise ConfigError(
            f"hydra.sweeper.params: {line!r}: {key} is an integer ({current}), so its bounds "
            "must be whole numbers. Fix: e.g. interval(32, 256) or choice(32, 64, 128)."
        )
    step = dist.step
    if step is not None and not float(step).is_integer():
        raise ConfigError(f"hydra.sweeper.params: {line!r}: {key} is an integer; step {step}")
    return IntDistribution(
        int(dist.low), int(dist.high), log=dist.log, step=int(step) if step is not None else 1
    )


def check_keys(keys: Sequence[str], config: DictConfig, groups: dict[str, list[str]]) -> None:
    """Every searched key must be a config key or a config group (with known options)."""
    for key in keys:
        bare = key.lstrip("+~")
        if key.startswith("+") or bare in groups:
            continue
        if OmegaConf.select(config, bare, default=_ABSENT) is _ABSENT:
            raise ConfigError(
                f"hydra.sweeper.params.{bare}: no such key in the config, and no config group "
                "of that name. Fix: search keys that exist (python -m seqmnist.train --cfg job "
                "lists them; groups such as cell, optimizer, scheduler, data work too)."
            )


def check_choices(space: dict[str, BaseDistribution], groups: dict[str, list[str]]) -> None:
    for key, dist in space.items():
        if key in groups and isinstance(dist, CategoricalDistribution):
            unknown = [c for c in dist.choices if str(c) not in groups[key]]
            if unknown:
                raise ConfigError(
                    f"hydra.sweeper.params.{key}: {unknown} are not options of the {key} "
                    f"group; options: {groups[key]}."
                )


def override_value(value: Any) -> str:
    """A sampled value as a command-line override value."""
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return "null"
    return str(value)


# -- heartbeats of the trials this sweep runs ---------------------------------------------
class Heartbeats:
    """Records a heartbeat for each running trial of this sweep every ``interval`` seconds,
    so a trial whose sweep was killed can be told from one still running elsewhere.

    The beat is a trial system attribute, so :meth:`fail_stale` works the same on every
    storage; database storages also get Optuna's own heartbeat (``record_heartbeat``), which
    ``optuna.storages.fail_stale_trials`` and the dashboard read.
    """

    ATTR = HEARTBEAT_ATTR

    def __init__(self, storage: Any, interval: int, grace_period: int) -> None:
        self.storage = storage
        self.interval = interval
        self.grace_period = grace_period
        self.native = isinstance(storage, optuna.storages.RDBStorage) and interval > 0
        self.enabled = interval > 0
        self.trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> Heartbeats:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _record(self, trial_id: int) -> None:
        record_heartbeat(self.storage, trial_id)

    def add(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.add(trial_id)
        if self.enabled:
            self._record(trial_id)

    def remove(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.discard(trial_id)

    def fail_stale(self, study: optuna.Study) -> None:
        """Mark failed the running trials whose heartbeat is older than the grace period.

        Judged by the beat every storage keeps (a system attribute, written with Optuna's own
        heartbeat by :func:`record_heartbeat`), not by Optuna's ``fail_stale_trials``, so that
        a trial whose run requeued its SLURM job (it waits in the queue, beating no more:
        at least SLURM's cred_expire, 120 s by default) is kept while SLURM still holds the
        job. A trial with no beat at all, killed between its ask and its first beat, counts
        its start time as its last beat."""
        if not self.enabled:
            return
        now = time.time()
        stale = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            beat = t.system_attrs.get(self.ATTR)
            if beat is None and t.datetime_start is not None:
                beat = t.datetime_start.timestamp()
            if beat is not None and now - float(beat) > self.grace_period:
                stale.append(t)
        requeued = {
            t.number: str(t.system_attrs[REQUEUED_ATTR])
            for t in stale
            if t.system_attrs.get(REQUEUED_ATTR)
        }
        queued = still_queued(sorted(set(requeued.values()))) if requeued else set()
        for t in stale:
            job = requeued.get(t.number)
            if job is not None and (queued is None or job in queued):
                # SLURM still holds its job (or cannot say): it is waiting, not lost.
                with contextlib.suppress(Exception):
                    record_heartbeat(self.storage, optuna_trial_id(t))
                continue
            with contextlib.suppress(RuntimeError, ValueError):  # it finished meanwhile
                study.tell(t.number, state=TrialState.FAIL)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                try:
                    self._record(trial_id)
                except Exception:  # a finished trial, a passing database error: try later
                    log.debug("heartbeat of trial %s not recorded", trial_id, exc_info=True)


# -- the sweeper ----------------------------------------------------------------------------
class OptunaSweeperImpl(Sweeper):
    """See the module docstring; settings in :class:`.config.OptunaSweeperConf`."""

    def __init__(
        self,
        sampler: Any,
        seed: Any,
        pruner: Any,
        direction: str,
        storage: Any,
        study_name: str,
        n_trials: int,
        n_jobs: int,
        heartbeat_interval: int,
        grace_period: int,
        params: DictConfig | None,
        max_failures: int = 5,
    ) -> None:
        self.sampler_spec = _plain(sampler)
        self.seed = seed
        self.pruner_spec = _plain(pruner)
        self.direction = direction
        self.storage_url = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self.max_failures = max_failures
        self.config: DictConfig | None = None
        # Why the search ends before n_trials finished trials (None: it has not).
        self.ended: str | None = None
        self.failures: list[str] = []  # the errors of this sweep's failed jobs
        # Trials of this sweep left running after their batch's launcher raised (number ->
        # the launcher's error): their jobs may still run, and take a slot each until they end.
        self.orphans: dict[int, str] = {}
        # Orphans that ended failed (number -> why), among the failures above.
        self.lost: dict[int, str] = {}
        self.only_repeats = False  # the sampler offered 20 repeats in a row
        self.joblib_alone: JoblibAlone | None = None  # set up with hydra/launcher=joblib

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.metric = optimized_metric({"optimized_metric": config.get("optimized_metric")})
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.joblib_alone = (
            JoblibAlone(self.launcher) if type(self.launcher).__name__ == "JoblibLauncher" else None
        )
        self.sweep_dir = Path(config.hydra.sweep.dir).expanduser().resolve()

    # -- checks, before any trial runs -------------------------------------------------
    def _groups(self, keys: Sequence[str]) -> dict[str, list[str]]:
        """The options of each key that is a config group (``cell``, ``optimizer``, ...)."""
        loader = self.hydra_context.config_loader
        found = {}
        for key in keys:
            options = loader.get_group_options(key.lstrip("+~"))
            if options:
                found[key.lstrip("+~")] = [str(o) for o in options]
        return found

    def plan(self, arguments: Sequence[str]) -> dict[str, Any]:
        """Check every setting and open the storage; raises :class:`ConfigError`."""
        assert self.config is not None
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ConfigError(f"hydra.sweeper.n_trials={self.n_trials!r} must be an integer >= 1")
        if not isinstance(self.n_jobs, int) or self.n_jobs < 1:
            raise ConfigError(f"hydra.sweeper.n_jobs={self.n_jobs!r} must be an integer >= 1")
        if not isinstance(self.heartbeat_interval, int) or self.heartbeat_interval < 1:
            raise ConfigError(
                f"hydra.sweeper.heartbeat_interval={self.heartbeat_interval!r} must be an "
                "integer >= 1 (seconds): heartbeats are how a continued search tells a trial "
                "whose sweep died from one still running."
            )
        if not isinstance(self.grace_period, int) or self.grace_period <= self.heartbeat_interval:
            raise ConfigError(
                f"hydra.sweeper.grace_period={self.grace_period!r} must be an integer larger "
                f"than hydra.sweeper.heartbeat_interval={self.heartbeat_interval} (seconds)."
            )
        if not isinstance(self.max_failures, int) or self.max_failures < 1:
            raise ConfigError(
                f"hydra.sweeper.max_failures={self.max_failures!r} must be an integer >= 1."
            )
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(
                f"hydra.sweeper.direction={self.direction!r} must be maximize or minimize"
            )
        lines = [f"{k}={v}" for k, v in self.params.items()]
        # Command-line sweeps (layers=choice(1,2)) join the configured space and win over it.
        lines = [
            ln for ln in lines if ln.split("=", 1)[0] not in {a.split("=", 1)[0] for a in arguments}
        ] + list(arguments)
        space, fixed = parse_search_space(lines, self.config)
        if not space:
            raise ConfigError(
                "hydra.sweeper.params is empty: nothing to search. Fix: give keys to search, "
                "e.g. hydra.sweeper.params.layers='choice(1,2,3)' (see conf/hparams_search/)."
            )
        # The searched keys must exist; the command line's fixed overrides were checked by
        # Hydra when it composed this config, and go to every job as they are.
        searched = list(space) + [k for k in fixed if k in self.params]
        groups = self._groups(searched)
        check_keys(searched, self.config, groups)
        check_choices(space, groups)
        sampler = make_sampler(self.sampler_spec, self.seed)
        make_pruner(self.pruner_spec)
        url = self.storage_url or self.default_storage()
        self.check_no_written_password()
        if url.startswith("sqlite") and self.on_slurm():
            raise ConfigError(
                f"hydra.sweeper.storage={url}: SQLite's file locks are unreliable on the "
                "network file systems a SLURM cluster shares (NFS, Lustre), and its trials run "
                "on other nodes. Fix: a journal file on the shared file system "
                "(hydra.sweeper.storage=journal:///<shared dir>/study.log; the default with "
                "hydra/launcher=slurm) or a database server (postgresql://...)."
            )
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(
                parents=True, exist_ok=True
            )
        storage = open_storage(str(url), self.heartbeat_interval, self.grace_period)
        try:
            existing = optuna.load_study(study_name=self.study_name, storage=storage)
        except KeyError:  # no such study yet
            existing = None
        if existing is not None and existing.direction.name.lower() != self.direction:
            raise ConfigError(
                f"study {self.study_name!r} in {shown(str(url))} already exists and "
                f"{existing.direction.name.lower()}s; hydra.sweeper.direction={self.direction} "
                "would mix the two. Fix: another hydra.sweeper.study_name, or the same direction."
            )
        # The jobs get the URL less its password, and the password in their environment.
        job_url, secret = without_password(str(url))
        if secret is not None:
            os.environ[PASSWORD_ENV] = secret
        return {
            "space": space,
            "fixed": fixed,
            "sampler": sampler,
            "storage": storage,
            "url": job_url,
            "shown": shown(str(url)),
            "exists": existing is not None,
        }

    def check_no_written_password(self) -> None:
        """A password typed into hydra.sweeper.storage would be written, as typed, into every
        job's .hydra/ files (Hydra keeps the command line there): refused, with the ways
        that keep it out (an interpolation is kept unresolved there, and never resolved into
        what the jobs are given)."""
        sweeper = OmegaConf.select(self.config, "hydra.sweeper")
        raw = OmegaConf.to_container(sweeper, resolve=False).get("storage") if sweeper else None
        if not isinstance(raw, str) or "${" in raw or without_password(raw)[1] is None:
            return
        raise ConfigError(
            f"hydra.sweeper.storage={shown(raw)} holds a password, which Hydra would write "
            "into every job's .hydra/ files. Fix: leave it out of the URL and give it through "
            "the environment: PGPASSWORD or ~/.pgpass (PostgreSQL's own), or "
            "'postgresql://USER:${oc.env:MY_DB_PASSWORD}@HOST/DB' (kept as written)."
        )

    def on_slurm(self) -> bool:
        """Whether the trials are SLURM jobs (hydra/launcher=slurm)."""
        target = str(OmegaConf.select(self.config, "hydra.launcher._target_", default="") or "")
        return target.endswith("SlurmLauncher")

    def default_storage(self) -> str:
        """SQLite in the sweep dir; a journal file there when the trials are SLURM jobs."""
        if self.on_slurm():
            return f"journal://{self.sweep_dir / 'optuna.log'}"
        return f"sqlite:///{self.sweep_dir / 'optuna.db'}"

    # -- the study loop -------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> None:
        self.started = time.monotonic()
        try:
            plan = self.plan(arguments)
        except SeqMNISTError as e:
            log.error(str(e))
            sys.exit(e.EXIT_CODE)
        # Creating the study is the storage's one atomic step: of several sweeps started at
        # once, one creates it and keeps the seeded stream; every other one (and a sweep
        # continuing the study) draws anew, so they do not all propose the same settings.
        try:
            study = optuna.create_study(
                study_name=self.study_name,
                storage=plan["storage"],
                sampler=plan["sampler"],
                direction=self.direction,
            )
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(
                study_name=self.study_name, storage=plan["storage"], sampler=plan["sampler"]
            )
            created = False
            study.sampler.reseed_rng()
        study.set_user_attr(STUDY_PRUNER_ATTR, self.pruner_spec)
        log.info(
            f"Optuna study {self.study_name!r} in {plan['shown']} "
            f"({'new' if created else 'continued'}): {self.n_trials} finished trials "
            f"wanted, {self.n_jobs} at a time; sampler {type(study.sampler).__name__}, "
            f"pruner {self.pruner_spec}"
        )
        with Heartbeats(plan["storage"], self.heartbeat_interval, self.grace_period) as beats:
            self._loop(study, plan, beats, apart=self.runs_apart())
        self._write_results(study)
        if self.ended is not None:
            # Failed trials make the sweep's report (SweepSummary, after this returns) exit 1.
            failed = self.failed_out()
            (log.error if failed else log.warning)(f"the search ended early: {self.ended}")

    def runs_apart(self) -> bool:
        """Whether the launcher runs each job in a process of its own (every launcher but
        Hydra's basic one), so that jobs can be launched one at a time from threads."""
        return type(self.launcher).__name__ != "BasicLauncher" and self.n_jobs > 1

    def _loop(
        self,
        study: optuna.Study,
        plan: dict[str, Any],
        beats: Heartbeats,
        apart: bool,
    ) -> None:
        """Ask, launch and tell until the study holds ``n_trials`` finished trials (or the
        search ends early). ``apart``: each trial's job is launched alone, from a thread of
        its own, and a freed slot is filled at once; otherwise ``n_jobs`` trials are launched
        as one batch."""
        in_flight: dict[concurrent.futures.Future, Any] = {}
        pause = min(5.0, max(1.0, self.heartbeat_interval / 2))
        while True:
            for future in [f for f in in_flight if f.done()]:
                self._collect(study, [in_flight.pop(future)], future, beats)
            beats.fail_stale(study)
            trials = study.get_trials(deepcopy=False)
            self._settle_orphans(trials)
            finished = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if self.ended is None and self.failed_out():
                self.ended = (
                    f"{len(self.failures)} trials failed (hydra.sweeper.max_failures="
                    f"{self.max_failures}); the first: {self.failures[0]}"
                )
            if (finished >= self.n_trials or self.ended is not None) and not in_flight:
                break
            free = self.n_trials - finished - running
            slots = min(self.n_jobs - len(self.orphans) - len(in_flight), free)
            if self.ended is None and slots > 0:
                asked = [self._ask(study, plan["space"]) for _ in range(slots)]
                batch = [t for t in asked if t not in (None, EXHAUSTED)]
                if EXHAUSTED in asked:
                    self.ended = self._exhausted_message(study, plan["space"])
                if batch and not apart:
                    self._run(study, batch, plan, beats)
                    continue
                for trial in batch:
                    beats.add(optuna_trial_id(trial))
                    job = [self._overrides(trial, plan)]
                    in_flight[in_thread(self._launch, job, trial.number)] = trial
                if batch:
                    continue
            if in_flight:  # until a job ends: its slot is then filled at once
                concurrent.futures.wait(
                    in_flight, timeout=pause, return_when=concurrent.futures.FIRST_COMPLETED
                )
            elif slots <= 0 or self.ended is None:
                # The rest runs in other sweeps, or in this one's orphans.
                time.sleep(pause)

    def _launch(self, job: list[list[str]], number: int) -> Sequence[JobReturn]:
        """One launch through the configured launcher (from a worker thread)."""
        launcher: Launcher = self.launcher
        if self.joblib_alone is not None and self.runs_apart():
            return self.joblib_alone.launch(job, initial_job_idx=number)
        return launcher.launch(job, initial_job_idx=number)

    def _ask(self, study: optuna.Study, space: dict[str, BaseDistribution]) -> Any:
        """A new trial with its parameters; None when the study is already full; EXHAUSTED
        when every setting of a finite space has run, or the sampler offers only repeats."""
        size = space_size(space)
        if size is not None:
            trials = study.get_trials(deepcopy=False)
            tried = {
                _key(t.params)
                for t in trials
                if t.state != TrialState.FAIL and in_space(t.params, space)
            }
            if len(tried) >= size:
                return EXHAUSTED
        for _ in range(20):
            trial = study.ask(space)
            earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
            counted = [t for t in earlier if t.state != TrialState.FAIL]
            if len(counted) >= self.n_trials:  # other sweeps took the last places
                self._tell_state(study, trial, TrialState.FAIL)
                study.set_user_attr(f"{NOT_RUN}:{trial.number}", "study full")
                return None
            if not any(t.params == trial.params for t in counted):
                return trial
            # The same parameters again (a small space, or a sampler's repeat): not run twice.
            self._tell_state(study, trial, TrialState.FAIL)
            study.set_user_attr(f"{NOT_RUN}:{trial.number}", "repeat of an earlier trial")
        self.only_repeats = True
        return EXHAUSTED  # only repeats: what is left of the space, the sampler will not give

    def _overrides(self, trial: Any, plan: dict[str, Any]) -> list[str]:
        params = {k: override_value(v) for k, v in trial.params.items()}
        return [
            *(f"{k}={v}" for k, v in plan["fixed"].items()),
            *(f"{k}={v}" for k, v in params.items()),
            f"{TRIAL_KEY}.storage='{plan['url']}'",
            f"{TRIAL_KEY}.study_name='{self.study_name}'",
            f"{TRIAL_KEY}.trial_id={optuna_trial_id(trial)}",
            f"{TRIAL_KEY}.number={trial.number}",
            f"{TRIAL_KEY}.heartbeat_interval={self.heartbeat_interval}",
            # Each job's directory is its trial's number, whatever numbers the batch holds
            # (several sweeps on one study take numbers in turn).
            f"hydra.sweep.subdir={trial.number}",
        ]

    def _run(self, study: optuna.Study, batch: list[Any], plan: dict, beats: Heartbeats) -> None:
        """Launch ``batch`` as one set of jobs and tell the study how each ended."""
        for trial in batch:
            beats.add(optuna_trial_id(trial))
        launched: concurrent.futures.Future = concurrent.futures.Future()
        try:
            job = [self._overrides(t, plan) for t in batch]
            launched.set_result(self._launch(job, batch[0].number))
        except Exception as e:
            launched.set_exception(e)
        self._collect(study, batch, launched, beats)

    def _collect(
        self,
        study: optuna.Study,
        batch: list[Any],
        launched: concurrent.futures.Future,
        beats: Heartbeats,
    ) -> None:
        """Tell the study how each job of a launch ended."""
        try:
            try:
                returns = launched.result()
            except Exception as e:
                # A job that ended without a result (killed by OOM, a node failure, a
                # preemption, a stop slower than its signal delay) makes the launcher raise
                # for the whole batch (submitit's UncompletedJobError): each trial is told
                # from what its own job wrote; a job that wrote no result is that trial's
                # failure, and the search goes on.
                lost = " ".join(f"{type(e).__name__}: {e}".split())[:300]
                log.warning(f"a job of this batch ended without a result ({lost})")
                for trial in batch:
                    self._tell_after_loss(study, trial, lost)
                return
            for trial, ret in zip(batch, returns, strict=True):
                self._tell(study, trial, ret)
        finally:
            for trial in batch:
                beats.remove(optuna_trial_id(trial))

    def _tell_after_loss(self, study: optuna.Study, trial: Any, lost: str) -> None:
        """After the launcher raised for a batch: a trial whose job wrote its end is told; one
        whose job may still run (the launcher raises at the first lost job, before the others
        end) is left running, kept alive by its job's own heartbeat: its job tells its result,
        or, lost itself, it goes stale and the stale check fails it."""
        try:
            status = (RunDir(self.sweep_dir / str(trial.number)).read_metrics() or {}).get("status")
        except ValueError:
            status = None
        if status in ("completed", "pruned", "failed"):
            self._tell(study, trial, None, lost=lost)
        else:
            self.orphans[trial.number] = lost

    def _settle_orphans(self, trials: Sequence[Any]) -> None:
        """Let go of the orphans whose trials have ended. One that ended failed (its job lost
        and the stale check failed it, here or in another sweep) is this sweep's failure, as
        one told here would be: a launcher whose jobs all die ends the search at
        ``max_failures``, rather than having trials asked of it forever."""
        states = {t.number: t.state for t in trials}
        for number, lost in list(self.orphans.items()):
            state = states.get(number)
            if state == TrialState.RUNNING:
                continue
            del self.orphans[number]
            if state != TrialState.FAIL:  # its job told its result
                continue
            try:
                metrics = RunDir(self.sweep_dir / str(number)).read_metrics() or {}
            except ValueError:
                metrics = {}
            # A job that ran on and failed says why; a lost one wrote nothing of its end.
            error = metrics.get("error") if metrics.get("status") == "failed" else None
            error = str(error or f"its job was lost ({lost})")
            self.lost[number] = error
            self.failures.append(f"trial {number}: {error}")
            log.warning(f"trial {number} failed: {error}")

    def failed_out(self) -> bool:
        """Whether this sweep's failed trials end the search (``max_failures``)."""
        return len(self.failures) >= self.max_failures

    def _tell(self, study: optuna.Study, trial: Any, ret: JobReturn | None, lost: str = "") -> None:
        """Tell the study how the trial's job ended: its ``metrics.json`` says, else (an
        older job, a job lost before it wrote) its return value, else it failed."""
        if ret is not None and ret.hydra_cfg:
            job_dir: Path | None = Path(ret.hydra_cfg.hydra.runtime.output_dir)
        else:
            job_dir = self.sweep_dir / str(trial.number)
        try:
            metrics = RunDir(job_dir).read_metrics() if job_dir else None
        except ValueError:
            metrics = None
        status = (metrics or {}).get("status")
        if status == "pruned":
            self._tell_state(study, trial, TrialState.PRUNED)
            log.info(f"trial {trial.number} pruned after epoch {metrics.get('pruned_at_epoch')}")
            return
        metric = optimized_metric(metrics or {})
        value = (metrics or {}).get(metric)
        if value is None and ret is not None and ret.status == JobStatus.COMPLETED:
            value = ret.return_value
        if status == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
            self._tell_state(study, trial, TrialState.COMPLETE, float(value))
            log.info(f"trial {trial.number}: {metric} {value:.4f} {trial.params}")
            return
        if self._tell_state(study, trial, TrialState.FAIL) != TrialState.FAIL:
            # Its job told the study its result before the job failed (in its teardown, say):
            # the trial stays finished, and is not a failure of this search.
            return
        error = str(
            (metrics or {}).get("error") or (f"its job was lost ({lost})" if lost else status)
        )
        self.failures.append(f"trial {trial.number}: {error}")
        log.warning(f"trial {trial.number} failed: {error}")

    def _tell_state(
        self, study: optuna.Study, trial: Any, state: TrialState, value: float | None = None
    ) -> TrialState:
        """``study.tell``, where two things are not this sweep's failure: a trial another
        process has finished already (a stale-heartbeat check elsewhere) is left as it is, with
        a warning; and a sampler that asks the study to stop (Grid and BruteForce, when the
        grid is done: Optuna allows that only inside ``optimize``) ends the search. The trial
        is told all the same (Optuna stores the state before the sampler's hook fails).
        Returns the state the study holds for the trial now."""
        try:
            if state == TrialState.COMPLETE:
                return study.tell(trial, value).state
            return study.tell(trial, state=state).state
        except ValueError as e:
            if "Cannot tell a" not in str(e):
                raise
            # Its job told it (the job owns its trial), or a stale check elsewhere failed it.
            said = log.debug if f"Cannot tell a {state.name} " in str(e) else log.warning
            said(f"trial {trial.number} was finished elsewhere ({e}); left as it is")
            return next(
                t.state for t in study.get_trials(deepcopy=False) if t.number == trial.number
            )
        except RuntimeError as e:
            if "Study.stop" not in str(e):
                raise
            self.ended = self.ended or (
                f"the sampler ({type(study.sampler).__name__}) has tried every setting"
            )
            return state

    def _exhausted_message(self, study: optuna.Study, space: dict[str, BaseDistribution]) -> str:
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        still = f" and {running} still running" if running else ""
        of = f"{finished} finished trials{still} of hydra.sweeper.n_trials={self.n_trials}"
        if self.only_repeats:
            what = "the sampler proposed only settings that have run, 20 times in a row"
        else:
            what = f"the search space holds {space_size(space)} settings and all have run"
        return f"{what} ({of}). Fix, for more trials: widen hydra.sweeper.params."

    # -- results ----------------------------------------------------------------------------
    def _mark_dead_jobs(self, trials: Sequence[Any]) -> None:
        """A trial failed because its sweep died left its job's metrics.json saying running:
        say failed there too, so the report agrees with the study."""
        for t in trials:
            job = RunDir(self.sweep_dir / str(t.number))
            if t.number in self.lost and job.path.is_dir():
                # A job this sweep lost: its metrics.json says why (not "its sweep stopped").
                # When lost jobs ended the search, its report exits 1 and names them, as it
                # does for jobs that failed and said so; else the search went on without it.
                with contextlib.suppress(ValueError):
                    if (job.read_metrics() or {}).get("status") in (None, "running"):
                        if self.failed_out():
                            job.record_status(self.lost[t.number])
                        else:
                            job.record_status(self.lost[t.number], status="interrupted")
                continue
            if t.state != TrialState.FAIL or not job.metrics_file.is_file():
                continue
            try:
                status = (job.read_metrics() or {}).get("status")
            except ValueError:
                continue
            if status == "running":
                # Not "failed": the job did nothing wrong, and the search that continued it
                # should not exit non-zero for it.
                job.record_status(
                    "killed: its sweep stopped and the trial's heartbeat went stale; the study "
                    "marked the trial failed",
                    status="interrupted",
                )

    def _write_results(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        self._mark_dead_jobs(trials)
        not_run = {int(k.rsplit(":", 1)[1]) for k in study.user_attrs if k.startswith(NOT_RUN)}
        counts = {
            "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "failed": sum(t.state == TrialState.FAIL and t.number not in not_run for t in trials),
            "not_run": len(not_run),
            "running": sum(t.state == TrialState.RUNNING for t in trials),
        }
        wall = round(time.monotonic() - self.started, 1)
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": self.study_name,
            "direction": self.direction,
            "trials": counts,
            "pruner": self.pruner_spec,
            "wall_seconds": wall,
        }
        if counts["complete"]:
            best = study.best_trial
            results.update(
                best_params=dict(best.params), best_value=best.value, best_trial=best.number
            )
            log.info(f"best trial {best.number}: {self.metric} {best.value:.4f} {best.params}")
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")
        log.info(f"trials: {counts}; results in {self.sweep_dir / 'optimization_results.yaml'}")
        self._plots(study)

    def _plots(self, study: optuna.Study) -> None:
        if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            log.info("no complete trial yet: optuna_history.png and optuna_importances.png skipped")
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm

        figures = {
            "optuna_history.png": ovm.plot_optimization_history,
            "optuna_importances.png": ovm.plot_param_importances,
        }
        for name, draw in figures.items():
            try:
                ax = draw(study)
                ax.figure.set_size_inches(8, 5)
                ax.figure.tight_layout()
                ax.figure.savefig(self.sweep_dir / name, dpi=110)
                plt.close(ax.figure)
            except Exception as e:  # too few complete trials, a constant parameter, ...
                log.info(f"{name} not drawn: {' '.join(str(e).split())[:160]}")


class JoblibAlone:
    """Hydra's joblib launch (``hydra_plugins.hydra_joblib_launcher._core.launch``) for trials
    launched from threads of their own: each job in a loky executor of its own, at most
    ``hydra.launcher.n_jobs`` at once. Hydra's launch uses joblib's one reusable executor of
    the process, which every thread's launch would share: a worker that dies (the OOM killer,
    a segfault) breaks it, and every trial running in it fails with TerminatedWorkerError."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.settings: dict[str, Any] = dict(getattr(launcher, "joblib", {}))
        n_jobs = self.settings.get("n_jobs") or 1
        from joblib.externals.loky import cpu_count

        self.workers = max(cpu_count() + 1 + n_jobs, 1) if n_jobs < 0 else int(n_jobs)
        self.slots = threading.BoundedSemaphore(self.workers)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> list[JobReturn]:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import configure_log, filter_overrides, setup_globals
        from hydra_plugins.hydra_joblib_launcher._core import execute_job
        from joblib.externals.loky import ProcessPoolExecutor

        launcher: Any = self.launcher
        setup_globals()
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
        sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # The thread limits joblib gives its workers (OMP_NUM_THREADS, ... = CPUs / n_jobs).
        env = joblib_worker_env(self.workers)
        timeout = self.settings.get("timeout")
        returns = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            with self.slots:
                log.info(
                    f"joblib: job #{idx} in a process of its own ({self.workers} at a time), "
                    f"sweep output dir: {sweep_dir}"
                )
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                executor = ProcessPoolExecutor(max_workers=1, env=env)
                failed = True
                try:
                    future = executor.submit(
                        execute_job,
                        idx,
                        overrides,
                        launcher.hydra_context,
                        launcher.config,
                        launcher.task_function,
                        Singleton.get_state(),
                    )
                    returns.append(future.result(timeout=timeout))
                    failed = False
                finally:
                    # Its worker ends with it; one left by a failure (joblib's timeout) is killed.
                    executor.shutdown(wait=not failed, kill_workers=failed)
        return returns


def in_thread(fn: Any, *args: Any) -> concurrent.futures.Future:
    """``fn(*args)`` in a daemon thread: a sweep stopped by Ctrl+C does not wait for the jobs
    its launches wait on (SLURM jobs go on and tell their own trials)."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # handed to the sweep's thread, which tells the trial
            future.set_exception(e)

    threading.Thread(target=run, daemon=True).start()
    return future


def space_size(space: dict[str, BaseDistribution]) -> int | None:
    """How many settings a space holds; None when one of its keys is continuous."""
    size = 1
    for dist in space.values():
        if isinstance(dist, CategoricalDistribution):
            size *= len(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            size *= (dist.high - dist.low) // dist.step + 1
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            size *= int(round((dist.high - dist.low) / dist.step)) + 1
        else:
            return None
    return size


def in_space(params: dict[str, Any], space: dict[str, BaseDistribution]) -> bool:
    """Whether a trial's parameters are a setting of ``space`` (a continued study may hold
    trials of an earlier, wider space)."""
    if set(params) != set(space):
        return False
    for key, dist in space.items():
        value = params[key]
        if isinstance(dist, CategoricalDistribution):
            if value not in dist.choices:
                return False
        elif (
            not dist.low <= value <= dist.high
            or dist.step is not None
            and abs((value - dist.low) / dist.step % 1) > 1e-9
        ):
            return False
    return True


def _key(params: dict[str, Any]) -> str:
    return repr(sorted(params.items()))


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
