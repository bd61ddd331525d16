"""Batch under faults (issue 9, batch parts): bad options and TOML values, a scheduler that
never answers, a driver write that fails, a full disk, a bad profile file, a truncated output."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from myocomp.cli import main
from pipeline.cohort import write_nifti_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_nifti_cohort(tmp_path_factory.mktemp("faults"), 3)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("toml", "args", "message"),
    [
        ('fat_threshold = "abc"', [], "[batch] fat_threshold must be a finite number in (0, 1], got 'abc'"),
        ('workers = "two"', [], "[batch] workers must be a whole number in [1, 1024], got 'two'"),
        ("groups = 5", [], "[batch] groups 5 must be a list of group names"),
        ("", ["--band-mm", "nan"], "--band-mm must be a finite number in [0, 200], got nan"),
        ("", ["--band-mm", "inf"], "--band-mm must be a finite number in [0, 200], got inf"),
        ("", ["--band-mm", "-1"], "--band-mm must be a finite number in [0, 200], got -1"),
        ("", ["--fat-threshold", "0"], "--fat-threshold must be a finite number in (0, 1], got 0"),
        ("workers = 0", [], "[batch] workers must be a whole number in [1, 1024], got 0"),
        ("min_label_ml = -1", [], "[batch] min_label_ml must be a finite number in [0, inf]"),
        ('qc_images = "some"', [], "[batch] qc_images 'some' must be one of all, flagged, none"),
        ('device = "tpu"', [], "[batch] device 'tpu' must be one of auto, cpu, cuda"),
        ("max_anisotropy = true", [], "[batch] max_anisotropy must be a finite number"),
        ("", ["--scheduler-timeout", "0"], "--scheduler-timeout must be a finite number in (0, 3600]"),
        ("skip_anatomy_check = 1", [], "[batch] skip_anatomy_check 1 must be true or false"),
        ("volume_ranges = 3", [], "volume_ranges must be a table"),
    ],
)
def test_bad_options_are_refused_before_any_work(
    cohort: Path, tmp_path: Path, capsys, toml: str, args: list[str], message: str
) -> None:
    cfg = tmp_path / "batch.toml"
    cfg.write_text(f"[batch]\n{toml}\n")
    out = tmp_path / "out"
    code = main(["batch", str(cohort), "--out", str(out), "--config", str(cfg), *args])
    assert code == 2
    assert message in one_error_line(capsys)
    assert not out.exists()


def test_a_scheduler_that_never_answers_gives_exit_2_within_the_timeout(
    cohort: Path, tmp_path: Path, capsys
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepts TCP connections (the kernel does), never says a word
        address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        code = main(["batch", str(cohort), "--out", str(tmp_path / "out"), "--scheduler", address,
                     "--scheduler-timeout", "2", "--no-progress"])  # fmt: skip
        elapsed = time.monotonic() - start
    assert code == 2 and elapsed < 10, elapsed
    assert f"cannot connect to the Dask scheduler at {address} within 2 s" in one_error_line(capsys)
    assert not (tmp_path / "out" / "participants").exists()


def test_a_failing_driver_write_does_not_stop_the_others(
    cohort: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    from myocomp.pipeline import qc_page

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(qc_page, "write_qc_html", full)
    out = tmp_path / "out"
    code = main(["batch", str(cohort), "--out", str(out), "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "could not write qc.html: No space left on device" in err[0]
    assert pd.read_parquet(out / "metrics.parquet")["participant_id"].nunique() == 3
    assert (out / "errors.csv").is_file() and not (out / "qc.html").exists()
    batch = json.loads((out / "batch.json").read_text())
    assert batch["done"] == 3 and batch["output_problems"] == [
        "qc.html: No space left on device"
    ]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_a_bad_profile_file_is_that_participants_error(tmp_path: Path, capsys) -> None:
    manifest = write_nifti_cohort(tmp_path, 2)
    (tmp_path / "bad.json").write_text('{"labels": {"background": 0, "autochthon_left": "abc"}}')
    manifest.write_text(manifest.read_text().replace("P1/labels.nii.gz,mrsegmentator",
                                                     "P1/labels.nii.gz,bad.json"))  # fmt: skip
    out = tmp_path / "out"
    code = main(["batch", str(manifest), "--out", str(out), "--workers", "1", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors["participant_id"]) == ["P1"] and list(errors["stage"]) == ["manifest"]
    assert "profile" in errors["reason"].iloc[0]


def test_resume_over_a_truncated_participant_table(cohort: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["batch", str(cohort), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    reference = pd.read_parquet(out / "metrics.parquet")
    target = out / "participants" / "P2" / "slices.parquet"
    target.write_bytes(target.read_bytes()[:50])
    capsys.readouterr()
    code = main(["batch", str(cohort), "--out", str(out), "--workers", "1", "--resume",
                 "--no-progress"])  # fmt: skip
    assert code == 0 and "1 done, 2 skipped, 0 failed" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(out / "metrics.parquet"), reference)
    assert len(pd.read_parquet(out / "slices.parquet"))


INNER = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from pathlib import Path

    mnt, manifest, result = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    filler = mnt / "filler"
    filler.write_bytes(b"\\0" * (free - 200 * 1024))  # leave room for about two participants
    out = mnt / "out"
    cmd = [sys.executable, "-c", "import sys; from myocomp.cli import main; sys.exit(main(sys.argv[1:]))",
           "batch", manifest, "--out", str(out),
           "--workers", "1", "--no-progress"]
    full = subprocess.run(cmd, capture_output=True, text=True)
    state = {"full_code": full.returncode, "full_err": full.stderr}
    state["tmp_left"] = [str(p) for p in out.rglob("*") if ".tmp" in p.name]
    state["participants"] = {
        p.name: sorted(f.name for f in p.iterdir()) for p in (out / "participants").iterdir()
    } if (out / "participants").exists() else {}
    filler.unlink()
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    state.update(resume_code=resumed.returncode, resume_out=resumed.stdout, resume_err=resumed.stderr)
    result.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.parquet", "slices.parquet", "errors.csv"):
        if (out / name).exists():
            (result / name).write_bytes((out / name).read_bytes())
    (result / "state.json").write_text(json.dumps(state))
    """
)


