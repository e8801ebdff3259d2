"""Rules for config values: one predicate and one message per key, wherever it is checked.

The layer that owns a value defines its rule (the data module its arguments, the network its
own); the constructors check their arguments with it, and ``seqmnist.training.config`` checks
the composed config with the same rules before any data is read, under the key the user typed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from seqmnist.core.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """What a value must be: a predicate and how to say what it allows."""

    ok: Callable[[Any], bool]
    allowed: str

    def check(self, key: str, value: Any) -> None:
        """Raise :class:`ConfigError` naming ``key``, ``value`` and what is allowed."""
        if not self.ok(value):
            raise ConfigError(f"{key}={value!r} is not allowed; {key} must be {self.allowed}.")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def int_at_least(low: int) -> Rule:
    return Rule(lambda v: _is_int(v) and v >= low, f"an integer >= {low}")


def number(check: Callable[[float], bool], allowed: str) -> Rule:
    def ok(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and check(float(v))

    return Rule(ok, allowed)


def one_of(options: Iterable[str], hint: str = "", ordered: bool = False) -> Rule:
    """A choice among ``options`` (sorted in the message unless ``ordered``)."""
    values = list(options) if ordered else sorted(options)
    return Rule(lambda v: v in values, f"one of {values}" + (f" ({hint})" if hint else ""))


BOOLEAN = Rule(lambda v: isinstance(v, bool), "true or false")
OPTIONAL_BOOLEAN = Rule(lambda v: v is None or isinstance(v, bool), "true or false")


def check_all(rules: dict[str, Rule], values: dict[str, Any], prefix: str = "") -> None:
    """Check every ``values[name]`` that has a rule, naming it ``prefix + name``."""
    for name, rule in rules.items():
        if name in values:
            rule.check(prefix + name, values[name])
