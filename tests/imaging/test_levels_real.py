"""qc_truncated_fov on real data: the tum_lumbar crop (L2-L5) cuts the back muscles at both ends.

The tum_lumbar water and fat headers disagree (README of the data): the fat image, its label map
(fat header) and the water array placed on the fat header are used, through the Python API.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from myocomp.imaging.composition import quantify
from myocomp.imaging.dixon import dixon_from_arrays
from myocomp.imaging.labelmap import labelmap_from_array
from myocomp.imaging.labels import profile_from_mapping

# side assignment rests on the fat header (see the data's README)
PROFILE = {"1": "erector_spinae_right", "2": "multifidus_right", "3": "multifidus_left", "4": "erector_spinae_left"}
MUSCLES = ["back", "erector_spinae_left", "erector_spinae_right", "multifidus_left", "multifidus_right"]


def load(folder, subject):
    fat = nib.load(folder / f"{subject}_fat_img_img_L2-L5.nii.gz")
    water = nib.load(folder / f"{subject}_water_img_img_L2-L5.nii.gz")
    labels = nib.load(folder / f"{subject}_fat_manual_label_segmentation_L2-L5.nii.gz")
    return np.asanyarray(water.dataobj), np.asanyarray(fat.dataobj), np.asanyarray(labels.dataobj), fat.affine


@pytest.mark.parametrize("subject", ["TUM01", "TUM02"])
def test_tum_lumbar_back_muscles_are_flagged_as_cut_by_the_field_of_view(shared_data, subject):
    folder = shared_data / "real" / "tum_lumbar"
    if not folder.is_dir():
        pytest.skip("tum_lumbar data not available")
    water, fat, labels, affine = load(folder, subject)
    profile = profile_from_mapping(PROFILE, name="tum_lumbar")
    dixon = dixon_from_arrays(water, fat, affine)
    labelmap = labelmap_from_array(labels, affine, profile, reference=dixon)
    metrics = quantify(dixon, labelmap, groups=("back",), with_slices=False).metrics.set_index("group")
    assert metrics.loc[MUSCLES, "qc_truncated_fov"].all()
    # control: the same scan with one empty slice added at each end is not cut any more
    pad = [(0, 0), (0, 0), (1, 1)]
    shifted = affine.copy()
    shifted[:3, 3] -= affine[:3, 2]
    padded = dixon_from_arrays(np.pad(water, pad), np.pad(fat, pad), shifted)
    padded_labels = labelmap_from_array(np.pad(labels, pad), shifted, profile, reference=padded)
    control = quantify(padded, padded_labels, groups=("back",), with_slices=False).metrics.set_index("group")
    assert not control.loc[MUSCLES, "qc_truncated_fov"].any()
    np.testing.assert_allclose(control.loc[MUSCLES, "volume_ml"], metrics.loc[MUSCLES, "volume_ml"])
