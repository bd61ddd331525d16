"""Batch at scale: fingerprint resume (no input byte read), intact-output checks, stage timing,
QC image modes, the streaming merge, per-row manifest errors and the output-folder lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from myocomp.cli import main
from myocomp.pipeline import store as store_mod
from myocomp.pipeline import task as task_mod
from myocomp.pipeline.lock import LOCK_NAME, OutputLockedError, acquire, output_lock
from myocomp.pipeline.manifest import read_manifest
from myocomp.pipeline.params import resolve_batch_params
from myocomp.pipeline.runner import run_batch

from .cohort import write_nifti_cohort

N = 6


def write_cohort(root: Path, n: int = N) -> Path:
    return write_nifti_cohort(root, n, bmi=25.0)


@pytest.fixture(scope="module")
def client():
    """An in-process cluster (threads), so that monkeypatched counters see the tasks' calls."""
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture()
def counted(monkeypatch):
    """Counts of input files hashed and of volumes loaded."""
    counts = {"sha256": 0, "load": 0}
    real_hash, real_load = store_mod.sha256_file, task_mod.load_volume

    def sha256_file(path, *a, **k):
        counts["sha256"] += 1
        return real_hash(path, *a, **k)

    def load_volume(p):
        counts["load"] += 1
        return real_load(p)

    monkeypatch.setattr(store_mod, "sha256_file", sha256_file)
    monkeypatch.setattr(task_mod, "load_volume", load_volume)
    return counts


def _reset(counts):
    counts.update(sha256=0, load=0)


