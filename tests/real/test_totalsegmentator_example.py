"""The TotalSegmentator MR example (../shared/data/totalsegmentator_mr_example): which table wrote it?

Its ids (1-25, 46-49) exist in both ``total_mr`` tables: the 50-class one of TotalSegmentator
2.5.0+ (46/47 autochthon, 48/49 iliopsoas) and the 56-class one of 2.2.1-2.4.0 (46/47 iliopsoas,
48/49 quadriceps). Only the anatomy tells: 46/47 lie dorsal of the vertebrae, so the map is a
2.5.0+ (50-class) output, and reading it with the 56-class table is refused.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from myocomp.errors import LabelError
from myocomp.imaging.anatomy import id_problem
from myocomp.imaging.dixon import load_dixon
from myocomp.imaging.labelmap import labelmap_from_array, load_labels
from myocomp.imaging.labels import get_profile, present_label_ids


@pytest.fixture(scope="module")
def example(shared_data):
    folder = shared_data / "totalsegmentator_mr_example"
    return folder / "example_mr_sm.nii.gz", folder / "example_seg_mr.nii.gz"


def test_ids_fit_both_total_mr_tables(example):
    present = present_label_ids(np.asarray(nib.load(example[1]).dataobj))
    assert {46, 47, 48, 49} <= set(present.tolist()) and present.max() == 49
    for name in ("totalsegmentator_mr", "totalsegmentator_mr_56"):
        assert id_problem(present, get_profile(name)) is None


def test_example_is_a_50_class_map(example):
    dixon = load_dixon(example[0])
    lm = load_labels(example[1], "total_mr", reference=dixon)
    assert lm.profile.name == "totalsegmentator_mr"
    assert lm.anatomy["assessed"] == ["side", "back_posterior", "psoas_anterior"]
    assert load_labels(example[1], "auto", reference=dixon).profile.name == "totalsegmentator_mr"
    with pytest.raises(LabelError, match="does not fit profile 'totalsegmentator_mr_56': iliopsoas_left, iliopsoas_right") as err:
        load_labels(example[1], "totalsegmentator_mr_56", reference=dixon)
    assert "'totalsegmentator_mr' (TotalSegmentator 2.5.0+" in str(err.value)


def test_example_left_right_exchanged_is_refused(example):
    img = nib.load(example[1])
    assert nib.aff2axcodes(img.affine)[0] == "L"
    flipped = np.flip(np.asarray(img.dataobj), axis=0)
    with pytest.raises(LabelError, match="autochthon, iliopsoas, kidney have '_right' to the left"):
        labelmap_from_array(flipped, img.affine, "totalsegmentator_mr")