def _can_mount_tmpfs() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (unshare -m + mount -t tmpfs)"
    if shutil.which("unshare") is None:
        return "unshare not installed"
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt && umount /mnt"],
        capture_output=True,
    )
    return None if probe.returncode == 0 else f"cannot mount a tmpfs: {probe.stderr.decode()}"


def test_full_disk_leaves_nothing_half_written_and_resume_gives_clean_tables(
    tmp_path: Path,
) -> None:
    reason = _can_mount_tmpfs()
    if reason:
        pytest.skip(reason)
    manifest = write_nifti_cohort(tmp_path, 8)
    reference = tmp_path / "reference"
    assert main(["batch", str(manifest), "--out", str(reference), "--workers", "1",
                 "--no-progress"]) == 0  # fmt: skip
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "inner.py").write_text(INNER)
    result = tmp_path / "result"
    script = (f"mount -t tmpfs -o size=4m tmpfs {mnt} && exec {sys.executable} "
              f"{tmp_path / 'inner.py'} {mnt} {manifest} {result}")  # fmt: skip
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    state = json.loads((result / "state.json").read_text())
    err = state["full_err"]
    assert state["full_code"] == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "No space left on device" in err and not state["tmp_left"]
    complete = ["metrics.parquet", "provenance.json", "qc.png", "slices.parquet"]
    kinds = [names for names in state["participants"].values()]
    assert all(names in ([], complete) for names in kinds), kinds  # all or nothing
    assert [] in kinds and complete in kinds
    assert state["resume_code"] == 0, state["resume_err"]
    assert "0 failed" in state["resume_out"]
    for name in ("metrics.parquet", "slices.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(result / name), pd.read_parquet(reference / name)
        )
