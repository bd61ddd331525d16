"""Cohort scale: per-participant overhead of `batch`, a no-op `--resume`, and the merge at 100,000.

Usage: python benchmarks/bench_scale.py [--n 2000] [--workers 2] [--rounds 4] [--merge-n 100000]

1. ``n`` tiny participants, every row the same 4x4x8 mm, 6-slice phantom (so that the numbers
   measure the per-participant overhead, not the image work). Baseline, in this run: a plain
   sequential in-process loop over the library (load -> labels -> quantify -> write the metrics
   and slices parquet files). Then ``run_batch`` on a LocalCluster of ``workers`` processes
   (warmed up before the clock starts), with the default options (QC images for everyone,
   provenance, hashing), and once more with ``--qc-images flagged``. The three alternate in
   ``rounds`` rounds of n/rounds participants each, so that a machine whose load changes during
   the run (shared CI runners) affects all three alike. Reported: wall time per participant of
   each, and the ratios to the sequential loop.
   Targets (issue 10): batch <= 48 ms per participant and below the sequential loop.
2. A ``--resume`` of the same batch with nothing to do: time per participant (target <= 2 ms)
   and the number of tasks sent to the workers (0: the driver compared the input fingerprints;
   the merged tables are not rewritten either, their inputs being unchanged).
3. ``merge_n`` synthetic per-participant results (the tables of one participant of step 1 under
   new ids, written with pyarrow), merged by ``ResultStore.merge`` in a fresh process: time and
   the process's peak RSS (target <= 1 GB).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHANTOM = {"n_slices": 6, "voxel_size_mm": (4.0, 4.0, 8.0), "supersample": 1}


def _warm() -> None:
    import myocomp.imaging.composition  # noqa: F401
    import myocomp.imaging.labels  # noqa: F401
    import myocomp.pipeline.qc_page  # noqa: F401
    import myocomp.pipeline.task  # noqa: F401


def write_manifest(root: Path, n: int) -> Path:
    from myocomp.synth.phantom import write_phantom

    write_phantom(root / "ph", seed=0, **PHANTOM)
    rows = [f"P{i:06d},ph/water.nii.gz,ph/fat.nii.gz,ph/labels.nii.gz,mrsegmentator,25"
            for i in range(n)]  # fmt: skip
    manifest = root / "manifest.csv"
    manifest.write_text("participant_id,water,fat,labels,profile,bmi\n" + "\n".join(rows) + "\n")
    return manifest


def sequential(manifest, out: Path) -> float:
    """Seconds of the plain loop: load -> labels -> quantify -> write parquet, per participant."""
    from myocomp.imaging.composition import quantify
    from myocomp.imaging.dixon import load_dixon
    from myocomp.imaging.labelmap import load_labels
    from myocomp.io import write_table

    start = time.perf_counter()
    for p in manifest.participants:
        dixon = load_dixon(p.water, p.fat)
        labels = load_labels(p.labels, p.profile, reference=dixon)
        result = quantify(dixon, labels, bmi=p.bmi, participant_id=p.participant_id)
        write_table(result.metrics, out / p.participant_id / "metrics.parquet")
        write_table(result.slices, out / p.participant_id / "slices.parquet")
    return time.perf_counter() - start


def batch_round(manifest, out: Path, client, params) -> float:
    """Seconds of one ``run_batch`` over ``manifest`` (all participants must succeed)."""
    from myocomp.pipeline.runner import run_batch

    start = time.perf_counter()
    summary = run_batch(manifest, out, params, client)
    seconds = time.perf_counter() - start
    assert summary.done == len(manifest), summary.errors[:3]
    return seconds


def noop_resume(manifest, out: Path, client, params) -> tuple[float, int]:
    """Seconds of a ``--resume`` with nothing to do, and the tasks it sent to the workers.

    The rounds merged only their own participants, so a first resume merges all of them (the
    merged tables change); the timed one then finds nothing to compute and nothing to merge."""
    from myocomp.pipeline.runner import run_batch

    run_batch(manifest, out, params, client, resume=True)
    submitted = []
    original = client.submit

    def counting_submit(*args, **kwargs):
        submitted.append(1)
        return original(*args, **kwargs)

    client.submit = counting_submit
    try:
        start = time.perf_counter()
        resumed = run_batch(manifest, out, params, client, resume=True)
        seconds = time.perf_counter() - start
    finally:
        client.submit = original
    assert resumed.skipped == len(manifest)
    return seconds, len(submitted)


def interleaved(manifest, tmp: Path, workers: int, rounds: int) -> dict:
    """Sequential loop, batch and batch with --qc-images flagged, alternating by rounds."""
    from myocomp.pipeline.manifest import Manifest
    from myocomp.pipeline.params import resolve_batch_params
    from myocomp.pipeline.runner import open_client

    default = resolve_batch_params({}, {})
    flagged = resolve_batch_params({"qc_images": "flagged"}, {})
    t = {"sequential": 0.0, "batch": 0.0, "flagged": 0.0}
    ps = manifest.participants
    with open_client(workers=workers) as client:
        client.run(_warm)
        for r in range(rounds):
            part = Manifest(manifest.path, ps[r * len(ps) // rounds : (r + 1) * len(ps) // rounds])
            t["sequential"] += sequential(part, tmp / "sequential")
            t["batch"] += batch_round(part, tmp / "batch", client, default)
            t["flagged"] += batch_round(part, tmp / "flagged", client, flagged)
        stages = json.loads((tmp / "batch" / "batch.json").read_text())["stage_seconds"]
        t["stages"] = {k: v["median"] for k, v in stages.items()}
        t["resume"], t["submitted"] = noop_resume(manifest, tmp / "batch", client, default)
    return t


def write_synthetic(root: Path, template: Path, n: int) -> float:
    """``n`` participants' metrics/slices: the template participant's tables under new ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = {name: pq.read_table(template / name) for name in ("metrics.parquet", "slices.parquet")}
    start = time.perf_counter()
    for i in range(n):
        pid = f"S{i:06d}"
        folder = root / "participants" / pid
        folder.mkdir(parents=True)
        for name, t in tables.items():
            ids = pa.array([pid] * len(t), type=t.schema.field("participant_id").type)
            pq.write_table(t.set_column(t.schema.get_field_index("participant_id"),
                                        "participant_id", ids), folder / name)  # fmt: skip
    return time.perf_counter() - start


