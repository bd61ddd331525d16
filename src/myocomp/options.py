"""Ranges of every numeric command-line option, checked in one place before any work.

:data:`OPTION_RULES` is the table (option name -> :class:`Rule`); :func:`check_options` checks a
mapping of option names to values against it and raises :class:`~myocomp.errors.ConfigError`
naming the option. NaN and infinity are refused unless a rule allows infinity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from myocomp.errors import ConfigError

__all__ = ["Rule", "OPTION_RULES", "check_options", "check_value"]

SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class Rule:
    """Closed range ``[lo, hi]`` (``lo_open``: ``lo`` excluded); ``integer``: whole numbers only."""

    lo: float = -math.inf
    hi: float = math.inf
    integer: bool = False
    lo_open: bool = False
    allow_inf: bool = False

    def describe(self) -> str:
        left = "(" if self.lo_open else "["
        fmt = (lambda v: f"{int(v)}") if self.integer else (lambda v: f"{v:g}")
        hi = "inf" if math.isinf(self.hi) else fmt(self.hi)
        kind = "a whole number" if self.integer else "a finite number"
        return f"{kind} in {left}{fmt(self.lo)}, {hi}]"


#: every numeric option of the commands (quantify, segment, phantom, study, synth-cohort, demo,
#: predict's numbers come from :data:`myocomp.study.predict.INPUT_RANGES`)
OPTION_RULES: dict[str, Rule] = {
    "--fat-threshold": Rule(0.0, 1.0, lo_open=True),
    "--band-mm": Rule(0.0, 200.0),
    "--bmi": Rule(10.0, 80.0),
    "--seed": Rule(0, SEED_MAX, integer=True),
    "--bootstrap": Rule(0, 100_000, integer=True),
    "--n": Rule(50, 10_000_000, integer=True),
    "--cohort-n": Rule(50, 10_000_000, integer=True),
    "--workers": Rule(1, 1024, integer=True),
    "--snr": Rule(0.0, math.inf, allow_inf=True),
    "--infiltration": Rule(0.0, 0.4),
    "--intermat": Rule(0.0, 0.4),
    "--bias": Rule(0.0, 1.0),
    "--nan-voxels": Rule(0, 1_000_000, integer=True),
    "--slices": Rule(1, 4096, integer=True),
    "--supersample": Rule(1, 9, integer=True),
}


def check_value(name: str, value: Any, rule: Rule) -> None:
    """Raise :class:`ConfigError` unless ``value`` satisfies ``rule`` (``None`` passes)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be {rule.describe()}, got {value!r}")
    x = float(value)
    if math.isnan(x) or (math.isinf(x) and not rule.allow_inf):
        raise ConfigError(f"{name} must be {rule.describe()}, got {value}")
    if rule.integer and x != int(x):
        raise ConfigError(f"{name} must be {rule.describe()}, got {value}")
    too_low = x <= rule.lo if rule.lo_open else x < rule.lo
    if too_low or x > rule.hi:
        raise ConfigError(f"{name} must be {rule.describe()}, got {value:g}")


def check_options(values: Mapping[str, Any], rules: Mapping[str, Rule] | None = None) -> None:
    """Check each ``option -> value`` against ``rules`` (default :data:`OPTION_RULES`)."""
    rules = OPTION_RULES if rules is None else rules
    for name, value in values.items():
        check_value(name, value, rules[name])
