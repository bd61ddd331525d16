"""myocomp.io: atomic writes, the table round trip, JSON encoding and the umask."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pandas as pd
import pytest

from myocomp.errors import ConfigError, InputFileError
from myocomp.io import (
    atomic_path,
    current_umask,
    read_table,
    save_figure,
    write_bytes,
    write_json,
    write_table,
    write_text,
)

FRAME = pd.DataFrame({
    "participant_id": ["a", "b", "c"],
    "n_voxels": [1, 20, 300],
    "ff_mean": [0.1, np.nan, 1 / 3],
    "volume_ml": [1234.5678901234567, 1e-7, -2.5],
})


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_write_table_read_table_round_trip(suffix, tmp_path):
    path = write_table(FRAME, tmp_path / f"t{suffix}")
    back = read_table(path)
    pd.testing.assert_frame_equal(back, FRAME, check_exact=suffix == ".parquet", rtol=1e-15)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"t{suffix}"]


def test_json_table_holds_the_records(tmp_path):
    write_table(FRAME, tmp_path / "t.json")
    records = json.loads((tmp_path / "t.json").read_text())
    assert [r["participant_id"] for r in records] == ["a", "b", "c"]
    assert records[1]["ff_mean"] is None and records[2]["n_voxels"] == 300
    # 15 significant digits, not pandas' default of 10 decimals (which turns 1e-7 into 1e-7 but
    # 1/3 into 0.3333333333 and loses 1234.5678901234567's last six digits)
    assert records[2]["ff_mean"] == pytest.approx(1 / 3, rel=1e-14)
    assert records[0]["volume_ml"] == pytest.approx(1234.5678901234567, rel=1e-14)
    assert records[1]["volume_ml"] == pytest.approx(1e-7, rel=1e-14)


def test_read_table_text_mode_keeps_cells_as_written(tmp_path):
    (tmp_path / "p.csv").write_text("id; bmi\nP1; 24,5\nP2; 031\n")
    table = read_table(tmp_path / "p.csv", text=True)
    assert list(table.columns) == ["id", "bmi"]
    assert table["bmi"].tolist() == ["24,5", "031"]


@pytest.mark.parametrize("name, reason", [("missing.csv", "file not found"),
                                          ("t.xlsx", "unsupported table format .xlsx"),
                                          ("bad.parquet", "cannot read table")])
def test_read_table_names_the_file_it_cannot_read(name, reason, tmp_path):
    if name != "missing.csv":
        (tmp_path / name).write_bytes(b"\x00not a table")
    with pytest.raises(InputFileError, match=reason) as info:
        read_table(tmp_path / name)
    assert str(tmp_path / name) in str(info.value)


def test_unsupported_output_suffix_writes_nothing(tmp_path):
    with pytest.raises(InputFileError, match="unsupported table format .xlsx"):
        write_table(FRAME, tmp_path / "t.xlsx")
    assert list(tmp_path.iterdir()) == []


class _Boom(RuntimeError):
    pass


def _fail(*_args, **_kwargs):
    raise _Boom("disk on fire")


@pytest.mark.parametrize("writer", ["block", "table", "figure"])
def test_a_failed_write_leaves_no_temp_file_and_keeps_the_old_file(writer, tmp_path, monkeypatch):
    target = tmp_path / ("old.png" if writer == "figure" else "old.csv")
    target.write_text("old content")
    with pytest.raises(_Boom):
        if writer == "block":
            with atomic_path(target) as tmp:
                tmp.write_text("half written")
                _fail()
        elif writer == "table":
            monkeypatch.setattr(pd.DataFrame, "to_csv", _fail)
            write_table(FRAME, target)
        else:
            save_figure(type("Fig", (), {"savefig": _fail})(), target)
    assert target.read_text() == "old content"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]


def test_write_json_is_sorted_and_writes_nan_as_null(tmp_path):
    obj = {"b": np.float32(0.5), "a": [np.int64(3), float("nan")], "c": np.array([1, 2]),
           "d": np.bool_(True), "e": tmp_path}
    text = write_json(obj, tmp_path / "o.json").read_text()
    assert text == json.dumps({"a": [3, None], "b": 0.5, "c": [1, 2], "d": True, "e": str(tmp_path)},
                              indent=2, sort_keys=True) + "\n"
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json({"x": object()}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_follow_the_umask(mask, mode, tmp_path):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        files = [write_text("x", tmp_path / "a.txt"), write_bytes(b"x", tmp_path / "b.bin"),
                 write_json({}, tmp_path / "c.json"), write_table(FRAME, tmp_path / "d.parquet")]
    finally:
        os.umask(old)
    assert {f.name: _mode(f) for f in files} == {f.name: mode for f in files}


def test_read_document_json_toml_and_its_errors(tmp_path):
    from myocomp.errors import ConfigError, InputFileError
    from myocomp.io import read_document

    good = tmp_path / "a.json"
    good.write_text('{"x": [1, 2]}')
    assert read_document(good, "model file") == {"x": [1, 2]}
    conf = tmp_path / "study.cfg"
    conf.write_text('[options]\nseed = 3\n')
    assert read_document(conf, "config file", toml=True) == {"options": {"seed": 3}}
    with pytest.raises(InputFileError, match="model file not found"):
        read_document(tmp_path / "none.json", "model file")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(InputFileError, match="bad.json: not valid JSON"):
        read_document(bad, "model file")
    conf.write_bytes(b"seed = \xff\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_document(conf, "config file", toml=True, invalid=ConfigError)


def test_now_utc_honours_source_date_epoch(monkeypatch):
    from datetime import UTC, datetime, timedelta

    from myocomp.io import now_utc, utc_timestamp

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert abs(now_utc() - datetime.now(UTC)) < timedelta(seconds=5)
    assert now_utc().microsecond == 0
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1735689600")
    assert utc_timestamp() == "2025-01-01T00:00:00+00:00"
    for bad in ("", "1.5e9", "-1", "soon", "99999999999999999999"):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", bad)
        with pytest.raises(ConfigError, match="^SOURCE_DATE_EPOCH: "):
            now_utc()
