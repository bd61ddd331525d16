"""Phase-referenced (one-echo) fat-water separation on multi-echo phantoms (imaging/phaseref.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from myocomp.errors import ConfigError, InputFileError
from myocomp.imaging import fatwater as fw
from myocomp.imaging import phaseref as pr
from myocomp.synth.multiecho import _muscle_mask, make_multiecho_phantom

GRID = {"voxel_size_mm": (4.0, 4.0, 8.0), "supersample": 1}

#: Echo sets the multi-echo separation refuses: ge_thigh's (fat advances 15 degrees between the
#: echoes), the Siemens B0 field-mapping pair at 3 T (25 degrees) and two ill-conditioned pairs
#: (noise amplification 10.3x and 4.6x).
REFUSED = [((3.9, 6.3), 3.0), ((4.92, 7.38), 3.0), ((1.7, 2.9), 3.0), ((1.5, 3.0), 1.5)]


def _phantom(te_ms, field_t, precession="as_stored", seed=3):
    return make_multiecho_phantom(seed, te_ms=te_ms, field_t=field_t, b0_range_hz=300.0,
                                  r2star=30.0, snr=40.0, precession=precession, **GRID)


def _separate(ph, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pr.separate_phase_referenced(ph.echoes, ph.te_s, ph.field_t, **kw)


@pytest.mark.parametrize("precession", ["as_stored", "conjugate"])
@pytest.mark.parametrize(("te_ms", "field_t"), REFUSED)
def test_phantoms_the_multi_echo_method_refuses(te_ms, field_t, precession):
    """Measured (seed 3, SNR 40, B0 +-300 Hz, R2* 30 1/s): 0-0.43 % of tissue voxels swapped
    (the field-map pair at 7.38 ms: 12.5 % before the phase ramp was removed first); muscle
    median |PDFF error| 0.045-0.054, per-muscle mean error up to 0.060 (the smooth reference
    absorbs part of a homogeneous region's own fat: muscle reads too lean); field median error
    2.3-8.6 Hz (phase noise over dTE 1.2-2.5 ms). Either convention is read as the phantom's
    own, by the body-surface layer, and the readings are mirror images (agreement >= 0.97)."""
    ph = _phantom(te_ms, field_t, precession)
    with pytest.raises(ConfigError, match="--method phase_referenced"):
        fw.separate(ph.echoes, ph.te_s, field_t)
    result = _separate(ph)
    p = result.params
    assert (p["precession"]["used"], p["precession"]["decided_by"]) == (precession,
                                                                        "surface_layer")
    assert p["reference_echo"] == (2 if te_ms == (4.92, 7.38) else 1) and result.r2star is None
    muscle = _muscle_mask(ph.labels, "mrsegmentator")
    body = np.isfinite(ph.pdff) & (ph.water + ph.fat > 200)
    err = result.pdff - ph.pdff
    assert np.mean(np.abs(err[body]) > 0.3) <= 0.005
    assert np.median(np.abs(err[muscle])) <= 0.07
    for label in np.unique(ph.labels[muscle]):
        assert abs(np.mean(err[ph.labels == label])) <= 0.08, label
    assert np.median(np.abs(result.fieldmap_hz - ph.fieldmap_hz)[body]) <= 12.0
    assert p["mirror_agreement"] >= pr.MIN_MIRROR_AGREEMENT and not p["warnings"]


def test_the_two_readings_are_mirror_images():
    """Conjugated data read with the model's convention swap water and fat everywhere: the
    surface layer decides, and the wrong reading given explicitly is swapped (with a warning)."""
    ph = _phantom((3.9, 6.3), 3.0)
    with pytest.warns(UserWarning, match="body-surface layer has median PDFF"):
        wrong = pr.separate_phase_referenced(ph.echoes, ph.te_s, 3.0, precession="conjugate")
    body = np.isfinite(ph.pdff) & (ph.water + ph.fat > 200)
    assert np.mean(np.abs(wrong.pdff - ph.pdff)[body] > 0.3) > 0.8
    surface = _separate(ph).params["precession"]["surface_pdff"]
    assert surface["as_stored"] > 0.85 and surface["conjugate"] < 0.25


def test_reference_echo_choice_and_refusals():
    assert pr.reference_echo((0.0039, 0.0063), 3.0) == 0  # fat at 109 vs 94 degrees
    assert pr.reference_echo((0.0012, 0.0022, 0.0032), 3.0) == 2  # -137 degrees
    with pytest.raises(ConfigError, match="no echo has fat far enough"):
        pr.reference_echo((0.0023, 0.0046), 1.5)  # opposed and in phase
    ph = _phantom((3.9, 6.3), 3.0)
    with pytest.raises(ConfigError, match="unknown phase-referenced option"):
        pr.separate_phase_referenced(ph.echoes, ph.te_s, 3.0, field_range_hz=300)
    three = _phantom((1.2, 2.2, 3.2), 3.0)
    with pytest.raises(ConfigError, match="encode fat between the echoes: use the multi-echo"):
        pr.separate_phase_referenced(three.echoes, three.te_s, 3.0)


def test_phase_ramp_is_removed_without_the_tissue_steps():
    """A plane of water and fat patches on a phase winding 3 turns: the ramp estimate follows
    the background within a few degrees, not the 109-degree steps at the patch borders."""
    x, y = np.meshgrid(np.arange(96), np.arange(80), indexing="ij")
    background = 0.2 * x + 0.0015 * (y - 40) ** 2
    fat = ((x // 16 + y // 16) % 2).astype(bool)
    theta = np.radians(109.0)
    z = np.exp(1j * (background + theta * fat))
    ramp = pr.background_ramp(z, np.ones(z.shape, bool), 12.0)
    inner = (slice(16, -16), slice(16, -16))
    error = np.angle(np.exp(1j * (ramp - background)))[inner]
    assert np.ptp(error - np.median(error)) < np.radians(20)


@pytest.mark.parametrize("precession", ["auto", "as_stored"])
def test_one_tissue_is_refused_not_guessed(precession):
    """Water only (with noise): no block holds both tissues, so nothing fixes which tissue the
    image is; before this check the 4 mm phantom came out as fat under auto (the surface layer
    then 'decided'). Refused with any precession. The phantom with fat: 85-87 % decisive."""
    ph = _phantom((3.9, 6.3), 3.0)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((*ph.echoes.shape, 2)) @ np.array([1, 1j])
    echoes = fw.signal_model(ph.water + ph.fat, np.zeros_like(ph.fat), ph.fieldmap_hz, ph.r2star,
                             np.array(ph.te_s), 3.0) + ph.truth["parameters"]["noise_sigma"] * noise
    with pytest.raises(InputFileError, match="both water and fat"):
        pr.separate_phase_referenced(echoes.astype(np.complex64), ph.te_s, 3.0,
                                     precession=precession)
    assert _separate(ph).params["decisive_fraction"] > 0.8


def test_same_input_same_output():
    ph = _phantom((3.9, 6.3), 3.0)
    a, b = _separate(ph), _separate(ph)
    np.testing.assert_array_equal(a.pdff, b.pdff)
    np.testing.assert_array_equal(a.fieldmap_hz, b.fieldmap_hz)


def test_voxels_without_a_reference_get_no_pdff():
    """A speck far from the body is in the signal mask but too small to grow a block: its PDFF
    is NaN (not 0, which would read as water) and counted in the provenance."""
    ph = _phantom((3.9, 6.3), 3.0)
    echoes = np.pad(ph.echoes, ((0, 60), (0, 0), (0, 0), (0, 0)))
    echoes[-4:-1, 30:33, 10] = np.abs(echoes).max()
    result = pr.separate_phase_referenced(echoes, ph.te_s, 3.0, precession="as_stored")
    assert result.mask[-4:-1, 30:33, 10].all() and np.isnan(result.pdff[-4:-1, 30:33, 10]).all()
    assert result.params["unreferenced_voxels"] == 9
    body = np.pad(ph.water + ph.fat > 200, ((0, 60), (0, 0), (0, 0)))
    assert np.isfinite(result.pdff[body]).all()
