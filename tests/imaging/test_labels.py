import json

import pytest

from myocomp.errors import LabelError
from myocomp.imaging.labels import (
    canonical_name,
    get_profile,
    group_members,
    profile_from_dataset_json,
)


@pytest.mark.parametrize(
    ("profile", "ids"),
    [
        ("mrsegmentator", {31: "autochthon_left", 32: "autochthon_right", 33: "iliopsoas_left", 34: "iliopsoas_right", 35: "gluteus_maximus_left", 40: "gluteus_minimus_right"}),
        ("totalsegmentator_mr", {46: "autochthon_left", 47: "autochthon_right", 48: "iliopsoas_left", 49: "iliopsoas_right", 40: "gluteus_maximus_left"}),
        ("total_mr", {46: "autochthon_left", 49: "iliopsoas_right"}),
        ("totalsegmentator_mr_56", {44: "autochthon_left", 45: "autochthon_right", 46: "iliopsoas_left", 48: "quadriceps_femoris_left"}),
        ("totalvibeseg", {59: "autochthon_left", 60: "autochthon_right", 61: "iliopsoas_left", 62: "iliopsoas_right", 66: "muscle"}),
        ("musclemap", {5111: "erector_spinae_left", 5112: "erector_spinae_right", 5101: "multifidus_left", 5121: "psoas_major_left", 6122: "gluteus_maximus_right"}),
    ],
)
def test_builtin_profiles_use_published_ids(profile, ids):
    p = get_profile(profile)
    for i, name in ids.items():
        assert p.ids[i] == name
    assert set(ids) <= set(p.ids)


def test_groups_cover_each_tools_back_and_psoas_muscles():
    mm = list(get_profile("musclemap").ids.values())
    assert group_members("back", mm) == ["erector_spinae_left", "erector_spinae_right", "multifidus_left", "multifidus_right"]
    assert group_members("psoas", mm) == ["iliacus_left", "iliacus_right", "psoas_major_left", "psoas_major_right"]
    mr = list(get_profile("mrsegmentator").ids.values())
    assert group_members("gluteal", mr) == sorted(n for n in mr if n.startswith("gluteus"))
    assert "spine" not in group_members("all", mr) and "liver" not in group_members("all", mr)
    with pytest.raises(LabelError, match="unknown group"):
        group_members("shoulders", mr)


def test_canonical_names():
    assert canonical_name("Left autochthonous muscle") == "autochthon_left"
    assert canonical_name("iliopsoas_R") == "iliopsoas_right"
    assert canonical_name("Erector Spinae left") == "erector_spinae_left"
    assert canonical_name("liver") == "liver"


def test_dataset_json_and_user_mapping(tmp_path):
    ds = {"channel_names": {"0": "water", "1": "fat"}, "labels": {"background": 0, "left autochthon": 1, "right_autochthon": 2, "Spine": 3}}
    p = profile_from_dataset_json(ds)
    assert p.ids == {1: "autochthon_left", 2: "autochthon_right", 3: "spine"}
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(ds))
    assert get_profile(path).ids == p.ids
    user = tmp_path / "map.json"
    user.write_text(json.dumps({"7": "psoas left", "8": "psoas right"}))
    assert get_profile(user).ids == {7: "psoas_major_left", 8: "psoas_major_right"}


def test_unknown_profile_is_clear():
    with pytest.raises(LabelError, match="unknown label profile 'nosuchtool'"):
        get_profile("nosuchtool")


@pytest.mark.parametrize("seed", range(6))
def test_present_label_ids_is_exact_on_every_layout(seed):
    """Run starts only: equal to np.unique for any dtype, memory order, view, chunk size, and a
    label that occurs in one voxel only (at a chunk boundary, at the first and the last voxel)."""
    import numpy as np

    from myocomp.imaging.labels import present_label_ids

    rng = np.random.default_rng(seed)
    for _ in range(40):
        shape = tuple(int(n) for n in rng.integers(1, 24, 3))
        data = np.repeat(rng.integers(0, int(rng.integers(2, 400)), shape[0]), shape[1] * shape[2]).reshape(shape)
        data = data.astype(rng.choice([np.uint8, np.uint16, np.int16, np.int32]), copy=False) % 250
        data.flat[int(rng.integers(0, data.size))] = 251
        data.flat[0], data.flat[-1] = 252, 253
        layouts = [data, np.asfortranarray(data), data[::2, ::-1], np.moveaxis(data, 0, 2)]
        chunk = int(rng.integers(1, 64))
        for view in layouts:
            expected = np.unique(view)
            np.testing.assert_array_equal(present_label_ids(view, chunk=chunk), expected[expected != 0])
    negative = np.array([[[-3, 0, 7]]])
    np.testing.assert_array_equal(present_label_ids(negative), [-3, 7])
