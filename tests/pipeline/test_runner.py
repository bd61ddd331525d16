"""The local Dask cluster of `myocomp batch`: its workers' settings."""

from __future__ import annotations

import os

from myocomp.pipeline.runner import open_client


def _worker_settings() -> tuple[object, str | None]:
    import dask

    return dask.config.get("distributed.worker.profile.enabled"), os.environ.get(
        "MALLOC_TRIM_THRESHOLD_"
    )


def test_local_workers_run_without_profiler_and_malloc_trim(monkeypatch) -> None:
    """Dask's defaults (a stack sample every 10 ms, MALLOC_TRIM_THRESHOLD_=65536) cost about a
    third of a small participant's time; the local workers run without them."""
    import dask
    import distributed  # noqa: F401 - registers Dask's distributed defaults

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert dask.config.get("distributed.worker.profile.enabled") is True  # Dask's default
    with open_client(workers=1) as client:
        settings = list(client.run(_worker_settings).values())
    assert settings == [(False, None)]
    # the driver's own configuration is left as it was
    assert dask.config.get("distributed.worker.profile.enabled") is True
    assert dask.config.get("distributed.nanny.pre-spawn-environ")["MALLOC_TRIM_THRESHOLD_"] == 65536
