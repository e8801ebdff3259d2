"""What every command shares: the config tree (with the resolvers its configs use registered
before it is composed), and one way to turn our errors into one message and an exit status.

Hydra commands (``train``, ``evaluate``, ``export``) are declared with :func:`hydra_command`
and wrap their work in :func:`exit_on_error`; the argparse commands (``predict``, ``demo``,
``report``, ``results``) wrap their ``main`` in :func:`command`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from seqmnist.core.errors import SeqMNISTError
from seqmnist.core.project import CONF_DIR


def hydra_command(config_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``hydra.main`` over ``conf/<config_name>.yaml``, with the resolvers registered first
    (imported here: report and results, argparse commands, run without torch)."""
    from seqmnist.jobs.resolvers import register_resolvers

    register_resolvers()
    return hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)


def fail(error: SeqMNISTError, log: logging.Logger | None = None) -> int:
    """Say what is wrong and how to fix it, once; returns the exit status. A Hydra command
    logs it (its console and its run's log file); the others print ``error: ...`` to stderr."""
    if log is not None:
        log.error(str(error))
    else:
        print(f"error: {error}", file=sys.stderr, flush=True)
    return error.EXIT_CODE


def in_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not inside a Hydra app
        return False


@contextlib.contextmanager
def exit_on_error(log: logging.Logger, multirun_goes_on: bool = False) -> Iterator[None]:
    """Around a Hydra command's work: our error becomes one logged message and ``sys.exit``
    with its status. With ``multirun_goes_on`` it is raised on in a multirun instead, so the
    sweep records that job as failed and goes on with the others (``evaluate -m``)."""
    try:
        yield
    except SeqMNISTError as e:
        fail(e, log)
        if multirun_goes_on and in_multirun():
            raise
        sys.exit(e.EXIT_CODE)


def command(main: Callable[..., int]) -> Callable[..., int]:
    """An argparse command's ``main``: our error becomes one ``error:`` line and its status."""

    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except SeqMNISTError as e:
            return fail(e)

    return run
