"""The report's data section says how many analysed participants carry ``qc_truncated_fov``
(muscles cut by the field of view: counted and said, never a reason to exclude; issue 13)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from myocomp.study.phenotypes import StudyConfig
from myocomp.study.run import run_study
from myocomp.synth.cohort import simulate_cohort

N = 800
METRICS = ["volume_ml", "ff_mean", "lean_volume_ml", "intermat_volume_ml", "intermat_fraction", "lmm"]


def tables(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(phenotypes, long metrics table of groups back and psoas with every QC flag False)."""
    cohort = simulate_cohort(N, seed=seed).data
    pheno = cohort.drop(columns=[*METRICS, "group"])
    m = cohort[["participant_id", *METRICS]].assign(qc_truncated_fov=False, qc_swap_suspected=False)
    return pheno, pd.concat([m.assign(group="back"), m.assign(group="psoas")], ignore_index=True)


def study(pheno, metrics, out, said: list[str]):
    config = StudyConfig().with_options(bootstrap=5, seed=1)
    result = run_study(pheno, metrics, config, out, progress=said.append)
    return result, result.report_path.read_text()


def test_report_counts_the_truncated_participants_it_analyses(tmp_path) -> None:
    pheno, metrics = tables(seed=2)
    ids = pheno["participant_id"].to_numpy()
    back, psoas = metrics["group"] == "back", metrics["group"] == "psoas"
    truncated = ids[:23]
    metrics.loc[back & metrics["participant_id"].isin(truncated), "qc_truncated_fov"] = True
    metrics.loc[psoas & metrics["participant_id"].isin(ids[100:105]), "qc_truncated_fov"] = True  # other group
    excluded = ids[20:26]  # 3 of them also truncated: excluded for the other flag, so not analysed
    metrics.loc[back & metrics["participant_id"].isin(excluded), "qc_swap_suspected"] = True
    pheno = pheno[pheno["participant_id"] != ids[0]]  # truncated, but without phenotypes: not joined

    said: list[str] = []
    result, html = study(pheno, metrics, tmp_path / "out", said)
    joined = N - 1 - len(excluded)
    analysed_truncated = len(set(truncated) - set(excluded) - {ids[0]})
    assert analysed_truncated == 19 and result.join.n_joined == joined
    assert html.count("qc_truncated_fov") == 1
    assert (f"QC: {analysed_truncated} of the {joined:,} joined participants have muscles cut by the "
            "field of view (qc_truncated_fov)") in html
    assert "analysed, not excluded" in html
    # the command line counts the metrics table's rows of the group, before the exclusion and join
    assert any(m.startswith("23 participant(s) with muscles cut by the field of view") for m in said)
    # the flagged participants are in the analysis: its n equals the joined count (no missing values)
    assert result.n_analysed == joined


def test_report_without_truncated_participants_has_no_such_line(tmp_path) -> None:
    pheno, metrics = tables(seed=3)
    said: list[str] = []
    _, html = study(pheno, metrics, tmp_path / "out", said)
    assert "qc_truncated_fov" not in html and "cut by the field of view" not in html
    assert not any("field of view" in m for m in said)


@pytest.mark.parametrize("values", [[True, "True", "1", 0], [np.True_, "yes", "False", ""]])
def test_truncated_count_reads_the_flag_as_exclude_flagged_does(values) -> None:
    from myocomp.study.checks import n_truncated_fov

    table = pd.DataFrame({"participant_id": ["a", "b", "c", "d"], "qc_truncated_fov": values})
    expected = sum(str(v).strip().lower() in ("true", "1", "yes") for v in values)
    assert n_truncated_fov(table) == expected
    assert n_truncated_fov(table.drop(columns="qc_truncated_fov")) == 0


@pytest.mark.parametrize("include_flagged", [False, True])
def test_report_names_the_participants_excluded_for_qc_flags(tmp_path, include_flagged) -> None:
    pheno, metrics = tables(seed=4)
    ids = pheno["participant_id"].to_numpy()
    back = metrics["group"] == "back"
    swapped, no_metrics = ids[10:16], ids[40:44]
    metrics.loc[back & metrics["participant_id"].isin(swapped), "qc_swap_suspected"] = True
    metrics.loc[back & metrics["participant_id"].isin(ids[14:15]), "qc_geometry"] = True
    metrics["qc_geometry"] = metrics["qc_geometry"].fillna(False).astype(bool)
    metrics = metrics[~metrics["participant_id"].isin(no_metrics)]
    config = StudyConfig().with_options(bootstrap=5, seed=1, include_flagged=include_flagged)
    said: list[str] = []
    result = run_study(pheno, metrics, config, tmp_path / "out", progress=said.append)
    html = result.report_path.read_text()
    qc = result.qc_exclusion
    assert qc.ids == tuple(sorted(swapped)) and qc.excluded is not include_flagged
    assert qc.by_flag == {"qc_swap_suspected": 6, "qc_geometry": 1}
    flags = "<code>qc_swap_suspected</code>: 6, <code>qc_geometry</code>: 1"
    # only the participants without any metrics row are "without metrics"; the flagged are not
    assert result.join.phenotypes_without_metrics == tuple(sorted(no_metrics))
    assert "Phenotypes without metrics: 4;" in html
    if include_flagged:
        assert f"QC: 6 participant(s) with QC flags ({flags}) kept and analysed" in html
        assert result.join.n_joined == N - 4
        assert "keeping 6 participant(s) with QC flags (include_flagged)" in said
        assert "excluded before the join" not in html
    else:
        assert f"QC: 6 participant(s) with QC flags ({flags}) excluded before the join" in html
        assert result.join.n_joined == result.n_analysed == N - 4 - 6
        assert any(m.startswith("excluding 6 participant(s) with QC flags") for m in said)
        assert not set(swapped) & set(result.join.phenotypes_without_metrics)
