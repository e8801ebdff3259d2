"""Fixtures shared by the suite: synthetic data, one short training run per session, and one
torch thread for in-process work."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from .cluster import cluster_env, wait_for_an_idle_cluster
from .helpers import REAL_DATA_ROOT, drawn_digit, train_in_process, write_dataset
from .skip_rule import (  # noqa: F401  (pytest finds hooks by name)
    pytest_make_collect_report,
    pytest_report_header,
    pytest_runtest_makereport,
)

# pytester: the skip rule is tested on a suite of its own.
pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def no_tracking_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """logger=mlflow follows MLFLOW_TRACKING_URI, which a shell that sourced
    outputs/cluster/env.sh sets, and so does ``mlflow.set_tracking_uri`` in a test (MLflow
    mirrors it into the environment): each test picks its store itself (the cluster tests
    read env.sh), and no test's store leaks into the next one's runs."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run in-process torch work on one thread: tiny tensors gain nothing from a second one,
    and a test must not leave the thread count changed for the next."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# What a process launcher (Lightning's, torchrun, submitit) reads from the environment. A test
# that leaves one set makes every later run started from this worker a rank of a job that
# never starts: the leak is put back and reported as the test's failure.
LAUNCH_ENV = (
    "LOCAL_RANK",
    "NODE_RANK",
    "RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SEQMNIST_RANK_CONFIG",
    "OMP_NUM_THREADS",
)


@pytest.fixture(autouse=True)
def no_launch_env_left() -> Iterator[None]:
    before = {k: os.environ.get(k) for k in LAUNCH_ENV}
    yield
    after = {k: os.environ.get(k) for k in LAUNCH_ENV}
    changed = {k: v for k, v in after.items() if v != before[k]}
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    assert not changed, f"the test left launcher variables in the environment: {changed}"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with synthetic MNIST and Fashion-MNIST (600 train, 200 test images each)."""
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, "MNIST")
    write_dataset(root, "FashionMNIST")
    return root


@pytest.fixture
def real_root() -> Path:
    if not (REAL_DATA_ROOT / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found under {REAL_DATA_ROOT} (set SEQMNIST_DATA_ROOT)")
    return REAL_DATA_ROOT


@pytest.fixture(scope="session")
def trained_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of one short `seqmnist.train` run on the synthetic data, trained once
    per session in this process. Read it; to change or resume it, take a `copy_run`."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = train_in_process(synthetic_root, run_dir)
    finally:
        torch.set_num_threads(before)
    assert metrics["status"] == "completed"
    return run_dir


@pytest.fixture
def pictures(tmp_path: Path) -> dict[str, Path]:
    """A digit as MNIST stores it, the same digit dark-on-light 200x200 RGB, and bad inputs."""
    d = tmp_path / "in"
    d.mkdir()
    digit = drawn_digit()
    Image.fromarray(digit).save(d / "digit.png")
    big = Image.fromarray(255 - digit).resize((200, 200), Image.Resampling.BICUBIC)
    big.convert("RGB").save(d / "big_inverted.png")
    Image.new("RGB", (64, 48), (250, 250, 250)).save(d / "blank.png")
    (d / "notes.txt").write_text("not a picture\n")
    data = (d / "big_inverted.png").read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty").mkdir()
    return {
        "digit": d / "digit.png",
        "big": d / "big_inverted.png",
        "blank": d / "blank.png",
        "text": d / "notes.txt",
        "truncated": d / "truncated.png",
        "empty": tmp_path / "empty",
    }


# -- preprocessing -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def cluster() -> dict[str, str]:
    """The local cluster's environment (tests/cluster.py): a skip when it is not up (a
    failure under CI: tests/skip_rule.py)."""
    return cluster_env()


@pytest.fixture(autouse=True)
def idle_cluster_first(request: pytest.FixtureRequest) -> None:
    """A test marked ``cluster`` starts once the jobs of earlier tests have left it."""
    if request.node.get_closest_marker("cluster") is not None:
        wait_for_an_idle_cluster(cluster_env())


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` (make test) a file's tests share a worker, as with
    ``loadfile``, except the tests marked ``cluster``: they form one group, run one at a time
    beside the rest, because they share two one-CPU SLURM nodes (a DDP job needs both, the
    requeue test holds one for minutes). Runs before xdist reads the groups."""
    if config.getoption("dist", "no") != "loadgroup":
        return
    for item in items:
        cluster = item.get_closest_marker("cluster") is not None
        group = "cluster" if cluster else item.path.relative_to(config.rootpath).as_posix()
        item.add_marker(pytest.mark.xdist_group(group))
