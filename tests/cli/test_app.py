"""The command-line entry: --version, help, and usage errors as one ``error:`` line, exit 2."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer.main

import myocomp
from myocomp.cli import main
from myocomp.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = sorted(typer.main.get_command(app).commands)


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_version_is_the_package_version(capsys):
    code, out, err = _run(["--version"], capsys)
    assert code == 0 and err == ""
    assert out == f"myocomp {myocomp.__version__}\n"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert myocomp.__version__ == project["version"]


def test_python_dash_m_runs_the_same_entry():
    done = subprocess.run([sys.executable, "-m", "myocomp", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout == f"myocomp {myocomp.__version__}\n"


def test_python_dash_m_keeps_the_exit_code_of_an_error(tmp_path):
    missing = tmp_path / "water.nii.gz"
    done = subprocess.run([sys.executable, "-m", "myocomp", "quantify", "--water", str(missing), "--fat", str(missing),
                           "--labels", str(missing), "--out", str(tmp_path / "m.csv")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert not (tmp_path / "m.csv").exists()


def test_no_arguments_prints_help_listing_every_command(capsys):
    code, out, err = _run([], capsys)
    assert code == 0 and err == ""
    assert "Usage: myocomp" in out
    assert {"quantify", "profiles", "study", "batch", "models", "segment"} <= set(COMMANDS)
    for name in COMMANDS:
        assert f"\n  {name} " in out, name


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name, capsys):
    code, out, err = _run([name, "--help"], capsys)
    assert code == 0 and err == ""
    assert f"Usage: myocomp {name}" in out


@pytest.mark.parametrize("argv, reason", [
    (["no-such-command"], "No such command 'no-such-command'"),
    (["synth-cohort", "--out", "x.csv", "--n", "many"], "Invalid value for '--n'"),
    (["synth-cohort", "--n", "60"], "Missing option '--out'"),
    (["profiles", "--no-such-option"], "No such option: --no-such-option"),
])
def test_usage_errors_are_one_line_exit_2(argv, reason, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("error: myocomp") and reason in lines[0], err
    assert "--help')" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["", "abc", "-5", "99999999999999999999"])
def test_malformed_source_date_epoch_is_one_line_in_a_fresh_process(tmp_path, value):
    """In a fresh process scipy's import reaches numpy's f2py, which parses SOURCE_DATE_EPOCH
    itself and raises with a traceback: the CLI refuses the value first, for every command."""
    import os

    missing = tmp_path / "water.nii.gz"
    env = dict(os.environ, SOURCE_DATE_EPOCH=value)
    done = subprocess.run([sys.executable, "-m", "myocomp", "quantify", "--water", str(missing), "--fat",
                           str(missing), "--labels", str(missing), "--out", str(tmp_path / "m.csv")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: SOURCE_DATE_EPOCH: ")
