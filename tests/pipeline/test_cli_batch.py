"""`myocomp batch` option handling that needs no cluster (user errors exit 2 with one message)."""

from __future__ import annotations

from pathlib import Path

import pytest

from myocomp.cli import main
from myocomp.errors import ConfigError
from myocomp.pipeline.params import parse_volume_ranges, read_batch_config


def test_manifest_problems_are_all_printed_and_exit_2(tmp_path: Path, capsys) -> None:
    m = tmp_path / "m.csv"
    m.write_text("participant_id,water,fat\nP1,nowhere.nii.gz,x.nii.gz\nP1,,\nbad id,,\n")
    code = main(["batch", str(m), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: 4 problem(s) in manifest" in err  # a missing file is a row's error
    assert "line 3 (P1): duplicate participant_id" in err
    assert "line 4 (bad id): participant_id 'bad id' is not a safe folder name" in err
    assert not (tmp_path / "out").exists()


def test_conflicting_and_invalid_options_exit_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "w.nii.gz").write_bytes(b"x")
    m = tmp_path / "m.csv"
    m.write_text("participant_id,water,fat\nP1,w.nii.gz,w.nii.gz\n")
    out = str(tmp_path / "out")
    assert (
        main(["batch", str(m), "--out", out, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])
        == 2
    )
    assert "give only one of --workers, --scheduler, --slurm" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["batch", str(m), "--out", str(tmp_path / "afile")]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err
    assert main(["batch", str(m), "--out", out, "--fat-threshold", "1.5"]) == 2
    assert "--fat-threshold must be a finite number in (0, 1], got 1.5" in capsys.readouterr().err
    assert main(["batch", str(m), "--out", out, "--model", "no-such-model-xyz"]) == 2
    assert "no-such-model-xyz" in capsys.readouterr().err
    assert main(["batch", str(m), "--out", out, "--groups", "back,legs"]) == 2
    assert "unknown group(s) legs" in capsys.readouterr().err
    assert main(["batch", str(m), "--out", out, "--volume-range", "back=10"]) == 2
    assert "GROUP=LOW:HIGH" in capsys.readouterr().err
    cfg = tmp_path / "c.toml"
    cfg.write_text("[batch]\nmodl = 'x'\n")
    assert main(["batch", str(m), "--out", out, "--config", str(cfg)]) == 2
    assert "unknown [batch] keys: modl" in capsys.readouterr().err


def test_batch_config_and_volume_ranges(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        "[batch]\nmodel = 'mrsegmentator'\ngroups = ['back']\n[batch.volume_ranges]\nback = [100, 900]\n"
    )
    table = read_batch_config(cfg)
    assert table["model"] == "mrsegmentator" and table["groups"] == ["back"]
    assert parse_volume_ranges(table["volume_ranges"]) == {"back": (100.0, 900.0)}
    assert parse_volume_ranges(["psoas=20:300", "gluteal=1e2:5e3"]) == {
        "psoas": (20.0, 300.0), "gluteal": (100.0, 5000.0)
    }  # fmt: skip
    with pytest.raises(ConfigError, match="below high"):
        parse_volume_ranges(["back=900:100"])
    with pytest.raises(ConfigError, match="two numbers"):
        parse_volume_ranges({"back": ["a", "b"]})
