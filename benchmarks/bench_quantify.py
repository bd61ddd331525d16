"""Quantify on a whole-body-sized phantom against just loading its three NIfTI files.

Prints the median time of (a) loading water, fat and labels with nibabel (the baseline) and
(b) the whole `quantify` path: load + validation + canonical orientation + metrics + slice
profile, and their ratio. Target: ratio <= 1.5. Run: .venv/bin/python benchmarks/bench_quantify.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from myocomp.imaging.composition import quantify
from myocomp.imaging.dixon import load_dixon
from myocomp.imaging.labels import load_labels
from myocomp.synth.phantom import write_phantom


def bare_load(paths: dict[str, Path]) -> None:
    for role in ("water", "fat", "labels"):
        np.asanyarray(nib.load(paths[role]).dataobj)


def full_quantify(paths: dict[str, Path]) -> None:
    dixon = load_dixon(paths["water"], paths["fat"])
    labels = load_labels(paths["labels"], "mrsegmentator", reference=dixon)
    quantify(dixon, labels, bmi=25.0, with_slices=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="300,250,500", help="phantom grid X,Y,Z")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = write_phantom(Path(tmp), seed=0, shape=shape, voxel_size_mm=(1.5, 1.5, 2.0), supersample=1)
        print(f"phantom {shape} ({np.prod(shape) / 1e6:.1f} M voxels) written in {time.perf_counter() - t0:.1f} s")
        times: dict[str, list[float]] = {"load": [], "quantify": []}
        for _ in range(args.repeats):
            for name, fn in (("load", bare_load), ("quantify", full_quantify)):
                t = time.perf_counter()
                fn(paths)
                times[name].append(time.perf_counter() - t)
    load, quant = statistics.median(times["load"]), statistics.median(times["quantify"])
    print(f"load three NIfTI (baseline): {load:.2f} s   quantify incl. load: {quant:.2f} s")
    print(f"ratio quantify / load = {quant / load:.2f}  (target <= 1.5)")


if __name__ == "__main__":
    main()
