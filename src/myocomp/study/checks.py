"""Checks of the study's inputs beyond the phenotype schema: the metrics table (numbers, ranges,
QC flags) and whether the models can be estimated at all on the analysed participants.

Each check raises :class:`~myocomp.errors.DataError` with one line naming the column (and row)
or the reason, so that no broken model or nomogram is ever written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from myocomp.errors import DataError
from myocomp.study.phenotypes import STUDY_METRICS, StudyConfig, _to_numeric, _where

__all__ = ["validate_metrics", "exclude_flagged", "qc_exclusion", "QCExclusion", "check_estimable", "MIN_EVENTS", "n_truncated_fov",
           "truncated_fov_message"]

#: fewest participants with, and without, CBP the main model and the nomogram need
MIN_EVENTS = 10
_TRUE_TEXT = {"true", "1", "1.0", "yes"}


def validate_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """A copy of the metrics table with its metric columns as float, checked as strictly as the
    phenotypes: text in a numeric column, a negative or infinite value -> :class:`DataError`
    naming the column and the row (spreadsheet numbering, with the participant)."""
    m = metrics.reset_index(drop=True).copy()
    config = StudyConfig()
    for col in (*STUDY_METRICS, "n_voxels", "voxel_volume_ml"):
        if col not in m.columns:
            continue
        try:
            values = _to_numeric(m, col, config)
        except DataError as exc:
            raise DataError(f"metrics table {exc}") from None
        bad = ~np.isfinite(values.fillna(0.0).to_numpy()) | (values < 0).to_numpy()
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise DataError(f"metrics table column '{col}': value {values.iloc[pos]:g} in "
                            f"{_where(m, pos)} is negative or not finite")
        if col in ("ff_mean", "intermat_fraction") and (values > 1).any():
            pos = int(np.flatnonzero((values > 1).to_numpy())[0])
            raise DataError(f"metrics table column '{col}': value {values.iloc[pos]:g} in "
                            f"{_where(m, pos)} is above 1 (a fraction)")
        m[col] = values
    return m


#: flags that describe the protocol, not a fault of the participant's data: counted and said,
#: never a reason to exclude (a cropped field of view cuts every participant's muscles alike;
#: a coverage-normalised group such as ``back_L1_L5`` compares across protocols)
INFORMATIONAL_FLAGS = ("qc_truncated_fov",)


def _flagged(table: pd.DataFrame, columns: tuple[str, ...] | None = None) -> pd.Series:
    cols = [c for c in table.columns if str(c).startswith("qc_") and c != "qc_notes"
            and c not in INFORMATIONAL_FLAGS] if columns is None else [c for c in columns if c in table.columns]
    flags = pd.Series(False, index=table.index)
    for c in cols:
        v = table[c]
        as_bool = (v.astype("string").str.strip().str.lower().isin(_TRUE_TEXT)
                   if not pd.api.types.is_bool_dtype(v) else v.fillna(False))
        flags |= as_bool.fillna(False).astype(bool)
    return flags


def n_truncated_fov(table: pd.DataFrame) -> int:
    """How many participants (distinct ``participant_id``; rows without that column) carry
    ``qc_truncated_fov``; 0 without the column."""
    cut = _flagged(table, INFORMATIONAL_FLAGS)
    return int(table.loc[cut, "participant_id"].nunique() if "participant_id" in table.columns else cut.sum())


def truncated_fov_message(n: int, of: int | None = None) -> str:
    """What the study says (command line and report) of ``n`` participants (``of`` so many) with
    ``qc_truncated_fov``."""
    who = f"{n:,} participant(s) with" if of is None else f"{n:,} of the {of:,} joined participants have"
    return (f"{who} muscles cut by the field of view (qc_truncated_fov): their volumes depend on "
            "coverage; a level group such as back_L1_L5 compares across protocols")


@dataclass(frozen=True)
class QCExclusion:
    """The participants whose rows carry a ``qc_*`` flag (the informational ones aside).

    ``ids``: their participant ids (sorted; row numbers as text without that column);
    ``by_flag``: participants per flag column; ``excluded``: False when ``include_flagged``
    kept them.
    """

    ids: tuple[str, ...]
    by_flag: dict[str, int]
    excluded: bool

    @property
    def n(self) -> int:
        return len(self.ids)

    def message(self) -> str:
        """What the study says of them (command line and report)."""
        if not self.excluded:
            return f"keeping {self.n} participant(s) with QC flags (include_flagged)"
        return (f"excluding {self.n} participant(s) with QC flags (qc_* columns; include_flagged "
                "keeps them)")


def qc_exclusion(table: pd.DataFrame | None, include_flagged: bool = False,
                 group: str | None = None) -> QCExclusion | None:
    """The participants :func:`exclude_flagged` drops (or keeps, with ``include_flagged``): those
    whose rows (of ``group``, when given and the table has a ``group`` column) carry any
    ``qc_*`` flag; None without any."""
    if table is None:
        return None
    flags = _flagged(table)
    if group is not None and "group" in table.columns:
        flags &= table["group"].astype(str) == group
    if not flags.any():
        return None
    ids = (table["participant_id"].astype(str) if "participant_id" in table.columns
           else pd.Series(table.index.astype(str), index=table.index))
    by_flag = {}
    for col in [c for c in table.columns if str(c).startswith("qc_") and c != "qc_notes"
                and c not in INFORMATIONAL_FLAGS]:
        n = int(ids[flags & _flagged(table, (col,))].nunique())
        if n:
            by_flag[str(col)] = n
    return QCExclusion(tuple(sorted(set(ids[flags]))), by_flag, not include_flagged)


def exclude_flagged(table: pd.DataFrame | None, include_flagged: bool = False,
                    say: Callable[[str], None] = lambda _m: None,
                    group: str | None = None) -> pd.DataFrame | None:
    """Drop the participants whose rows (of ``group``, when given and the table has a ``group``
    column) carry any ``qc_*`` flag, unless ``include_flagged``; say how many
    (:func:`qc_exclusion` counts them)."""
    if table is None:
        return None
    cut = _flagged(table, INFORMATIONAL_FLAGS)
    if group is not None and "group" in table.columns:
        cut &= table["group"].astype(str) == group
    if cut.any():
        say(truncated_fov_message(n_truncated_fov(table[cut])))
    qc = qc_exclusion(table, include_flagged, group)
    if qc is None:
        return table
    say(qc.message())
    if include_flagged:
        return table
    if "participant_id" in table.columns:
        keep = ~table["participant_id"].astype(str).isin(set(qc.ids))
    else:
        keep = ~table.index.astype(str).isin(set(qc.ids))
    return table[keep].reset_index(drop=True)


def check_estimable(d: pd.DataFrame) -> None:
    """Refuse an analysis table on which the adjusted main model cannot be estimated: too few
    events or non-events, one sex, a binary covariate without variation, a missing physical
    activity category, fewer than two sites or a site of one participant."""
    from myocomp.study.analyses import PA_LEVELS

    cols = ["cbp", "site", "z_intermat", "z_lmm", "age", "female", "diabetes", "dyslipidemia",
            "osteoporosis", "osteoarthritis", "pa_category"]
    cc = d.dropna(subset=[c for c in cols if c in d.columns])
    n, events = len(cc), int(cc["cbp"].sum()) if len(cc) else 0
    if events < MIN_EVENTS or n - events < MIN_EVENTS:
        raise DataError(f"column 'cbp': {events} of {n} analysed participants have CBP; the models "
                        f"need at least {MIN_EVENTS} with and {MIN_EVENTS} without")
    if cc["female"].nunique() < 2:
        sex = "female" if cc["female"].iloc[0] == 1 else "male"
        raise DataError(f"column 'sex': all {n} analysed participants are {sex}; the models adjust "
                        "for sex and need both")
    for col in ("diabetes", "dyslipidemia", "osteoporosis", "osteoarthritis"):
        if cc[col].nunique() < 2:
            raise DataError(f"column '{col}' is {cc[col].iloc[0]:g} for all {n} analysed "
                            "participants; a covariate without variation cannot be estimated")
    missing = [lv for lv in PA_LEVELS if not (cc["pa_category"] == lv).any()]
    if missing:
        raise DataError(f"column 'met_min_week': no analysed participant in the physical activity "
                        f"category {missing[0]!r}; check the values or pa_breaks")
    sizes = cc["site"].astype(str).value_counts()
    if len(sizes) < 2:
        raise DataError(f"column 'site': all {n} analysed participants are from one site; the "
                        "mixed models need at least two")
    if sizes.min() < 2:
        raise DataError(f"column 'site': site '{sizes.idxmin()}' has a single analysed participant; "
                        "its random intercept cannot be estimated (merge or drop that site)")
