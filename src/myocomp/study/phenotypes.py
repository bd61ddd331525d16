"""Phenotype tables of the CBP study: the schema, the TOML config that maps a user's columns onto
it, validation (types, ranges, codes, duplicates) and the join with the metrics table.

Our column names (the schema):

============== ======== ===========================================================
column         unit     meaning
============== ======== ===========================================================
participant_id text     joins with the metrics table
site           text     study site / scanner (random intercept)
age            years    0-120
sex            text     "female" / "male" (accepted codes: see :data:`SEX_CODES`)
bmi            kg/m²    10-80
cbp            0/1      chronic back pain (pain > 3 months)
pain_intensity 0-10     current back-pain intensity (numeric rating scale)
met_min_week   MET-min  physical activity per week, >= 0
osteoarthritis 0/1
osteoporosis   0/1
diabetes       0/1
dyslipidemia   0/1
height_cm      cm       optional, 100-250
============== ======== ===========================================================
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from myocomp import io
from myocomp.errors import ConfigError, DataError
from myocomp.imaging import composition

__all__ = [
    "REQUIRED_COLUMNS",
    "OPTIONAL_COLUMNS",
    "BINARY_COLUMNS",
    "STUDY_METRICS",
    "RANGES",
    "SEX_CODES",
    "StudyConfig",
    "JoinReport",
    "load_config",
    "read_table",
    "validate_phenotypes",
    "join_metrics",
]

REQUIRED_COLUMNS: tuple[str, ...] = (
    "participant_id", "site", "age", "sex", "bmi", "cbp", "pain_intensity", "met_min_week",
    "osteoarthritis", "osteoporosis", "diabetes", "dyslipidemia",
)
OPTIONAL_COLUMNS: tuple[str, ...] = ("height_cm",)
BINARY_COLUMNS: tuple[str, ...] = (
    "cbp", "osteoarthritis", "osteoporosis", "diabetes", "dyslipidemia",
)
NUMERIC_COLUMNS: tuple[str, ...] = ("age", "bmi", "pain_intensity", "met_min_week", "height_cm")
#: the metric columns (of :data:`myocomp.imaging.composition.METRIC_COLUMNS`) the study uses
STUDY_METRICS: tuple[str, ...] = tuple(c for c in composition.METRIC_COLUMNS if c in {
    "volume_ml", "ff_mean", "lean_volume_ml", "intermat_volume_ml", "intermat_fraction"})
#: closed plausible ranges of numeric phenotypes (values outside are an error)
RANGES: dict[str, tuple[float, float]] = {
    "age": (0.0, 120.0),
    "bmi": (10.0, 80.0),
    "pain_intensity": (0.0, 10.0),
    "met_min_week": (0.0, 100_000.0),
    "height_cm": (100.0, 250.0),
}
#: text codes of sex accepted without configuration (case-insensitive)
SEX_CODES: dict[str, str] = {
    "female": "female", "f": "female", "w": "female", "weiblich": "female", "woman": "female",
    "frau": "female",
    "male": "male", "m": "male", "männlich": "male", "maennlich": "male", "man": "male",
    "mann": "male",
}
_TRUE = {"1", "1.0", "true", "yes", "y", "ja", "j"}
_FALSE = {"0", "0.0", "false", "no", "n", "nein"}

_OPTION_KEYS = (
    "group", "intermat_metric", "zscore_method", "symptom_threshold", "bootstrap", "seed",
    "nagq", "pa_breaks", "zscore_height", "include_flagged",
)
_INTERMAT_METRICS = ("intermat_volume_ml", "intermat_fraction")
_ZSCORE_METHODS = ("cohort", "sex", "age_sex")


def _suggest(name: str, candidates: Any) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True)
class StudyConfig:
    """Column mapping and options of one study (the contents of ``study.toml``).

    Attributes
    ----------
    columns : our column name -> the user's column name (only the ones that differ).
    sex_coding : the user's code -> "female"/"male", needed when sex is coded as numbers.
    group : metrics group used (default "back").
    intermat_metric : "intermat_volume_ml" (default) or "intermat_fraction".
    zscore_method : reference model of the Z-scores: "cohort" (default), "sex", "age_sex".
    symptom_threshold : pain_intensity at or above which symptoms are moderate-to-severe (4).
    bootstrap : bootstrap repetitions of the nomogram validation (200).
    seed : seed of every random step (0).
    nagq : quadrature points of the mixed models (1 = Laplace).
    pa_breaks : MET-min/week cut points of the PA categories ((500, 5000)).
    zscore_height : add height_cm to the ``age_sex`` Z reference regression (False).
    include_flagged : keep metrics rows with a ``qc_*`` flag (False: they are excluded).
    """

    columns: dict[str, str] = field(default_factory=dict)
    sex_coding: dict[str, str] = field(default_factory=dict)
    group: str = "back"
    intermat_metric: str = "intermat_volume_ml"
    zscore_method: str = "cohort"
    symptom_threshold: float = 4.0
    bootstrap: int = 200
    seed: int = 0
    nagq: int = 1
    pa_breaks: tuple[float, float] = (500.0, 5000.0)
    zscore_height: bool = False
    include_flagged: bool = False

    def __post_init__(self) -> None:
        known = REQUIRED_COLUMNS + OPTIONAL_COLUMNS + STUDY_METRICS + ("lmm",)
        for ours in self.columns:
            if ours not in known:
                raise ConfigError(f"unknown column key '{ours}' in [columns]{_suggest(ours, known)}")
        for code, sex in self.sex_coding.items():
            if sex not in ("female", "male"):
                raise ConfigError(
                    f"[sex_coding] maps '{code}' to '{sex}'; values must be 'female' or 'male'"
                )
        if self.intermat_metric not in _INTERMAT_METRICS:
            raise ConfigError(
                f"intermat_metric must be one of {', '.join(_INTERMAT_METRICS)}, "
                f"got '{self.intermat_metric}'"
            )
        if self.zscore_method not in _ZSCORE_METHODS:
            raise ConfigError(
                f"zscore_method must be one of {', '.join(_ZSCORE_METHODS)}, "
                f"got '{self.zscore_method}'"
            )
        if not 0 < float(self.symptom_threshold) <= 10:
            raise ConfigError(f"symptom_threshold must be in (0, 10], got {self.symptom_threshold}")
        if int(self.seed) < 0 or int(self.seed) >= 2**32:
            raise ConfigError(f"seed must be a whole number in [0, 2^32), got {self.seed}")
        if int(self.bootstrap) < 0:
            raise ConfigError(f"bootstrap must be >= 0, got {self.bootstrap}")
        if int(self.nagq) < 1:
            raise ConfigError(f"nagq must be >= 1, got {self.nagq}")
        if self.zscore_height and self.zscore_method != "age_sex":
            raise ConfigError("zscore_height = true needs zscore_method = 'age_sex'")
        if len(self.pa_breaks) != 2:
            raise ConfigError(f"pa_breaks must be two numbers (MET-min/week), got {list(self.pa_breaks)}")
        lo, hi = self.pa_breaks
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo < hi):
            raise ConfigError(f"pa_breaks must be two increasing numbers >= 0, got {self.pa_breaks}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str | Path | None = None) -> StudyConfig:
        """Build from the TOML structure ``{columns: {...}, sex_coding: {...}, options: {...}}``.

        Unknown sections or keys raise :class:`ConfigError` naming the closest known key.
        """
        sections = ("columns", "sex_coding", "options")
        for key, value in raw.items():
            if key not in sections:
                raise ConfigError(
                    f"unknown config key '{key}'{_suggest(key, sections + _OPTION_KEYS)}; "
                    f"sections are [columns], [sex_coding], [options]", source=source)
            if not isinstance(value, dict):
                raise ConfigError(f"'{key}' must be a table ([{key}])", source=source)
        options = dict(raw.get("options", {}))
        for key in options:
            if key not in _OPTION_KEYS:
                raise ConfigError(
                    f"unknown config key '{key}' in [options]{_suggest(key, _OPTION_KEYS)}",
                    source=source)
        columns = {str(k): str(v) for k, v in raw.get("columns", {}).items()}
        sex_coding = {str(k).strip().lower(): str(v).strip().lower()
                      for k, v in raw.get("sex_coding", {}).items()}
        # TOML readers may write `female = 1`: accept both directions
        if sex_coding and set(sex_coding) <= {"female", "male"}:
            sex_coding = {str(v): k for k, v in sex_coding.items()}
        try:
            if "pa_breaks" in options:
                if not isinstance(options["pa_breaks"], list | tuple):
                    raise ConfigError(f"pa_breaks must be a list of two numbers, got {options['pa_breaks']!r}")
                options["pa_breaks"] = tuple(float(x) for x in options["pa_breaks"])
            return cls(columns=columns, sex_coding=sex_coding, **options)
        except ConfigError as exc:
            raise ConfigError(str(exc), source=source) from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid option value: {exc}", source=source) from None

    def with_options(self, **changes: Any) -> StudyConfig:
        """A copy with some options replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON/TOML-ready dict (the same structure :meth:`from_dict` reads)."""
        opts = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("columns", "sex_coding")}
        opts["pa_breaks"] = list(self.pa_breaks)
        return {"columns": dict(self.columns), "sex_coding": dict(self.sex_coding),
                "options": opts}


def load_config(path: str | Path | None) -> StudyConfig:
    """Read ``study.toml`` (``None`` -> defaults). Bad TOML or keys raise :class:`ConfigError`."""
    if path is None:
        return StudyConfig()
    raw = io.read_document(path, "config file", toml=True, invalid=ConfigError)
    return StudyConfig.from_dict(raw, source=Path(path))


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a phenotype table, cells as text: :func:`myocomp.io.read_table` with ``text=True``."""
    return io.read_table(path, text=True)


