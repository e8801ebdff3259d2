"""seqmnist's Optuna sweeper: pruning, continuing a killed search, two workers on one study,
and every bad input as one message before any trial runs (tiny synthetic data)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.seqmnist_optuna_sweeper._impl import (
    OptunaSweeperImpl,
    check_choices,
    check_keys,
    parse_search_space,
    space_size,
)
from hydra_plugins.seqmnist_optuna_sweeper.sweeper import OptunaSweeper
from seqmnist.core.errors import ConfigError
from seqmnist.jobs.search import make_pruner, make_sampler, open_storage
from tests.helpers import FAST, ONE_THREAD, PROJECT_ROOT, compose_config, run_module, user_env

# A few steps a trial, two epochs, one thread: seconds per trial. The search space is the
# project's default (conf/hparams_search/optuna.yaml).
SEARCH = [
    *(o for o in FAST if not o.startswith("trainer.max_epochs")),
    "trainer.max_epochs=2",
    "hparams_search=optuna",
    "hydra.sweeper.heartbeat_interval=1",
    "hydra.sweeper.grace_period=2",
]


def sweeper_of(**settings) -> OptunaSweeperImpl:
    """The sweeper's implementation with small settings (``settings`` override them)."""
    defaults = dict(
        sampler="tpe",
        seed=1,
        pruner="none",
        direction="maximize",
        storage=None,
        study_name="s",
        n_trials=3,
        n_jobs=1,
        heartbeat_interval=1,
        grace_period=2,
        params={},
    )
    return OptunaSweeper(**{**defaults, **settings}).impl


def search(root: Path, sweep: Path, *args: str) -> list[str]:
    return ["seqmnist.train", f"data.root={root}", f"hydra.sweep.dir={sweep}", *SEARCH, *args]


def study_of(sweep: Path, url: str | None = None) -> optuna.Study:
    storage = open_storage(url or f"sqlite:///{sweep / 'optuna.db'}")
    return optuna.load_study(study_name="seqmnist", storage=storage)


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def distinct_params(trials: list[optuna.trial.FrozenTrial]) -> bool:
    seen = [json.dumps(t.params, sort_keys=True) for t in trials]
    return len(seen) == len(set(seen))


# -- in-process: the pieces -----------------------------------------------------------------
def test_the_old_plugin_is_gone_and_ours_is_found() -> None:
    assert importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None
    sweepers = {f"{p.__module__}.{p.__name__}" for p in Plugins.instance().discover(Sweeper)}
    assert "hydra_plugins.seqmnist_optuna_sweeper.sweeper.OptunaSweeper" in sweepers
    assert int(optuna.__version__.split(".")[0]) >= 4


@pytest.mark.e2e
def test_hydra_finds_the_plugin_without_importing_optuna() -> None:
    """Hydra imports every plugin module on every start of every command: ours imports its
    implementation, and Optuna, only when a search starts (a fresh interpreter, since this
    one has imported Optuna already)."""
    code = (
        "import sys\n"
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.sweeper import Sweeper\n"
        "found = [p.__name__ for p in Plugins.instance().discover(Sweeper)]\n"
        "assert 'OptunaSweeper' in found, found\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'optuna'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=user_env(),
        cwd=PROJECT_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_search_space_syntax_of_the_hydra_optuna_plugin() -> None:
    space, fixed = parse_search_space(
        [
            "cell=choice(rnn, lstm, gru)",
            "layers=range(1, 4)",
            "dropout=interval(0.0, 0.5)",
            "optimizer.lr=tag(log, interval(0.0003, 0.01))",
            "hidden=choice(64, 128)",
            "data.batch_size=64",
        ]
    )
    assert space["cell"] == CategoricalDistribution(["rnn", "lstm", "gru"])
    assert space["layers"] == IntDistribution(1, 3)
    assert space["dropout"] == FloatDistribution(0.0, 0.5)
    assert space["optimizer.lr"] == FloatDistribution(0.0003, 0.01, log=True)
    assert space["hidden"] == CategoricalDistribution([64, 128])
    assert fixed == {"data.batch_size": "64"}


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("layers=choice(1,", "not a search-space expression"),
        ("optimizer.lr=tag(log, interval(0, 0.1))", "optimizer.lr"),
        ("dropout=interval(0.5, 0.1)", "dropout"),
    ],
)
def test_a_malformed_expression_is_named(line: str, needle: str) -> None:
    with pytest.raises(ConfigError, match="hydra.sweeper.params") as err:
        parse_search_space([line])
    assert needle in str(err.value)


