"""The chronic-back-pain (CBP) study: phenotype schema, analyses, report, scoring.

Entry points: :func:`run_study` (everything, written to a folder), :func:`predict_person`
(score one person from ``model.json``), :class:`StudyConfig` / :func:`load_config`.
"""

from myocomp.study.phenotypes import StudyConfig, load_config
from myocomp.study.predict import predict_person
from myocomp.study.run import StudyResult, run_study

__all__ = ["StudyConfig", "StudyResult", "load_config", "predict_person", "run_study"]
