"""Errors a user can fix: entry points print their message and exit non-zero, no traceback."""

from __future__ import annotations


class SeqMNISTError(Exception):
    """Base for problems caused by input (config, data files, checkpoints, images).

    The message names what is wrong and how to fix it; entry points print it as one
    ``error: ...`` line and exit with :data:`EXIT_CODE`.
    """

    EXIT_CODE = 2


class ConfigError(SeqMNISTError):
    """A config value is out of range or of the wrong kind."""


class DataError(SeqMNISTError):
    """Dataset files are missing, unreadable or inconsistent."""


class NonFiniteLossError(SeqMNISTError):
    """Training diverged: the loss became NaN or infinite."""
