"""``scripts/local_cluster.sh`` itself, on a second local cluster of its own (its own folder
and ports, beside the one ``make cluster-up`` started): it trusts only its own processes,
refuses a port another process holds, starts a clean queue, and ``down`` leaves nothing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]

SCRIPT = PROJECT_ROOT / "scripts" / "local_cluster.sh"
BASE = 17900  # ports 17906-17950, apart from make cluster-up's (16800 + ...)
MOVED = 18000


def needs_the_cluster_tools(cluster: dict[str, str]) -> None:
    """The cluster fixture has checked make cluster-up's cluster is up, so the tools are
    installed; the script also runs as root (PostgreSQL under its own user)."""
    if os.geteuid() != 0:
        pytest.skip("the local cluster script runs its daemons as root here")


def script(folder: Path, *args: str, base: int = BASE) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLUSTER_DIR": str(folder), "CLUSTER_PORT_BASE": str(base)}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PROJECT_ROOT,
    )


def processes_of(folder: Path) -> list[str]:
    """Every process whose command line or environment names the cluster's folder."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(folder) in cmd or str(folder) in env:
            found.append(f"{proc.name}: {cmd[:120]}")
    return found


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def folder(tmp_path: Path, cluster: dict[str, str]) -> Iterator[Path]:
    needs_the_cluster_tools(cluster)
    # PostgreSQL's own user must reach its data dir; pytest's tmp dirs are root's only.
    d = Path(f"/tmp/seqmnist-cluster-test-{os.getpid()}")
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    yield d
    for base in (BASE, MOVED):
        script(d, "down", base=base)
    left = processes_of(d)
    shutil.rmtree(d, ignore_errors=True)
    assert not left, f"processes left after down: {left}"


def test_the_local_cluster_trusts_only_its_own_processes_and_leaves_nothing(
    folder: Path,
) -> None:
    # A stale pid file naming a process that is not munge: up must not take it for munge,
    # and down must not signal it.
    stranger = subprocess.Popen(["sleep", "600"])
    try:
        (folder / "munge").mkdir(parents=True)
        (folder / "munge" / "munged.pid").write_text(f"{stranger.pid}\n")

        # A port another process holds (MariaDB's, base + 6): one message naming it.
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", BASE + 6))
            squatter.listen()
            clash = script(folder, "up")
        assert clash.returncode == 2, clash.stdout + clash.stderr
        assert f"port {BASE + 6} (for MariaDB) is in use by another process" in clash.stderr
        assert "munge started" in clash.stdout  # not "running": the stale pid was not trusted

        up = script(folder, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        status = script(folder, "status")
        assert status.returncode == 0 and "is down" not in status.stdout, status.stdout
        again = script(folder, "up")  # idempotent: everything already runs
        assert again.returncode == 0, again.stdout + again.stderr
        assert "started" not in again.stdout, again.stdout

        # A job that is still running when the ports move: the old cluster is stopped with
        # its job, and the new one starts with an empty queue on the new ports.
        env = {**os.environ, "SLURM_CONF": str(folder / "slurm" / "slurm.conf")}
        job_log = str(folder / "job-%j.out")  # not slurm-N.out in the project's folder
        subprocess.run(
            ["sbatch", "--output", job_log, "--wrap", "sleep 600"], env=env, check=True, timeout=30
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            queue = subprocess.run(
                ["squeue", "-h", "-o", "%T"], env=env, capture_output=True, text=True
            ).stdout.split()
            if queue == ["RUNNING"]:
                break
            time.sleep(0.5)
        assert queue == ["RUNNING"], queue
        moved = script(folder, "up", base=MOVED)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert "the ports moved" in moved.stdout
        assert not any(port_open(BASE + k) for k in (6, 17, 18, 19, 20, 32, 50))
        queue = subprocess.run(
            ["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        assert queue == [], f"jobs of the earlier cluster came back: {queue}"
        assert not [p for p in processes_of(folder) if "sleep 600" in p]

        down = script(folder, "down", base=MOVED)
        assert down.returncode == 0, down.stdout + down.stderr
        assert processes_of(folder) == []
        assert script(folder, "status", base=MOVED).returncode == 1
        assert stranger.poll() is None, "down signalled a process that was not the cluster's"
    finally:
        stranger.kill()
