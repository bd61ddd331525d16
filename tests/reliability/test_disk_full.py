"""A full disk (a small tmpfs, mounted in a private mount namespace) during quantify and study:
one error line, exit 2, nothing half-written, an older output keeps its bytes.

Needs root and ``unshare -m``; skipped with the reason elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _can_mount() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    if shutil.which("unshare") is None:
        return "unshare not installed"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=16k tmpfs /mnt"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare -m / mount failed: {probe.stderr.strip()}"


REASON = _can_mount()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _on_full_disk(folder: Path, free_kib: int, argv: list[str]) -> tuple[int, str, list[str], str]:
    """Mount a 4 MiB tmpfs on ``folder`` with an old ``old.csv``, fill it to ``free_kib`` free,
    run the CLI; returns (exit code, stderr, files left in the folder, old.csv's content)."""
    folder.mkdir()
    cli = " ".join(f"'{a}'" for a in [sys.executable, "-m", "myocomp", *map(str, argv)])
    script = f"""
        mount -t tmpfs -o size=4m tmpfs '{folder}' || exit 99
        echo old > '{folder}/old.csv'
        dd if=/dev/zero of='{folder}/filler' bs=4k 2>/dev/null
        truncate -s -{free_kib}k '{folder}/filler'
        {cli} 2> '{folder}.err' > /dev/null
        echo "rc=$?"
        ls -A '{folder}'
        echo "--"
        cat '{folder}/old.csv'
    """
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                          env=env, timeout=600)
    lines = proc.stdout.splitlines()
    assert lines and lines[0].startswith("rc="), proc.stdout + proc.stderr
    sep = lines.index("--")
    err = Path(f"{folder}.err").read_text()
    return int(lines[0][3:]), err, sorted(lines[1:sep]), "\n".join(lines[sep + 1:])


def test_quantify_on_a_full_disk_writes_nothing(work):
    target = work.parent / "disk"
    rc, err, left, old = _on_full_disk(target, 8, [
        "quantify", "--water", work / "water.nii.gz", "--fat", work / "fat.nii.gz",
        "--labels", work / "labels.nii.gz", "--out", target / "old.csv",
        "--slices", target / "slices.csv", "--provenance", target / "prov.json"])
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "no space left" in err
    assert left == ["filler", "old.csv"]  # no metrics, slices, provenance or staging folder
    assert old == "old"


def test_study_on_a_full_disk_writes_nothing(cohort, tmp_path):
    target = tmp_path / "disk"
    rc, err, left, old = _on_full_disk(target, 200, [
        "study", "--data", cohort / "cohort.csv", "--out", target / "study", "--bootstrap", "0"])
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "no space left" in err
    assert str(target / "study") in err  # names the output, not the staging folder
    assert left == ["filler", "old.csv"]  # no tables, no figures, no model, no staging folder
    assert old == "old"
