"""calculator.html and report.html in headless Chromium, read through the DevTools protocol as a
person would see them: the page's numbers against `myocomp predict --json`, invalid input,
network requests, console errors, images, screenshots at 1400 px."""

from __future__ import annotations

import json
import math
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import pytest

from myocomp.cli import main
from myocomp.stats.zscores import ZScoreModel
from myocomp.study.predict import INPUT_RANGES

from .conftest import keep

#: what the page shows, read in one go (numbers at full precision from data-value attributes)
READ_PAGE = """(() => {
  const txt = (id) => { const e = document.getElementById(id); return e ? e.textContent : null; };
  const points = {};
  document.querySelectorAll("[id^='pts-']").forEach(
    (e) => { points[e.id.slice(4)] = Number(e.dataset.value); });
  const msgs = {};
  document.querySelectorAll("[id^='msg-']").forEach((e) => { msgs[e.id.slice(4)] = e.textContent; });
  const ci = document.getElementById("ci-text");
  return {state: document.body.dataset.state, probability: txt("probability"),
          points, total: Number(document.getElementById("total-points").dataset.value),
          z_intermat: Number(document.getElementById("z-z_intermat")?.dataset.value),
          z_lmm: Number(document.getElementById("z-z_lmm")?.dataset.value),
          lower: ci.dataset.lower, upper: ci.dataset.upper, messages: msgs,
          status: txt("status"), visible: !document.getElementById("result-box").hidden,
          text: document.body.innerText};
})()"""


def _url(page: Path, query: dict | None = None) -> str:
    return page.resolve().as_uri() + ("?" + urlencode(query) if query else "")


def _read(browser, page: Path, query: dict | None = None) -> dict:
    browser.goto(_url(page, query))
    out = browser.evaluate(READ_PAGE)
    assert browser.console_errors() == []
    assert "NaN" not in out["text"] and "undefined" not in out["text"]
    return out


def _predict_json(capsys, model: Path, person: dict) -> dict:
    args = ["predict", "--model", str(model), "--json"]
    for key, value in person.items():
        flag = "--" + key.replace("_", "-")
        if key in ("diabetes", "dyslipidemia", "osteoporosis", "osteoarthritis"):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    capsys.readouterr()
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def _query(person: dict) -> dict:
    return {k: (int(v) if isinstance(v, bool) else repr(v) if isinstance(v, float) else v)
            for k, v in person.items()}


def _random_people(n: int, seed: int, height: bool = False, fraction: bool = False
                   ) -> list[dict]:
    """People within the input ranges: most like a cohort, every fifth anywhere in the ranges
    (``fraction``: InterMAT given as intermat_fraction instead of intermat_ml)."""
    rng = np.random.default_rng(seed)
    people = []
    for i in range(n):
        wide = i % 5 == 4
        r = (lambda k: rng.uniform(*INPUT_RANGES[k][:2])) if wide else None
        p = {
            "age": float(rng.integers(18, 100)) if not wide else round(r("age"), 3),
            "sex": str(rng.choice(["female", "male", "f", "M", "w"])),
            "bmi": round(rng.uniform(16, 45), 2) if not wide else r("bmi"),
            "lean_volume_ml": rng.uniform(300, 2600) if not wide else r("lean_volume_ml"),
            "intermat_ml": rng.uniform(3, 300) if not wide else r("intermat_ml"),
        }
        if fraction:
            del p["intermat_ml"]
            p["intermat_fraction"] = rng.uniform(0.005, 0.2) if not wide else r(
                "intermat_fraction")
        if height or rng.random() < 0.3:
            p["height_cm"] = round(rng.uniform(140, 205), 1) if not wide else r("height_cm")
        if rng.random() < 0.85:
            p["met_min_week"] = float(rng.choice([rng.uniform(0, 600), rng.uniform(400, 6000),
                                                  rng.uniform(4000, 40000)]))
        for b in ("diabetes", "dyslipidemia", "osteoporosis", "osteoarthritis"):
            if rng.random() < 0.8:
                p[b] = bool(rng.random() < 0.3)
        people.append(p)
    return people


def _table_points(table: pd.DataFrame, predictor: str, value) -> float:
    """Points of ``value`` from the nomogram's points table (linear between ticks)."""
    rows = table[table["predictor"] == predictor]
    if predictor == "pa_category":
        return float(rows.loc[rows["value"] == value, "points"].iloc[0])
    x = rows["value"].astype(float).to_numpy()
    y = rows["points"].to_numpy()
    slope = (y[-1] - y[0]) / (x[-1] - x[0])
    return float(y[0] + slope * (float(value) - x[0]))