def _label(ours: str, config: StudyConfig) -> str:
    theirs = config.columns.get(ours, ours)
    return f"'{ours}'" if theirs == ours else f"'{ours}' (your column '{theirs}')"


def _where(df: pd.DataFrame, pos: int) -> str:
    row = f"row {pos + 2}"  # 1-based data row after a header line, as a spreadsheet shows it
    if "participant_id" in df.columns:
        row += f", participant {df['participant_id'].iloc[pos]}"
    return row


def _to_numeric(df: pd.DataFrame, col: str, config: StudyConfig) -> pd.Series:
    raw = df[col]
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        return raw.astype(float)
    text = raw.astype("string").str.strip()
    text = text.mask(text.isin(["", "NA", "na", "NaN", "nan", "."]))
    values = pd.to_numeric(text.str.replace(",", ".", regex=False), errors="coerce")
    _check_parsed(df, col, config, values, text, "numeric: text", text)
    return values.astype(float)


def _to_binary(df: pd.DataFrame, col: str, config: StudyConfig) -> pd.Series:
    text = df[col].astype("string").str.strip().str.lower()
    text = text.mask(text.isin(["", "na", "nan", "."]))
    out = pd.Series(np.nan, index=df.index)
    out[text.isin(_TRUE)] = 1.0
    out[text.isin(_FALSE)] = 0.0
    _check_parsed(df, col, config, out, text, "0/1 (or yes/no):", df[col])
    return out


