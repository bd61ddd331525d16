"""The phantom generator: anatomy, signal model, options, truth schema, files and CLI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import myocomp.cli.phantom  # noqa: F401  (registers `myocomp phantom` if the CLI does not yet)
from myocomp.cli import main
from myocomp.errors import ConfigError, LabelError
from myocomp.imaging.composition import METRIC_COLUMNS
from myocomp.imaging.dixon import canonical
from myocomp.imaging.labels import get_profile
from myocomp.synth.phantom import SWAP_RADIUS_MM, make_phantom, write_phantom

AUTO_L, AUTO_R, PSOAS_L, PSOAS_R, SPINE = 31, 32, 33, 34, 25
SMALL = {"n_slices": 8, "voxel_size_mm": (3.0, 3.0, 6.0), "supersample": 2}
TRUTH_NAMES = {
    "back",
    "psoas",
    "autochthon_left",
    "autochthon_right",
    "iliopsoas_left",
    "iliopsoas_right",
}


@pytest.fixture(scope="module")
def clean():
    """Default-geometry phantom without noise or bias field: true signal after partial volume."""
    return make_phantom(5, snr=None, bias=0.0)


def world_centroid(phantom, label: int) -> np.ndarray:
    ijk = np.argwhere(phantom.labels == label).mean(axis=0)
    return phantom.affine[:3, :3] @ ijk + phantom.affine[:3, 3]


def test_default_grid_types_and_labels(clean):
    assert clean.water.dtype == clean.fat.dtype == np.float32
    assert clean.labels.dtype == np.int16
    assert clean.water.shape == clean.fat.shape == clean.labels.shape
    nx, ny, nz = clean.water.shape
    assert 150 <= nx <= 200 and 110 <= ny <= 150 and nz == 40
    np.testing.assert_allclose(clean.voxel_size_mm, (2.0, 2.0, 4.0))
    present = set(np.unique(clean.labels).tolist()) - {0}
    assert {AUTO_L, AUTO_R, PSOAS_L, PSOAS_R, SPINE} <= present
    assert present <= set(get_profile("mrsegmentator").ids)
    assert clean.truth["parameters"]["shape"] == [nx, ny, nz]


def test_anatomy_positions_in_world_coordinates(clean):
    al, ar = world_centroid(clean, AUTO_L), world_centroid(clean, AUTO_R)
    pl, pr = world_centroid(clean, PSOAS_L), world_centroid(clean, PSOAS_R)
    spine = world_centroid(clean, SPINE)
    # RAS+: the subject's left is at negative x
    assert al[0] < spine[0] < ar[0] and pl[0] < spine[0] < pr[0]
    # back muscles posterior of the spine, psoas anterior of the back muscles
    assert al[1] < spine[1] - 20 and ar[1] < spine[1] - 20
    assert pl[1] > al[1] + 30 and pr[1] > ar[1] + 30


def test_psoas_grows_caudally_and_back_muscles_span_the_volume(clean):
    area = (clean.labels == PSOAS_L).sum(axis=(0, 1))
    assert area[0] > 2.0 * area[-1] > 0  # axis 2 runs inferior -> superior
    assert np.all((clean.labels == AUTO_L).sum(axis=(0, 1)) > 0)


def test_slices_beyond_the_trunk_repeat_its_end_cross_sections():
    p = make_phantom(0, voxel_size_mm=(3.0, 3.0, 6.0), n_slices=50, supersample=1, snr=None)
    assert p.labels.shape[2] == 50  # 300 mm, the modelled trunk is 160 mm
    area = (p.labels == PSOAS_L).sum(axis=(0, 1))
    assert area[0] == area[8] > area[-1] == area[-9] > 0
    assert area[20] != area[30]


def test_tissue_fat_fractions(clean):
    with np.errstate(invalid="ignore", divide="ignore"):
        ff = clean.fat / (clean.water + clean.fat)
    spine_ff = np.nanmedian(ff[clean.labels == SPINE])
    assert 0.3 < spine_ff < 0.65  # fatty marrow (cortex and marrow mixed)
    muscle_ff = np.nanmedian(ff[np.isin(clean.labels, [AUTO_L, AUTO_R])])
    assert 0.05 < muscle_ff < 0.15
    # subcutaneous fat just inside the posterior skin, lateral of the spine, mid-volume
    i, k = clean.water.shape[0] // 2 + 25, clean.water.shape[2] // 2
    body = np.flatnonzero(clean.water[i, :, k] + clean.fat[i, :, k] > 500)
    assert ff[i, body[0] + 3, k] > 0.9
    # outside the body there is no signal at all without noise
    assert clean.water[0, 0, 0] == 0 and clean.fat[0, 0, 0] == 0


def test_same_seed_identical_arrays_and_other_seed_differs():
    a = make_phantom(11, **SMALL)
    b = make_phantom(11, **SMALL)
    c = make_phantom(12, **SMALL)
    for name in ("water", "fat", "labels", "in_phase", "opposed_phase", "affine"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.truth == b.truth
    assert not np.array_equal(a.water, c.water)
    assert a.truth["metrics"]["back"]["volume_ml"] != c.truth["metrics"]["back"]["volume_ml"]


def test_truth_does_not_depend_on_noise_bias_or_artefacts():
    base = make_phantom(4, **SMALL)
    other = make_phantom(4, snr=15.0, bias=0.4, swap_region=True, nan_voxels=50, **SMALL)
    assert base.truth["metrics"] == other.truth["metrics"]
    np.testing.assert_array_equal(base.labels, other.labels)


def test_truth_metrics_schema_and_consistency(clean):
    metrics = clean.truth["metrics"]
    assert set(metrics) == TRUTH_NAMES
    for name, row in metrics.items():
        assert set(row) == set(METRIC_COLUMNS), name
    back, left, right = metrics["back"], metrics["autochthon_left"], metrics["autochthon_right"]
    assert back["volume_ml"] == pytest.approx(left["volume_ml"] + right["volume_ml"], rel=1e-12)
    assert back["intermat_volume_ml"] == pytest.approx(
        left["intermat_volume_ml"] + right["intermat_volume_ml"]
    )
    assert back["lmm"] == pytest.approx(back["lean_volume_ml"] / 25.0)
    # lean volume is the fat-free part of the non-fat voxels
    assert back["lean_volume_ml"] < back["volume_ml"] - back["intermat_volume_ml"]
    # plausible lumbar sizes: each autochthon 12-30 cm^2, each psoas 3-20 cm^2 over 16 cm
    assert 190 < left["volume_ml"] < 480 and 50 < metrics["iliopsoas_left"]["volume_ml"] < 320
    # the InterMAT option is honoured approximately
    for group in ("back", "psoas"):
        assert 0.03 < metrics[group]["intermat_fraction"] < 0.07
        assert metrics[group]["n_invalid"] == 0


def test_infiltration_and_intermat_options_change_the_truth():
    low = make_phantom(2, infiltration=0.05, intermat=0.0, **SMALL).truth["metrics"]
    high = make_phantom(2, infiltration=0.15, intermat=0.15, **SMALL).truth["metrics"]
    for group in ("back", "psoas"):
        assert low[group]["intermat_volume_ml"] == 0.0
        assert high[group]["intermat_fraction"] > 0.1
        assert high[group]["ff_mean"] > low[group]["ff_mean"] + 0.08
        assert low[group]["volume_ml"] == pytest.approx(high[group]["volume_ml"], rel=1e-9)


def test_band_and_threshold_parameters_of_the_truth():
    plain = make_phantom(0, **SMALL).truth["metrics"]["back"]
    band = make_phantom(0, band_mm=6.0, **SMALL).truth["metrics"]["back"]
    low_tau = make_phantom(0, fat_threshold=0.3, **SMALL).truth["metrics"]["back"]
    assert plain["perimuscular_fat_ml"] == 0.0
    assert band["perimuscular_fat_ml"] > 0.5  # subcutaneous fat behind the 3 mm fascia
    assert band["intermat_volume_ml"] == pytest.approx(
        band["intramuscular_fat_ml"] + band["perimuscular_fat_ml"]
    )
    assert band["intramuscular_fat_ml"] == pytest.approx(plain["intramuscular_fat_ml"])
    assert low_tau["intermat_volume_ml"] > plain["intermat_volume_ml"]


def test_bmi_thickens_subcutaneous_fat_and_sets_lmm():
    lean = make_phantom(1, bmi=20.0, **SMALL)
    obese = make_phantom(1, bmi=35.0, **SMALL)
    assert obese.water.shape[0] > lean.water.shape[0] + 5  # wider body, wider field of view
    back = obese.truth["metrics"]["back"]
    assert back["lmm"] == pytest.approx(back["lean_volume_ml"] / 35.0)


def test_noise_is_rician_with_the_requested_snr():
    p = make_phantom(3, snr=25.0, **SMALL)
    sigma = p.truth["parameters"]["noise_sigma"]
    muscle = np.isin(p.labels, [AUTO_L, AUTO_R, PSOAS_L, PSOAS_R])
    clean = make_phantom(3, snr=None, **SMALL)
    assert sigma == pytest.approx(clean.water[muscle].mean() / 25.0, rel=1e-5)
    # outside the body the magnitude is Rayleigh: mean sigma sqrt(pi/2), always positive
    air = p.water[:3, :3, :].ravel()
    assert air.min() > 0
    assert air.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.1)
    # in-phase = |water + fat| with the noise of both
    assert p.in_phase[:3, :3, :].mean() == pytest.approx(sigma * np.sqrt(np.pi), rel=0.1)


def test_bias_field_scales_water_and_fat_alike():
    flat = make_phantom(6, snr=None, bias=0.0, **SMALL)
    biased = make_phantom(6, snr=None, bias=0.3, **SMALL)
    body = flat.water + flat.fat > 100
    ratio = (biased.water + biased.fat)[body] / (flat.water + flat.fat)[body]
    assert 0.69 < ratio.min() < 0.9 or 1.1 < ratio.max() < 1.31
    assert ratio.min() >= 0.7 - 1e-4 and ratio.max() <= 1.3 + 1e-4
    np.testing.assert_allclose(
        biased.fat[body] / (biased.water + biased.fat)[body],
        flat.fat[body] / (flat.water + flat.fat)[body],
        atol=1e-5,
    )


def test_swap_region_puts_fat_signal_into_muscle():
    p = make_phantom(8, swap_region=True, snr=None)
    ref = make_phantom(8, snr=None)
    info = p.truth["parameters"]["swap_region"]
    assert info["radius_mm"] == SWAP_RADIUS_MM and info["n_voxels"] > 100
    ijk = np.indices(p.water.shape).reshape(3, -1).T
    world = ijk @ p.affine[:3, :3].T + p.affine[:3, 3]
    inside = (np.linalg.norm(world - info["centre_mm"], axis=1) <= info["radius_mm"]).reshape(
        p.water.shape
    )
    muscle = inside & np.isin(p.labels, [AUTO_L, AUTO_R])
    assert muscle.sum() > 50
    with np.errstate(invalid="ignore", divide="ignore"):
        ff = p.fat / (p.water + p.fat)
        ff_ref = ref.fat / (ref.water + ref.fat)
    assert np.median(ff[muscle]) > 0.5 > np.median(ff_ref[muscle])
    np.testing.assert_array_equal(p.water[~inside], ref.water[~inside])
    assert ref.truth["parameters"]["swap_region"] is None


def test_nan_voxels_count():
    p = make_phantom(9, nan_voxels=37, **SMALL)
    for name in ("water", "fat", "in_phase", "opposed_phase"):
        assert int(np.isnan(getattr(p, name)).sum()) == 37
    assert np.array_equal(np.isnan(p.water), np.isnan(p.fat))
    assert np.isnan(make_phantom(9, **SMALL).water).sum() == 0


@pytest.mark.parametrize("orientation", ["LPS", "SAR", "PIL", "ail"])
def test_orientation_permutes_data_and_affine_consistently(orientation):
    ras = make_phantom(10, **SMALL)
    other = make_phantom(10, orientation=orientation, **SMALL)
    assert nib.aff2axcodes(other.affine) == tuple(orientation.upper())
    for name in ("water", "fat", "labels"):
        data, affine = canonical(getattr(other, name), other.affine)
        np.testing.assert_array_equal(data, getattr(ras, name))
        np.testing.assert_allclose(affine, ras.affine, atol=1e-9)
    assert other.truth["metrics"] == ras.truth["metrics"]


@pytest.mark.parametrize(
    "options",
    [
        {"orientation": "RAX"},
        {"orientation": "RRS"},
        {"voxel_size_mm": (2.0, 0.0, 4.0)},
        {"snr": -1.0},
        {"infiltration": 0.9},
        {"intermat": -0.1},
        {"bias": 1.5},
        {"supersample": 0},
        {"nan_voxels": -3},
        {"nan_voxels": 10**9},
        {"bmi": 5.0},
    ],
)
def test_invalid_options_raise_config_error(options):
    with pytest.raises(ConfigError):
        make_phantom(0, **{**SMALL, **options})


def test_profile_without_the_muscles_is_refused(tmp_path):
    mapping = tmp_path / "profile.json"
    mapping.write_text(json.dumps({"1": "autochthon_left", "2": "liver"}))
    with pytest.raises(LabelError):
        make_phantom(0, profile=str(mapping), **SMALL)


def test_other_profile_uses_its_own_ids():
    p = make_phantom(0, profile="total_mr", **SMALL)
    profile = get_profile("total_mr")
    present = set(np.unique(p.labels).tolist()) - {0}
    assert present <= set(profile.ids)
    names = {profile.ids[i] for i in present}
    assert {"autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right"} <= names


def test_write_phantom_files_and_truth_json(tmp_path):
    paths = write_phantom(tmp_path / "p", seed=7, orientation="LPS", **SMALL)
    assert {p.name for p in paths.values()} == {
        "water.nii.gz",
        "fat.nii.gz",
        "labels.nii.gz",
        "in_phase.nii.gz",
        "opposed_phase.nii.gz",
        "vertebrae.nii.gz",
        "discs.nii.gz",
        "truth.json",
    }
    phantom = make_phantom(7, orientation="LPS", **SMALL)
    vertebrae = nib.load(paths["vertebrae"])
    np.testing.assert_array_equal(np.asanyarray(vertebrae.dataobj), phantom.vertebrae)
    assert set(np.unique(phantom.vertebrae).tolist()) - {0} <= set(get_profile("vertebrae_mr").ids)
    water = nib.load(paths["water"])
    labels = nib.load(paths["labels"])
    np.testing.assert_array_equal(np.asanyarray(water.dataobj), phantom.water)
    np.testing.assert_array_equal(np.asanyarray(labels.dataobj), phantom.labels)
    assert np.asanyarray(labels.dataobj).dtype == np.int16
    np.testing.assert_allclose(water.affine, phantom.affine)
    truth = json.loads(paths["truth"].read_text())
    assert set(truth) >= {"parameters", "metrics"}
    params = truth["parameters"]
    assert (
        params["seed"] == 7
        and params["orientation"] == "LPS"
        and params["profile"] == "mrsegmentator"
    )
    assert params["voxel_size_mm"] == [3.0, 3.0, 6.0] and params["snr"] == 40.0
    assert set(truth["metrics"]) == TRUTH_NAMES
    for group, row in truth["metrics"].items():
        assert row == pytest.approx(phantom.truth["metrics"][group]), group
    assert not list((tmp_path / "p").glob("*.tmp"))  # atomic writes leave no temp files


def test_cli_phantom_writes_files_and_prints_truth(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        [
            "phantom",
            "--out",
            str(out),
            "--seed",
            "3",
            "--voxel-size",
            "3,3,6",
            "--slices",
            "6",
            "--snr",
            "30",
            "--orientation",
            "PIL",
            "--nan-voxels",
            "5",
            "--swap-region",
            "--supersample",
            "2",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "back" in printed and "psoas" in printed and "volume_ml" in printed
    truth = json.loads((out / "truth.json").read_text())
    params = truth["parameters"]
    assert params["orientation"] == "PIL" and params["nan_voxels"] == 5 and params["swap_region"]
    assert params["shape"][1] == 6  # PIL: the slices run along the second axis
    img = nib.load(out / "fat.nii.gz")
    assert nib.aff2axcodes(img.affine) == ("P", "I", "L")
    assert int(np.isnan(np.asanyarray(img.dataobj)).sum()) == 5


def test_cli_phantom_help_documents_every_option(capsys):
    assert main(["phantom", "--help"]) == 0
    text = capsys.readouterr().out
    for option in (
        "--out",
        "--seed",
        "--voxel-size",
        "--snr",
        "--infiltration",
        "--intermat",
        "--bias",
        "--orientation",
        "--swap-region",
        "--nan-voxels",
        "--slices",
        "--supersample",
        "--bmi",
        "--profile",
        "--fat-threshold",
        "--band-mm",
    ):
        assert option in text, option


@pytest.mark.parametrize(
    "argv", [["--voxel-size", "2,x,4"], ["--orientation", "XYZ"], ["--voxel-size", "1,2"]]
)
def test_cli_phantom_bad_options_exit_2(tmp_path, capsys, argv):
    assert main(["phantom", "--out", str(tmp_path / "x"), *argv]) == 2
    assert capsys.readouterr().err.startswith("error:")
