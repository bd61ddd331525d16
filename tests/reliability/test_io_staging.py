"""io's output safety: path checks before work, staged outputs committed all or nothing."""

from __future__ import annotations

import os

import pytest

from myocomp.errors import ConfigError
from myocomp.io import check_output_paths, staged_outputs, write_text


def test_outputs_are_committed_together(tmp_path):
    with staged_outputs() as stage:
        write_text("a", stage.file(tmp_path / "new" / "a.txt"))
        write_text("b", stage.file(tmp_path / "b.txt"))
        folder = stage.folder(tmp_path / "out")
        (folder / "sub").mkdir()
        write_text("c", folder / "sub" / "c.txt")
        assert not (tmp_path / "b.txt").exists()  # nothing visible before the commit
    assert (tmp_path / "new" / "a.txt").read_text() == "a"
    assert (tmp_path / "out" / "sub" / "c.txt").read_text() == "c"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt", "new", "out"]


def test_a_failure_leaves_nothing_and_keeps_old_files(tmp_path):
    (tmp_path / "b.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_outputs() as stage:
        write_text("a", stage.file(tmp_path / "new" / "deeper" / "a.txt"))
        write_text("b", stage.file(tmp_path / "b.txt"))
        raise RuntimeError("disk full in the middle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]  # created folders removed too
    assert (tmp_path / "b.txt").read_text() == "old"


def test_a_failing_rename_restores_what_was_replaced(tmp_path, monkeypatch):
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(f"old {name}")
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if str(dst).endswith("b.txt") and not str(src).endswith("myocomp-old"):
            raise OSError(28, "No space left on device", str(dst))
        return real(src, dst)

    with pytest.raises(OSError), staged_outputs() as stage:
        write_text("new a", stage.file(tmp_path / "a.txt"))
        write_text("new b", stage.file(tmp_path / "b.txt"))
        monkeypatch.setattr(os, "replace", flaky)
    monkeypatch.setattr(os, "replace", real)
    assert (tmp_path / "a.txt").read_text() == "old a.txt"
    assert (tmp_path / "b.txt").read_text() == "old b.txt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_commit_never_replaces_a_protected_input(tmp_path):
    data = tmp_path / "out" / "tables" / "data.csv"
    data.parent.mkdir(parents=True)
    data.write_text("input")
    with pytest.raises(ConfigError, match="overwrite an input"), staged_outputs(protect=[data]) as stage:
        folder = stage.folder(tmp_path / "out")
        (folder / "tables").mkdir()
        write_text("table", folder / "tables" / "data.csv")
    assert data.read_text() == "input"


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "inside_input_folder", "same_output"])
def test_output_paths_checked_before_work(kind, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("x")
    (tmp_path / "dicom").mkdir()
    outputs = {"--out": tmp_path / "link.csv"}
    if kind == "symlink":
        (tmp_path / "link.csv").symlink_to(src)
    elif kind == "hardlink":
        os.link(src, tmp_path / "link.csv")
    elif kind == "inside_input_folder":
        outputs = {"--out": tmp_path / "dicom" / "m.csv"}
    else:
        outputs = {"--out": tmp_path / "m.csv", "--slices": tmp_path / "." / "m.csv"}
    with pytest.raises(ConfigError):
        check_output_paths(outputs, {"--data": src, "--dicom": tmp_path / "dicom"})
    assert src.read_text() == "x"
