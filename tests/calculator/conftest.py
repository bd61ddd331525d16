"""Session fixtures of the calculator tests: a small synthetic study (its model.json, report.html
and calculator.html) and a headless Chromium driven over the DevTools protocol.

Chromium is Debian's ``chromium`` package. Where it is missing and this is root with apt, the
fixture installs it (once, under a lock, for parallel workers); elsewhere the browser tests skip
with the reason, except under CI (``CI=true``), where a missing browser fails them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from myocomp.cli import main

from .cdp import Browser, find_chromium

N_PEOPLE = 3000
#: where screenshots are copied when set (they are always written under pytest's tmp dir)
ARTIFACTS_ENV = "MYOCOMP_TEST_ARTIFACTS"


@pytest.fixture(scope="session")
def study_dir(tmp_path_factory) -> Path:
    """``myocomp synth-cohort --n 3000`` then ``myocomp study`` with 5 bootstrap replicates."""
    tmp = tmp_path_factory.mktemp("calc_study")
    assert main(["synth-cohort", "--n", str(N_PEOPLE), "--seed", "5",
                 "--out", str(tmp / "cohort.parquet")]) == 0
    out = tmp / "study"
    assert main(["study", "--data", str(tmp / "cohort.parquet"), "--out", str(out),
                 "--bootstrap", "5", "--seed", "1"]) == 0
    return out


def _install_chromium() -> str:
    """Install Debian's chromium with apt; returns why it could not, or ''."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "chromium is not installed (and this is not root with apt-get to install it)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with open("/tmp/myocomp-chromium-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel worker may be installing it
        if find_chromium():
            return ""
        for cmd in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "chromium"]):
            run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
            if run.returncode != 0:
                return f"{' '.join(cmd)} failed: {run.stderr.strip()[-300:]}"
    return "" if find_chromium() else "apt-get installed chromium but it is not on PATH"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the Chromium executable (installed if missing and possible)."""
    path = find_chromium()
    if path is None:
        reason = _install_chromium()
        path = find_chromium()
        if path is None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"browser tests must run in CI: {reason}")
            pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def browser(chromium):
    """One headless Chromium page, 1400 px wide."""
    b = Browser(chromium, width=1400, height=1000)
    yield b
    b.close()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """Folder for screenshots; also copied to $MYOCOMP_TEST_ARTIFACTS by :func:`keep`."""
    return tmp_path_factory.mktemp("browser_artifacts")


def keep(path: Path) -> Path:
    """Copy an artefact to $MYOCOMP_TEST_ARTIFACTS when that is set; returns ``path``."""
    target = os.environ.get(ARTIFACTS_ENV)
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(target) / path.name)
    return path