def _compare(page: dict, ref: dict, table: pd.DataFrame, labels: dict) -> None:
    assert page["state"] == "ok", page["status"]
    assert abs(float(page["probability"]) - ref["probability"]) <= 1e-9
    assert abs(float(page["lower"]) - ref["probability_lower"]) <= 1e-9
    assert abs(float(page["upper"]) - ref["probability_upper"]) <= 1e-9
    assert page["z_intermat"] == pytest.approx(ref["zscores"]["z_intermat"], rel=1e-9, abs=1e-9)
    assert page["z_lmm"] == pytest.approx(ref["zscores"]["z_lmm"], rel=1e-9, abs=1e-9)
    assert page["total"] == pytest.approx(ref["total_points"], rel=1e-9, abs=1e-9)
    assert set(page["points"]) == set(labels)
    values = {**ref["zscores"], **ref["inputs"], "female": float(ref["inputs"]["sex"] == "female")}
    for name, pts in page["points"].items():
        assert pts == pytest.approx(ref["points"][labels[name]], rel=1e-9, abs=1e-9), name
        expected = _table_points(table, name, values[name])
        assert pts == pytest.approx(expected, rel=1e-9, abs=1e-9), name


def _labels(model_path: Path) -> dict:
    model = json.loads(model_path.read_text())
    return {p["name"]: p.get("label", p["name"]) for p in model["nomogram"]["predictors"]}


def test_calculator_opens_offline_small_and_clean(browser, study_dir, artifacts):
    page = study_dir / "calculator.html"
    assert page.stat().st_size <= 300_000
    out = _read(browser, page)
    assert browser.requests() == [_url(page)]  # the file itself and nothing else
    assert out["state"] == "empty" and out["probability"] == "" and not out["visible"]
    assert all(m == "" for m in out["messages"].values())  # nothing typed yet: no scolding
    assert "not a medical device" in out["text"] and "delta method" in out["text"]
    assert "3,000 people" in out["text"] and "myocomp version" in out["text"]
    person = {"age": 61, "sex": "f", "bmi": 29.5, "intermat_ml": 70, "lean_volume_ml": 850,
              "osteoarthritis": 1, "met_min_week": 6000}
    out = _read(browser, page, person)
    assert browser.requests() == [_url(page, person)]
    assert out["state"] == "ok"
    keep(browser.screenshot(artifacts / "calculator.png", width=1400))


def test_fifty_random_people_match_predict(browser, study_dir, capsys):
    page, model = study_dir / "calculator.html", study_dir / "model.json"
    table = pd.read_csv(study_dir / "tables" / "nomogram_points.csv")
    labels = _labels(model)
    for person in _random_people(50, seed=11):
        ref = _predict_json(capsys, model, person)
        _compare(_read(browser, page, _query(person)), ref, table, labels)


@pytest.mark.parametrize("method,height,metric", [("sex", False, "intermat_volume_ml"),
                                                   ("age_sex", True, "intermat_volume_ml"),
                                                   ("cohort", False, "intermat_fraction")])
def test_other_z_references_match_predict(browser, study_dir, tmp_path, capsys, method, height,
                                          metric):
    cohort = pd.read_parquet(study_dir.parent / "cohort.parquet")
    zref = ZScoreModel.fit(cohort, {metric: "z_intermat", "lmm": "z_lmm"}, method=method,
                           height=height)
    model = json.loads((study_dir / "model.json").read_text())
    model["zscores"] = zref.to_dict()
    model["intermat_metric"] = metric
    model_path = tmp_path / "model.json"
    model_path.write_text(json.dumps(model))
    page = tmp_path / "calculator.html"
    assert main(["calculator", "--model", str(model_path), "--out", str(page)]) == 0
    table = pd.read_csv(study_dir / "tables" / "nomogram_points.csv")
    for person in _random_people(10, seed=12, height=height,
                                 fraction=metric == "intermat_fraction"):
        ref = _predict_json(capsys, model_path, person)
        _compare(_read(browser, page, _query(person)), ref, table, _labels(model_path))
    if height:  # this reference needs the height: without it, a message and no probability
        person = {k: v for k, v in _random_people(1, seed=3, height=True)[0].items()
                  if k != "height_cm"}
        out = _read(browser, page, _query(person))
        assert out["state"] == "invalid" and out["messages"]["height_cm"] == "required"


def test_model_without_covariance_or_heatmap(browser, study_dir, tmp_path, capsys):
    model = json.loads((study_dir / "model.json").read_text())
    for key in ("interaction_heatmap", "created_utc"):
        del model[key]
    del model["nomogram_model"]["cov_params"]
    model_path = tmp_path / "old_model.json"
    model_path.write_text(json.dumps(model))
    page = tmp_path / "old.html"
    assert main(["calculator", "--model", str(model_path), "--out", str(page)]) == 0
    person = {"age": 40.0, "sex": "male", "bmi": 22.0, "lean_volume_ml": 1500.0,
              "intermat_ml": 20.0}
    ref = _predict_json(capsys, model_path, person)
    assert ref["probability_lower"] is None and ref["probability_upper"] is None
    out = _read(browser, page, _query(person))
    assert out["state"] == "ok"
    assert abs(float(out["probability"]) - ref["probability"]) <= 1e-9
    assert "CI not available" in out["text"] and "no heatmap" in out["text"]
    assert "not recorded" in out["text"]


