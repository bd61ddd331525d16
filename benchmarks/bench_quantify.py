"""`myocomp quantify` on a whole-body-sized phantom, as a fresh process, against its peers.

The phantom: 300 x 250 x 500 voxels (1.5 x 1.5 x 2 mm), int16 water and fat and uint8 labels
(TotalSegmentator ``total_mr`` ids), each a .nii.gz, SNR 20. Each command runs as a fresh Python
process (process start and imports included) and is timed from outside, with its peak RSS
(VmHWM):

- baseline: load the three files with plain nibabel (``np.asanyarray(img.dataobj)``);
- ``myocomp quantify`` (as ``python -m myocomp``: load, checks, noise estimate, noise-corrected FF, metrics,
  table written) with ``--profile totalsegmentator_mr``;
- peer: TotalSegmentator's ``statistics.get_basic_statistics`` (volume and mean intensity per
  ``total_mr`` label of the water image; no weights needed) after loading the labels with
  nibabel. Installed by ``make bench`` (``pip install --no-deps totalsegmentator``), skipped
  with a line saying so when it cannot be imported.

Targets: quantify / baseline <= 1.0 and peer / quantify >= 2. The commands run interleaved,
``--repeats`` times; medians are printed. Run: ``.venv/bin/python benchmarks/bench_quantify.py``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from myocomp.synth.phantom import make_phantom

# Peak RSS of the process itself: VmHWM of /proc/self/status at exit (it starts afresh at exec,
# unlike ru_maxrss, which a child inherits from its parent at fork).
HWM = """
import atexit, sys
def _hwm():
    with open("/proc/self/status") as status:
        sys.stderr.write("".join(line for line in status if line.startswith("VmHWM")))
atexit.register(_hwm)
"""

QUANTIFY = HWM + """
import runpy
sys.argv = ["myocomp", *sys.argv[1:]]
runpy.run_module("myocomp", run_name="__main__", alter_sys=True)
"""

BASELINE = HWM + """
import sys, nibabel as nib, numpy as np
for path in sys.argv[1:]:
    np.asanyarray(nib.load(path).dataobj)
"""

PEER = HWM + """
import sys, nibabel as nib, numpy as np
from totalsegmentator.statistics import get_basic_statistics
water, labels = sys.argv[1:]
seg = np.asanyarray(nib.load(labels).dataobj)
get_basic_statistics(seg, water, file_out=None, quiet=True, task="total_mr")
"""


def write_inputs(out: Path, shape: tuple[int, int, int]) -> dict[str, Path]:
    """The phantom as int16 water/fat and uint8 labels (.nii.gz)."""
    phantom = make_phantom(0, shape=shape, voxel_size_mm=(1.5, 1.5, 2.0), supersample=1, snr=20.0,
                           profile="totalsegmentator_mr")
    arrays = {
        "water": np.clip(np.rint(phantom.water), 0, 32767).astype(np.int16),
        "fat": np.clip(np.rint(phantom.fat), 0, 32767).astype(np.int16),
        "labels": phantom.labels.astype(np.uint8),
    }
    paths = {}
    for role, data in arrays.items():
        img = nib.Nifti1Image(data, phantom.affine)
        img.header.set_data_dtype(data.dtype)
        paths[role] = out / f"{role}.nii.gz"
        nib.save(img, paths[role])
    return paths


def run(command: list[str]) -> tuple[float, float]:
    """Wall time (s) and peak RSS (MiB) of one fresh process; fails loudly if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    hwm = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("VmHWM")]
    return wall, float(hwm[-1]) / 1024 if hwm else float("nan")


def peer_available() -> str | None:
    """None if TotalSegmentator's statistics import, else the reason."""
    check = subprocess.run([sys.executable, "-c", "import totalsegmentator.statistics"],
                           capture_output=True, text=True)
    return None if check.returncode == 0 else (check.stderr.strip().splitlines() or ["?"])[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="300,250,500", help="phantom grid X,Y,Z")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved runs of each command (medians; this VM varies by about 6 %% from run to run)")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    py = sys.executable
    import compileall

    import myocomp

    # as a pip install leaves it: byte-compiled (an editable checkout in a shell with
    # PYTHONDONTWRITEBYTECODE=1 would compile every module in every process)
    compileall.compile_dir(Path(myocomp.__file__).parent, quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = write_inputs(Path(tmp), shape)
        size = sum(np.dtype(d).itemsize for d in (np.int16, np.int16, np.uint8)) * np.prod(shape) / 2**20
        print(f"phantom {shape} ({np.prod(shape) / 1e6:.1f} M voxels; int16 + int16 + uint8 = "
              f"{size:.0f} MiB in memory) written in {time.perf_counter() - t0:.1f} s")
        commands = {
            "nibabel load (baseline)": [py, "-c", BASELINE, str(paths["water"]), str(paths["fat"]),
                                        str(paths["labels"])],
            "myocomp quantify": [py, "-c", QUANTIFY, "quantify", "--water", str(paths["water"]),
                                 "--fat", str(paths["fat"]), "--labels", str(paths["labels"]),
                                 "--profile", "totalsegmentator_mr", "--bmi", "25",
                                 "--out", str(Path(tmp) / "metrics.csv")],
        }
        missing = peer_available()
        if missing is None:
            commands["TotalSegmentator get_basic_statistics"] = [py, "-c", PEER, str(paths["water"]),
                                                                 str(paths["labels"])]
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                results[name].append(run(command))
    wall = {name: statistics.median(w for w, _ in r) for name, r in results.items()}
    for name, r in results.items():
        print(f"{name:40s} {wall[name]:6.2f} s   peak RSS {max(m for _, m in r):6.0f} MiB")
    base, quant = wall["nibabel load (baseline)"], wall["myocomp quantify"]
    print(f"ratio quantify / nibabel load = {quant / base:.2f}  (target <= 1.0)")
    if missing is None:
        peer = wall["TotalSegmentator get_basic_statistics"]
        print(f"ratio TotalSegmentator statistics / quantify = {peer / quant:.2f}  (target >= 2)")
    else:
        print(f"TotalSegmentator skipped: cannot import totalsegmentator.statistics ({missing})")


if __name__ == "__main__":
    main()