def test_integer_keys_search_integers_and_ranges_keep_their_last_value() -> None:
    """Issue 26, item 8: Hydra reads every interval as floats, so hidden=interval(32, 256)
    gave every trial a float hidden size; and a float range lost its last value."""
    space, _ = parse_search_space(
        ["hidden=interval(32, 256)", "dropout=range(0.0, 1.0, 0.3)", "layers=range(1, 6, 2)"],
        compose_config(),
    )
    assert space["hidden"] == IntDistribution(32, 256)
    assert space["dropout"] == FloatDistribution(0.0, 0.9, step=0.3)
    assert space["layers"] == IntDistribution(1, 5, step=2)
    assert space_size({"dropout": space["dropout"], "layers": space["layers"]}) == 4 * 3
    assert space_size(space) == 225 * 4 * 3
    assert space_size({"lr": FloatDistribution(1e-4, 1e-2)}) is None  # continuous
    with pytest.raises(ConfigError, match=r"hidden is an integer \(128\), so its bounds must"):
        parse_search_space(["hidden=interval(32.5, 256)"], compose_config())
    # A float key stays a float search.
    (lr,) = parse_search_space(["optimizer.lr=interval(1, 2)"], compose_config())[0].values()
    assert lr == FloatDistribution(1.0, 2.0)


def test_search_keys_must_exist() -> None:
    cfg = compose_config()
    groups = {"cell": ["gru", "lstm", "rnn"]}
    check_keys(["layers", "optimizer.lr", "cell", "+extra"], cfg, groups)
    with pytest.raises(ConfigError, match=r"hydra.sweeper.params.nlayers: no such key"):
        check_keys(["nlayers"], cfg, groups)
    with pytest.raises(ConfigError, match=r"\['transformer'\] are not options of the cell group"):
        check_choices({"cell": CategoricalDistribution(["lstm", "transformer"])}, groups)


