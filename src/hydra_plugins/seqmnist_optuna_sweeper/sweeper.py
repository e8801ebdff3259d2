"""The plugin class of seqmnist's Optuna sweeper (``hydra/sweeper=optuna``).

Hydra imports every module of ``hydra_plugins`` whose name does not start with ``_`` when it
scans for plugins, on every start of every command; this module therefore imports nothing
heavy. The implementation, and Optuna with it, is imported when a search starts
(:mod:`._impl`), as Hydra's own plugins do.
"""

from typing import Any, List  # noqa: UP035 - kept plain for Hydra's plugin scan

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Delegates to :class:`._impl.OptunaSweeperImpl`; settings in :mod:`.config`."""

    def __init__(self, **settings: Any) -> None:
        from hydra_plugins.seqmnist_optuna_sweeper._impl import OptunaSweeperImpl

        self.impl = OptunaSweeperImpl(**settings)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:  # noqa: UP006
        self.impl.sweep(arguments)
