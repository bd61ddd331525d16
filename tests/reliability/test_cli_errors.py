"""Every bad input and fault of issue 9 (outside the batch) and the sweep's others: exit 2, exactly
one stderr line 'error: ...', no traceback, inputs byte-identical, no new file left behind."""

from __future__ import annotations

import pytest

from .conftest import assert_refused, run_cli, snapshot

Q = ["quantify", "--water", "{w}/water.nii.gz", "--fat", "{w}/fat.nii.gz", "--labels",
     "{w}/labels.nii.gz"]

QUANTIFY_CASES = {
    # outputs that would overwrite an input or each other
    "out_is_profile_json": (Q + ["--profile", "{w}/profile.json", "--out", "{w}/profile.json"],
                            "same file as --profile"),
    "out_is_water": (Q + ["--out", "{w}/water.nii.gz"], "--out must end in"),
    "slices_is_out": (Q + ["--out", "{w}/m.csv", "--slices", "{w}/m.csv"], "same location"),
    "provenance_is_out": (Q + ["--out", "{w}/m.csv", "--provenance", "{w}/m.csv"], "same location"),
    "provenance_is_labels_csv": (Q + ["--out", "{w}/m.csv", "--provenance", "{w}/labels.nii.gz"],
                                 "same file as --labels"),
    # output locations that cannot be written
    "out_under_a_file": (Q + ["--out", "{w}/water.nii.gz/m.csv"], "is a file, not a folder"),
    "out_is_a_folder": (Q + ["--out", "{w}/folder.csv"], "is a folder"),
    "out_in_sys": (Q + ["--out", "/sys/m.csv"], "not writable"),
    "provenance_unwritable": (Q + ["--out", "{w}/m.csv", "--slices", "{w}/s.csv",
                                   "--provenance", "{w}/fat.nii.gz/p.json"], "not a folder"),
    # options
    "band_mm_inf": (Q + ["--out", "{w}/m.csv", "--band-mm", "inf"], "--band-mm"),
    "band_mm_nan": (Q + ["--out", "{w}/m.csv", "--band-mm", "nan"], "--band-mm"),
    "band_mm_negative": (Q + ["--out", "{w}/m.csv", "--band-mm", "-1"], "--band-mm"),
    "fat_threshold_zero": (Q + ["--out", "{w}/m.csv", "--fat-threshold", "0"], "--fat-threshold"),
    "fat_threshold_above_1": (Q + ["--out", "{w}/m.csv", "--fat-threshold", "1.5"], "--fat-threshold"),
    "fat_threshold_nan": (Q + ["--out", "{w}/m.csv", "--fat-threshold", "nan"], "--fat-threshold"),
    "bmi_huge": (Q + ["--out", "{w}/m.csv", "--bmi", "1e9"], "--bmi"),
    "bmi_text": (Q + ["--out", "{w}/m.csv", "--bmi", "abc"], "--bmi"),
    "missing_option": (["quantify", "--water", "{w}/water.nii.gz", "--out", "{w}/m.csv"],
                       "missing option '--labels'"),
    "unknown_option": (Q + ["--out", "{w}/m.csv", "--bogus", "1"], "no such option"),
    "empty_group": (Q + ["--out", "{w}/m.csv", "--groups", "back,,psoas"], "empty item"),
    # impossible images
    "negated_fat": (["quantify", "--water", "{w}/water.nii.gz", "--fat", "{w}/neg_fat.nii.gz",
                     "--labels", "{w}/labels.nii.gz", "--out", "{w}/m.csv"], "negative in"),
    "water_is_fat": (["quantify", "--water", "{w}/water.nii.gz", "--fat", "{w}/water.nii.gz",
                      "--labels", "{w}/labels.nii.gz", "--out", "{w}/m.csv"], "identical"),
    "all_zero_water": (["quantify", "--water", "{w}/zeros.nii.gz", "--fat", "{w}/fat.nii.gz",
                        "--labels", "{w}/labels.nii.gz", "--out", "{w}/m.csv"], "all zero"),
    "all_zero_in_phase": (Q + ["--in-phase", "{w}/zeros.nii.gz", "--out", "{w}/m.csv"], "all zero"),
    "opposed_phase_as_in_phase": (Q + ["--in-phase", "{w}/opposed_phase.nii.gz", "--out", "{w}/m.csv"],
                                  "in-phase image is inconsistent"),
    "rotated_fat_0_3_mrad": (["quantify", "--water", "{w}/water.nii.gz", "--fat",
                              "{w}/fat_rotated.nii.gz", "--labels", "{w}/labels.nii.gz",
                              "--out", "{w}/m.csv"], "not the same grid"),
    "header_bomb_600": (["quantify", "--water", "{w}/bomb600.nii.gz", "--labels", "{w}/labels.nii.gz",
                         "--out", "{w}/m.csv"], "header declares"),
    "header_bomb_30000": (["quantify", "--water", "{w}/bomb30000.nii.gz", "--labels",
                           "{w}/labels.nii.gz", "--out", "{w}/m.csv"], "above the limit"),
    "truncated_nii": (["quantify", "--water", "{w}/truncated.nii", "--labels", "{w}/labels.nii.gz",
                       "--out", "{w}/m.csv"], "truncated"),
    "dataset_json_label_abc": (Q + ["--profile", "{w}/dataset_abc.json", "--out", "{w}/m.csv"],
                               "ids must be whole numbers"),
}