def _rewrite_keeping_stat(path: Path, offset: int = 4) -> None:
    """Change bytes of a .gz header's MTIME field in place (the image stays the same), then put
    back size, mtime and inode: only a content hash can tell."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        old = fh.read(4)
        fh.seek(offset)
        fh.write(bytes((b + 1) % 256 for b in old))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_ino == st.st_ino and path.stat().st_size == st.st_size


def test_resume_compares_fingerprints_and_reads_no_image(tmp_path, client, counted) -> None:
    man = read_manifest(write_cohort(tmp_path))
    out = tmp_path / "out"
    params = resolve_batch_params({}, {})
    first = run_batch(man, out, params, client)
    assert (first.done, counted["load"]) == (N, N)
    reference = pd.read_parquet(out / "metrics.parquet")
    prov = json.loads((out / "participants" / "P0" / "provenance.json").read_text())
    water = prov["input_fingerprint"]["water"]["stat"][0]
    st = (tmp_path / "P0" / "water.nii.gz").stat()
    assert water == [st.st_size, st.st_mtime_ns, st.st_ino]

    _reset(counted)
    noop = run_batch(man, out, params, client, resume=True)
    assert (noop.done, noop.skipped) == (0, N)
    assert counted == {"sha256": 0, "load": 0}  # no input byte read

    # content changed behind an identical fingerprint: resume trusts the fingerprint ...
    _rewrite_keeping_stat(tmp_path / "P1" / "water.nii.gz")
    _reset(counted)
    assert run_batch(man, out, params, client, resume=True).skipped == N
    assert counted["sha256"] == 0
    # ... and --verify-hashes re-hashes every input and redoes exactly that participant
    _reset(counted)
    verified = run_batch(man, out, params, client, resume=True, verify_hashes=True)
    assert (verified.done, verified.skipped) == (1, N - 1)
    assert counted["load"] == 1 and counted["sha256"] == 3 * N  # water, fat, labels of every participant
    pd.testing.assert_frame_equal(pd.read_parquet(out / "metrics.parquet"), reference)

    # a touched file (new mtime, same bytes) is hashed again but not recomputed
    os.utime(tmp_path / "P2" / "labels.nii.gz")
    _reset(counted)
    touched = run_batch(man, out, params, client, resume=True)
    assert (touched.done, touched.skipped, counted["sha256"], counted["load"]) == (0, N, 1, 0)
    _reset(counted)
    assert run_batch(man, out, params, client, resume=True).skipped == N
    assert counted["sha256"] == 0  # the new fingerprint was recorded
    # a real change recomputes exactly that participant
    _rewrite_keeping_stat(tmp_path / "P3" / "water.nii.gz")
    os.utime(tmp_path / "P3" / "water.nii.gz")
    _reset(counted)
    changed = run_batch(man, out, params, client, resume=True)
    assert (changed.done, changed.skipped, counted["load"]) == (1, N - 1, 1)
    runs = {p: json.loads((out / "participants" / p / "provenance.json").read_text())["run_id"]
            for p in man.ids}  # fmt: skip
    assert runs["P3"] == changed.run_id and runs["P1"] == verified.run_id
    assert {runs[p] for p in ("P0", "P2", "P4", "P5")} == {first.run_id}


def test_noop_resume_skips_the_merge_unless_something_changed(tmp_path, client, monkeypatch) -> None:
    man = read_manifest(write_cohort(tmp_path, 3))
    out = tmp_path / "out"
    params = resolve_batch_params({}, {})
    merges = []
    real_merge = store_mod.ResultStore.merge
    monkeypatch.setattr(store_mod.ResultStore, "merge",
                        lambda self, ids: merges.append(len(ids)) or real_merge(self, ids))  # fmt: skip
    run_batch(man, out, params, client)
    reference = {n: (out / n).read_bytes() for n in ("metrics.parquet", "slices.parquet", "qc.html")}
    assert merges == [3]

    run_batch(man, out, params, client, resume=True)
    assert merges == [3]  # nothing changed: not merged again ...
    assert json.loads((out / "batch.json").read_text())["merge"]["skipped"] is True
    assert {n: (out / n).read_bytes() for n in reference} == reference  # ... and left as it was

    for damage in (
        lambda: (out / "qc.html").write_text("x"),  # a merged output changed
        lambda: (out / "slices.parquet").unlink(),  # or removed
        lambda: os.utime(out / "participants" / "P1" / "metrics.parquet"),  # a participant rewritten
    ):
        damage()
        run_batch(man, out, params, client, resume=True)
        assert json.loads((out / "batch.json").read_text())["merge"]["skipped"] is False
        assert {n: (out / n).read_bytes() for n in reference} == reference
    assert merges == [3, 3, 3, 3]
    (out / "participants" / "P2" / "provenance.json").unlink()  # P2 is recomputed: merged again
    assert run_batch(man, out, params, client, resume=True).done == 1 and len(merges) == 5


def test_truncated_participant_output_is_recomputed(tmp_path, client, counted) -> None:
    man = read_manifest(write_cohort(tmp_path, 3))
    out = tmp_path / "out"
    params = resolve_batch_params({}, {})
    run_batch(man, out, params, client)
    reference = pd.read_parquet(out / "metrics.parquet")
    target = out / "participants" / "P1" / "metrics.parquet"
    target.write_bytes(target.read_bytes()[:100])
    _reset(counted)
    resumed = run_batch(man, out, params, client, resume=True)
    assert (resumed.done, resumed.skipped, resumed.failed, counted["load"]) == (1, 2, 0, 1)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "metrics.parquet"), reference)


def test_stage_timing_and_qc_image_modes(tmp_path, client) -> None:
    man = read_manifest(write_cohort(tmp_path, 3))
    params = resolve_batch_params({"qc_images": "none"}, {})
    summary = run_batch(man, tmp_path / "none", params, client)
    batch = json.loads((tmp_path / "none" / "batch.json").read_text())
    assert set(batch["stage_seconds"]) == {"hash", "load", "segment", "quantify", "qc", "write"}
    for stage in batch["stage_seconds"].values():
        assert stage["n"] == 3 and 0 <= stage["median"] <= stage["p95"]
    assert summary.stage_seconds == batch["stage_seconds"]
    assert not list((tmp_path / "none").rglob("qc.png"))
    assert "base64" not in (tmp_path / "none" / "qc.html").read_text()
    flagged = resolve_batch_params({"qc_images": "flagged", "volume_range": ["back=1:2"]}, {})
    run_batch(man, tmp_path / "flagged", flagged, client)  # every back volume out of range
    assert len(list((tmp_path / "flagged").rglob("qc.png"))) == 3
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "none" / "metrics.parquet").drop(columns=[
            "qc_volume_out_of_range", "qc_notes"]),
        pd.read_parquet(tmp_path / "flagged" / "metrics.parquet").drop(columns=[
            "qc_volume_out_of_range", "qc_notes"]),
    )  # fmt: skip
    wide = resolve_batch_params({"qc_images": "flagged", "volume_range": ["back=1:1e9"]}, {})
    run_batch(man, tmp_path / "clean", wide, client)
    metrics = pd.read_parquet(tmp_path / "clean" / "metrics.parquet")
    flags = [c for c in metrics if c.startswith("qc_") and metrics[c].dtype == bool]
    flagged = set(metrics.loc[metrics[flags].any(axis=1), "participant_id"])
    images = {p.parent.name for p in (tmp_path / "clean").rglob("qc.png")}
    assert images == flagged  # an image exactly for the flagged participants


def test_streaming_merge_equals_one_concat(tmp_path, monkeypatch) -> None:
    from myocomp.io import write_table

    store = store_mod.ResultStore(tmp_path)
    frames = {}
    for k, pid in enumerate(["C", "A", "E", "B", "D"]):
        df = pd.DataFrame(
            {"participant_id": pid, "group": ["psoas", "back"], "volume_ml": [k, k + 0.5],
             "qc_notes": [None, None] if pid in "AC" else ["x", "x"], "n": [k, k]}
        )  # fmt: skip
        frames[pid] = df
        write_table(df, store.path(pid, "metrics.parquet"))
    monkeypatch.setattr(store_mod, "MERGE_BATCH", 2)  # three row groups
    qc = store.merge(list(frames))
    import pyarrow.parquet as pq

    merged = pd.read_parquet(tmp_path / "metrics.parquet")
    expected = (
        pd.concat(frames.values(), ignore_index=True)
        .sort_values(["participant_id", "group"], kind="stable")
        .reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(
        merged.drop(columns="qc_notes"), expected.drop(columns="qc_notes"), check_dtype=False
    )
    assert list(merged["qc_notes"].fillna("-")) == list(expected["qc_notes"].fillna("-"))
    assert pq.ParquetFile(tmp_path / "metrics.parquet").metadata.num_row_groups == 3
    assert [q[0] for q in qc] == ["A", "B", "C", "D", "E"]


def test_missing_and_unreadable_rows_become_errors(tmp_path: Path, capsys) -> None:
    """Issue 8: 20 phantoms, 2 missing files, 1 unreadable -> 17 results, 3 error rows, exit 0."""
    manifest = write_cohort(tmp_path, 20)
    (tmp_path / "P3" / "fat.nii.gz").unlink()
    (tmp_path / "P7" / "labels.nii.gz").unlink()
    unreadable = tmp_path / "P11" / "water.nii.gz"
    if os.geteuid() == 0:  # root reads anything: a folder where the file should be
        unreadable.unlink()
        unreadable.mkdir()
    else:
        unreadable.chmod(0)
    out = tmp_path / "out"
    code = main(["batch", str(manifest), "--out", str(out), "--workers", "1", "--no-progress"])
    text = capsys.readouterr()
    assert code == 0, text.err
    assert pd.read_parquet(out / "metrics.parquet")["participant_id"].nunique() == 17
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors["participant_id"]) == ["P11", "P3", "P7"]
    assert set(errors["stage"]) == {"manifest"}
    assert "20 participants: 17 done, 0 skipped, 3 failed" in text.out
    assert not (out / LOCK_NAME).exists()
    strict = main(["batch", str(manifest), "--out", str(tmp_path / "s"), "--strict", "--no-progress"])
    err = capsys.readouterr().err
    assert strict == 1 and "error: 3 problem(s) in manifest" in err
    assert not (tmp_path / "s").exists()  # refused before anything ran


def test_lock_refuses_a_second_run_and_takes_over_stale_ones(tmp_path: Path) -> None:
    said: list[str] = []
    with (
        output_lock(tmp_path, "run-one", "batch"),
        pytest.raises(OutputLockedError, match="in use by batch run run-one started 20"),
    ):
        acquire(tmp_path, "run-two", "batch")
    assert not (tmp_path / LOCK_NAME).exists()
    # a dead process on this host
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps(
        {"run_id": "ghost", "host": socket.gethostname(), "pid": dead.pid, "command": "batch",
         "started_utc": "2026-01-01T00:00:00+00:00"}))  # fmt: skip
    with output_lock(tmp_path, "run-three", "batch", say=said.append):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["run_id"] == "run-three"
    assert said and "took over a stale lock of run ghost" in said[0] and "is gone" in said[0]
    # another host: fresh heartbeat -> refused; old heartbeat -> taken over
    other = {"run_id": "far", "host": "elsewhere.example", "pid": 1, "command": "study",
             "started_utc": "2026-01-01T00:00:00+00:00"}  # fmt: skip
    (tmp_path / LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(OutputLockedError, match="study run far"):
        acquire(tmp_path, "run-four", "batch", stale_after_s=60)
    old = (tmp_path / LOCK_NAME).stat().st_mtime - 120
    os.utime(tmp_path / LOCK_NAME, (old, old))
    said.clear()
    with output_lock(tmp_path, "run-five", "batch", stale_after_s=60, say=said.append):
        pass
    assert "no heartbeat from host elsewhere.example" in said[0]


def test_a_second_batch_on_the_same_out_is_refused(tmp_path: Path, capsys) -> None:
    manifest = write_cohort(tmp_path, 1)
    out = tmp_path / "out"
    with output_lock(out, "the-other-run", "batch"):
        code = main(["batch", str(manifest), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "in use by batch run the-other-run" in err
    assert not (out / "participants").exists()


def test_study_takes_the_same_lock(tmp_path: Path, capsys) -> None:
    out = tmp_path / "study"
    with output_lock(out, "batch-in-progress", "batch"):
        code = main(["study", "--data", str(tmp_path / "cohort.parquet"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "in use by batch run batch-in-progress" in err
    assert not out.exists()


def test_a_lost_chunk_keeps_the_participants_it_finished(tmp_path, client) -> None:
    """Dask gave up on a chunk (its workers died): what the task finished in this run is done,
    the rest failed at stage 'worker'; an older run's outputs do not count."""
    from myocomp.pipeline.runner import _lost_chunk
    from myocomp.pipeline.store import ResultStore

    man = read_manifest(write_cohort(tmp_path, 3))
    out = tmp_path / "out"
    first = run_batch(man, out, resolve_batch_params({}, {}), client)
    store = ResultStore(out)
    (out / "participants" / "P2" / "provenance.json").unlink()  # P2 never finished
    outcomes = _lost_chunk(store, man.participants, first.run_id, "KilledWorker: died")
    assert [(o.participant_id, o.status, o.stage) for o in outcomes] == [
        ("P0", "done", ""), ("P1", "done", ""), ("P2", "failed", "worker")]  # fmt: skip
    assert outcomes[2].reason == "KilledWorker: died"
    later = _lost_chunk(store, man.participants[:1], "another-run", "KilledWorker: died")
    assert later[0].status == "failed"  # P0's outputs are from an earlier run
    metrics = out / "participants" / "P1" / "metrics.parquet"
    metrics.write_bytes(metrics.read_bytes()[:50])  # truncated: not finished
    assert _lost_chunk(store, man.participants[1:2], first.run_id, "x")[0].status == "failed"