def _check_parsed(df, col: str, config: StudyConfig, values, text, must: str, shown) -> None:
    """Refuse the first cell that holds text (``text`` not NA) that did not parse (``values`` NaN)."""
    bad = values.isna() & text.notna()
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"column {_label(col, config)} must be {must} '{shown.iloc[pos]}' in {_where(df, pos)}")


def _to_sex(df: pd.DataFrame, config: StudyConfig) -> pd.Series:
    text = df["sex"].astype("string").str.strip().str.lower()
    text = text.mask(text.isin(["", "na", "nan", "."]))
    # numbers written as 1.0 by spreadsheet tools count as 1
    text = text.str.replace(r"^(\d+)\.0+$", r"\1", regex=True)
    mapping = dict(SEX_CODES)
    mapping.update(config.sex_coding)
    out = text.map(mapping)
    bad = out.isna() & text.notna()
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        code = text.iloc[pos]
        hint = ("; numeric codes need a [sex_coding] table in the config, e.g. "
                "female = 1, male = 0" if str(code).isdigit() else
                "; accepted: female/male, f/m, w (weiblich)")
        raise DataError(
            f"column {_label('sex', config)}: unexpected code '{df['sex'].iloc[pos]}' in "
            f"{_where(df, pos)}{hint}"
        )
    return out.astype(object).where(out.notna(), None)