MERGE = """
import json, resource, sys, time
from pathlib import Path
from myocomp.pipeline.store import ResultStore
root = Path(sys.argv[1])
ids = sorted(p.name for p in (root / "participants").iterdir())
start = time.perf_counter()
qc = ResultStore(root).merge(ids)
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_rss_mib": rss, "participants": len(qc)}))
"""


def merge(root: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", MERGE, str(root)], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--merge-n", type=int, default=100_000)
    args = ap.parse_args()

    from myocomp.pipeline.manifest import read_manifest

    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        manifest = read_manifest(write_manifest(tmp, args.n))
        _warm()
        t = interleaved(manifest, tmp, args.workers, args.rounds)
        ms = 1000.0 / args.n
        seq = t["sequential"]
        print(f"{args.n} tiny participants (84x66x6 voxels, the same phantom in every row), "
              f"{args.rounds} interleaved rounds")  # fmt: skip
        print(f"  sequential loop, 1 process:      {seq * ms:6.1f} ms per participant")
        print(f"  batch, {args.workers} workers:                {t['batch'] * ms:6.1f} ms per participant"
              f"  ({t['batch'] / seq:.2f} x the loop; target <= 48 ms and < 1)")  # fmt: skip
        print(f"  batch, --qc-images flagged:      {t['flagged'] * ms:6.1f} ms per participant"
              f"  ({t['flagged'] / seq:.2f} x the loop)")  # fmt: skip
        print(f"  no-op --resume:                  {t['resume'] * ms:6.2f} ms per participant, "
              f"{t['submitted']} tasks submitted (target <= 2 ms)")  # fmt: skip
        print("  batch stage medians, last round (ms): " + ", ".join(
            f"{k} {v * 1000:.1f}" for k, v in t["stages"].items()))  # fmt: skip
        shutil.rmtree(tmp / "sequential")
        if args.merge_n:
            root = tmp / "merge"
            wrote = write_synthetic(root, tmp / "batch" / "participants" / "P000000", args.merge_n)
            m = merge(root)
            print(f"merge of {m['participants']:,} synthetic participants' results "
                  f"(written in {wrote:.0f} s): {m['seconds']:.1f} s "
                  f"({m['seconds'] / m['participants'] * 1e3:.2f} ms each), driver peak RSS "
                  f"{m['peak_rss_mib']:.0f} MiB (target <= 1024)")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
