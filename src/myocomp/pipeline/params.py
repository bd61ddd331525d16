"""Batch options from the command line and a ``[batch]`` TOML table, validated in one place.

:func:`resolve_batch_params` turns both into a :class:`~myocomp.pipeline.task.BatchParams`
(what determines the results), :func:`resolve_run_options` into a :class:`RunOptions` (where and
how the batch runs). Command-line values win over the TOML table; every value is checked for type
and range before any work starts, and a bad one is a :class:`~myocomp.errors.ConfigError` naming
the option (``--band-mm``) or the TOML key (``[batch] band_mm``). Numeric ranges are those of
:data:`myocomp.options.OPTION_RULES` (the same as in ``quantify``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from myocomp.errors import ConfigError
from myocomp.options import OPTION_RULES, Rule, check_value
from myocomp.pipeline.task import BatchParams

#: Keys of a ``[batch]`` table.
BATCH_KEYS = frozenset(
    {
        "workers", "scheduler", "scheduler_timeout", "model", "device", "profile",
        "fat_threshold", "band_mm", "groups", "volume_ranges", "min_label_ml",
        "max_anisotropy", "qc_images", "skip_anatomy_check",
    }
)  # fmt: skip
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class RunOptions:
    """Execution of a batch: local ``workers`` or a ``scheduler`` address (at most one), and how
    long to wait for that scheduler to answer (s)."""

    workers: int | None = None
    scheduler: str | None = None
    scheduler_timeout: float = 15.0
    profile: str | None = None


def read_batch_config(path: str | Path) -> dict[str, Any]:
    """The ``[batch]`` table of a TOML file (unknown keys are an error)."""
    from myocomp.pipeline.runner import read_toml

    table = read_toml(path).get("batch", {})
    if not isinstance(table, dict):
        raise ConfigError("[batch] must be a table", source=path)
    unknown = sorted(set(table) - BATCH_KEYS)
    if unknown:
        raise ConfigError(f"unknown [batch] keys: {', '.join(unknown)}", source=path)
    return table


def parse_volume_ranges(items: list[str] | dict[str, Any]) -> dict[str, tuple[float, float]]:
    """``["back=100:6000"]`` or ``{"back": [100, 6000]}`` -> ``{"back": (100.0, 6000.0)}`` (mL)."""
    if isinstance(items, dict):
        pairs = list(items.items())
    elif isinstance(items, list):
        pairs = []
        for item in items:
            name, sep, rng = str(item).partition("=")
            lo, sep2, hi = rng.partition(":")
            if not (sep and sep2 and name.strip()):
                raise ConfigError(f"volume range {item!r} is not GROUP=LOW:HIGH (mL)")
            pairs.append((name.strip(), (lo, hi)))
    else:
        raise ConfigError("volume_ranges must be a table of GROUP = [LOW, HIGH] (mL)")
    out: dict[str, tuple[float, float]] = {}
    for name, value in pairs:
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"volume range of {name!r} must be two numbers (mL)") from exc
        if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
            raise ConfigError(f"volume range of {name!r}: low {lo:g} must be below high {hi:g}")
        out[name] = (lo, hi)
    return out


class _Picker:
    """Values by key: the command-line option if given, else the TOML value, else the default;
    each message names where the value came from."""

    def __init__(self, options: Mapping[str, Any], toml: Mapping[str, Any]) -> None:
        self.options, self.toml = options, toml

    def where(self, key: str) -> str:
        if self.options.get(key) is not None:
            return "--" + key.replace("_", "-")
        return f"[batch] {key}"

    def get(self, key: str, default: Any = None) -> Any:
        value = self.options.get(key)
        return value if value is not None else self.toml.get(key, default)

    def number(self, key: str, default: float, rule: Rule) -> float:
        """The value of ``key`` checked against ``rule`` (:mod:`myocomp.options`)."""
        value = self.get(key, default)
        check_value(self.where(key), value, rule)
        return float(value)

    def integer(self, key: str, rule: Rule) -> int | None:
        value = self.get(key)
        check_value(self.where(key), value, rule)
        return None if value is None else int(value)

    def text(self, key: str, default: str | None = None, choices: tuple[str, ...] = ()) -> Any:
        value = self.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{self.where(key)} {value!r} must be a non-empty string")
        if choices and value not in choices:
            raise ConfigError(f"{self.where(key)} {value!r} must be one of {', '.join(choices)}")
        return value


def _groups(pick: _Picker) -> tuple[str, ...]:
    from myocomp.imaging.labels import GROUP_BASES

    value = pick.get("groups", "back,psoas")
    if isinstance(value, str):
        groups = tuple(g.strip() for g in value.split(","))
    elif isinstance(value, list) and all(isinstance(g, str) for g in value):
        groups = tuple(g.strip() for g in value)
    else:
        raise ConfigError(f"{pick.where('groups')} {value!r} must be a list of group names")
    if not groups or not all(groups):
        raise ConfigError(f"{pick.where('groups')} {value!r} has an empty item")
    from myocomp.imaging.levels import parse_level_group

    unknown = [g for g in groups if g not in GROUP_BASES and parse_level_group(g) is None]
    if unknown:
        raise ConfigError(
            f"unknown group(s) {', '.join(unknown)}; known: {', '.join(GROUP_BASES)}"
        )
    return groups


def _model(pick: _Picker) -> str | None:
    value = pick.text("model")
    if not value:
        return None
    # Resolved once here: a shipped model is installed once, an unknown one fails before any
    # work starts, and the workers get an absolute results folder.
    from myocomp.segment.models import resolve_model

    local = Path(value).expanduser()
    return str(resolve_model(local.resolve() if local.exists() else value))


def resolve_batch_params(options: Mapping[str, Any], toml: Mapping[str, Any]) -> BatchParams:
    """:class:`BatchParams` from command-line ``options`` (None = not given) and a ``[batch]``
    table; raises :class:`ConfigError` on the first bad value.

    ``options`` keys: ``fat_threshold``, ``band_mm``, ``groups`` (comma-separated), ``model``,
    ``device``, ``volume_range`` (list of GROUP=LOW:HIGH), ``min_label_ml``, ``qc_images``,
    ``record_paths``, ``skip_anatomy_check``; the TOML table has the same keys (``volume_ranges`` a table, ``groups`` a
    list) plus ``max_anisotropy``.
    """
    from myocomp.imaging.qc import DEFAULT_VOLUME_RANGES_ML, QCConfig
    from myocomp.pipeline.qc_page import QC_IMAGE_MODES

    pick = _Picker(options, toml)
    fat_threshold = pick.number("fat_threshold", 0.5, OPTION_RULES["--fat-threshold"])
    ranges = dict(DEFAULT_VOLUME_RANGES_ML)
    ranges.update(parse_volume_ranges(toml.get("volume_ranges", {})))
    ranges.update(parse_volume_ranges(list(options.get("volume_range") or [])))
    qc = QCConfig(
        volume_ranges_ml=ranges,
        min_label_ml=pick.number("min_label_ml", 1.0, Rule(0.0)),
        max_anisotropy=pick.number("max_anisotropy", 4.0, Rule(1.0)),
    )
    return BatchParams(
        fat_threshold=fat_threshold,
        band_mm=pick.number("band_mm", 0.0, OPTION_RULES["--band-mm"]),
        groups=_groups(pick),
        model=_model(pick),
        device=pick.text("device", "auto", DEVICES),
        qc=qc,
        qc_images=pick.text("qc_images", "all", QC_IMAGE_MODES),
        record_paths=bool(options.get("record_paths") or False),
        skip_anatomy_check=_flag(pick, "skip_anatomy_check"),
    )


def _flag(pick: _Picker, key: str) -> bool:
    """A switch: on if given on the command line or true in the TOML (which must be a boolean)."""
    if pick.options.get(key):
        return True
    value = pick.toml.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"[batch] {key} {value!r} must be true or false")
    return value


def resolve_run_options(
    options: Mapping[str, Any], toml: Mapping[str, Any], *, slurm: bool = False
) -> RunOptions:
    """Where the batch runs: ``workers`` and ``scheduler`` (a command-line choice overrides the
    TOML's other one; ``slurm`` overrides both TOML values), validated."""
    pick = _Picker(options, toml)
    given = {k for k in ("workers", "scheduler") if options.get(k) is not None}
    if len(given) > 1 or (slurm and given):
        raise ConfigError("give only one of --workers, --scheduler, --slurm")
    workers = scheduler = None
    if not slurm and "scheduler" not in given:
        workers = pick.integer("workers", OPTION_RULES["--workers"])
    if not slurm and "workers" not in given:
        scheduler = pick.text("scheduler")
    if workers is not None and scheduler is not None:
        raise ConfigError("[batch] gives both workers and scheduler; keep one")
    return RunOptions(
        workers=workers,
        scheduler=scheduler,
        scheduler_timeout=pick.number("scheduler_timeout", 15.0, Rule(0.0, 3600.0, lo_open=True)),
        profile=pick.text("profile"),
    )
