"""Launching, stopping and continuing jobs: processes and clusters (``cluster``), a job as a
trial of an Optuna search (``search``), experiment trackers (``tracking``) and ``resume=``
(``resume``)."""
