"""Cost of the anatomy check: `quantify` with and without it on the whole-body-sized phantom.

Both paths load water, fat and labels and run `quantify` (the phantom of bench_quantify.py:
300 x 250 x 500 voxels of 1.5 x 1.5 x 2 mm); they differ only in ``anatomy_check``, i.e. in one
call of `label_geometry` + `check_anatomy`. Runs are interleaved; printed are the ratio of the
fastest runs (robust on a shared machine), of the medians, and the median time of the check
itself over the median quantify time. Target: ratio <= 1.03.
Run: .venv/bin/python benchmarks/bench_anatomy.py [--phantom-dir DIR to reuse a written phantom]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from myocomp.imaging.anatomy import check_anatomy, label_geometry
from myocomp.imaging.composition import quantify
from myocomp.imaging.dixon import load_dixon
from myocomp.imaging.labelmap import load_labels
from myocomp.imaging.labels import get_profile
from myocomp.synth.phantom import write_phantom


def full_quantify(paths: dict[str, Path], check: bool) -> None:
    dixon = load_dixon(paths["water"], paths["fat"])
    labels = load_labels(paths["labels"], "mrsegmentator", reference=dixon, anatomy_check=check)
    quantify(dixon, labels, bmi=25.0, with_slices=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="300,250,500", help="phantom grid X,Y,Z")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--phantom-dir", type=Path, default=None, help="reuse (or write once) the phantom here")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.phantom_dir or Path(tmp)
        paths = {role: folder / f"{role}.nii.gz" for role in ("water", "fat", "labels")}
        if not all(p.exists() for p in paths.values()):
            t0 = time.perf_counter()
            write_phantom(folder, seed=0, shape=shape, voxel_size_mm=(1.5, 1.5, 2.0), supersample=1)
            print(f"phantom {shape} ({np.prod(shape) / 1e6:.1f} M voxels) written in {time.perf_counter() - t0:.1f} s")
        dixon = load_dixon(paths["water"], paths["fat"])
        lm = load_labels(paths["labels"], "mrsegmentator", reference=dixon, anatomy_check=False)
        check_times = []
        for _ in range(15):
            t = time.perf_counter()
            result = check_anatomy(label_geometry(lm.data, lm.affine, dixon.water), get_profile("mrsegmentator"))
            check_times.append(time.perf_counter() - t)
        del dixon, lm
        times: dict[bool, list[float]] = {False: [], True: []}
        full_quantify(paths, True)  # warm-up (imports, page cache)
        for _ in range(args.repeats):
            for check in (False, True):
                t = time.perf_counter()
                full_quantify(paths, check)
                times[check].append(time.perf_counter() - t)
    without, with_check = statistics.median(times[False]), statistics.median(times[True])
    check_alone = statistics.median(check_times)
    print(f"anatomy check alone (geometry + rules, plausible: {result.ok}): {check_alone * 1000:.0f} ms")
    print(f"quantify incl. load without check (baseline): median {without:.2f} s, fastest {min(times[False]):.2f} s")
    print(f"quantify incl. load with check:               median {with_check:.2f} s, fastest {min(times[True]):.2f} s")
    print(f"ratio with / without: fastest runs {min(times[True]) / min(times[False]):.3f}, medians "
          f"{with_check / without:.3f}, check alone / baseline median {1 + check_alone / without:.3f}"
          "  (target <= 1.03)")


if __name__ == "__main__":
    main()
