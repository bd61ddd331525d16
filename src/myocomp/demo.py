"""The main job, end to end on synthetic data: phantoms -> batch (segmentation, metrics, QC) ->
a 27,518-person NAKO-like cohort -> the CBP study. Run by ``myocomp demo --out DIR``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

#: Phantom options of the demo: (infiltration, intermat, bmi) per participant.
PHANTOM_DESIGN = (
    (0.05, 0.03, 22.0),
    (0.08, 0.05, 25.0),
    (0.12, 0.06, 27.5),
    (0.16, 0.08, 30.0),
    (0.20, 0.10, 33.0),
    (0.10, 0.04, 24.0),
)
DEMO_MODEL = "phantom-demo"
TRUTH_METRICS = ("volume_ml", "lean_volume_ml", "intermat_volume_ml", "ff_mean")


@dataclass
class DemoResult:
    out_dir: Path
    metrics: pd.DataFrame  # back-group metrics of every phantom with truth and error columns
    study_dir: Path | None
    odds_ratios: pd.DataFrame | None
    seconds: dict[str, float]
    segmented: list[str]


def segment_extra_available() -> bool:
    """True when torch and nnunetv2 (the ``segment`` extra) import."""
    try:
        import nnunetv2  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def write_phantom_manifest(out_dir: Path, seed: int = 0, segment_some: bool = True) -> Path:
    """Write the demo phantoms and a batch manifest; the last two are left to the segmenter."""
    from myocomp.synth.phantom import write_phantom

    rows = []
    for i, (infiltration, intermat, bmi) in enumerate(PHANTOM_DESIGN):
        pid = f"phantom{i + 1:02d}"
        paths = write_phantom(
            out_dir / "phantoms" / pid, seed=seed + i, infiltration=infiltration, intermat=intermat, bmi=bmi
        )
        unlabelled = segment_some and i >= len(PHANTOM_DESIGN) - 2
        rows.append(
            {
                "participant_id": pid,
                "water": paths["water"].relative_to(out_dir),
                "fat": paths["fat"].relative_to(out_dir),
                "in_phase": paths["in_phase"].relative_to(out_dir),
                "labels": "" if unlabelled else paths["labels"].relative_to(out_dir),
                "profile": "" if unlabelled else "mrsegmentator",
                "bmi": bmi,
                "site": f"site{i % 2 + 1}",
            }
        )
    manifest = out_dir / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def compare_with_truth(metrics: pd.DataFrame, phantom_root: Path, group: str = "back") -> pd.DataFrame:
    """Back-group metrics beside the phantoms' ground truth, with relative errors (%)."""
    rows = []
    for pid, m in metrics[metrics["group"] == group].set_index("participant_id").iterrows():
        truth = json.loads((phantom_root / str(pid) / "truth.json").read_text())["metrics"][group]
        row = {"participant_id": pid}
        for k in TRUTH_METRICS:
            row[k] = m[k]
            row[f"{k}_truth"] = truth[k]
            row[f"{k}_error"] = (m[k] - truth[k]) if k == "ff_mean" else 100 * (m[k] / truth[k] - 1)
        rows.append(row)
    return pd.DataFrame(rows)


def check_demo_options(*, cohort_n: int, seed: int, workers: int, bootstrap: int) -> None:
    """Refuse bad demo options (:class:`~myocomp.errors.ConfigError`) before any work."""
    from myocomp.options import check_options

    check_options({"--cohort-n": cohort_n, "--seed": seed, "--workers": workers,
                   "--bootstrap": bootstrap})


def run_demo(
    out_dir: str | Path,
    *,
    cohort_n: int = 27_518,
    seed: int = 0,
    workers: int = 2,
    bootstrap: int = 200,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo; every output lands under ``out_dir`` (see the README)."""
    from myocomp.io import write_table
    from myocomp.pipeline.manifest import read_manifest
    from myocomp.pipeline.params import resolve_batch_params
    from myocomp.pipeline.runner import open_client, run_batch
    from myocomp.study.run import run_study
    from myocomp.synth.cohort import simulate_cohort, write_cohort

    check_demo_options(cohort_n=cohort_n, seed=seed, workers=workers, bootstrap=bootstrap)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    can_segment = segment_extra_available()

    say(f"1/3 phantoms: writing {len(PHANTOM_DESIGN)} Dixon phantoms with ground truth")
    manifest_path = write_phantom_manifest(out, seed=seed, segment_some=can_segment)
    manifest = read_manifest(manifest_path)
    seconds["phantoms"] = time.perf_counter() - clock

    clock = time.perf_counter()
    model = DEMO_MODEL if can_segment else None
    say(
        f"2/3 batch: {len(manifest)} participants on {workers} Dask workers"
        + (f" ({DEMO_MODEL} segments the unlabelled ones)" if model else "")
    )
    params = resolve_batch_params({"model": model, "device": "cpu"}, {})
    with open_client(workers=workers) as client:
        summary = run_batch(manifest, out / "batch", params, client)
    if summary.failed:
        raise RuntimeError(f"demo batch had {summary.failed} failures: {summary.errors}")
    merged = pd.read_parquet(out / "batch" / "metrics.parquet")
    comparison = compare_with_truth(merged, out / "phantoms")
    write_table(merged, out / "metrics.csv")
    write_table(comparison, out / "phantom_truth_comparison.csv")
    seconds["batch"] = time.perf_counter() - clock
    segmented = [p.participant_id for p in manifest.participants if p.labels is None] if model else []

    clock = time.perf_counter()
    say(f"3/3 study: synthetic NAKO-like cohort of {cohort_n:,} and every analysis of the CBP study")
    cohort = simulate_cohort(cohort_n, seed=seed)
    write_cohort(cohort, out / "cohort.parquet")
    result = run_study(
        cohort.data, config={"options": {"bootstrap": bootstrap, "seed": seed}}, out_dir=out / "study", progress=say
    )
    seconds["study"] = time.perf_counter() - clock
    odds = result.tables.get("main_models")
    return DemoResult(out, comparison, result.out_dir, odds, seconds, segmented)
