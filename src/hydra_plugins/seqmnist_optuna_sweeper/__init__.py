"""seqmnist's Optuna sweeper for Hydra: `hydra/sweeper=optuna` (``hparams_search=optuna``).

Hydra finds plugins in the ``hydra_plugins`` namespace package; this one registers its config
as ``hydra/sweeper: optuna``. See :mod:`.sweeper`.
"""
