"""Rows without labels are segmented by --model inside the Dask workers (one predictor each)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("nnunetv2")

from myocomp.pipeline import BatchParams, read_manifest, run_batch  # noqa: E402
from myocomp.synth.phantom import write_phantom  # noqa: E402

pytestmark = pytest.mark.segment

SEEDS = (11, 12)  # held out from the demo model's training phantoms (1000+)


def _predictors() -> int:
    from myocomp.segment import nnunet

    return len(nnunet._PREDICTORS)


def test_batch_segments_with_the_shipped_demo_model(tmp_path: Path, monkeypatch) -> None:
    from distributed import Client, LocalCluster

    from myocomp.segment.models import resolve_model

    monkeypatch.setenv("MYOCOMP_HOME", str(tmp_path / "home"))  # inherited by the workers
    model = resolve_model("phantom-demo")  # installs the shipped archive once, in the driver
    rows = ["participant_id,water,fat,bmi"]
    truth = {}
    for seed in SEEDS:
        paths = write_phantom(tmp_path / f"S{seed}", seed=seed, n_slices=8)
        truth[f"S{seed}"] = json.loads(paths["truth"].read_text())["metrics"]
        rows.append(f"S{seed},S{seed}/water.nii.gz,S{seed}/fat.nii.gz,25")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    man = read_manifest(tmp_path / "m.csv")
    before = _predictors()
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        summary = run_batch(
            man, tmp_path / "out", BatchParams(model=str(model), device="cpu"), client
        )
        per_worker = client.run(_predictors)
    assert (summary.done, summary.failed) == (2, 0), summary.errors
    assert list(per_worker.values()) == [1]  # built once in the worker, reused for both
    assert _predictors() == before  # nothing was segmented in the driver
    metrics = pd.read_parquet(tmp_path / "out" / "metrics.parquet").set_index(
        ["participant_id", "group"]
    )
    for pid, t in truth.items():
        assert metrics.loc[(pid, "back"), "volume_ml"] == pytest.approx(
            t["back"]["volume_ml"], rel=0.15
        )
        prov = json.loads((tmp_path / "out" / "participants" / pid / "provenance.json").read_text())
        assert prov["parameters"]["labels_from"] == "model" and prov["parameters"]["model"] == str(
            model
        )
