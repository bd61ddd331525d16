"""Fixtures of the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .cohort import build_cohort


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    return build_cohort(tmp_path_factory.mktemp("cohort"))