OTHER_CASES = {
    "segment_out_is_image": (["segment", "--model", "no-such-model", "--image", "{w}/water.nii.gz",
                              "--out", "{w}/water.nii.gz"], "same file as --image 1"),
    "segment_out_suffix": (["segment", "--model", "no-such-model", "--image", "{w}/water.nii.gz",
                            "--out", "{w}/seg.csv"], "--out must end in .nii"),
    "segment_unknown_model": (["segment", "--model", "no-such-model", "--image", "{w}/water.nii.gz",
                               "--out", "{w}/seg.nii.gz"], "no-such-model"),
    "models_fetch_unknown": (["models", "fetch", "no-such-model"], "unknown model"),
    "phantom_out_is_file": (["phantom", "--out", "{w}/water.nii.gz"], "is a file"),
    "phantom_snr_nan": (["phantom", "--out", "{w}/ph", "--snr", "nan"], "--snr"),
    "phantom_supersample_0": (["phantom", "--out", "{w}/ph", "--supersample", "0"], "--supersample"),
    "phantom_seed_negative": (["phantom", "--out", "{w}/ph", "--seed", "-1"], "--seed"),
    "synth_seed_negative": (["synth-cohort", "--out", "{w}/c.csv", "--seed", "-1"], "--seed"),
    "synth_out_under_file": (["synth-cohort", "--out", "{w}/water.nii.gz/c.csv", "--n", "60"],
                             "not a folder"),
    "synth_n_too_small": (["synth-cohort", "--out", "{w}/c.csv", "--n", "3"], "--n"),
    "synth_bad_suffix": (["synth-cohort", "--out", "{w}/c.xlsx"], "must end in"),
    "demo_out_is_file": (["demo", "--out", "{w}/water.nii.gz"], "is a file"),
    "demo_cohort_n_3": (["demo", "--out", "{w}/demo", "--cohort-n", "3"], "--cohort-n"),
    "demo_workers_0": (["demo", "--out", "{w}/demo", "--workers", "0"], "--workers"),
    "demo_out_in_sys": (["demo", "--out", "/sys/demo"], "not writable"),
    "phantom_voxel_size_0": (["phantom", "--out", "{w}/ph", "--voxel-size", "0"], "voxel_size"),
    "phantom_orientation_xyz": (["phantom", "--out", "{w}/ph", "--orientation", "XYZ"], "orientation"),
    "models_fetch_to_sys": (["models", "fetch", "phantom-demo", "--from-file", "{w}/none.tar",
                             "--to", "/sys/models", "--force"], ""),
    "predict_model_is_folder": (["predict", "--model", "{w}", "--age", "50", "--sex", "f", "--bmi",
                                 "25", "--lean-volume-ml", "900"], "model file not found"),
    "no_such_command": (["nonsense"], "no such command"),
}


def _argv(template, work):
    return [a.replace("{w}", str(work)) for a in template]


@pytest.mark.parametrize("case", sorted(QUANTIFY_CASES) + sorted(OTHER_CASES))
def test_refused_with_one_line_and_nothing_written(case, work, capsys):
    (work / "folder.csv").mkdir()
    template, expect = {**QUANTIFY_CASES, **OTHER_CASES}[case]
    before = snapshot(work)
    res = run_cli(_argv(template, work), capsys)
    assert_refused(res, expect)
    assert snapshot(work) == before  # inputs byte-identical, no new file, no staging folder


def test_models_fetch_error_has_no_leading_blank_line(capsys):
    res = run_cli(["models", "fetch", "no-such-model"], capsys)
    assert res.err.startswith("error: ")


def test_segment_error_is_not_preceded_by_channel_lines(work, capsys):
    res = run_cli(["segment", "--model", "no-such-model", "--image", str(work / "water.nii.gz"),
                   "--image", str(work / "fat.nii.gz"), "--out", str(work / "seg.nii.gz")], capsys)
    assert_refused(res)
    assert "channel" not in res.out + res.err


def test_library_warnings_go_to_the_provenance_not_the_terminal(work, capsys, monkeypatch):
    import json
    import warnings

    import myocomp.imaging.composition as composition

    real = composition.quantify

    def noisy(*args, **kwargs):
        warnings.warn("invalid value encountered in divide", RuntimeWarning, stacklevel=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(composition, "quantify", noisy)
    res = run_cli(["quantify", "--water", work / "water.nii.gz", "--fat", work / "fat.nii.gz",
                   "--labels", work / "labels.nii.gz", "--out", work / "m.csv",
                   "--provenance", work / "p.json", "--groups", "back"], capsys)
    assert res.code == 0, res.err
    assert "RuntimeWarning" not in res.err + res.out
    recorded = json.loads((work / "p.json").read_text())["warnings"]
    assert "RuntimeWarning: invalid value encountered in divide" in recorded
