"""Where the project's own files are: the config tree, ``conf/`` beside ``src/``."""

from __future__ import annotations

from pathlib import Path

# src/seqmnist/core/project.py -> the repository root (an editable install runs from it).
CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
