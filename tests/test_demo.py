"""The main job end to end (small cohort, few bootstrap repetitions)."""

import pandas as pd
import pytest

from myocomp.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--cohort-n", "2500", "--bootstrap", "5", "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for rel in ("metrics.csv", "phantom_truth_comparison.csv", "batch/qc.html", "study/report.html", "study/model.json",
                "study/calculator.html"):
        assert (out / rel).is_file(), rel
    comparison = pd.read_csv(out / "phantom_truth_comparison.csv")
    assert len(comparison) == 6
    # labelled and segmented phantoms alike stay close to the ground truth
    assert comparison["volume_ml_error"].abs().max() < 5.0
    assert comparison["ff_mean_error"].abs().max() < 0.02
    assert "measured vs ground truth" in captured.out and "z_intermat" in captured.out