def validate_phenotypes(raw: pd.DataFrame, config: StudyConfig | None = None, *,
                        require: tuple[str, ...] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """Rename the user's columns to ours, check them and return a clean table.

    Checks: required columns present (a misspelt name gets the closest suggestion), numbers in
    numeric columns (else the column and first bad row are named), values in :data:`RANGES`,
    binary columns 0/1 (yes/no/true/false accepted), sex codes (:data:`SEX_CODES` or the
    config's ``sex_coding``), unique non-missing ``participant_id``. Missing values stay NaN
    (complete-case handling happens per model). Extra columns are kept unchanged.

    Returns a DataFrame with our names: ``participant_id`` and ``site`` as str, ``sex`` as
    "female"/"male", numbers as float, binary columns as float 0/1.
    """
    config = config or StudyConfig()
    rename = {theirs: ours for ours, theirs in config.columns.items()}
    for ours, theirs in config.columns.items():
        if theirs not in raw.columns and ours in require + OPTIONAL_COLUMNS + STUDY_METRICS:
            if ours in OPTIONAL_COLUMNS:
                continue
            if ours in STUDY_METRICS and ours not in require:
                continue
            raise DataError(
                f"config maps '{ours}' to column '{theirs}', which is not in the table"
                f"{_suggest(theirs, raw.columns)}"
            )
    df = raw.rename(columns=rename).copy()
    missing = [c for c in require if c not in df.columns]
    if missing:
        col = missing[0]
        unused = [c for c in df.columns if c not in require]
        more = f" (and {len(missing) - 1} more: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise DataError(
            f"required column '{col}' is missing{_suggest(col, unused)}{more}; "
            f"map your names in [columns] of the study config"
        )
    df = df.reset_index(drop=True)
    pid = df["participant_id"]
    if pid.isna().any():
        pos = int(np.flatnonzero(pid.isna().to_numpy())[0])
        raise DataError(f"column 'participant_id' is empty in row {pos + 2}")
    df["participant_id"] = pid.astype(str).str.strip()
    dup = df["participant_id"].duplicated(keep=False)
    if dup.any():
        ids = df.loc[dup, "participant_id"].unique()
        raise DataError(
            f"duplicate participant_id: '{ids[0]}' occurs "
            f"{int((df['participant_id'] == ids[0]).sum())} times"
            + (f" ({len(ids)} ids duplicated)" if len(ids) > 1 else "")
        )
    if "site" in df.columns:
        df["site"] = df["site"].astype("string").str.strip().astype(object)
        df.loc[df["site"].isna(), "site"] = None
    for col in NUMERIC_COLUMNS + STUDY_METRICS + ("lmm",):
        if col not in df.columns:
            continue
        values = _to_numeric(df, col, config)
        if col in RANGES:
            lo, hi = RANGES[col]
            out = (values < lo) | (values > hi)
            if out.any():
                pos = int(np.flatnonzero(out.to_numpy())[0])
                raise DataError(
                    f"column {_label(col, config)}: value {values.iloc[pos]:g} in "
                    f"{_where(df, pos)} is outside the plausible range [{lo:g}, {hi:g}]"
                )
        elif (values < 0).any():
            pos = int(np.flatnonzero((values < 0).to_numpy())[0])
            raise DataError(f"column {_label(col, config)}: negative value in {_where(df, pos)}")
        df[col] = values
    for col in BINARY_COLUMNS:
        if col in df.columns:
            df[col] = _to_binary(df, col, config)
    if "sex" in df.columns:
        df["sex"] = _to_sex(df, config)
    return df


