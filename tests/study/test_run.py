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
