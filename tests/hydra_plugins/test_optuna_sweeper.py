"""seqmnist's Optuna sweeper, its pieces in-process: the search space, settings, storages,
samplers and pruners, the batch it launches (the real searches: test_search_*.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
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
from tests.cluster import SLURM, slurm_job_ids
from tests.helpers import ONE_THREAD, PROJECT_ROOT, compose_config, run_module, user_env
from tests.hydra_plugins.searches import password_study, search, study_of


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
    """Hydra reads every interval as floats, so hidden=interval(32, 256)
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
    """Sampler=cmaes was advertised, its package not declared, and Optuna
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
    """The default SQLite file would lie on the cluster's NFS/Lustre."""
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
    """The storage URL's password goes to the jobs in their environment (PASSWORD_ENV), never
    in their overrides, .hydra/ files, resolved_config.yaml or the launcher's log; a password
    typed into the URL is refused. The pieces in-process; a real search on the local cluster's
    PostgreSQL below."""
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


@pytest.mark.cluster
@pytest.mark.e2e
@pytest.mark.slow
def test_a_storage_password_reaches_the_jobs_of_a_search_and_no_file(
    synthetic_root: Path,
    tmp_path: Path,
    cluster: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A search as a user runs it, its study on the local cluster's PostgreSQL as the role
    that must give its password (scripts/local_cluster.sh), the password taken from the
    environment (``${oc.env:...}``), each trial an sbatch job. Every trial has its epochs'
    reports, which only its job writes: the jobs opened the storage, and the role lets in
    no connection without the password. Yet no file of the sweep, and nothing it printed,
    holds the password."""
    from seqmnist.jobs.search import PASSWORD_ENV

    typed, url, password, name = password_study(cluster)
    for way in (PASSWORD_ENV, "PGPASSWORD", "PGPASSFILE"):  # none but the sweep's own
        monkeypatch.delenv(way, raising=False)
    wrong, none = url.replace(password, "not-" + password), cluster["SEQMNIST_PG_PASSWORD_URL"]
    for refused in (wrong, none):  # the role lets in only its password
        with pytest.raises(ConfigError, match="the database cannot be reached"):
            open_storage(refused)
    sweep = tmp_path / "sweep"
    proc = run_module(
        *search(
            synthetic_root,
            sweep,
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.pruner=none",
            f"hydra.sweeper.storage='{typed}'",
            f"hydra.sweeper.study_name={name}",
            *SLURM,
        ),
        env={**ONE_THREAD, **cluster},
        timeout=400,
    )
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 0, printed[-3000:]
    trials = study_of(sweep, url, name).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, printed[-3000:]
    assert all(t.intermediate_values for t in trials), [t.intermediate_values for t in trials]
    assert len(slurm_job_ids(sweep)) == 2  # each trial a job of its own, not the sweep's process
    files = [f for f in sweep.rglob("*") if f.is_file()]
    assert any(f.name == "overrides.yaml" for f in files) and len(files) > 10
    holding = [str(f.relative_to(sweep)) for f in files if password.encode() in f.read_bytes()]
    assert not holding, f"the password is written in {holding}"
    said = password in printed  # not in the assertion: pytest would show the password
    assert not said, "the sweep printed the password"


def test_a_batch_of_scattered_trial_numbers_is_launched_together(tmp_path: Path) -> None:
    """Only consecutive trial numbers went out in one launch, so with
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
    """BruteForceSampler (and GridSampler) call study.stop() once the grid
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
    impl = sweeper_of(
        sampler="random", pruner={"name": "none"}, n_jobs=2, params={"layers": "choice(1, 2)"}
    )
    assert impl.pruner_spec == {"name": "none"} and impl.params == {"layers": "choice(1, 2)"}
    assert OverridesParser.create().parse_overrides(["layers=choice(1, 2)"])[0].is_sweep_override()
