"""The command line's start-up: imports with the garbage collector paused, and restored after."""

import gc

import pytest

from myocomp._startup import paused_gc


@pytest.mark.parametrize("was_enabled", [True, False])
def test_paused_gc_pauses_and_restores(was_enabled):
    (gc.enable if was_enabled else gc.disable)()
    try:
        frozen = gc.get_freeze_count()
        with paused_gc():
            assert not gc.isenabled()
            garbage = [[]]
            garbage[0].append(garbage)
        assert gc.isenabled() is was_enabled
        assert gc.get_freeze_count() == frozen  # not a one-shot process: nothing kept alive
        with pytest.raises(KeyError), paused_gc():
            raise KeyError("an import that fails")
        assert gc.isenabled() is was_enabled
    finally:
        gc.enable()


def test_console_script_and_python_m_run_the_same_entry():
    import tomllib
    from pathlib import Path

    scripts = tomllib.loads(Path(__file__).parents[1].joinpath("pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["myocomp"] == "myocomp.__main__:run"


def test_quick_thread_switches_restores_the_interval():
    import sys

    from myocomp._startup import quick_thread_switches

    before = sys.getswitchinterval()
    with quick_thread_switches(1e-4):
        assert sys.getswitchinterval() == pytest.approx(1e-4)
    assert sys.getswitchinterval() == before
    with pytest.raises(OSError), quick_thread_switches():
        raise OSError("a read that fails")
    assert sys.getswitchinterval() == before


def test_paused_gc_freezes_in_a_one_shot_process(monkeypatch):
    from myocomp import _startup

    monkeypatch.setattr(_startup, "ONE_SHOT_PROCESS", True)
    try:
        with paused_gc():
            made = [[] for _ in range(100)]
        assert gc.get_freeze_count() >= len(made)
    finally:
        gc.unfreeze()