@pytest.mark.parametrize(
    ("kind", "spec", "needle"),
    [
        ("sampler", "annealing", "hydra.sweeper.sampler='annealing' is not an Optuna sampler"),
        ("pruner", "patience", "hydra.sweeper.pruner='patience' is not an Optuna pruner"),
        ("pruner", {"name": "median", "n_startup": 3}, "hydra.sweeper.pruner="),
    ],
)
def test_unknown_sampler_or_pruner_is_named(kind: str, spec, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_sampler(spec, 1) if kind == "sampler" else make_pruner(spec)
    assert needle in str(err.value)


def test_the_cma_es_sampler_needs_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26, item 9: sampler=cmaes was advertised, its package not declared, and Optuna
    failed only when the first trial was sampled."""
    if importlib.util.find_spec("cmaes") is not None:  # the search extra (make test has it)
        sampler = make_sampler("cmaes", 3)
        assert type(sampler).__name__ == "CmaEsSampler"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "cmaes" else real(n, *a)
    )
    with pytest.raises(
        ConfigError, match=r"needs the cmaes package.*pip install -e '\.\[search\]'"
    ):
        make_sampler("cmaes", 3)


def test_a_search_of_slurm_jobs_keeps_its_study_in_a_journal_file(tmp_path: Path) -> None:
    """Issue 26, item 11: the default SQLite file would lie on the cluster's NFS/Lustre."""
    from omegaconf import OmegaConf

    sweeper = sweeper_of()
    sweeper.sweep_dir = tmp_path
    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    sweeper.config = OmegaConf.create({"hydra": {"launcher": {"_target_": slurm}}})
    assert sweeper.default_storage() == f"journal://{tmp_path / 'optuna.log'}"
    sweeper.config = OmegaConf.create({"hydra": {"launcher": {"_target_": "x.LocalLauncher"}}})
    assert sweeper.default_storage() == f"sqlite:///{tmp_path / 'optuna.db'}"


def test_a_storage_password_reaches_jobs_only_through_their_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26, item 10: the storage URL, password included, was written into every job's
    overrides, .hydra/ files, resolved_config.yaml and the launcher's log."""
    from omegaconf import OmegaConf

    from seqmnist.jobs.search import PASSWORD_ENV, shown, with_password, without_password

    url = "postgresql://me:s3cret@db.example:5432/search"
    assert without_password(url) == ("postgresql://me@db.example:5432/search", "s3cret")
    assert "s3cret" not in shown(url) and shown(url).startswith("postgresql://me:***@")
    assert without_password("sqlite:///x.db") == ("sqlite:///x.db", None)
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    assert with_password("postgresql://me@db.example:5432/search") == url
    assert with_password("postgresql://me:other@h/db") == "postgresql://me:other@h/db"

    sweeper = sweeper_of(storage=url)
    typed = {"hydra": {"sweeper": {"storage": url}, "launcher": {"_target_": "x.Local"}}}
    sweeper.config = OmegaConf.create(typed)
    with pytest.raises(ConfigError, match=r"holds a password, which Hydra would write") as err:
        sweeper.check_no_written_password()
    assert "s3cret" not in str(err.value)
    from_env = "postgresql://me:${oc.env:MY_DB_PASSWORD}@db.example:5432/search"
    sweeper.config = OmegaConf.create({"hydra": {"sweeper": {"storage": from_env}}})
    sweeper.check_no_written_password()  # kept as written: allowed
    study = optuna.create_study()
    plan = {"fixed": {}, "url": without_password(url)[0]}
    overrides = " ".join(sweeper._overrides(study.ask({"x": IntDistribution(1, 2)}), plan))
    assert "s3cret" not in overrides and "optuna_trial.storage='postgresql://me@db" in overrides


def test_a_batch_of_scattered_trial_numbers_is_launched_together(tmp_path: Path) -> None:
    """Issue 26, item 7: only consecutive trial numbers went out in one launch, so with
    several sweeps on one study (numbers taken in turn) n_jobs fell to 1. Each job is now
    told its directory, so any numbers launch together. The launcher here records what it
    is asked and writes what a job would; the real launchers run in the e2e tests."""
    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.seqmnist_optuna_sweeper._impl import Heartbeats
    from seqmnist.core.rundir import RunDir

    class Recording:
        calls: list[list[list[str]]] = []

        def launch(self, job_overrides, initial_job_idx):
            self.calls.append(job_overrides)
            returns = []
            for overrides in job_overrides:
                subdir = next(o.split("=", 1)[1] for o in overrides if "sweep.subdir=" in o)
                RunDir(tmp_path / subdir).write_metrics(
                    {"status": "completed", "optimized_metric": "val/acc_best", "val/acc_best": 0.5}
                )
                ret = JobReturn()
                ret.status, ret.return_value = JobStatus.COMPLETED, 0.5
                returns.append(ret)
            return returns

    sweeper = sweeper_of(sampler="random", n_trials=4, n_jobs=2)
    sweeper.launcher, sweeper.sweep_dir = Recording(), tmp_path
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, direction="maximize")
    trials = [study.ask({"x": IntDistribution(1, 9)}) for _ in range(3)]  # 0, 1, 2
    study.tell(trials[1], state=TrialState.FAIL)  # 1 went to another sweep, say
    with Heartbeats(storage, 0, 2) as beats:
        sweeper._run(study, [trials[0], trials[2]], {"fixed": {}, "url": "u"}, beats)
    (call,) = Recording.calls  # one launch for trials 0 and 2
    assert [[o for o in job if "sweep.subdir" in o] for job in call] == [
        ["hydra.sweep.subdir=0"],
        ["hydra.sweep.subdir=2"],
    ]
    assert [t.state for t in study.get_trials()] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]