@dataclass(frozen=True)
class JoinReport:
    """Counts of the phenotype-metrics join on ``participant_id``."""

    n_phenotypes: int
    n_metrics: int
    n_joined: int
    phenotypes_without_metrics: tuple[str, ...]
    metrics_without_phenotypes: tuple[str, ...]
    source: str  # "metrics table" or "phenotype table"

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_phenotypes": self.n_phenotypes,
            "n_metrics": self.n_metrics,
            "n_joined": self.n_joined,
            "n_phenotypes_without_metrics": len(self.phenotypes_without_metrics),
            "n_metrics_without_phenotypes": len(self.metrics_without_phenotypes),
            "phenotypes_without_metrics_first": list(self.phenotypes_without_metrics[:20]),
            "metrics_without_phenotypes_first": list(self.metrics_without_phenotypes[:20]),
            "source": self.source,
        }


def join_metrics(phenotypes: pd.DataFrame, metrics: pd.DataFrame | None, *,
                 group: str = "back") -> tuple[pd.DataFrame, JoinReport]:
    """Join validated phenotypes with the metrics table (rows of ``group``) on participant_id.

    With ``metrics=None`` the phenotype table must already hold the metric columns (a
    synthetic cohort). ``lmm`` is always recomputed as ``lean_volume_ml / bmi`` (mL·m²/kg).
    Unmatched ids on either side are listed in the :class:`JoinReport`; joining nothing is an
    error.
    """
    needed = ("lean_volume_ml", "intermat_volume_ml")
    if metrics is None:
        missing = [c for c in needed if c not in phenotypes.columns]
        if missing:
            raise DataError(
                f"no metrics table given and the phenotype table lacks {', '.join(missing)}; "
                f"pass --metrics"
            )
        if "group" in phenotypes.columns and phenotypes["group"].notna().any():
            groups = set(phenotypes["group"].dropna().astype(str))
            if groups != {group}:
                raise DataError(
                    f"the phenotype table holds metrics of group(s) {sorted(groups)}, "
                    f"config asks for '{group}'"
                )
        joined = phenotypes.copy()
        report = JoinReport(len(phenotypes), len(phenotypes), len(phenotypes), (), (),
                            "phenotype table")
    else:
        if "participant_id" not in metrics.columns:
            raise DataError("metrics table has no column 'participant_id'")
        m = metrics.copy()
        m["participant_id"] = m["participant_id"].astype(str).str.strip()
        if "group" in m.columns:
            available = sorted(set(m["group"].dropna().astype(str)))
            m = m[m["group"].astype(str) == group]
            if m.empty:
                raise DataError(
                    f"metrics table has no rows of group '{group}'{_suggest(group, available)}; "
                    f"groups present: {', '.join(available)}"
                )
        missing = [c for c in needed if c not in m.columns]
        if missing:
            raise DataError(
                f"metrics table lacks column '{missing[0]}'{_suggest(missing[0], m.columns)}"
            )
        dup = m["participant_id"].duplicated()
        if dup.any():
            raise DataError(
                f"metrics table has several rows of group '{group}' for participant "
                f"'{m.loc[dup, 'participant_id'].iloc[0]}'"
            )
        keep = ["participant_id"] + [c for c in STUDY_METRICS + ("n_voxels", "voxel_volume_ml")
                                     if c in m.columns]
        flags = [c for c in m.columns if str(c).startswith("qc_")]  # for the report's QC counts
        m = m[keep + flags]
        for col in keep[1:]:
            m[col] = pd.to_numeric(m[col], errors="coerce")
        overlap = [c for c in keep[1:] + flags if c in phenotypes.columns]
        joined = phenotypes.drop(columns=overlap).merge(m, on="participant_id", how="inner",
                                                        validate="one_to_one")
        ph_ids, m_ids = set(phenotypes["participant_id"]), set(m["participant_id"])
        report = JoinReport(
            len(phenotypes), len(m), len(joined),
            tuple(sorted(ph_ids - m_ids)), tuple(sorted(m_ids - ph_ids)), "metrics table",
        )
        if joined.empty:
            raise DataError(
                "no participant_id of the phenotype table occurs in the metrics table "
                f"(e.g. phenotypes '{next(iter(sorted(ph_ids)))}', metrics "
                f"'{next(iter(sorted(m_ids)))}')"
            )
    for col in needed:
        joined[col] = pd.to_numeric(joined[col], errors="coerce")
    joined["lmm"] = joined["lean_volume_ml"] / joined["bmi"]
    return joined.reset_index(drop=True), report
