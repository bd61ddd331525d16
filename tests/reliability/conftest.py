"""Fixtures of the reliability suite: small inputs built once per session, and a runner that
checks the error contract (exit 2, one stderr line, no traceback, nothing written)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imaging.helpers import toy_volume
from myocomp.cli import main
from myocomp.io import save_nifti


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file (and '<dir>' for folders) under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(argv: list[str], capsys) -> Result:
    """Run the CLI in-process; an uncaught exception (a traceback) fails the test."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def assert_refused(res: Result, expect: str | None = None) -> None:
    """Exit 2 and exactly one stderr line starting 'error:' (containing ``expect``)."""
    lines = res.err.splitlines()
    assert res.code == 2, f"exit {res.code}: {res.err}"
    assert len(lines) == 1, f"stderr has {len(lines)} lines: {res.err!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in res.err + res.out
    if expect is not None:
        assert expect.lower() in lines[0].lower(), lines[0]


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> Path:
    """A folder of small, valid and broken inputs (read-only for the tests: copy before use)."""
    d = tmp_path_factory.mktemp("inputs")
    water, fat, labels, affine = toy_volume(0)
    images = {
        "water": water, "fat": fat, "labels": labels, "in_phase": water + fat,
        "opposed_phase": np.abs(water - fat), "neg_fat": -fat, "zeros": np.zeros_like(water),
    }
    for name, data in images.items():
        save_nifti(data, affine, d / f"{name}.nii.gz")
    noisy = water.copy()
    rng = np.random.default_rng(1)
    flip = rng.random(noisy.shape) < 0.05
    noisy[flip] = -noisy[flip]
    save_nifti(noisy, affine, d / "water_some_negative.nii.gz")
    rotated = affine.copy()
    angle = 3e-4  # 0.3 mrad about z: far corners move > 1e-3 mm
    c, s = np.cos(angle), np.sin(angle)
    rotated[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ affine[:3, :3]
    save_nifti(fat, rotated, d / "fat_rotated.nii.gz")
    (d / "profile.json").write_text(json.dumps({"31": "autochthon_left", "32": "autochthon_right",
                                                "33": "iliopsoas_left", "34": "iliopsoas_right"}))
    (d / "dataset_abc.json").write_text(json.dumps(
        {"channel_names": {"0": "water"}, "labels": {"background": 0, "autochthon_left": "abc"}}))
    _header_bombs(d)
    return d


def _header_bombs(d: Path) -> None:
    import gzip

    import nibabel as nib

    for n in (600, 30000):
        hdr = nib.Nifti1Header()
        hdr.set_data_shape((n, n, n))
        hdr.set_data_dtype(np.float32)
        hdr.set_sform(np.eye(4), 1)
        (d / f"bomb{n}.nii.gz").write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4))
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((64, 64, 64))
    hdr.set_data_dtype(np.float32)
    hdr.set_sform(np.eye(4), 1)
    (d / "truncated.nii").write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 1000)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    """A 300-person synthetic cohort (phenotypes with metrics) as CSV, plus broken variants."""
    from myocomp.synth.cohort import simulate_cohort

    d = tmp_path_factory.mktemp("cohort")
    data = simulate_cohort(300, seed=3).data
    data.to_csv(d / "cohort.csv", index=False)
    metric_cols = ["volume_ml", "ff_mean", "lean_volume_ml", "intermat_volume_ml", "intermat_fraction"]
    pheno = data.drop(columns=[*metric_cols, "group", "lmm"])
    pheno.to_csv(d / "pheno.csv", index=False)
    metrics = data[["participant_id", "group", *metric_cols]].copy()
    metrics.to_csv(d / "metrics.csv", index=False)
    variants = {
        "one_sex": lambda t: t.assign(sex="female"),
        "no_events": lambda t: t.assign(cbp=0),
        "no_osteoporosis": lambda t: t.assign(osteoporosis=0),
        "met_1e300": lambda t: t.assign(met_min_week=t["met_min_week"].where(t.index != 3, 1e300)),
        "met_all_nan": lambda t: t.assign(met_min_week=np.nan),
        "single_site": lambda t: t.assign(site=t["site"].where(t.index != 3, "lonely")),
        "one_site": lambda t: t.assign(site="site_1"),
    }
    for name, change in variants.items():
        change(data.copy()).to_csv(d / f"{name}.csv", index=False)
    text = metrics.astype({"lean_volume_ml": object})
    text.loc[5, "lean_volume_ml"] = "abc"
    text.to_csv(d / "metrics_text.csv", index=False)
    neg = metrics.copy()
    neg.loc[5, "lean_volume_ml"] = -3.0
    neg.to_csv(d / "metrics_negative.csv", index=False)
    flagged = metrics.assign(qc_swap_suspected=data["sex"].eq("female").to_numpy())
    flagged.to_csv(d / "metrics_flag_females.csv", index=False)
    for name, text_ in {"pa_short": "[options]\npa_breaks = [500]\n",
                        "pa_int": "[options]\npa_breaks = 5\n",
                        "pa_long": "[options]\npa_breaks = [1, 2, 3]\n",
                        "seed_negative": "[options]\nseed = -1\n"}.items():
        (d / f"{name}.toml").write_text(text_)
    return d


@pytest.fixture(scope="session")
def study_run(cohort, tmp_path_factory) -> tuple[Path, str]:
    """One successful study (females flagged but kept with --include-flagged): (folder, stdout)."""
    import os

    out = tmp_path_factory.mktemp("study") / "out"
    old = os.umask(0o022)
    try:
        code = main(["study", "--data", str(cohort / "pheno.csv"), "--metrics",
                     str(cohort / "metrics_flag_females.csv"), "--out", str(out),
                     "--bootstrap", "0", "--include-flagged"])
    finally:
        os.umask(old)
    assert code == 0
    return out, ""


@pytest.fixture
def work(tmp_path, inputs) -> Path:
    """A fresh copy of the inputs for one test (its snapshot is compared after the run)."""
    d = tmp_path / "work"
    shutil.copytree(inputs, d)
    return d


def metrics_of(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)