def test_a_grid_samplers_stop_outside_optimize_ends_the_search() -> None:
    """Issue 26, item 2: BruteForceSampler (and GridSampler) call study.stop() once the grid
    is done, which Optuna allows only inside optimize(): telling the last trial raised."""
    sweeper = sweeper_of(sampler="bruteforce", n_trials=5)
    study = optuna.create_study(sampler=make_sampler("bruteforce", 1), direction="maximize")
    space = {"cell": CategoricalDistribution(["lstm", "gru"])}
    sweeper._tell_state(study, study.ask(space), TrialState.COMPLETE, 0.5)
    assert sweeper.ended is None
    second = study.ask(space)
    # The grid is done now: the sampler's study.stop() would raise out of study.tell.
    sweeper._tell_state(study, second, TrialState.COMPLETE, 0.25)
    assert sweeper.ended == "the sampler (BruteForceSampler) has tried every setting"
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2  # told all the same


def test_samplers_and_pruners_by_name() -> None:
    assert type(make_sampler("tpe", 3)).__name__ == "TPESampler"
    assert type(make_sampler("random", 3)).__name__ == "RandomSampler"
    median = make_pruner("median")
    assert type(median).__name__ == "MedianPruner" and median._n_startup_trials == 3
    quarter = make_pruner("percentile")  # the default: the best quarter goes on
    assert type(quarter).__name__ == "PercentilePruner" and quarter._percentile == 25.0
    assert type(make_pruner("hyperband")).__name__ == "HyperbandPruner"
    assert type(make_pruner("asha")).__name__ == "SuccessiveHalvingPruner"
    assert type(make_pruner("none")).__name__ == "NopPruner"
    threshold = make_pruner({"name": "ThresholdPruner", "lower": 0.5})
    assert type(threshold).__name__ == "ThresholdPruner"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("nosuchdb://x/y", "is not a storage URL"),
        ("not a url at all", "is not a storage URL"),
        ("sqlite:////no/such/folder/x.db", "cannot be reached"),
        ("postgresql://seqmnist@127.0.0.1:1/none", "hydra.sweeper.storage=postgresql://"),
    ],
)
def test_a_bad_storage_is_named(url: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        open_storage(url)
    assert needle in str(err.value) and "Fix:" in str(err.value)


def test_two_workers_creating_one_database_at_once_both_open_it(tmp_path, monkeypatch) -> None:
    import sqlalchemy.exc

    real, calls = optuna.storages.RDBStorage, []

    def lose_the_race_once(url: str, **kwargs):  # SQLite's words when the other worker won
        calls.append(url)
        if len(calls) == 1:
            sqlite_says = Exception("table studies already exists")
            raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, sqlite_says)
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", lose_the_race_once)
    monkeypatch.setattr("seqmnist.jobs.search.time.sleep", lambda s: None)
    storage = open_storage(f"sqlite:///{tmp_path / 'shared.db'}")
    assert len(calls) == 2 and isinstance(storage, real)


