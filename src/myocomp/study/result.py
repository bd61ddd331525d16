"""What a study run produces: :class:`StudyResult` and the format of ``model.json``.

Shared by the orchestrator (:mod:`myocomp.study.run`), the report (:mod:`myocomp.study.report`)
and scoring (:mod:`myocomp.study.predict`), so that none of them imports another for its types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from myocomp.study.checks import QCExclusion
from myocomp.study.phenotypes import JoinReport, StudyConfig

__all__ = ["MODEL_FORMAT", "MODEL_VERSION", "StudyResult"]

#: ``format`` field of ``model.json``
MODEL_FORMAT = "myocomp.study.model"
#: ``version`` field of ``model.json``; bumped when its layout changes
MODEL_VERSION = 1


@dataclass
class StudyResult:
    """Everything :func:`myocomp.study.run_study` produced.

    ``tables``: name -> DataFrame of numbers (also written to ``out_dir/tables/<name>.csv``);
    ``figures``: name -> path of the PNG (and ``nomogram_svg``); ``model``: the contents of
    ``model.json``; ``timings``: seconds per step; ``qc_exclusion``: the participants with QC
    flags, excluded before the join (or kept with ``include_flagged``), None without any.
    """

    out_dir: Path
    config: StudyConfig
    join: JoinReport
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Path]
    model: dict[str, Any]
    report_path: Path
    model_path: Path
    timings: dict[str, float] = field(default_factory=dict)
    n_analysed: int = 0
    qc_exclusion: QCExclusion | None = None
