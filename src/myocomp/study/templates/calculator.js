"use strict";
// myocomp CBP calculator: computes what myocomp.study.predict.predict_person computes.
(function () {
  const M = JSON.parse(document.getElementById("calculator-data").textContent);
  const $ = (id) => document.getElementById(id);
  const NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;
  const queryErrors = {};
  const touched = new Set();

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function fmt(x, digits) {
    return Number.isFinite(x) ? x.toFixed(digits) : "–";
  }

  function signed(x, digits) {
    if (!Number.isFinite(x)) return "–";
    const t = Math.abs(x).toFixed(digits);
    return (x < 0 && Number(t) !== 0 ? "−" : "+") + t;
  }

  function rangeText(f) {
    return `${f.min.toLocaleString("en")}–${f.max.toLocaleString("en")} ${f.unit}`;
  }

  // ---- the form ------------------------------------------------------------------------
  function buildForm() {
    const form = $("form");
    const bools = el("div", { class: "bools" });
    for (const f of M.fields) {
      const row = el("div", { class: "row", id: "row-" + f.name });
      const id = "in-" + f.name;
      if (f.kind === "bool") {
        const box = el("input", { type: "checkbox", id: id, name: f.name });
        const lab = el("label", { for: id });
        lab.append(box, " " + f.label);
        row.append(lab, el("div", { class: "msg", id: "msg-" + f.name }));
        bools.append(row);
        continue;
      }
      row.append(el("label", { for: id }, f.label));
      const cell = el("div");
      if (f.kind === "sex") {
        const sel = el("select", { id: id, name: f.name });
        sel.append(el("option", { value: "" }, "choose…"), el("option", { value: "female" }, "female"),
          el("option", { value: "male" }, "male"));
        cell.append(sel);
      } else {
        cell.append(el("input", { type: "text", inputmode: "decimal", id: id, name: f.name }),
          el("span", { class: "unit" }, f.unit));
      }
      row.append(cell);
      const range = f.kind === "number" ? `plausible range ${rangeText(f)}` : "";
      const hint = [f.required ? "required" : "optional", range, f.hint].filter(Boolean);
      row.append(el("div", { class: "range" }, hint.join("; ")));
      row.append(el("div", { class: "msg", id: "msg-" + f.name }));
      form.append(row);
    }
    form.append(bools);
    const button = el("button", { type: "submit", id: "compute" }, "Compute");
    form.append(button);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      M.fields.forEach((f) => touched.add(f.name));
      update();
    });
    form.addEventListener("input", (ev) => {
      const name = ev.target.name;
      delete queryErrors[name];
      touched.add(name);
      update();
    });
    $("link-example").textContent = "calculator.html?" + M.fields
      .filter((f) => f.required).map((f) => f.name + "=…").join("&") + "&diabetes=1";
  }

  function prefill() {
    const q = new URLSearchParams(window.location.search);
    if ([...q.keys()].length === 0) return false;
    const known = new Set(M.fields.map((f) => f.name));
    const unknown = [...q.keys()].filter((k) => !known.has(k));
    if (unknown.length) queryErrors._link = `unknown link parameter(s) ignored: ${unknown.join(", ")}`;
    for (const f of M.fields) {
      touched.add(f.name);
      if (!q.has(f.name)) continue;
      const raw = q.get(f.name);
      const input = $("in-" + f.name);
      if (f.kind === "number") {
        input.value = raw;
      } else if (f.kind === "sex") {
        const code = M.sex_codes[raw.trim().toLowerCase()];
        if (code) input.value = code;
        else queryErrors[f.name] = `'${raw}' is not understood: use female or male`;
      } else {
        const b = { "1": true, "0": false, true: true, false: false }[raw.trim().toLowerCase()];
        if (b === undefined) queryErrors[f.name] = `'${raw}' in the link: use 1 (yes) or 0 (no)`;
        else input.checked = b;
      }
    }
    return true;
  }

  function parseNumber(text) {
    const t = String(text).trim().replace(/^([+-]?\d*),(\d+)$/, "$1.$2");
    if (t === "") return { missing: true };
    if (!NUMBER.test(t)) return { error: "not a number" };
    const v = Number(t);
    if (!Number.isFinite(v)) return { error: "not a finite number" };
    return { value: v };
  }

  function readInputs() {
    const values = {};
    const errors = {};
    for (const f of M.fields) {
      const input = $("in-" + f.name);
      if (queryErrors[f.name]) errors[f.name] = queryErrors[f.name];
      else if (f.kind === "bool") values[f.name] = input.checked;
      else if (f.kind === "sex") {
        if (input.value === "") errors[f.name] = "required: choose female or male";
        else values[f.name] = input.value;
      } else {
        const r = parseNumber(input.value);
        if (r.missing) {
          if (f.required) errors[f.name] = "required";
          else values[f.name] = null;
        } else if (r.error) errors[f.name] = r.error;
        else if (!(r.value >= f.min && r.value <= f.max)) {
          errors[f.name] = `${r.value} is outside the plausible range ${rangeText(f)}`;
        } else values[f.name] = r.value;
      }
    }
    return { values, errors };
  }

  // ---- the model (mirrors predict_person) ----------------------------------------------
  function zscores(v) {
    const zs = M.zscores;
    const data = { age: v.age, lmm: v.lean_volume_ml / v.bmi, height_cm: v.height_cm };
    data[M.intermat_metric] = v[M.intermat_field];
    const out = {};
    for (const [metric, name] of Object.entries(zs.metrics)) {
      const p = zs.params[metric];
      let mean;
      let sd;
      if (zs.method === "cohort") {
        mean = p.mean;
        sd = p.sd;
      } else if (zs.method === "sex") {
        mean = p[v.sex].mean;
        sd = p[v.sex].sd;
      } else {
        const c = p.coef;
        mean = c.Intercept + c.age * v.age + c.male * (v.sex === "male" ? 1 : 0);
        if (zs.height) mean = mean + c.height_cm * (v.height_cm === null ? NaN : v.height_cm);
        sd = p.sd;
      }
      out[name] = (data[metric] - mean) / sd;
    }
    return out;
  }

  function paCategory(met) {
    if (met === null) return "moderate";
    const [lo, hi] = M.pa_breaks;
    return met < lo ? "low" : met > hi ? "high" : "moderate";
  }

  function axes() {
    const N = M.nomogram;
    return N.predictors.map((s) => {
      const coefs = s.terms.map((t) => N.params[t]);
      let ends;
      if (s.kind === "continuous") ends = [coefs[0] * s.low, coefs[0] * s.high];
      else ends = s.contrast.map((row) => row.reduce((acc, c, k) => acc + c * coefs[k], 0));
      return { spec: s, coefs, ends, cmin: Math.min(...ends), cmax: Math.max(...ends) };
    });
  }

  function nomogramPoints(person) {
    const N = M.nomogram;
    const ax = axes();
    const scale = 100.0 / Math.max(...ax.map((a) => a.cmax - a.cmin));
    let cminSum = 0;
    for (const a of ax) cminSum += a.cmin;
    const lpAtZero = (N.params[N.intercept_term] || 0) + cminSum;
    const rows = [];
    let total = 0;
    for (const a of ax) {
      const s = a.spec;
      let contrib;
      if (s.kind === "continuous") contrib = a.coefs[0] * person[s.name];
      else contrib = a.ends[s.levels.findIndex((l) => String(l) === String(person[s.name]))];
      const pts = (contrib - a.cmin) * scale;
      rows.push({ name: s.name, label: s.label || s.name, points: pts });
      total += pts;
    }
    const lp = lpAtZero + total / scale;
    return { rows, total, lp, probability: 1.0 / (1.0 + Math.exp(-lp)) };
  }

  function designValue(term, person, pa) {
    const prefix = "C(pa_category, Treatment('moderate'))";
    if (term === "Intercept") return 1.0;
    if (term.startsWith(prefix)) return pa === term.slice(prefix.length + 3, -1) ? 1.0 : 0.0;
    return person[term];
  }

  function confidenceInterval(person, pa, lp) {
    if (!M.cov) return null;
    const v = M.cov.terms.map((t) => designValue(t, person, pa));
    let variance = 0;
    for (let i = 0; i < v.length; i++) {
      for (let j = 0; j < v.length; j++) variance += v[i] * M.cov.matrix[i][j] * v[j];
    }
    const se = Math.sqrt(Math.max(variance, 0.0));
    return [1.0 / (1.0 + Math.exp(-(lp - M.z_95 * se))), 1.0 / (1.0 + Math.exp(-(lp + M.z_95 * se)))];
  }

  function predict(v) {
    const z = zscores(v);
    if (!Number.isFinite(z.z_intermat) || !Number.isFinite(z.z_lmm)) {
      throw new Error("the model's Z reference cannot score these inputs");
    }
    const pa = paCategory(v.met_min_week);
    const person = {
      z_intermat: z.z_intermat, z_lmm: z.z_lmm, age: v.age, female: v.sex === "female" ? 1.0 : 0.0,
      diabetes: v.diabetes ? 1.0 : 0.0, dyslipidemia: v.dyslipidemia ? 1.0 : 0.0,
      osteoporosis: v.osteoporosis ? 1.0 : 0.0, osteoarthritis: v.osteoarthritis ? 1.0 : 0.0,
      pa_category: pa,
    };
    const res = nomogramPoints(person);
    res.z = z;
    res.person = person;
    res.pa = pa;
    res.ci = confidenceInterval(person, pa, res.lp);
    const ok = [res.total, res.lp, res.probability].concat(res.rows.map((r) => r.points));
    if (!ok.every(Number.isFinite) || (res.ci && !res.ci.every(Number.isFinite))) {
      throw new Error("the model gives no finite result for these inputs");
    }
    return res;
  }

  // ---- display -------------------------------------------------------------------------
  function showMessages(errors) {
    for (const f of M.fields) {
      const show = touched.has(f.name) && errors[f.name];
      $("msg-" + f.name).textContent = show ? errors[f.name] : "";
      $("row-" + f.name).classList.toggle("invalid", Boolean(show));
    }
  }

  function valueText(name, v, res) {
    if (name === "pa_category") {
      const met = v.met_min_week === null ? "not given" : `${v.met_min_week} MET-min/week`;
      return `${res.pa} (${met})`;
    }
    if (name === "z_intermat" || name === "z_lmm") return "Z " + signed(res.z[name], 2);
    if (name === "age") return String(v.age);
    if (name === "female") return v.sex;
    return res.person[name] === 1.0 ? "yes" : "no";
  }

  function cell(tr, text, id, value) {
    const td = el("td", id ? { id } : {}, text);
    if (value !== undefined) td.dataset.value = String(value);
    tr.append(td);
  }

  function showResult(v, res) {
    $("probability").textContent = String(res.probability);
    $("prob-percent").textContent = fmt(100 * res.probability, 1) + " %";
    const ci = $("ci-text");
    ci.dataset.lower = res.ci ? String(res.ci[0]) : "";
    ci.dataset.upper = res.ci ? String(res.ci[1]) : "";
    ci.textContent = res.ci
      ? `95 % CI ${fmt(100 * res.ci[0], 1)}–${fmt(100 * res.ci[1], 1)} % (delta method, see below)`
      : "95 % CI not available: this model.json has no covariance (re-run myocomp study)";
    const zb = $("z-table").querySelector("tbody");
    zb.replaceChildren();
    const from = {
      z_intermat: `${M.intermat_metric} = ${v[M.intermat_field]}`,
      z_lmm: `LMM = ${fmt(v.lean_volume_ml / v.bmi, 2)} mL·m²/kg`,
    };
    for (const name of ["z_intermat", "z_lmm"]) {
      const tr = el("tr");
      tr.append(el("td", {}, name === "z_intermat" ? "InterMAT (Z)" : "LMM (Z)"));
      cell(tr, signed(res.z[name], 3), "z-" + name, res.z[name]);
      cell(tr, from[name]);
      zb.append(tr);
    }
    const pb = $("points-table").querySelector("tbody");
    pb.replaceChildren();
    for (const r of res.rows) {
      const tr = el("tr");
      tr.append(el("td", {}, r.label));
      cell(tr, valueText(r.name, v, res));
      cell(tr, fmt(r.points, 1), "pts-" + r.name, r.points);
      pb.append(tr);
    }
    $("total-points").textContent = fmt(res.total, 1);
    $("total-points").dataset.value = String(res.total);
    $("linear-predictor").textContent = fmt(res.lp, 3);
    $("linear-predictor").dataset.value = String(res.lp);
    const notes = $("notes");
    notes.replaceChildren();
    if (v.met_min_week === null) {
      notes.append(el("li", {}, "Physical activity not given: taken as 'moderate' (the reference category)."));
    }
    if (Math.abs(res.z.z_intermat) > 2 || Math.abs(res.z.z_lmm) > 2) {
      notes.append(el("li", {}, "A Z-score lies outside ±2: few people of the study were there."));
    }
  }

  function showMarkers(res) {
    const D = M.drawing;
    const px = (points) => D.x0 + points * D.px_per_point;
    let yTop = Infinity;
    for (const r of res.rows) {
      const c = $("nm-" + r.name);
      if (!c) continue;
      c.setAttribute("cx", px(r.points).toFixed(1));
      c.setAttribute("visibility", "visible");
      yTop = Math.min(yTop, Number(c.getAttribute("cy")));
    }
    const xTotal = px(Math.min(Math.max(res.total, 0), D.max_total_points) * 100 / D.max_total_points);
    for (const name of ["total_points", "probability"]) {
      const c = $("nm-" + name);
      if (!c) continue;
      c.setAttribute("cx", xTotal.toFixed(1));
      c.setAttribute("visibility", "visible");
    }
    const g = $("nm-guide");
    const t = $("nm-total_points");
    const p = $("nm-probability");
    if (g && t && p) {
      g.setAttribute("x1", xTotal.toFixed(1));
      g.setAttribute("x2", xTotal.toFixed(1));
      g.setAttribute("y1", t.getAttribute("cy"));
      g.setAttribute("y2", p.getAttribute("cy"));
      g.setAttribute("visibility", "visible");
    }
  }

  function hideMarkers() {
    document.querySelectorAll("#nomogram .marker, #nomogram .guide").forEach((m) => m.setAttribute("visibility", "hidden"));
  }

  function update() {
    const { values, errors } = readInputs();
    showMessages(errors);
    const status = $("status");
    const linkNote = queryErrors._link ? ` (${queryErrors._link})` : "";
    let res = null;
    if (Object.keys(errors).length === 0) {
      try {
        res = predict(values);
      } catch (e) {
        status.textContent = `No probability: ${e.message}.`;
      }
    } else {
      const shown = Object.keys(errors).filter((k) => touched.has(k));
      status.textContent = shown.length
        ? `No probability: correct the ${shown.length} marked field(s).`
        : "Enter the values to compute the probability.";
    }
    status.classList.toggle("bad", res === null && Object.keys(errors).some((k) => touched.has(k)));
    $("result-box").hidden = res === null;
    if (res === null) {
      $("probability").textContent = "";
      hideMarkers();
      drawHeatmap(null);
      document.body.dataset.state = Object.keys(errors).length ? "invalid" : "error";
      return;
    }
    status.textContent = "Computed from the values entered." + linkNote;
    showResult(values, res);
    showMarkers(res);
    drawHeatmap(res.z);
    document.body.dataset.state = "ok";
  }

  // ---- heatmap -------------------------------------------------------------------------
  function colour(t) {
    const cs = M.heatmap_colors;
    const x = Math.min(Math.max(t, 0), 1) * (cs.length - 1);
    const i = Math.min(Math.floor(x), cs.length - 2);
    const f = x - i;
    const rgb = (h) => [1, 3, 5].map((k) => parseInt(h.slice(k, k + 2), 16));
    const a = rgb(cs[i]);
    const b = rgb(cs[i + 1]);
    return `rgb(${a.map((v, k) => Math.round(v + f * (b[k] - v))).join(",")})`;
  }

  function drawHeatmap(z) {
    const H = M.heatmap;
    const canvas = $("heatmap");
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const text = $("heatmap-text");
    const vals = H ? H.probability.flat().filter((p) => p !== null) : [];
    if (vals.length === 0) {
      text.textContent = H ? "The interaction model was not estimable: no heatmap."
        : "This model.json has no heatmap (re-run myocomp study).";
      return;
    }
    const lo = Math.min(...vals);
    const hi = Math.max(...vals);
    const L = { x: 62, y: 18, w: 380, h: 380 };
    const zi = H.z_intermat;
    const zl = H.z_lmm;
    const X = (v) => L.x + ((v - zi[0]) / (zi[zi.length - 1] - zi[0])) * L.w;
    const Y = (v) => L.y + L.h - ((v - zl[0]) / (zl[zl.length - 1] - zl[0])) * L.h;
    const cw = L.w / zi.length;
    const ch = L.h / zl.length;
    H.probability.forEach((row, i) => row.forEach((p, j) => {
      ctx.fillStyle = p === null ? "#ddd" : colour(hi > lo ? (p - lo) / (hi - lo) : 0.5);
      ctx.fillRect(L.x + j * cw, L.y + L.h - (i + 1) * ch, cw + 0.5, ch + 0.5);
    }));
    ctx.strokeStyle = "#000";
    ctx.strokeRect(L.x, L.y, L.w, L.h);
    ctx.fillStyle = "#000";
    ctx.font = "13px 'DejaVu Sans', Verdana, sans-serif";
    ctx.textAlign = "center";
    for (let t = Math.ceil(zi[0]); t <= zi[zi.length - 1]; t++) ctx.fillText(String(t).replace("-", "−"), X(t), L.y + L.h + 17);
    ctx.fillText("InterMAT Z-score", L.x + L.w / 2, L.y + L.h + 37);
    ctx.textAlign = "right";
    for (let t = Math.ceil(zl[0]); t <= zl[zl.length - 1]; t++) ctx.fillText(String(t).replace("-", "−"), L.x - 6, Y(t) + 4);
    ctx.save();
    ctx.translate(16, L.y + L.h / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center";
    ctx.fillText("LMM Z-score", 0, 0);
    ctx.restore();
    for (let k = 0; k < 100; k++) {
      ctx.fillStyle = colour(k / 99);
      ctx.fillRect(L.x + L.w + 24, L.y + L.h - ((k + 1) * L.h) / 100, 16, L.h / 100 + 0.5);
    }
    ctx.fillStyle = "#000";
    ctx.textAlign = "left";
    ctx.fillText(fmt(100 * hi, 0) + " %", L.x + L.w + 44, L.y + 10);
    ctx.fillText(fmt(100 * lo, 0) + " %", L.x + L.w + 44, L.y + L.h);
    const ref = M.provenance.reference_covariates || {};
    let where = "";
    if (z) {
      const inside = (v, g) => v >= g[0] && v <= g[g.length - 1];
      const cx = X(Math.min(Math.max(z.z_intermat, zi[0]), zi[zi.length - 1]));
      const cy = Y(Math.min(Math.max(z.z_lmm, zl[0]), zl[zl.length - 1]));
      ctx.beginPath();
      ctx.arc(cx, cy, 8, 0, 2 * Math.PI);
      ctx.lineWidth = 3;
      ctx.strokeStyle = "#000";
      ctx.stroke();
      ctx.beginPath();
      ctx.arc(cx, cy, 3, 0, 2 * Math.PI);
      ctx.fillStyle = "#000";
      ctx.fill();
      where = ` The ring marks this person (InterMAT Z ${signed(z.z_intermat, 2)}, LMM Z ${signed(z.z_lmm, 2)})`;
      where += inside(z.z_intermat, zi) && inside(z.z_lmm, zl) ? "." : ", drawn at the edge: outside the map.";
    }
    text.textContent = `Predicted CBP probability (${fmt(100 * lo, 0)}–${fmt(100 * hi, 0)} %) of the ${H.model}` +
      ` (age ${fmt(ref.age, 0)} years, ${ref.female ? "female" : "male"}, no comorbidity, moderate physical activity).` +
      where + " The map's probabilities are for the reference person, not for this person.";
  }

  // ---- provenance ----------------------------------------------------------------------
  function showProvenance() {
    const P = M.provenance;
    const rows = [
      ["cohort (nomogram model)", `${(P.n || 0).toLocaleString("en")} people (complete cases; ${(P.n_dropped || 0).toLocaleString("en")} dropped)`],
      ["model created", P.created_utc || "not recorded"],
      ["myocomp version", P.myocomp_version || "not recorded"],
      ["model", `fixed-effects logistic regression: ${P.formula}`],
      ["apparent AUC", Number.isFinite(P.auc) ? P.auc.toFixed(3) : "–"],
      ["muscle group", P.group],
      ["InterMAT biomarker", P.intermat_metric],
      ["LMM", P.lmm_definition],
      ["Z reference", `${P.zscore_method}: ${P.zscore_definition}` +
        ` (reference n: ${Object.entries(P.zscore_n).map(([k, n]) => `${k} ${n}`).join(", ")})`],
      ["physical activity", `low < ${P.pa_breaks[0]} ≤ moderate ≤ ${P.pa_breaks[1]} < high MET-min/week`],
    ];
    const table = el("table");
    for (const [k, v] of rows) {
      const tr = el("tr");
      tr.append(el("th", {}, k), el("td", {}, v));
      table.append(tr);
    }
    const defs = el("table");
    const head = el("tr");
    head.append(el("th", {}, "metric"), el("th", {}, "unit"), el("th", {}, "definition"));
    defs.append(head);
    for (const [name, unit, text] of P.metric_definitions) {
      const tr = el("tr");
      tr.append(el("td", {}, name), el("td", {}, unit), el("td", {}, text));
      defs.append(tr);
    }
    $("provenance-body").replaceChildren(table, el("h3", {}, "Metric definitions"), defs);
  }

  buildForm();
  showProvenance();
  drawHeatmap(null);
  if (!prefill()) {
    document.body.dataset.state = "empty";
  }
  update();
  if (document.body.dataset.state !== "ok" && touched.size === 0) document.body.dataset.state = "empty";
})();