def test_journal_storage_on_a_file(tmp_path: Path) -> None:
    storage = open_storage(f"journal://{tmp_path / 'study.log'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.tell(study.ask(), 0.5)
    again = optuna.load_study(study_name="s", storage=open_storage(str(tmp_path / "study.log")))
    assert [t.value for t in again.get_trials()] == [0.5]


def test_sweeper_reads_its_settings() -> None:
    from hydra_plugins.seqmnist_optuna_sweeper.config import OptunaSweeperConf

    assert OptunaSweeperConf().pruner == "percentile" and OptunaSweeperConf().sampler == "tpe"
    sweeper = OptunaSweeper(
        sampler="random",
        seed=1,
        pruner={"name": "none"},
        direction="maximize",
        storage=None,
        study_name="s",
        n_trials=3,
        n_jobs=2,
        heartbeat_interval=1,
        grace_period=2,
        params={"layers": "choice(1, 2)"},
    )
    impl = sweeper.impl
    assert impl.pruner_spec == {"name": "none"} and impl.params == {"layers": "choice(1, 2)"}
    assert OverridesParser.create().parse_overrides(["layers=choice(1, 2)"])[0].is_sweep_override()


# -- e2e: real searches ------------------------------------------------------------------------
@pytest.mark.e2e
def test_a_pruned_trial_says_so_and_the_search_finishes(
    synthetic_root: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    # A threshold no tiny model reaches: every trial is pruned after its first epoch.
    proc = run_module(
        *search(
            synthetic_root,
            sweep,
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.pruner={name:ThresholdPruner,lower:0.99}",
        ),
        env=ONE_THREAD,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    study = study_of(sweep)
    assert [t.state for t in study.get_trials()] == [TrialState.PRUNED] * 3
    for job in ("0", "1", "2"):
        m = json.loads((sweep / job / "metrics.json").read_text())
        assert m["status"] == "pruned" and m["pruned_at_epoch"] == 0 and m["epochs"] == 1
        assert "test/acc" not in m  # a pruned trial is not tested
        assert list((sweep / job / "checkpoints").glob("*.ckpt"))  # its checkpoints are kept
    results = (sweep / "optimization_results.yaml").read_text()
    assert "pruned: 3" in results and "complete: 0" in results
    report = (sweep / "results.md").read_text()
    assert "| state |" in report and report.count("| pruned |") == 3
    assert "Traceback" not in out and "ExperimentalWarning" not in out


@pytest.mark.e2e
def test_a_completed_search_writes_its_best_trial_and_plots(
    synthetic_root: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    proc = run_module(
        *search(
            synthetic_root,
            sweep,
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.pruner=none",
            "hydra.sweeper.sampler=random",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "hydra.sweeper.n_jobs=2",
        ),
        env=ONE_THREAD,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    study = study_of(sweep)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3
    best = study.best_trial
    import yaml

    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == best.value and results["best_params"] == best.params
    assert results["trials"] == {
        "complete": 3,
        "pruned": 0,
        "failed": 0,
        "not_run": 0,
        "running": 0,
    }
    jobs = [
        json.loads((sweep / str(t.number) / "metrics.json").read_text()) for t in study.get_trials()
    ]
    assert [j["val/acc_best"] for j in jobs] == [t.value for t in study.get_trials()]
    assert (sweep / "optuna_history.png").stat().st_size > 1000
    assert (sweep / "optuna_importances.png").stat().st_size > 1000


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=PROJECT_ROOT,
        env=user_env(ONE_THREAD),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.e2e
@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_a_killed_search_continues_where_it_stopped(
    synthetic_root: Path, tmp_path: Path, storage: str
) -> None:
    sweep = tmp_path / "sweep"
    url = f"sqlite:///{sweep / 'optuna.db'}" if storage == "sqlite" else str(sweep / "study.log")
    args = search(
        synthetic_root,
        sweep,
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.pruner=none",
        f"hydra.sweeper.storage={url}",
        "+callbacks.slow._target_=tests.helpers.SlowSteps",
    )
    proc = _start(args, tmp_path / "first.log")
    deadline = time.monotonic() + 240
    done: list = []
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if (sweep / "optuna.db").exists() or (sweep / "study.log").exists():
            try:
                trials = study_of(sweep, url).get_trials()
            except KeyError:  # the database is there, the study not yet
                continue
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            if len(done) >= 1 and any(t.state == TrialState.RUNNING for t in trials):
                break
    assert proc.poll() is None and done, (tmp_path / "first.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its running trial, at once
    proc.wait()
    kept = {
        t.number: t.params
        for t in study_of(sweep, url).get_trials()
        if t.state == TrialState.COMPLETE
    }

    again = run_module(*args, env=ONE_THREAD)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    study = study_of(sweep, url)
    ended = finished(study)
    assert len(ended) == 4  # exactly n_trials finished trials
    assert all(study.trials[n].params == p for n, p in kept.items())  # nothing lost or rerun
    assert distinct_params(ended)  # no parameter set ran twice
    killed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert len(killed) >= 1  # the trial running at the kill, marked failed via its heartbeat
    assert max(t.number for t in ended) > max(t.number for t in killed)  # numbering went on
    records = [sweep / str(t.number) / "metrics.json" for t in killed]
    for path in (p for p in records if p.is_file()):  # the kill may land before it wrote one
        record = json.loads(path.read_text())
        assert record["status"] == "interrupted" and "heartbeat" in record["error"]
    if any(p.is_file() for p in records):
        assert "| failed |" in (sweep / "results.md").read_text()  # its state in the report


@pytest.mark.e2e
def test_jobs_that_outlive_their_sweep_keep_their_trials_and_tell_them(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """Issue 26, item 5: a sweep's own heartbeats kept its trials alive, so when the sweep
    died and its jobs ran on (SLURM jobs; here submitit's local processes), the command run
    again failed their trials as stale and ran replacements, while the jobs crashed at their
    next report. The job now beats and tells its own trial: the second sweep waits for them."""
    sweep = tmp_path / "sweep"
    args = search(
        synthetic_root,
        sweep,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.pruner=none",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        "+callbacks.slow._target_=tests.helpers.SlowSteps",
        "+callbacks.slow.seconds=0.8",
    )
    proc = _start(args, tmp_path / "first.log")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        started = [sweep / j / "metrics.json" for j in ("0", "1")]
        if all(p.is_file() for p in started):
            break
    assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)  # the sweep alone: its jobs run on
    proc.wait()
    time.sleep(3)  # longer than the grace period: only the jobs' own beats keep them alive

    again = run_module(*args, env=ONE_THREAD, timeout=240)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    states = [t.state for t in study_of(sweep).get_trials()]
    assert states == [TrialState.COMPLETE] * 2, states  # none failed, none run again
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1"]


@pytest.mark.e2e
def test_two_workers_share_one_study(synthetic_root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [
        _start(
            search(
                synthetic_root,
                tmp_path / f"w{i}",
                "hydra.sweeper.n_trials=5",
                "hydra.sweeper.pruner=none",
                f"hydra.sweeper.storage={url}",
            ),
            tmp_path / f"w{i}.log",
        )
        for i in range(2)
    ]
    for w in workers:
        assert w.wait(timeout=300) == 0
    study = study_of(tmp_path, url)
    ended = finished(study)
    assert len(ended) == 5 and distinct_params(ended)
    run_dirs = [
        p.parent.name for i in range(2) for p in (tmp_path / f"w{i}").glob("*/metrics.json")
    ]
    assert sorted(run_dirs, key=int) == sorted(str(t.number) for t in ended)  # each ran once
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    assert all("Optuna study 'seqmnist'" in text for text in logs)
    # One created the study, the other joined it and drew its own stream (issue 26, item 9):
    # started together with one seed, they proposed the same settings, closed unrun.
    assert sorted("(new)" in text for text in logs) == [False, True]
    repeats = [k for k, v in study.user_attrs.items() if v == "repeat of an earlier trial"]
    assert not repeats, repeats


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["hydra.sweeper.sampler=annealing"], "hydra.sweeper.sampler='annealing'"),
        (["nlayers=choice(1,2)"], "hydra.sweeper.params.nlayers: no such key"),
        (["hydra.sweeper.params.layers='choice(1,'"], "is not a search-space expression"),
        (["hydra.sweeper.heartbeat_interval=0"], "heartbeat_interval=0 must be an integer >= 1"),
        (["hydra.sweeper.max_failures=0"], "max_failures=0 must be an integer >= 1"),
        (
            ["hydra/launcher=slurm", "hydra.sweeper.storage=sqlite:///x.db"],
            "SQLite's file locks are unreliable on the network file systems",
        ),
    ],
)
def test_bad_input_stops_before_any_trial(  # each kind in-process above; here the exit
    synthetic_root: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    sweep = tmp_path / "sweep"
    proc = run_module(*search(synthetic_root, sweep, *args), env=ONE_THREAD)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert needle in out and "Traceback" not in out
    assert not list(sweep.glob("*/metrics.json"))  # no trial ran


# Everything the default space searches, fixed but the cell: a space of two settings.
TWO_SETTINGS = [
    "cell=choice(lstm,gru)",
    "layers=1",
    "dropout=0.0",
    "optimizer=adam",
    "optimizer.lr=0.01",
]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("sampler", "says"),
    [
        ("tpe", "the search space holds 2 settings and all have run"),
        ("bruteforce", "the search space holds 2 settings and all have run"),
    ],
)
def test_a_search_that_has_run_its_whole_space_ends_with_a_message(
    synthetic_root: Path, tmp_path: Path, sampler: str, says: str
) -> None:
    """Issue 26, items 1 and 2: a choice-only space smaller than n_trials crashed on a trial
    it had already failed (UpdateFinishedTrialError); a grid sampler's study.stop() raised
    outside optimize(). Both now end the search, with their results written."""
    sweep = tmp_path / "sweep"
    args = [*TWO_SETTINGS, "hydra.sweeper.n_trials=5", f"hydra.sweeper.sampler={sampler}"]
    proc = run_module(*search(synthetic_root, sweep, *args), env=ONE_THREAD)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert says in out and "Traceback" not in out
    ran = finished(study_of(sweep))
    assert sorted(t.params["cell"] for t in ran) == ["gru", "lstm"]
    assert "complete: 2" in (sweep / "optimization_results.yaml").read_text()


@pytest.mark.e2e
def test_a_search_whose_trials_keep_failing_stops_and_names_the_first_error(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """Issue 26, item 4: failed trials counted nowhere, so a search whose every trial fails
    (no data here) asked for trials forever."""
    sweep = tmp_path / "sweep"
    args = ["hydra.sweeper.n_trials=10", "hydra.sweeper.max_failures=2", "data.download=false"]
    proc = run_module(*search(tmp_path / "nothing", sweep, *args), env=ONE_THREAD, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "2 trials failed (hydra.sweeper.max_failures=2); the first: trial 0:" in out
    assert "data not found" in out
    study = study_of(sweep)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL] * 2
    assert "failed: 2" in (sweep / "optimization_results.yaml").read_text()


@pytest.mark.e2e
def test_a_study_with_the_other_direction_is_left_alone(
    synthetic_root: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    url = f"sqlite:///{sweep / 'optuna.db'}"
    study = optuna.create_study(
        study_name="seqmnist", storage=open_storage(url), direction="minimize"
    )
    study.tell(study.ask(), 0.25)
    proc = run_module(*search(synthetic_root, sweep), env=ONE_THREAD)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "already exists and minimizes" in out and "Traceback" not in out
    kept = study_of(sweep).get_trials()
    assert [t.value for t in kept] == [0.25]  # nothing of the existing study lost


@pytest.mark.e2e
def test_a_lost_job_fails_its_trial_and_the_search_goes_on(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """Issue 26, item 3: a job that ends without a result (here SIGKILLed, as by the OOM
    killer) made submitit's launcher raise for its whole batch; the sweep died, the batch's
    other trials stayed RUNNING and their results were never told."""
    sweep = tmp_path / "sweep"
    proc = run_module(
        *search(
            synthetic_root,
            sweep,
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.pruner=none",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=5",
            "+callbacks.killer._target_=tests.helpers.KillJob",
            "+callbacks.killer.job=0",
        ),
        env=ONE_THREAD,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "ended without a result" in out
    states = {t.number: t.state for t in study_of(sweep).get_trials()}
    # The lost job's trial failed once its heartbeat went stale; its batch mate, which the
    # launcher's error left running, told its own result.
    assert states[0] == TrialState.FAIL and states[1] == TrialState.COMPLETE
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 3
    assert json.loads((sweep / "1" / "metrics.json").read_text())["status"] == "completed"
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "interrupted"


@pytest.mark.slow
@pytest.mark.e2e
def test_pruning_reaches_jobs_run_by_submitit(synthetic_root: Path, tmp_path: Path) -> None:
    """submitit runs each trial in its own process: the job finds its trial in the storage."""
    sweep = tmp_path / "sweep"
    proc = run_module(
        *search(
            synthetic_root,
            sweep,
            "hydra.sweeper.n_trials=2",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=5",
            "hydra.sweeper.pruner={name:ThresholdPruner,lower:0.99}",
        ),
        env=ONE_THREAD,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert [t.state for t in study_of(sweep).get_trials()] == [TrialState.PRUNED] * 2
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "pruned"