def test_typing_into_the_form_computes_the_same(browser, study_dir, capsys):
    page = study_dir / "calculator.html"
    person = {"age": 47.0, "sex": "male", "bmi": 24.5, "lean_volume_ml": 1320.5,
              "intermat_ml": 38.25, "met_min_week": 450.0, "dyslipidemia": True}
    browser.goto(_url(page))
    browser.evaluate("""(() => {
      const set = (id, v) => { const e = document.getElementById(id); e.value = v;
        e.dispatchEvent(new Event('input', {bubbles: true})); };
      set('in-age', '47'); set('in-sex', 'male'); set('in-bmi', '24,5');
      set('in-lean_volume_ml', '1320.5'); set('in-intermat_ml', '38.25');
      set('in-met_min_week', '450');
      const d = document.getElementById('in-dyslipidemia'); d.checked = true;
      d.dispatchEvent(new Event('input', {bubbles: true}));
    })()""")
    out = browser.evaluate(READ_PAGE)
    ref = _predict_json(capsys, study_dir / "model.json", person)
    assert out["state"] == "ok"
    assert abs(float(out["probability"]) - ref["probability"]) <= 1e-9
    # emptying a field takes the probability away; Compute on an empty form marks every
    # required field
    browser.evaluate("""(() => { const e = document.getElementById('in-bmi'); e.value = '';
      e.dispatchEvent(new Event('input', {bubbles: true})); })()""")
    out = browser.evaluate(READ_PAGE)
    assert out["state"] == "invalid" and out["probability"] == ""
    assert out["messages"]["bmi"] == "required"
    browser.goto(_url(page))
    browser.evaluate("document.getElementById('compute').click()")
    out = browser.evaluate(READ_PAGE)
    assert out["state"] == "invalid" and out["probability"] == "" and not out["visible"]
    required = {"age", "sex", "bmi", "lean_volume_ml", "intermat_ml"}
    assert {k for k, m in out["messages"].items() if m} == required
    assert browser.console_errors() == []


VALID = {"age": 55, "sex": "female", "bmi": 27.0, "lean_volume_ml": 1000,
         "intermat_ml": 60, "met_min_week": 1200}
INVALID = [  # (what, query changes, field that must carry the message, predict refuses too)
    ("age 300", {"age": 300}, "age", True),
    ("negative lean volume", {"lean_volume_ml": -5}, "lean_volume_ml", True),
    ("negative InterMAT volume", {"intermat_ml": -1}, "intermat_ml", True),
    ("missing age", {"age": None}, "age", True),
    ("empty BMI", {"bmi": ""}, "bmi", True),
    ("text as BMI", {"bmi": "abc"}, "bmi", True),
    ("NaN as BMI", {"bmi": "NaN"}, "bmi", True),
    ("infinite volume", {"lean_volume_ml": "1e400"}, "lean_volume_ml", True),
    ("BMI 5", {"bmi": 5}, "bmi", True),
    ("height 20 cm", {"height_cm": 20}, "height_cm", True),
    ("negative activity", {"met_min_week": -10}, "met_min_week", True),
    ("unknown sex code", {"sex": "x"}, "sex", True),
    ("missing sex", {"sex": None}, "sex", True),
    ("boolean 2", {"diabetes": 2}, "diabetes", False),
]


@pytest.mark.parametrize("what,change,field,cli", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_input_shows_a_message_and_no_probability(browser, study_dir, capsys, what,
                                                          change, field, cli):
    query = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    out = _read(browser, study_dir / "calculator.html", query)
    assert out["state"] == "invalid", what
    assert out["probability"] == "" and not out["visible"]
    assert out["messages"][field] != "", what
    assert [k for k, m in out["messages"].items() if m] == [field]
    assert "No probability" in out["status"]
    if cli:  # myocomp predict refuses the same input
        args = ["predict", "--model", str(study_dir / "model.json")]
        for k, v in query.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        assert main(args) == 2, what
        capsys.readouterr()


def test_report_in_browser(browser, study_dir, artifacts):
    page = study_dir / "report.html"
    browser.goto(_url(page))
    info = browser.evaluate("""(() => ({
      images: Array.from(document.images).map((i) => ({ok: i.complete && i.naturalWidth > 0,
                                                       alt: i.alt})),
      toc: Array.from(document.querySelectorAll("nav a[href^='#']")).map((a) => a.hash.slice(1)),
      missing: Array.from(document.querySelectorAll("nav a[href^='#']"))
        .map((a) => a.hash.slice(1)).filter((id) => !document.getElementById(id)),
      calculator: document.getElementById('calculator-link')?.href || null,
    }))()""")
    assert browser.console_errors() == []
    assert len(info["images"]) >= 8
    assert [i["alt"] for i in info["images"] if not i["ok"]] == []
    assert len(info["toc"]) >= 12 and info["missing"] == []
    assert info["calculator"] == (study_dir / "calculator.html").resolve().as_uri()
    assert all(u.startswith(("file:", "data:")) for u in browser.requests())
    keep(browser.screenshot(artifacts / "report.png", width=1400))
    assert math.isclose(browser.evaluate("window.innerWidth"), 1400)
