"""Segmentation throughput: one reused predictor vs a fresh process per volume, and overhead.

Prints
1. seconds per volume for 5 phantom volumes segmented in this process with one cached
   ``nnUNetPredictor`` (creation included), against running ``myocomp segment`` in a fresh
   Python process per volume (what per-image tools do: import torch, load weights, predict);
2. myocomp's overhead over a bare ``nnUNetPredictor.predict_single_npy_array`` call on the
   same arrays (target <= 5 %): median of paired repeats.

Uses the shipped ``phantom-demo`` model on CPU (MYOCOMP_HOME is pointed at a temporary folder).
Run: ``python benchmarks/bench_segment.py [--repeats 10]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEEDS = (3001, 3002, 3003, 3004, 3005)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_segment_"))
    os.environ["MYOCOMP_HOME"] = str(tmp / "home")

    from myocomp.imaging.dixon import load_dixon
    from myocomp.segment import clear_predictors, get_predictor, resolve_model, segment_dixon
    from myocomp.segment.nnunet import channel_arrays, load_model_spec
    from myocomp.synth.phantom import write_phantom

    model = resolve_model("phantom-demo")
    cases = []
    for seed in SEEDS:
        out = tmp / f"p{seed}"
        write_phantom(out, seed)
        water = next(out.glob("*water*.nii*"))
        fat = next(out.glob("*fat*.nii*"))
        cases.append((water, fat))
    print(
        f"{len(cases)} phantom volumes, shape {load_dixon(*cases[0]).shape}, device {args.device}"
    )

    # 1a. one process, one predictor
    import torch  # noqa: F401  (imported before timing: the fresh-process runs pay for it)

    clear_predictors()
    t0 = time.perf_counter()
    for water, fat in cases:
        segment_dixon(load_dixon(water, fat), model, device=args.device)
    reused = (time.perf_counter() - t0) / len(cases)

    # 1b. a fresh process per volume
    code = (
        "import sys; from myocomp.cli import main; "
        "sys.exit(main(['segment', '--model', 'phantom-demo', '--image', sys.argv[1], "
        "'--image', sys.argv[2], '--out', sys.argv[3], '--device', sys.argv[4]]))"
    )
    t0 = time.perf_counter()
    for i, (water, fat) in enumerate(cases):
        subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                str(water),
                str(fat),
                str(tmp / f"l{i}.nii.gz"),
                args.device,
            ],
            check=True,
            capture_output=True,
        )
    fresh = (time.perf_counter() - t0) / len(cases)
    print(f"reused predictor : {reused:7.3f} s/volume")
    print(f"fresh process    : {fresh:7.3f} s/volume")
    print(f"ratio fresh/reused: {fresh / reused:6.1f}x")

    # 2. overhead of segment_dixon over the bare predictor call on the same arrays
    dixon = load_dixon(*cases[0])
    spec = load_model_spec(model)
    predictor = get_predictor(model, args.device)
    arrays = channel_arrays(dixon, spec.channel_names)
    data = np.ascontiguousarray(np.stack([a.transpose(2, 1, 0) for a in arrays]))
    props = {"spacing": [float(s) for s in dixon.spacing_mm[::-1]]}

    def run_bare():
        return predictor.predict_single_npy_array(data, dict(props))

    def run_ours():
        return segment_dixon(dixon, model, device=args.device)

    bare_t, ours_t = [], []
    for i in range(args.repeats):  # paired, alternating order: CPU load drifts in between
        order = (("bare", run_bare), ("ours", run_ours))
        for tag, fn in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            result = fn()
            (bare_t if tag == "bare" else ours_t).append(time.perf_counter() - t0)
            if tag == "bare":
                bare = result
            else:
                ours = result
    same = np.array_equal(np.asarray(bare).transpose(2, 1, 0), ours.data)
    b, o = float(np.median(bare_t)), float(np.median(ours_t))
    rel = np.median(np.array(ours_t) / np.array(bare_t)) - 1
    print(
        f"bare nnUNetPredictor.predict_single_npy_array: {b:.3f} s (median of {args.repeats}, "
        f"min {min(bare_t):.3f})"
    )
    print(f"myocomp segment_dixon                        : {o:.3f} s (min {min(ours_t):.3f})")
    print(
        f"overhead: {100 * rel:+.1f} % median of paired ratios, {100 * (min(ours_t) / min(bare_t) - 1):+.1f} % "
        f"min vs min (target <= 5 %); identical labels: {same}"
    )


if __name__ == "__main__":
    main()
