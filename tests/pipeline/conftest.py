"""Fixtures of the pipeline tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from . import slurm_local
from .cohort import build_cohort


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    return build_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="session")
def reference(cohort: Path, tmp_path_factory) -> Path:
    """The reference run of the cohort: --workers 2 (other runs must give the same tables)."""
    from myocomp.cli import main

    out = tmp_path_factory.mktemp("batch") / "ref"
    code = main(["batch", str(cohort), "--out", str(out), "--workers", "2", "--no-progress"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node SLURM cluster (see slurm_local.py); SLURM_CONF points at it.

    Skipped where it cannot run (not root, no apt-get, packages unreachable); where it can, a
    cluster that does not come up is a failure, not a skip.
    """
    reason = slurm_local.unavailable()
    if reason:
        pytest.skip(reason)
    try:
        slurm_local.install()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    cluster = slurm_local.start(tmp_path_factory.mktemp("slurm"))
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
