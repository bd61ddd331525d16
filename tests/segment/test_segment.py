"""nnU-Net backend with the shipped phantom-demo model, on held-out phantoms (seeds < 1000).

The demo model was trained on phantom seeds 1000+ (validation 2000+), see
scripts/train_phantom_demo.py; every phantom here is unseen.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from myocomp.cli import main
from myocomp.errors import ConfigError, GeometryError, InputFileError
from myocomp.imaging.composition import quantify
from myocomp.imaging.dixon import dixon_from_arrays
from myocomp.segment import (
    channel_arrays,
    clear_predictors,
    get_predictor,
    resolve_model,
    segment_arrays,
    segment_dixon,
)
from myocomp.segment import models as registry
from myocomp.synth.phantom import make_phantom, write_phantom

pytestmark = pytest.mark.segment

SEEDS = (11, 12)  # held out: training used 1000+, validation 2000+
PHANTOM = {"n_slices": 16}  # 161 x 128 x 16 voxels of 2 x 2 x 4 mm
MUSCLES = {
    "autochthon_left": 31,
    "autochthon_right": 32,
    "iliopsoas_left": 33,
    "iliopsoas_right": 34,
}
METRICS = ("volume_ml", "lean_volume_ml", "intermat_volume_ml")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("myocomp_home")
        mp.setenv("MYOCOMP_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def model(home):
    return resolve_model("phantom-demo")


@pytest.fixture(scope="module")
def phantoms():
    return {seed: make_phantom(seed, **PHANTOM) for seed in SEEDS}


@pytest.fixture(scope="module")
def predictions(model, phantoms):
    """segment_dixon on each held-out phantom, counting nnUNetPredictor constructions."""
    from nnunetv2.inference import predict_from_raw_data as pfr

    clear_predictors()
    created = []
    original = pfr.nnUNetPredictor.__init__

    def counting(self, *args, **kwargs):
        created.append(self)
        original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pfr.nnUNetPredictor, "__init__", counting)
        out = {}
        for seed, ph in phantoms.items():
            dixon = dixon_from_arrays(ph.water, ph.fat, ph.affine)
            out[seed] = (dixon, segment_dixon(dixon, model, device="cpu"))
    return out, created


def test_predictor_created_once_for_two_images(predictions, model):
    results, created = predictions
    assert len(results) == 2
    assert len(created) == 1
    assert get_predictor(model, "cpu") is created[0]
    assert get_predictor(model, "cpu", mirroring=False) is not created[0]


def test_back_muscle_dice_on_held_out_phantoms(predictions, phantoms):
    results, _ = predictions
    for seed, (_, labelmap) in results.items():
        truth = phantoms[seed].labels  # RAS phantom: same grid as the canonical LabelMap
        ids = {name: i for i, name in labelmap.profile.ids.items()}
        for name in ("autochthon_left", "autochthon_right"):
            d = dice(labelmap.data == ids[name], truth == MUSCLES[name])
            assert d >= 0.90, f"seed {seed} {name}: Dice {d:.3f}"
        for name in ("iliopsoas_left", "iliopsoas_right"):
            d = dice(labelmap.data == ids[name], truth == MUSCLES[name])
            assert d >= 0.80, f"seed {seed} {name}: Dice {d:.3f}"


def test_back_metrics_within_5_percent_of_truth(predictions, phantoms):
    results, _ = predictions
    for seed, (dixon, labelmap) in results.items():
        table = quantify(dixon, labelmap, with_slices=False).metrics.set_index("group")
        truth = phantoms[seed].truth["metrics"]["back"]
        for metric in METRICS:
            rel = table.loc["back", metric] / truth[metric] - 1
            assert abs(rel) <= 0.05, f"seed {seed} {metric}: {rel:+.1%}"


def test_permuted_and_flipped_storage_gives_the_same_labels(predictions, phantoms, model):
    """Stored as P-I-L (every axis permuted and flipped); LPS storage is in the CLI test."""
    results, _ = predictions
    seed = SEEDS[0]
    ras_labels = results[seed][1].data
    ph = make_phantom(seed, orientation="PIL", **PHANTOM)
    assert ph.water.shape != phantoms[seed].water.shape
    labels = segment_arrays([ph.water, ph.fat], ph.affine, model, device="cpu")
    assert labels.shape == ph.water.shape
    # bring the stored-orientation result to RAS with nibabel, independently of the backend
    back = nib.as_closest_canonical(nib.Nifti1Image(labels, ph.affine))
    np.testing.assert_array_equal(np.asarray(back.dataobj), ras_labels)
    ids = {v: k for k, v in results[seed][1].profile.ids.items()}
    for name in ("autochthon_left", "autochthon_right"):
        d_stored = dice(labels == ids[name], ph.labels == MUSCLES[name])
        d_ras = dice(ras_labels == ids[name], phantoms[seed].labels == MUSCLES[name])
        assert d_stored >= 0.90 and abs(d_stored - d_ras) <= 0.01


def test_oblique_grid_keeps_high_dice(model, phantoms):
    """The phantom resampled onto a grid rotated ~15 degrees (world anatomy unchanged)."""
    from scipy.ndimage import affine_transform

    ph = phantoms[SEEDS[1]]
    axis = np.array([0.3, 0.2, 1.0]) / np.linalg.norm([0.3, 0.2, 1.0])
    angle = np.deg2rad(15)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    zooms = np.linalg.norm(ph.affine[:3, :3], axis=0)
    m = np.diag(1 / zooms) @ rot @ np.diag(zooms)  # new voxel -> old voxel (about the centre)
    centre = (np.array(ph.water.shape) - 1) / 2
    offset = centre - m @ centre
    water = affine_transform(ph.water, m, offset, order=1)
    fat = affine_transform(ph.fat, m, offset, order=1)
    truth = affine_transform(ph.labels, m, offset, order=0)
    step = np.eye(4)
    step[:3, :3], step[:3, 3] = m, offset
    affine = ph.affine @ step
    direction = affine[:3, :3] / zooms
    assert np.degrees(np.arccos((np.trace(direction) - 1) / 2)) == pytest.approx(15, abs=0.1)
    labels = segment_arrays([water, fat], affine, model, device="cpu")
    ids = {name: i for i, name in registry_profile(model).items()}
    for name in ("autochthon_left", "autochthon_right"):
        d = dice(labels == ids[name], truth == MUSCLES[name])
        assert d >= 0.85, f"{name}: Dice {d:.3f} on the oblique grid"


def registry_profile(model) -> dict[int, str]:
    from myocomp.imaging.labels import profile_from_dataset_json

    return profile_from_dataset_json(model / "dataset.json").ids


def test_cli_segment_then_quantify_end_to_end(tmp_path, home, capsys):
    paths = write_phantom(tmp_path / "ph", SEEDS[1], orientation="LPS", **PHANTOM)
    out = tmp_path / "labels.nii.gz"
    rc = main(
        [
            "segment",
            "--model",
            "phantom-demo",
            "--image",
            str(paths["water"]),
            "--image",
            str(paths["fat"]),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--folds",
            "0",
            "--profile",
            "auto",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "autochthon_left" in printed
    src, seg = nib.load(paths["water"]), nib.load(out)
    assert seg.shape == src.shape
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)  # overlays the input file
    truth_labels = np.asarray(nib.load(paths["labels"]).dataobj)
    ids = {name: i for i, name in registry_profile(resolve_model("phantom-demo")).items()}
    assert dice(np.asarray(seg.dataobj) == ids["autochthon_left"], truth_labels == 31) >= 0.90

    dataset_json = resolve_model("phantom-demo") / "dataset.json"
    csv = tmp_path / "metrics.csv"
    rc = main(
        [
            "quantify",
            "--water",
            str(paths["water"]),
            "--fat",
            str(paths["fat"]),
            "--labels",
            str(out),
            "--profile",
            str(dataset_json),
            "--out",
            str(csv),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    table = pd.read_csv(csv).set_index("group")
    truth = json.loads(paths["truth"].read_text())["metrics"]["back"]
    for metric in METRICS:
        assert abs(table.loc["back", metric] / truth[metric] - 1) <= 0.05, metric


def test_cli_segment_user_errors(tmp_path, home, capsys):
    paths = write_phantom(tmp_path / "ph", 5, n_slices=4)
    out = tmp_path / "l.nii.gz"
    rc = main(
        ["segment", "--model", "phantom-demo", "--image", str(paths["water"]), "--out", str(out)]
    )
    assert rc == 2
    assert "expects 2 image(s)" in capsys.readouterr().err
    other = write_phantom(tmp_path / "ph2", 5, n_slices=5)
    rc = main(
        [
            "segment",
            "--model",
            "phantom-demo",
            "--image",
            str(paths["water"]),
            "--image",
            str(other["fat"]),
            "--out",
            str(out),
        ]
    )
    assert rc == 2
    assert "not on the grid" in capsys.readouterr().err
    rc = main(
        ["segment", "--model", "nosuchmodel", "--image", str(paths["water"]), "--out", str(out)]
    )
    assert rc == 2
    assert "unknown model" in capsys.readouterr().err
    assert not out.exists()


def test_channel_mapping_rules():
    rng = np.random.default_rng(0)
    w, f = rng.random((4, 5, 6), dtype=np.float32), rng.random((4, 5, 6), dtype=np.float32)
    ip = w + f + 0.5
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    dixon = dixon_from_arrays(w, f, affine)
    water, fat = channel_arrays(dixon, ["Fat", "water"])[::-1]
    np.testing.assert_array_equal(water, w)
    np.testing.assert_array_equal(fat, f)
    # single-channel "any MR contrast" model: in-phase if present, else water + fat
    np.testing.assert_allclose(channel_arrays(dixon, ["MRI"])[0], w + f)
    with_ip = dixon_from_arrays(w, f, affine, in_phase=ip)
    np.testing.assert_array_equal(channel_arrays(with_ip, ["T1"])[0], ip)
    np.testing.assert_array_equal(channel_arrays(with_ip, ["in_phase", "fat"])[0], ip)
    with pytest.raises(ConfigError, match="cannot be mapped"):
        channel_arrays(dixon, ["water", "roi"])
    with pytest.raises(InputFileError, match="opposed_phase"):
        channel_arrays(dixon, ["water", "opposed_phase"])
    single = dixon_from_arrays(w, None, affine)
    with pytest.raises(InputFileError, match="fat"):
        channel_arrays(single, ["water", "fat"])
    np.testing.assert_array_equal(channel_arrays(single, ["MRI"])[0], w)


def test_segment_arrays_input_checks(model):
    a = np.zeros((8, 8, 4), np.float32)
    with pytest.raises(ConfigError, match="expects 2 channel"):
        segment_arrays([a], np.eye(4), model, device="cpu")
    with pytest.raises(GeometryError):
        segment_arrays([a, a[:, :, :2]], np.eye(4), model, device="cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        segment_arrays([a, a], np.eye(4), model, device="tpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            get_predictor(model, "cuda")


def test_shipped_demo_model_is_small_verified_and_documented(model):
    info = registry.MODELS["phantom-demo"]
    archive = registry._shipped_archive(info)
    assert archive.stat().st_size <= 5 * 1024 * 1024
    sidecar = json.loads(archive.with_suffix(".json").read_text())
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == sidecar["sha256"]
    marker = json.loads((model.parent / registry.MARKER).read_text())
    assert marker["verification"] == "shipped" and marker["sha256"] == sidecar["sha256"]
    with zipfile.ZipFile(archive) as zf:
        readme = next(n for n in zf.namelist() if n.endswith("README.md"))
        assert "phantoms only" in zf.read(readme).decode()
    ds = json.loads((model / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "water", "1": "fat"}
    assert set(registry_profile(model).values()) >= set(MUSCLES)


def test_demo_model_loads_with_nnunet_own_loader(model, monkeypatch):
    """nnU-Net's initialize_from_trained_model_folder accepts the folder (format check).

    torchvision is blocked as if uninstalled: beside this torch build it fails to import, and
    nnU-Net's trainer lookup tolerates its absence but not a broken install.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    if "torchvision" not in sys.modules:
        monkeypatch.setitem(sys.modules, "torchvision", None)
    import torch

    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=(0,))
    ours = get_predictor(model, "cpu")
    theirs = predictor.network.state_dict()
    for key, value in ours.network.state_dict().items():
        torch.testing.assert_close(theirs[key], value)
    assert predictor.allowed_mirroring_axes is None


def test_image_channels_one_rule_for_a_water_fat_pair():
    from myocomp.segment.nnunet import image_channels, in_phase_sum

    water, fat = np.full((2, 2, 2), 3, np.int16), np.full((2, 2, 2), 0.5, np.float64)
    arrays, sources = image_channels([water, fat], ("MRI",))
    assert sources == [(0, 1)] and arrays[0].dtype == np.float32
    np.testing.assert_array_equal(arrays[0], np.full((2, 2, 2), 3.5, np.float32))
    np.testing.assert_array_equal(in_phase_sum(water, fat), arrays[0])
    arrays, sources = image_channels([water, fat], ("water", "fat"))
    assert sources == [(0,), (1,)]
    np.testing.assert_array_equal(arrays[1], fat.astype(np.float32))
    with pytest.raises(ConfigError, match=r"model m expects 2 image\(s\) in this order: \['water', 'fat'\]; got 3"):
        image_channels([water, fat, fat], ("water", "fat"), "m")
