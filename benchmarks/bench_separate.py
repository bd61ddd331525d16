"""Fat-water separation speed: seconds per megavoxel for 2, 3 and 6 echoes (multi-echo phantom),
and for the phase-referenced one-echo method on ge_thigh's echo times (``pr``: 3.9/6.3 ms).

Baseline in the same run: the voxel-wise linear least-squares solve of W and F at a known field
map and R2* (the least any separation must do). Prints, per echo count, the seconds of the whole
:func:`myocomp.imaging.fatwater.separate` (mask, coarse field map, region growing, voxel-wise
fit, PDFF), seconds per megavoxel, the process CPU seconds (all threads; on a shared machine
wall time overstates), and the ratio to the baseline. ``--shape 300,250,100`` is a
whole-body station. Run: .venv/bin/python benchmarks/bench_separate.py [--shape X,Y,Z]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from myocomp.imaging import fatwater as fw
from myocomp.imaging.phaseref import separate_phase_referenced
from myocomp.synth.multiecho import make_multiecho_phantom

PROTOCOLS = {"2": (2.3, 3.5), "3": (1.2, 2.2, 3.2), "6": (1.2, 2.2, 3.2, 4.2, 5.2, 6.2),
             "pr": (3.9, 6.3)}


def baseline(ph) -> float:
    """Seconds of the linear W, F solve at the true field map and R2*, all voxels."""
    m = fw._model(ph.te_s, ph.field_t, fw.HAMILTON_LIVER_6)
    s = ph.echoes.reshape(-1, len(ph.te_s))
    psi, r2 = ph.fieldmap_hz.reshape(-1).astype(float), ph.r2star.reshape(-1).astype(float)
    t = time.perf_counter()
    for i in range(0, len(s), fw.CHUNK):
        sl = slice(i, i + fw.CHUNK)
        fw._linear_complex(np.ascontiguousarray(s[sl].T), psi[sl], r2[sl], m)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="160,130,48", help="phantom grid X,Y,Z")
    parser.add_argument("--echoes", default="2,3,6,pr",
                        help="echo counts to run (of 2, 3, 6; pr: phase-referenced, 2 echoes)")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    mvox = np.prod(shape) / 1e6
    print(f"grid {shape} = {mvox:.2f} M voxels, 3 T, B0 +-300 Hz, R2* 40/s (0 with 2 echoes)")
    for n in args.echoes.split(","):
        te = PROTOCOLS[n]
        ph = make_multiecho_phantom(0, te_ms=te, field_t=3.0, b0_range_hz=300.0,
                                    r2star=40.0 if len(te) > 2 else 0.0, shape=shape,
                                    voxel_size_mm=(2.0, 2.0, 4.0), supersample=1)
        base = baseline(ph)
        run = separate_phase_referenced if n == "pr" else fw.separate
        t, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = run(ph.echoes, ph.te_s, ph.field_t)
        sec, cpu = time.perf_counter() - t, time.process_time() - cpu
        body = result.mask.mean()
        print(f"{n:>2} echoes: separate {sec:6.2f} s = {sec / mvox:5.2f} s/Mvoxel "
              f"(CPU {cpu:.1f} s; mask {body:.0%} of voxels); baseline linear solve {base:.2f} s; "
              f"ratio {sec / base:5.1f}")


if __name__ == "__main__":
    main()
