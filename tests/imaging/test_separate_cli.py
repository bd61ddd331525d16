"""`myocomp separate`, `phantom --echoes` and quantify's --ff-map / --echoes, end to end."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from myocomp.cli import main
from myocomp.imaging.dixon import fat_fraction
from myocomp.io import save_nifti
from myocomp.synth.phantom import write_phantom

SMALL = ["--voxel-size", "4,4,8", "--supersample", "1"]
METRICS = ["volume_ml", "ff_mean", "ff_median", "lean_volume_ml", "intermat_volume_ml"]


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def echo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("me")
    assert main(["phantom", "--out", str(out), "--echoes", "1.2,2.2,3.2,4.2", "--field", "3",
                 "--b0-range", "250", "--seed", "2", *SMALL]) == 0
    return out


def test_phantom_echoes_writes_bids_and_truth(echo_dir):
    side = json.loads((echo_dir / "echo-3_part-phase.json").read_text())
    assert side["EchoTime"] == pytest.approx(0.0032)
    assert side["MagneticFieldStrength"] == 3.0
    field = nib.load(echo_dir / "truth_fieldmap_hz.nii.gz").get_fdata()
    assert np.abs(field).max() == pytest.approx(250, rel=1e-3)
    truth = json.loads((echo_dir / "truth.json").read_text())
    assert truth["parameters"]["echo_times_s"] == pytest.approx([0.0012, 0.0022, 0.0032, 0.0042])


def test_separate_folder_matches_truth(echo_dir, tmp_path, capsys):
    out = tmp_path / "sep"
    code, stdout, err = run(["separate", "--echoes", echo_dir, "--out", out], capsys)
    assert code == 0, err
    assert "4 echoes, 3 T" in stdout
    names = {p.name for p in out.iterdir()}
    assert names == {"water.nii.gz", "fat.nii.gz", "pdff.nii.gz", "fieldmap_hz.nii.gz",
                     "r2star.nii.gz", "separation.json"}
    pdff = nib.load(out / "pdff.nii.gz")
    ref = nib.load(echo_dir / "truth_pdff.nii.gz")
    np.testing.assert_allclose(pdff.affine, ref.affine)
    labels = np.asarray(nib.load(echo_dir / "labels.nii.gz").dataobj)
    muscle = np.isin(labels, [31, 32, 33, 34])
    assert np.median(np.abs(pdff.get_fdata() - ref.get_fdata())[muscle]) < 0.02
    prov = json.loads((out / "separation.json").read_text())
    assert prov["echo_times_s"] == pytest.approx([0.0012, 0.0022, 0.0032, 0.0042])
    assert prov["fat_spectrum"]["name"] == "hamilton2011_liver_6peak"
    assert prov["precession"]["used"] == "as_stored"
    assert prov["precession"]["decided_by"] == "residual"
    assert prov["precession"]["surface_pdff"]["as_stored"] > 0.7  # the phantom's subcutaneous fat
    assert prov["warnings"] == [] and "warning" not in err


def test_separate_prints_the_surface_warning(echo_dir, tmp_path, capsys, monkeypatch):
    """A result whose body-surface layer reads as water is reported on stderr and in
    separation.json (threshold raised here so that the phantom's fat surface triggers it)."""
    from myocomp.imaging import fatwater

    monkeypatch.setattr(fatwater, "SURFACE_WATER", 0.99)
    out = tmp_path / "sep"
    code, _, err = run(["separate", "--echoes", echo_dir, "--out", out, "--precession",
                        "as_stored"], capsys)
    assert code == 0, err
    assert err.startswith("warning: the body-surface layer has median PDFF")
    assert "may be swapped" in json.loads((out / "separation.json").read_text())["warnings"][0]


def test_separate_pairs_with_uint12_phase_and_options(echo_dir, tmp_path, capsys):
    """Phase stored as 0..4095 (Siemens) without sidecars: units detected, TE/field as options."""
    argv = ["separate", "--out", tmp_path / "sep", "--te-ms", "1.2,2.2,3.2,4.2", "--field-t", "3"]
    for n in range(1, 5):
        mag = nib.load(echo_dir / f"echo-{n}_part-mag.nii.gz")
        ph = nib.load(echo_dir / f"echo-{n}_part-phase.nii.gz").get_fdata()
        stored = np.round((ph + np.pi) * 4095 / (2 * np.pi)).astype(np.int16)
        save_nifti(np.asarray(mag.dataobj), mag.affine, tmp_path / f"m{n}.nii.gz")
        save_nifti(stored, mag.affine, tmp_path / f"p{n}.nii.gz")
        argv += ["--magnitude", tmp_path / f"m{n}.nii.gz", "--phase", tmp_path / f"p{n}.nii.gz"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    prov = json.loads((tmp_path / "sep" / "separation.json").read_text())
    assert prov["phase_units"] == "uint12"
    a = nib.load(tmp_path / "sep" / "pdff.nii.gz").get_fdata()
    ref = nib.load(echo_dir / "truth_pdff.nii.gz").get_fdata()
    labels = np.asarray(nib.load(echo_dir / "labels.nii.gz").dataobj)
    assert np.median(np.abs(a - ref)[np.isin(labels, [31, 32])]) < 0.02


@pytest.mark.parametrize(("argv", "message"), [
    (["--te-ms", "1,2"], "conflicts"),
    (["--magnitude", "nope.nii.gz", "--phase", "nope.nii.gz"], "give exactly one input"),
    (["--field-range-hz", "-5"], "field-range"),
    (["--mask-fraction", "2"], "--mask-fraction must lie in (0, 1)"),
    (["--method", "single"], "--method must be multi_echo or phase_referenced"),
    (["--method", "phase_referenced", "--register-echoes"], "applies to --method multi_echo"),
    (["--method", "phase_referenced"], "encode fat between the echoes"),  # 1.2/2.2/3.2 ms
])
def test_separate_bad_input_exit_2_nothing_written(echo_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "sep"
    code, _, err = run(["separate", "--echoes", echo_dir, "--out", out, *argv], capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_separate_missing_sidecar_values(echo_dir, tmp_path, capsys):
    mag, ph = echo_dir / "echo-1_part-mag.nii.gz", echo_dir / "echo-1_part-phase.nii.gz"
    for n in (1, 2):
        (tmp_path / f"m{n}.nii.gz").write_bytes(mag.read_bytes())
        (tmp_path / f"p{n}.nii.gz").write_bytes(ph.read_bytes())
    code, _, err = run(["separate", "--out", tmp_path / "o", "--magnitude", tmp_path / "m1.nii.gz",
                        "--phase", tmp_path / "p1.nii.gz", "--magnitude", tmp_path / "m2.nii.gz",
                        "--phase", tmp_path / "p2.nii.gz"], capsys)
    assert code == 2 and "echo times" in err
    assert not (tmp_path / "o").exists()


def test_quantify_ff_map_equals_water_fat_pair(tmp_path, capsys):
    """A vendor PDFF map (percent) gives the same metrics as the water/fat images it came from."""
    paths = write_phantom(tmp_path / "ph", seed=1, voxel_size_mm=(3, 3, 6), supersample=1)
    w = nib.load(paths["water"])
    ff = fat_fraction(w.get_fdata(), nib.load(paths["fat"]).get_fdata())
    save_nifti((100 * ff).astype(np.float32), w.affine, tmp_path / "ff_percent.nii.gz")
    common = ["--labels", paths["labels"], "--groups", "back,psoas"]
    assert run(["quantify", "--water", paths["water"], "--fat", paths["fat"], *common,
                "--ff-method", "ratio", "--out", tmp_path / "a.csv"], capsys)[0] == 0  # the map's F/(W+F)
    code, _, err = run(["quantify", "--ff-map", tmp_path / "ff_percent.nii.gz", *common,
                        "--out", tmp_path / "b.csv"], capsys)
    assert code == 0, err
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert (b["method"] == "ff_map").all()
    pd.testing.assert_frame_equal(a[METRICS], b[METRICS], rtol=1e-5)


def test_quantify_echoes_close_to_truth(echo_dir, tmp_path, capsys):
    out = tmp_path / "m.csv"
    code, _, err = run(["quantify", "--echoes", echo_dir, "--labels", echo_dir / "labels.nii.gz",
                        "--out", out], capsys)
    assert code == 0, err
    m = pd.read_csv(out).set_index("group")
    truth = json.loads((echo_dir / "truth.json").read_text())["metrics"]
    assert (m["method"] == "separated_pdff").all()
    for group in ("back", "psoas"):
        assert m.loc[group, "ff_mean"] == pytest.approx(truth[group]["ff_mean"], abs=0.01)


@pytest.mark.parametrize(("argv", "message"), [
    (["--ff-map", "FF", "--fat", "FF"], "one fat-fraction source"),
    (["--ff-map", "FF", "--ff-units", "permille"], "units"),
    (["--ff-map", "BIG"], "neither clearly a fraction"),
])
def test_quantify_ff_map_bad_input(tmp_path, capsys, argv, message):
    paths = write_phantom(tmp_path / "ph", seed=1, voxel_size_mm=(6, 6, 12), supersample=1)
    aff = nib.load(paths["water"]).affine
    shape = nib.load(paths["water"]).shape
    save_nifti(np.full(shape, 0.3, np.float32), aff, tmp_path / "ff.nii.gz")
    save_nifti(np.full(shape, 700.0, np.float32), aff, tmp_path / "big.nii.gz")
    sub = {"FF": tmp_path / "ff.nii.gz", "BIG": tmp_path / "big.nii.gz"}
    code, _, err = run(["quantify", *[sub.get(a, a) for a in argv], "--labels", paths["labels"],
                        "--out", tmp_path / "m.csv"], capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "m.csv").exists()


def test_dicom_magnitude_phase_echoes_and_ff_series(tmp_path, capsys):
    """Siemens-style magnitude + phase (0..4095) DICOM echoes are read, and a DICOM fat-fraction
    series (ImageType FF, percent) given to quantify --ff-map equals the NIfTI map."""
    from myocomp.imaging.echoes import load_echo_folder
    from myocomp.synth.dicom import write_dicom_series
    from myocomp.synth.multiecho import make_multiecho_phantom

    ph = make_multiecho_phantom(6, te_ms=(1.2, 2.2, 3.2), snr=None, voxel_size_mm=(6, 6, 12),
                                supersample=1)
    for n, te in enumerate(ph.te_s):
        e = ph.echoes[..., n]
        for part, data, token in (("m", np.abs(e), "M"),
                                  ("p", (np.angle(e) + np.pi) * 4095 / (2 * np.pi), "P")):
            write_dicom_series(tmp_path / "dcm" / f"{part}{n}", {"water": data}, ph.affine,
                               seed=10 * n + len(part),
                               header={"ImageType": ["ORIGINAL", "PRIMARY", token, "ND"],
                                       "EchoTime": str(te * 1000), "MagneticFieldStrength": "3"})
    data = load_echo_folder(tmp_path / "dcm")
    assert data.te_s == pytest.approx(ph.te_s) and data.field_t == 3.0
    assert data.phase_units == "uint12"
    np.testing.assert_allclose(np.abs(data.echoes), np.abs(ph.echoes), atol=0.51)
    pdff = np.where(np.isfinite(ph.pdff), ph.pdff, 0)
    write_dicom_series(tmp_path / "ff", {"water": 100 * pdff}, ph.affine, slope=0.01,
                       header={"ImageType": ["DERIVED", "PRIMARY", "FF"],
                               "SeriesDescription": "FatFraction"})
    save_nifti(np.round(100 * pdff, 2).astype(np.float32), ph.affine, tmp_path / "ff.nii.gz")
    save_nifti(ph.labels, ph.affine, tmp_path / "labels.nii.gz")
    for name, src in (("a", tmp_path / "ff"), ("b", tmp_path / "ff.nii.gz")):
        code, _, err = run(["quantify", "--ff-map", src, "--labels", tmp_path / "labels.nii.gz",
                            "--out", tmp_path / f"{name}.csv"], capsys)
        assert code == 0, err
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    pd.testing.assert_frame_equal(a[METRICS], b[METRICS], rtol=1e-4)


def test_separate_never_writes_into_its_input(echo_dir, capsys):
    before = sorted(p.name for p in echo_dir.iterdir())
    code, _, err = run(["separate", "--echoes", echo_dir, "--out", echo_dir / "sep"], capsys)
    assert code == 2 and "inside the input folder" in err
    assert sorted(p.name for p in echo_dir.iterdir()) == before
