"""Manifest validation: every problem listed at once, paths relative to the manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from myocomp.pipeline.manifest import (
    ManifestError,
    ManifestRowError,
    is_safe_participant_id,
    read_manifest,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    for name in ("a/water.nii.gz", "a/fat.nii.gz", "a/labels.nii.gz", "b/ip.nii.gz"):
        touch(tmp_path / name)
    (tmp_path / "dcm").mkdir()
    touch(tmp_path / "dcm" / "x" / "1.dcm")
    for k in (1, 2, 3):
        touch(tmp_path / "st" / f"water_{k}.nii.gz")
        touch(tmp_path / "st" / f"fat_{k}.nii")
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_valid_manifest_resolves_relative_paths_and_sources(files: Path) -> None:
    m = write(
        files / "m.csv",
        "participant_id,water,fat,in_phase,dicom_dir,stations,water_stations,fat_stations,labels,profile,bmi,site\n"
        "P1,a/water.nii.gz,a/fat.nii.gz,b/ip.nii.gz,,,,,a/labels.nii.gz,mrsegmentator,24.5,Berlin\n"
        "P2,,,,dcm,,,,,,,\n"
        "P3,,,,,st,,,a/labels.nii.gz,,,\n"
        "P4,,,,,,st/water_1.nii.gz; st/water_2.nii.gz,st/fat_1.nii;st/fat_2.nii,,,,\n",
    )
    man = read_manifest(m, default_profile="total_mr")
    assert man.ids == ["P1", "P2", "P3", "P4"]
    p1, p2, p3, p4 = man.participants
    assert p1.kind == "nifti" and p1.water == files / "a" / "water.nii.gz"
    assert p1.in_phase == files / "b" / "ip.nii.gz" and p1.bmi == 24.5 and p1.site == "Berlin"
    assert p1.profile == "mrsegmentator"
    assert p2.kind == "dicom" and p2.dicom_dir == files / "dcm" and p2.labels is None
    assert p2.input_files() == {"dicom": [files / "dcm" / "x" / "1.dcm"]}
    assert p3.kind == "stations" and p3.profile == "total_mr"
    assert [p.name for p in p3.stations["water"]] == [f"water_{k}.nii.gz" for k in (1, 2, 3)]
    assert [p.name for p in p3.stations["fat"]] == [f"fat_{k}.nii" for k in (1, 2, 3)]
    assert set(p3.stations) == {"water", "fat"}
    assert [p.name for p in p4.stations["fat"]] == ["fat_1.nii", "fat_2.nii"]


def test_all_problems_are_listed_at_once(files: Path) -> None:
    m = write(
        files / "m.csv",
        "participant_id,water,fat,dicom_dir,labels,bmi\n"
        "P1,a/water.nii.gz,a/missing.nii.gz,,,\n"  # missing file: that row's error, not here
        "P2,a/water.nii.gz,a/fat.nii.gz,,,abc\n"  # bad bmi
        "P1,a/water.nii.gz,a/fat.nii.gz,,,\n"  # duplicate id
        "../evil,a/water.nii.gz,a/fat.nii.gz,,,\n"  # unsafe id
        "P5,,,,,\n"  # no source
        "P6,a/water.nii.gz,a/fat.nii.gz,dcm,,\n"  # two sources
        "P7,a/water.nii.gz\n"  # unreadable row
        "P8,a/water.nii.gz,a/fat.nii.gz,,a/labels.nii.gz,\n"  # labels without profile
        "P9,a/water.nii.gz,,,,-3\n",  # fat missing, negative bmi
    )
    with pytest.raises(ManifestError) as info:
        read_manifest(m)
    problems = "\n".join(info.value.problems)
    assert "missing.nii.gz" not in problems
    assert "line 3 (P2): bmi 'abc' is not a number" in problems
    assert "line 4 (P1): duplicate participant_id (first on line 2)" in problems
    assert "line 5 (../evil): participant_id '../evil' is not a safe folder name" in problems
    assert "line 6 (P5): no image source" in problems
    assert "line 7 (P6): more than one image source" in problems
    assert "line 8: 2 fields, the header has 6" in problems
    assert "line 9 (P8): labels given without a profile" in problems
    assert "line 10 (P9): fat is empty" in problems
    assert "line 10 (P9): bmi '-3' must be a positive number" in problems
    assert len(info.value.problems) == 9
    assert "9 problems in manifest" in str(info.value)


def test_unknown_label_profile_is_reported_up_front(files: Path) -> None:
    m = write(
        files / "m.csv",
        "participant_id,water,fat,labels,profile\n"
        "P1,a/water.nii.gz,a/fat.nii.gz,a/labels.nii.gz,mrsegmentator\n"
        "P2,a/water.nii.gz,a/fat.nii.gz,a/labels.nii.gz,nosuchtool\n"
        "P3,a/water.nii.gz,a/fat.nii.gz,a/labels.nii.gz,nosuchtool\n",
    )
    with pytest.raises(ManifestError) as info:
        read_manifest(m)
    assert [p.split(":")[0] for p in info.value.problems] == ["line 3 (P2)", "line 4 (P3)"]
    assert "nosuchtool" in info.value.problems[0]


def test_unknown_and_missing_columns(files: Path) -> None:
    m = write(files / "m.tsv", "id\twater\tfat\tlables\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(m)
    problems = info.value.problems
    assert any("unknown column 'lables' (did you mean 'labels'?)" in p for p in problems)
    assert "missing column 'participant_id'" in problems


def test_tsv_and_station_problems(files: Path) -> None:
    touch(files / "st2" / "water_1.nii.gz")
    touch(files / "st2" / "water_3.nii.gz")
    touch(files / "st2" / "fat_1.nii.gz")
    m = write(
        files / "m.tsv",
        "participant_id\tstations\twater_stations\tfat_stations\n"
        "P1\tst2\t\t\n"
        "P2\t\tst/water_1.nii.gz;st/water_2.nii.gz\tst/fat_1.nii\n"
        "P3\tnowhere\t\t\n",
    )
    with pytest.raises(ManifestError) as info:
        read_manifest(m)
    problems = "\n".join(info.value.problems)
    assert "line 2 (P1): stations: water stations are not numbered 1..2" in problems
    assert "line 2 (P1): stations: channels have different station counts" in problems
    assert "line 3 (P2): stations: channels have different station counts" in problems
    assert "P3" not in problems  # a missing folder is that row's error (see below)
    with pytest.raises(ManifestError):
        read_manifest(m, strict=True)


def test_missing_or_unreadable_files_are_row_errors(files: Path) -> None:
    (files / "a" / "folder.nii.gz").mkdir()
    m = write(
        files / "m.csv",
        "participant_id,water,fat,stations\n"
        "P1,a/water.nii.gz,a/fat.nii.gz,\n"
        "P2,a/water.nii.gz,a/gone.nii.gz,\n"
        "P3,a/folder.nii.gz,a/fat.nii.gz,\n"
        "P4,,,nowhere\n",
    )
    man = read_manifest(m)
    assert man.ids == ["P1"]
    reasons = {e["participant_id"]: e["reason"] for e in man.row_errors}
    assert {e["stage"] for e in man.row_errors} == {"manifest"}
    assert reasons["P2"].startswith("line 3: fat: file not found:")
    assert reasons["P3"].startswith("line 4: water: not a regular file:")
    assert reasons["P4"].startswith("line 5: stations: folder not found:")
    with pytest.raises(ManifestRowError) as info:
        read_manifest(m, strict=True)
    assert len(info.value.problems) == 3


def test_a_bad_profile_file_is_that_rows_error(files: Path) -> None:
    (files / "bad.json").write_text('{"labels": {"background": 0, "autochthon_left": "abc"}}')
    m = write(
        files / "m.csv",
        "participant_id,water,fat,labels,profile\n"
        "P1,a/water.nii.gz,a/fat.nii.gz,a/labels.nii.gz,mrsegmentator\n"
        "P2,a/water.nii.gz,a/fat.nii.gz,a/labels.nii.gz,bad.json\n",
    )
    man = read_manifest(m)
    assert man.ids == ["P1"]
    (error,) = man.row_errors
    assert error["participant_id"] == "P2" and error["reason"].startswith("line 3: profile:")
    assert "\n" not in error["reason"]


def test_empty_manifest_and_missing_file(tmp_path: Path) -> None:
    from myocomp.errors import InputFileError

    with pytest.raises(InputFileError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(ManifestError, match="no participant rows"):
        read_manifest(write(tmp_path / "m.csv", "participant_id,water,fat\n"))


@pytest.mark.parametrize(
    ("value", "ok"),
    [("P001", True), ("a.b_c-d", True), ("..", False), (".hidden", False), ("a/b", False),
     ("a b", False), ("", False), ("x" * 129, False), ("Ä1", False)],
)  # fmt: skip
def test_safe_participant_ids(value: str, ok: bool) -> None:
    assert is_safe_participant_id(value) is ok


def test_channel_names_have_one_home_and_the_manifest_needs_no_numpy() -> None:
    """The manifest's image columns, its station file names and the DICOM reader's channels are
    one vocabulary (myocomp.imaging.channels); the manifest module imports no numpy."""
    import subprocess
    import sys

    from myocomp.imaging import channels, dicom
    from myocomp.pipeline import manifest

    assert manifest.CHANNELS is channels.CHANNELS
    assert set(dicom._TOKENS) == set(dicom._PHILIPS_TYPE.values()) == set(channels.CHANNELS)
    assert {name for name, _ in dicom._DESCRIPTION} == {*channels.CHANNELS, "ignore"}
    assert manifest.COLUMNS[1:5] == channels.CHANNELS
    assert manifest._STATION_FILE.match("opposed_phase_12.nii.gz")
    assert not manifest._STATION_FILE.match("t1_1.nii.gz")
    # the module alone (the pipeline package's __init__ imports the whole pipeline)
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('manifest_alone', {manifest.__file__!r}); "
            "m = sys.modules['manifest_alone'] = importlib.util.module_from_spec(spec); "
            "spec.loader.exec_module(m); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'pandas')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
