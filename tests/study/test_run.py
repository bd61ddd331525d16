"""The study's orchestration helpers."""

from __future__ import annotations

import threading

import numpy as np

from myocomp.study.run import _background


def _work(x: np.ndarray) -> float:
    return float(np.sum(x**2))


def test_background_forks_only_without_other_threads():
    x = np.arange(10.0)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        fut, pool = _background(_work, x)  # another thread runs: computed here, now
        assert pool is None and fut.done() and fut.result() == 285.0
    finally:
        stop.set()
        t.join()
    if threading.active_count() == 1:  # (pytest-xdist workers run threads of their own)
        fut, pool = _background(_work, x)
        assert fut.result() == 285.0
        if pool is not None:
            assert pool._mp_context.get_start_method() == "fork"
            pool.shutdown()


def test_tables_are_the_same_in_one_process_or_two(monkeypatch):
    """The work split over two processes gives the tables of the one-process run, in the
    same order."""
    import pandas as pd

    from myocomp.study import run
    from myocomp.study.analyses import prepare_analysis_data
    from myocomp.study.phenotypes import StudyConfig, join_metrics, validate_phenotypes
    from myocomp.synth.cohort import simulate_cohort

    joined, _ = join_metrics(validate_phenotypes(simulate_cohort(1500, seed=5).data), None)
    d, _ = prepare_analysis_data(joined)
    cfg = StudyConfig.from_dict({"options": {"bootstrap": 5, "seed": 1}})
    split = run.compute_tables(d, cfg)
    monkeypatch.setattr(run.os, "cpu_count", lambda: 1)
    single = run.compute_tables(d, cfg)
    assert list(split.tables) == list(single.tables)
    assert list(split.tables)[:6] == ["table1", "pa_prevalence", "met_spline", "main_models",
                                      "strata_models", "symptom_burden"]
    for name, table in single.tables.items():
        pd.testing.assert_frame_equal(split.tables[name], table, check_exact=True)
