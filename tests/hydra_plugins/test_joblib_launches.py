"""The Optuna sweeper's trials under hydra/launcher=joblib, launched from threads of their own
(one per slot): one trial's dead worker must not take its running siblings with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hydra_plugins.seqmnist_optuna_sweeper._impl import NOT_RUN
from tests.helpers import ONE_THREAD, user_env
from tests.hydra_plugins.searches import study_of

# A Hydra app of a few lines, searched by seqmnist's sweeper: x=1 is a job whose worker dies
# (SIGKILL, as the OOM killer does); x=0 and x=2 sleep, x=2 the longer, so that whichever two
# trials run first, a sleeper still runs when the killed one dies.
APP = """
import json, os, signal, time
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(config_path="conf", config_name="app", version_base="1.3")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    start = time.time()
    seconds = {0: 3, 1: 1, 2: 6}[cfg.x]
    (out / "span.json").write_text(json.dumps([start, start + seconds, os.getpid()]))
    time.sleep(seconds)
    if cfg.x == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    (out / "metrics.json").write_text(json.dumps({"status": "completed", "val/acc": 0.5}))
    return 0.5

if __name__ == "__main__":
    main()
"""

CONFIG = """
defaults:
  - override hydra/sweeper: optuna
  - override hydra/launcher: joblib
  - _self_
x: 0
optimized_metric: val/acc
optuna_trial: {storage: null, study_name: null, trial_id: null, number: null,
               heartbeat_interval: null}
hydra:
  mode: MULTIRUN
  sweep: {dir: "${oc.env:SWEEP}"}
  launcher: {n_jobs: 2}
  sweeper:
    sampler: bruteforce
    pruner: none
    n_trials: 3
    n_jobs: 3
    max_failures: 1
    heartbeat_interval: 1
    grace_period: 3
    params: {x: "choice(0, 1, 2)"}
"""


@pytest.mark.e2e
def test_a_dead_joblib_worker_fails_its_own_trial_only(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.yaml").write_text(CONFIG)
    (tmp_path / "app.py").write_text(APP)
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "app.py"],
        cwd=tmp_path,
        env=user_env({**ONE_THREAD, "SWEEP": str(sweep)}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    study = study_of(sweep)
    unrun = {int(k.rsplit(":", 1)[1]) for k in study.user_attrs if k.startswith(NOT_RUN)}
    states = {t.params["x"]: t.state for t in study.get_trials() if t.number not in unrun}
    # Trials launched from several threads shared joblib's one reusable executor: the killed
    # worker broke it, and every trial running in it failed with TerminatedWorkerError. (The
    # killed one's trial fails once its heartbeat is stale, which the search that ends with
    # the sleepers may not wait for.)
    assert (states[0], states[2]) == (TrialState.COMPLETE, TrialState.COMPLETE), out
    assert (
        states[1] in (TrialState.FAIL, TrialState.RUNNING)
        and out.count("ended without a result") == 1
    ), out
    spans = [json.loads(p.read_text()) for p in sweep.glob("*/span.json")]
    assert len(spans) == 3, out
    # Still at most hydra.launcher.n_jobs jobs at once (3 slots, 2 workers).
    most = max(sum(s[0] <= t[0] < s[1] for s in spans) for t in spans)
    assert most <= 2, spans
