"""The calculator page as a file (no browser): written by `myocomp study` and `myocomp
calculator`, self-contained, small, drawn from the same nomogram axes as the figure; the model
data it relies on (covariance, heatmap) and predict's delta-method CI."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from myocomp.cli import main
from myocomp.study.calculator import MAX_BYTES, calculator_data, covariance_dict
from myocomp.study.predict import INPUT_RANGES, predict_person


def test_study_writes_calculator_beside_report(study_dir):
    page = study_dir / "calculator.html"
    assert page.is_file()
    size = page.stat().st_size
    assert size <= MAX_BYTES == 300_000, size
    text = page.read_text(encoding="utf-8")
    # nothing is loaded from elsewhere: no external src/href, no CSS import or remote url()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", text)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text)
    assert "@import" not in text and "url(" not in text
    assert "not a medical device" in text
    report = (study_dir / "report.html").read_text(encoding="utf-8")
    assert "href='calculator.html'" in report


def test_calculator_command_reproduces_the_study_page(study_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "calc.html"
    rc = main(["calculator", "--model", str(study_dir / "model.json"), "--out", str(out)])
    assert rc == 0
    assert "wrote" in capsys.readouterr().out
    assert out.read_bytes() == (study_dir / "calculator.html").read_bytes()


def test_calculator_command_errors(study_dir, tmp_path, capsys):
    model_path = study_dir / "model.json"
    before = model_path.read_bytes()
    rc = main(["calculator", "--model", str(model_path), "--out", str(model_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "overwrite" in err
    assert model_path.read_bytes() == before
    rc = main(["calculator", "--model", str(tmp_path / "nope.json"), "--out",
               str(tmp_path / "c.html")])
    err = capsys.readouterr().err
    assert rc == 2 and "model file not found" in err and err.count("\n") == 1
    model = json.loads(before)
    model["nomogram"]["predictors"][0]["name"] = "smoking"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(model))
    rc = main(["calculator", "--model", str(bad), "--out", str(tmp_path / "c.html")])
    assert rc == 2 and "smoking" in capsys.readouterr().err
    assert not (tmp_path / "c.html").exists()


def test_model_covariance_agrees_with_standard_errors(study_dir):
    nm = json.loads((study_dir / "model.json").read_text())["nomogram_model"]
    cov = nm["cov_params"]
    assert sorted(cov["terms"]) == sorted(nm["params"])  # model.json sorts its keys
    v = np.array(cov["matrix"])
    np.testing.assert_allclose(v, v.T, rtol=0, atol=1e-15)
    assert np.all(np.linalg.eigvalsh(v) > 0)
    se = np.sqrt(np.diag(v))
    np.testing.assert_allclose(se, [nm["bse"][t] for t in cov["terms"]], rtol=1e-9)


def test_predict_ci_is_the_delta_method(study_dir):
    model = json.loads((study_dir / "model.json").read_text())
    res = predict_person(model, age=58, sex="female", bmi=31.0, lean_volume_ml=900.0,
                         intermat_ml=95.0, diabetes=True, met_min_week=300.0)
    cov = model["nomogram_model"]["cov_params"]
    pa = "C(pa_category, Treatment('moderate'))"
    x = {"Intercept": 1.0, f"{pa}[T.low]": 1.0, f"{pa}[T.high]": 0.0, "age": 58.0,
         "female": 1.0, "diabetes": 1.0, "dyslipidemia": 0.0, "osteoporosis": 0.0,
         "osteoarthritis": 0.0, **res.zscores}
    xv = np.array([x[t] for t in cov["terms"]])
    se = math.sqrt(xv @ np.array(cov["matrix"]) @ xv)
    lp = math.log(res.probability / (1 - res.probability))
    assert res.probability_lower == pytest.approx(1 / (1 + math.exp(-(lp - 1.959964 * se))),
                                                  abs=1e-9)
    assert res.probability_upper == pytest.approx(1 / (1 + math.exp(-(lp + 1.959964 * se))),
                                                  abs=1e-9)
    assert res.probability_lower < res.probability < res.probability_upper


def _svg_texts(svg: str) -> Counter:
    return Counter(t.strip() for t in re.findall(r"<text\b[^>]*>([^<]+)</text>", svg))


def test_calculator_nomogram_has_the_figure_ticks(study_dir):
    figure = _svg_texts((study_dir / "figures" / "nomogram.svg").read_text(encoding="utf-8"))
    page = (study_dir / "calculator.html").read_text(encoding="utf-8")
    svg = page[page.index('<svg id="nomogram"'):page.index("</svg>", page.index('<svg id="nomo'))]
    calc = _svg_texts(svg)
    figure.pop("Nomogram for chronic back pain", None)
    assert calc == figure
    assert calc["no"] >= 4 and calc["yes"] >= 4 and "0" in calc and "1" in calc
    for z in ("−1", "0", "1", "2"):  # Z axes: every unit
        assert calc[z] >= 2, z


def test_model_heatmap_matches_the_table(study_dir):
    model = json.loads((study_dir / "model.json").read_text())
    heat = model["interaction_heatmap"]
    table = pd.read_csv(study_dir / "tables" / "interaction_predicted.csv")
    assert len(heat["z_intermat"]) * len(heat["z_lmm"]) == len(table)
    for _, r in table.sample(50, random_state=0).iterrows():
        i = heat["z_lmm"].index(min(heat["z_lmm"], key=lambda z: abs(z - r["z_lmm"])))
        j = heat["z_intermat"].index(min(heat["z_intermat"],
                                         key=lambda z: abs(z - r["z_intermat"])))
        assert heat["probability"][i][j] == pytest.approx(r["probability"], abs=1e-6)


def test_page_fields_use_predicts_ranges(study_dir):
    model = json.loads((study_dir / "model.json").read_text())
    fields = {f["name"]: f for f in calculator_data(model)["fields"]}
    assert set(fields) == {"age", "sex", "bmi", "height_cm", "lean_volume_ml", "intermat_ml",
                           "met_min_week", "diabetes", "dyslipidemia", "osteoporosis",
                           "osteoarthritis"}
    base = dict(age=50.0, sex="male", bmi=27.0, lean_volume_ml=1100.0, intermat_ml=50.0)
    for name in ("age", "bmi", "height_cm", "lean_volume_ml", "intermat_ml", "met_min_week"):
        lo, hi, unit = INPUT_RANGES[name]
        assert (fields[name]["min"], fields[name]["max"], fields[name]["unit"]) == (lo, hi, unit)
        for ok in (lo, hi):  # the ends are allowed, just outside is refused, as on the page
            predict_person(model, **{**base, name: ok})
        for bad in (lo - 1e-6 * max(1.0, abs(lo)), hi * (1 + 1e-9)):
            with pytest.raises(Exception, match="plausible range"):
                predict_person(model, **{**base, name: bad})


def test_covariance_dict_labels_an_unlabelled_matrix():
    class Fit:
        params = pd.Series({"Intercept": -1.0, "age": 0.02})

        def cov_params(self):
            return np.array([[0.04, -0.001], [-0.001, 0.0001]])

    cov = covariance_dict(Fit())
    assert cov == {"terms": ["Intercept", "age"], "matrix": [[0.04, -0.001], [-0.001, 0.0001]]}
    assert covariance_dict(type("NoCov", (), {})()) is None
