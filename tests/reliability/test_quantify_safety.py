"""quantify: QC flags and warning line, outputs committed together with the umask's mode,
geometry tolerance on voxel positions, bounded memory on header bombs and far-apart stations."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from myocomp.imaging.dixon import AFFINE_ATOL, grid_distance_mm, same_grid

from .conftest import assert_refused, run_cli, snapshot

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _quantify(work, *extra):
    return ["quantify", "--labels", str(work / "labels.nii.gz"), "--bmi", "24", *extra]


def test_swapped_water_and_fat_is_flagged_with_one_warning_line(work, capsys):
    out = work / "m.csv"
    res = run_cli(_quantify(work, "--water", work / "fat.nii.gz", "--fat", work / "water.nii.gz",
                            "--out", out), capsys)
    assert res.code == 0, res.err
    m = pd.read_csv(out)
    assert m["qc_swap_suspected"].all()
    warnings = [line for line in res.err.splitlines() if line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: QC flags qc_swap_suspected")


def test_some_negative_water_sets_qc_signal(work, capsys):
    out = work / "m.csv"
    res = run_cli(_quantify(work, "--water", work / "water_some_negative.nii.gz", "--fat",
                            work / "fat.nii.gz", "--out", out), capsys)
    assert res.code == 0, res.err
    m = pd.read_csv(out)
    assert m["qc_signal"].all() and "water negative in" in m["qc_notes"].iloc[0]
    assert "qc_signal" in res.err


def test_clean_input_has_no_flag_and_in_phase_is_accepted(work, capsys):
    out = work / "m.parquet"
    res = run_cli(_quantify(work, "--water", work / "water.nii.gz", "--fat", work / "fat.nii.gz",
                            "--in-phase", work / "in_phase.nii.gz", "--groups", "back", "--out", out,
                            "--provenance", work / "p.json"), capsys)
    assert res.code == 0, res.err
    m = pd.read_parquet(out)
    assert not m[["qc_swap_suspected", "qc_signal", "qc_geometry"]].any().any()
    assert json.loads((work / "p.json").read_text())["qc"]["signal"] is False


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_follow_the_umask(mask, mode, work, capsys):
    old = os.umask(mask)
    try:
        res = run_cli(_quantify(work, "--water", work / "water.nii.gz", "--fat", work / "fat.nii.gz",
                                "--out", work / "new" / "m.csv", "--slices", work / "s.csv",
                                "--provenance", work / "p.json"), capsys)
    finally:
        os.umask(old)
    assert res.code == 0, res.err
    for name in ("new/m.csv", "s.csv", "p.json"):
        assert stat.S_IMODE(os.stat(work / name).st_mode) == mode, name


def test_a_failing_write_leaves_no_partial_output(work, capsys, monkeypatch):
    """The provenance write fails after metrics and slices were staged: nothing is committed and
    an existing metrics file keeps its old bytes."""
    import myocomp.io as io

    (work / "m.csv").write_text("old\n")
    before = snapshot(work)
    real = io.write_json

    def failing(obj, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(io, "write_json", failing)
    res = run_cli(_quantify(work, "--water", work / "water.nii.gz", "--fat", work / "fat.nii.gz",
                            "--out", work / "m.csv", "--slices", work / "s.csv",
                            "--provenance", work / "p.json"), capsys)
    monkeypatch.setattr(io, "write_json", real)
    assert_refused(res, "no space left on device")
    assert snapshot(work) == before


def test_grid_tolerance_is_on_voxel_positions():
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    shape = (200, 200, 60)
    angle = 3e-4
    rot = affine.copy()
    rot[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                            [0, 0, 1]]) @ affine[:3, :3]
    assert np.abs(rot - affine).max() < AFFINE_ATOL  # the old entry-wise test passed this
    assert grid_distance_mm(rot, affine, shape) > 0.1
    assert not same_grid(rot, affine, shape=shape)
    shifted = affine.copy()
    shifted[:3, 3] += 0.5e-3 / np.sqrt(3)
    assert same_grid(shifted, affine, shape=shape)
    shifted[:3, 3] += 1e-3
    assert not same_grid(shifted, affine, shape=shape)


def _peak_rss_mb(script: str) -> tuple[int, float, str]:
    """Run ``script`` (which sets RC) in a fresh interpreter; returns (RC, peak RSS in MB, stderr)."""
    # VmHWM is the peak of this process image (ru_maxrss would keep a forked parent's peak)
    code = textwrap.dedent(script) + textwrap.dedent("""
        hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")]
        print(RC, hwm[0])
    """)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
    rc, kb = proc.stdout.split()[-2:]
    return int(rc), int(kb) / 1024, proc.stderr


@pytest.mark.parametrize("bomb", ["bomb600.nii.gz", "bomb30000.nii.gz"])
def test_header_bomb_is_refused_in_bounded_memory(bomb, inputs):
    rc, mb, err = _peak_rss_mb(f"""
        from myocomp.cli import main
        RC = main(["quantify", "--water", "{inputs / bomb}", "--labels", "{inputs / 'labels.nii.gz'}",
                   "--out", "/nonexistent-dir-myocomp/m.csv"])
    """)
    assert rc == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert mb <= 300, f"peak RSS {mb:.0f} MB"


def test_far_apart_stations_are_refused_in_bounded_memory(tmp_path):
    rc, mb, err = _peak_rss_mb(f"""
        import numpy as np
        from myocomp.errors import GeometryError
        from myocomp.imaging.stitch import stitch_dixon
        from myocomp.io import save_nifti
        paths = {{"water": [], "fat": []}}
        for k, z in enumerate((0.0, 30_000.0)):  # 30 m apart
            affine = np.diag([2.0, 2.0, 4.0, 1.0])
            affine[2, 3] = z
            for ch in paths:
                p = "{tmp_path}/" + f"{{ch}}{{k}}.nii.gz"
                save_nifti(np.ones((200, 150, 40), np.float32), affine, p)
                paths[ch].append(p)
        try:
            stitch_dixon(paths)
            RC = 0
        except GeometryError as exc:
            import sys
            print("error:", exc, file=sys.stderr)
            RC = 2
    """)
    assert rc == 2 and "far apart" in err, err
    assert mb <= 300, f"peak RSS {mb:.0f} MB"
