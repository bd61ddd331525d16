"""`myocomp batch` end to end on a cohort of 20 phantoms with three broken participants.

One module-scoped reference run (--workers 2) is compared with --workers 1, an external
scheduler on 127.0.0.1, --resume/--strict, and a run killed with SIGKILL and resumed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from myocomp.cli import main

from .cohort import BROKEN, PHI_STRINGS

N_TOTAL, N_GOOD = 20, 17


def run_cli(capsys, *args: str, progress: bool = False) -> tuple[int, str]:
    code = main(["batch", *map(str, args), "--progress" if progress else "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def run_ids(out: Path) -> dict[str, str]:
    return {
        p.parent.name: json.loads(p.read_text())["run_id"]
        for p in (out / "participants").glob("*/provenance.json")
    }


def test_failures_are_isolated_and_reported(reference, cohort: Path, capsys) -> None:
    out = reference
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert metrics["participant_id"].nunique() == N_GOOD
    assert not metrics.duplicated(["participant_id", "group"]).any()
    assert set(metrics["participant_id"]).isdisjoint(BROKEN)
    # merged order is deterministic: participant, then group
    assert metrics[["participant_id", "group"]].equals(
        metrics[["participant_id", "group"]]
        .sort_values(["participant_id", "group"])
        .reset_index(drop=True)
    )
    errors = pd.read_csv(out / "errors.csv")
    assert dict(zip(errors["participant_id"], errors["stage"], strict=True)) == BROKEN
    reasons = dict(zip(errors["participant_id"], errors["reason"], strict=True))
    assert "truncated or corrupt" in reasons["P90_truncated"]
    assert "labels are on another grid" in reasons["P91_labelgrid"]
    assert "no fat series" in reasons["P92_dicom_nofat"]
    assert all("\n" not in r for r in reasons.values())
    for pid in metrics["participant_id"].unique():
        folder = out / "participants" / pid
        assert sorted(f.name for f in folder.iterdir()) == [
            "metrics.parquet", "provenance.json", "qc.png", "slices.parquet"
        ]  # fmt: skip
    prov = json.loads((out / "participants" / "P16_stations" / "provenance.json").read_text())
    assert set(prov["input_sha256"]) == {"water_stations", "fat_stations", "labels"}
    assert (
        prov["parameters"]["fat_threshold"] == 0.5
        and prov["parameters"]["source_kind"] == "stations"
    )
    assert {"myocomp", "numpy", "dask", "pydicom"} <= set(prov["versions"])
    summary = json.loads((out / "batch.json").read_text())
    assert (summary["done"], summary["skipped"], summary["failed"]) == (N_GOOD, 0, 3)
    html = (out / "qc.html").read_text()
    assert all(pid in html for pid in BROKEN) and html.count("data:image/png;base64,") == N_GOOD
    assert {
        "qc_swap_suspected",
        "qc_missing_labels",
        "qc_volume_out_of_range",
        "qc_geometry",
    } <= set(metrics)
    assert not metrics.loc[metrics["participant_id"] == "P16_stations", "qc_swap_suspected"].any()


def test_summary_says_how_many_failed_and_strict_exits_1(
    reference, cohort: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(reference, out)  # keeps mtimes; the reference stays untouched
    before = run_ids(out)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "participants").glob("*/metrics.parquet")}
    code, text = run_cli(capsys, cohort, "--out", out, "--workers", "2", "--resume", "--strict")
    assert code == 1
    assert f"{N_TOTAL} participants: 0 done, {N_GOOD} skipped, 3 failed" in text
    assert "3 failed: see" in text
    assert run_ids(out) == before  # nothing redone
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_no_identifying_dicom_field_reaches_any_output(reference) -> None:
    out = reference
    assert (out / "participants" / "P15_dicom" / "metrics.parquet").is_file()
    checked = 0
    for path in out.rglob("*"):
        if not path.is_file():
            continue
        raw = path.read_bytes()
        texts = [raw.decode("latin-1")]
        if path.suffix == ".html":  # inline images are the qc.png files checked as such; base64
            # text could spell a short name by chance
            texts = [re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", texts[0])]
        if path.suffix == ".parquet":  # compressed: check the decoded cells and the schema
            df = pd.read_parquet(path)
            texts.append(df.to_csv())
            import pyarrow.parquet as pq

            texts.append(str(pq.read_schema(path).metadata))
        for text in texts:
            for secret in PHI_STRINGS:
                assert secret.lower() not in text.lower(), f"{secret!r} found in {path}"
        checked += 1
    assert checked >= 4 * N_GOOD + 5


def test_same_results_with_one_worker(reference, cohort: Path, tmp_path: Path, capsys) -> None:
    out = reference
    code, text = run_cli(capsys, cohort, "--out", tmp_path / "w1", "--workers", "1", progress=True)
    assert code == 0 and "3 failed" in text
    assert (
        f"{N_TOTAL}/{N_TOTAL}" in text and f"done {N_GOOD} · skipped 0 · failed 3" in text
    )  # progress
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "w1" / "metrics.parquet"),
        pd.read_parquet(out / "metrics.parquet"),
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "w1" / "slices.parquet"), pd.read_parquet(out / "slices.parquet")
    )
    assert (tmp_path / "w1" / "errors.csv").read_text() == (out / "errors.csv").read_text()


@pytest.fixture()
def external_scheduler(tmp_path: Path):
    """`dask scheduler` on 127.0.0.1 and `dask worker` (2 processes) as subprocesses."""
    dask_cli = [sys.executable, "-m", "dask"]
    info = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [*dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(info)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not info.exists():
            assert procs[0].poll() is None and time.monotonic() < deadline, (
                "scheduler did not start"
            )
            time.sleep(0.05)
        time.sleep(0.1)  # the file is written in one go, but give the writer a moment
        address = json.loads(info.read_text())["address"]
        procs.append(
            subprocess.Popen(
                [*dask_cli, "worker", "--scheduler-file", str(info), "--nworkers", "2",
                 "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        yield address
    finally:
        if info.exists():
            from distributed import Client

            try:  # the quickest clean stop: the scheduler tells its workers to close
                with Client(json.loads(info.read_text())["address"], timeout=10) as client:
                    client.shutdown()
            except (OSError, TimeoutError):
                pass
        for proc in reversed(procs):
            if proc.poll() is None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_same_results_on_an_external_scheduler(
    reference, cohort: Path, tmp_path: Path, capsys, external_scheduler: str
) -> None:
    out = reference
    assert external_scheduler.startswith("tcp://127.0.0.1:")
    code, text = run_cli(
        capsys, cohort, "--out", tmp_path / "ext", "--scheduler", external_scheduler
    )
    assert code == 0 and "3 failed" in text
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "ext" / "metrics.parquet"),
        pd.read_parquet(out / "metrics.parquet"),
    )


def test_killed_batch_resumes_without_redoing_finished_work(
    reference, cohort: Path, tmp_path: Path, capsys
) -> None:
    out = reference
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-c", "import sys; from myocomp.cli import main; sys.exit(main(sys.argv[1:]))",
           "batch", str(cohort), "--out", str(killed), "--workers", "1", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while len(run_ids(killed)) < N_GOOD // 2:
            assert proc.poll() is None, "the batch ended before it could be killed"
            assert time.monotonic() < deadline, "the batch made no progress"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker processes
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = run_ids(killed)
    assert N_GOOD // 2 <= len(finished) < N_GOOD
    assert not (killed / "metrics.parquet").exists()
    mtimes = {
        pid: (killed / "participants" / pid / "metrics.parquet").stat().st_mtime_ns
        for pid in finished
    }

    code, text = run_cli(capsys, cohort, "--out", killed, "--workers", "2", "--resume")
    assert code == 0
    assert f"{N_GOOD - len(finished)} done, {len(finished)} skipped, 3 failed" in text
    after = run_ids(killed)
    assert {pid: after[pid] for pid in finished} == finished  # finished participants not redone
    assert {
        pid: (killed / "participants" / pid / "metrics.parquet").stat().st_mtime_ns
        for pid in finished
    } == mtimes
    resumed = pd.read_parquet(killed / "metrics.parquet")
    pd.testing.assert_frame_equal(resumed, pd.read_parquet(out / "metrics.parquet"))
    assert not resumed.duplicated(["participant_id", "group"]).any()


def test_dicom_folders_are_recorded_by_hash_unless_asked(reference, cohort: Path, tmp_path) -> None:
    import hashlib

    from myocomp.pipeline.manifest import read_manifest
    from myocomp.pipeline.params import resolve_batch_params
    from myocomp.pipeline.task import process_participant

    (p,) = [p for p in read_manifest(cohort).participants if p.participant_id == "P15_dicom"]
    text = (reference / "participants" / "P15_dicom" / "provenance.json").read_text()
    assert str(p.dicom_dir) not in text and "P15_dicom/dicom" not in text
    record = json.loads(text)["inputs"]["dicom"]
    assert record["participant_id"] == "P15_dicom" and record["files"] == 16
    assert record["folder_sha256"] == hashlib.sha256(str(p.dicom_dir).encode()).hexdigest()
    params = resolve_batch_params({"record_paths": True}, {})
    assert process_participant(p, tmp_path, params, "r").status == "done"
    prov = json.loads((tmp_path / "participants" / "P15_dicom" / "provenance.json").read_text())
    assert prov["inputs"]["dicom"]["folder"] == str(p.dicom_dir)
