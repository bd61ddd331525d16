"""Batch throughput: participants per minute with 1 and 2 local workers, and peak memory.

Usage: python benchmarks/bench_batch.py [--n 12] [--slices 80] [--workers 1 2] [--repeats 3]

The defaults give participants of about half a second of work each (161x128x80 voxels); much
smaller ones measure Dask's per-task overhead rather than the batch.

Phantoms are written once; each worker count gets a fresh LocalCluster (processes, one thread
each) whose workers are warmed up (imports) before the clock starts, so the timing covers the
per-participant work and the merge, not interpreter start-up. The speed-up is the ratio of the
two rates measured in this run. Peak memory is each worker process's maximum resident set size
(getrusage), reported as the largest over the workers.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path


def _warm() -> None:
    import myocomp.imaging.composition  # noqa: F401
    import myocomp.imaging.qc  # noqa: F401
    import myocomp.pipeline.task  # noqa: F401


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_cohort(root: Path, n: int, slices: int) -> Path:
    from myocomp.synth.phantom import write_phantom

    rows = ["participant_id,water,fat,labels,profile,bmi"]
    for i in range(n):
        write_phantom(root / f"P{i:03d}", seed=i, n_slices=slices, voxel_size_mm=(2.0, 2.0, 4.0))
        rows.append(
            f"P{i:03d},P{i:03d}/water.nii.gz,P{i:03d}/fat.nii.gz,P{i:03d}/labels.nii.gz,mrsegmentator,25"
        )
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def run(manifest: Path, out: Path, workers: int) -> dict:
    from distributed import Client, LocalCluster

    from myocomp.pipeline import BatchParams, read_manifest, run_batch

    man = read_manifest(manifest)
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        client.run(_warm)
        last: list[float] = []
        start = time.perf_counter()
        summary = run_batch(
            man, out, BatchParams(), client, on_result=lambda *_: last.append(time.perf_counter())
        )
        seconds = time.perf_counter() - start
        peaks = client.run(_peak_rss_mib)
    assert summary.failed == 0, summary.errors
    return {
        "workers": workers,
        "seconds": seconds,
        "per_minute": 60.0 * len(man) / seconds,
        "peak_worker_mib": max(peaks.values()),
        "merge_seconds": seconds - (last[-1] - start),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12, help="number of phantoms (default 12)")
    parser.add_argument(
        "--slices", type=int, default=80, help="axial slices per phantom (2x2x4 mm)"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved rounds; medians are reported"
    )
    args = parser.parse_args()
    rounds: dict[int, list[dict]] = {w: [] for w in args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = write_cohort(root / "data", args.n, args.slices)
        for r in range(args.repeats):  # interleaved, so that background load hits all alike
            for w in args.workers:
                rounds[w].append(run(manifest, root / f"out{w}_{r}", w))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"{args.n} phantoms, {args.slices} slices of 2x2x4 mm each; {os.cpu_count()} CPUs")
    print(f"load average (1, 5, 15 min) at the end: {load}  (other processes slow the ratio)")
    print(
        f"{'workers':>7} {'median s':>9} {'of which merge':>15} {'participants/min':>17} "
        f"{'peak RSS/worker (MiB)':>22}"
    )
    med = {}
    for w, runs in rounds.items():
        seconds = statistics.median(x["seconds"] for x in runs)
        merge = statistics.median(x["merge_seconds"] for x in runs)
        peak = max(x["peak_worker_mib"] for x in runs)
        med[w] = 60.0 * args.n / seconds
        print(f"{w:>7} {seconds:>9.2f} {merge:>15.2f} {med[w]:>17.1f} {peak:>22.0f}")
    base = args.workers[0]
    for w in args.workers[1:]:
        ratios = [a["seconds"] / b["seconds"] for a, b in zip(rounds[base], rounds[w], strict=True)]
        print(
            f"speed-up {w} vs {base} workers: {med[w] / med[base]:.2f}x (median rates); "
            f"per round {', '.join(f'{x:.2f}' for x in ratios)}"
        )


if __name__ == "__main__":
    main()
