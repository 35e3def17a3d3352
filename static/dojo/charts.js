/* Dojo's charts: Plotly (served from our static files: vendor/plotly/plotly.min.js, from the
 * pinned `plotly` wheel) loaded on first use, drawn into any element with data-chart.
 *
 *   <div data-chart="history|scatter|parallel|series" data-src="/url.json"></div>
 *
 * history  — optimisation history: validation and holdout per experiment, best-so-far line,
 *            log-scale and outlier-clipping toggles, hover, click → the experiment's page.
 * scatter  — validation vs holdout (the overfitting picture), y = x reference, click-through.
 * parallel — parallel coordinates of params → the primary metric.
 * series   — a generic metric-over-time line chart: {"x": [...], "x_title": "...",
 *            "series": [{"name": "...", "y": [...]}], "url": optional "/experiments/{id}/",
 *            "ids": optional per-point ids} (the live run page uses it).
 * Charts are redrawn after htmx swaps (htmx:load), and when data-src changes (chart:refresh).
 */
(function () {
  "use strict";
  var plotlyPromise = null;

  function plotlyUrl() {
    var el = document.querySelector("meta[name=dojo-plotly]");
    return el ? el.content : "/static/vendor/plotly/plotly.min.js";
  }

  function loadPlotly() {
    if (window.Plotly) return Promise.resolve(window.Plotly);
    if (!plotlyPromise) {
      plotlyPromise = new Promise(function (resolve, reject) {
        var s = document.createElement("script");
        s.src = plotlyUrl();
        s.onload = function () { resolve(window.Plotly); };
        s.onerror = function () { plotlyPromise = null; reject(new Error("plotly.min.js did not load")); };
        document.head.appendChild(s);
      });
    }
    return plotlyPromise;
  }

  function quantile(sorted, q) {
    if (!sorted.length) return null;
    var pos = (sorted.length - 1) * q, lo = Math.floor(pos), hi = Math.ceil(pos);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
  }

  // A y range that keeps the useful band: Tukey's fences (IQR × 3) around the middle half;
  // null when nothing lies outside them (no clipping needed).
  function clippedRange(values) {
    var v = values.filter(function (x) { return x !== null && isFinite(x); }).sort(function (a, b) { return a - b; });
    if (v.length < 8) return null;
    var q1 = quantile(v, 0.25), q3 = quantile(v, 0.75), iqr = q3 - q1;
    if (iqr <= 0) return null;
    var lo = Math.max(v[0], q1 - 3 * iqr), hi = Math.min(v[v.length - 1], q3 + 3 * iqr);
    if (lo === v[0] && hi === v[v.length - 1]) return null;
    var pad = (hi - lo) * 0.05;
    return [lo - pad, hi + pad];
  }

  function linkTo(el, url, ids) {
    if (!url) return;
    el.on("plotly_click", function (ev) {
      var p = ev.points && ev.points[0];
      if (!p) return;
      var id = p.customdata !== undefined ? p.customdata : (ids ? ids[p.pointIndex] : null);
      if (id !== null && id !== undefined) window.location.href = url.replace("{id}", id);
    });
  }

  var layoutBase = {
    margin: { l: 64, r: 16, t: 24, b: 48 }, hovermode: "closest", height: 320,
    legend: { orientation: "h", y: -0.22 }, font: { size: 12 },
  };
  var config = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"] };

  function traceType(n) { return n > 2000 ? "scattergl" : "scatter"; }

  function toolbar(el, buttons) {
    var bar = document.createElement("div");
    bar.className = "chart-tools small";
    buttons.forEach(function (b) {
      var label = document.createElement("label");
      var box = document.createElement("input");
      box.type = "checkbox"; box.checked = !!b.checked; box.dataset.tool = b.name;
      box.addEventListener("change", function () { b.onchange(box.checked); });
      label.appendChild(box);
      label.appendChild(document.createTextNode(" " + b.label));
      bar.appendChild(label);
    });
    el.parentNode.insertBefore(bar, el);
  }

  function drawHistory(el, d, P) {
    var n = d.ids.length;
    if (!n) { el.innerHTML = '<p class="muted">No completed experiments yet.</p>'; return; }
    var x = d.ids.map(function (_, i) { return i + 1; });
    var t = traceType(n);
    var traces = [
      { type: t, mode: "markers", name: "validation", x: x, y: d.validation, customdata: d.ids,
        marker: { size: 6, color: "#2563eb", opacity: 0.75 },
        hovertemplate: "#%{customdata}<br>validation " + d.metric + " = %{y:.5g}<extra></extra>" },
    ];
    if (d.holdout && d.holdout.some(function (v) { return v !== null; })) {
      traces.push({ type: t, mode: "markers", name: "holdout", x: x, y: d.holdout, customdata: d.ids,
        marker: { size: 6, symbol: "circle-open", color: "#9333ea" },
        hovertemplate: "#%{customdata}<br>holdout " + d.metric + " = %{y:.5g}<extra></extra>" });
    }
    traces.push({ type: t, mode: "lines", name: "best so far (validation)", x: x, y: d.best, customdata: d.ids,
      line: { shape: "hv", color: "#f97316", width: 2 },
      hovertemplate: "best so far = %{y:.5g}<extra></extra>" });
    var all = d.validation.concat(d.holdout || []);
    var clip = clippedRange(all);
    var positive = all.every(function (v) { return v === null || v > 0; });
    var layout = Object.assign({}, layoutBase, {
      xaxis: { title: { text: "experiment (in order of creation)" }, zeroline: false },
      yaxis: { title: { text: d.metric + " (" + d.direction + ")" }, autorange: !clip, range: clip || undefined,
               type: "linear" },
    });
    var state = { log: false, clip: !!clip };
    toolbar(el, [
      { name: "clip", label: "clip outliers", checked: !!clip, onchange: function (on) {
        state.clip = on; P.relayout(el, on && clip ? { "yaxis.range": clip, "yaxis.autorange": false } : { "yaxis.autorange": true });
      } },
      { name: "log", label: "log scale" + (positive ? "" : " (values ≤ 0: unavailable)"), checked: false, onchange: function (on) {
        if (!positive) return;
        state.log = on;
        P.relayout(el, { "yaxis.type": on ? "log" : "linear", "yaxis.autorange": true });
      } },
    ]);
    return P.newPlot(el, traces, layout, config).then(function () { linkTo(el, d.url, d.ids); });
  }

  function drawScatter(el, d, P) {
    var pts = [];
    d.ids.forEach(function (id, i) { if (d.holdout[i] !== null && d.holdout[i] !== undefined) pts.push(i); });
    if (!pts.length) { el.innerHTML = '<p class="muted">No experiment has a holdout score yet.</p>'; return; }
    var xs = pts.map(function (i) { return d.validation[i]; }), ys = pts.map(function (i) { return d.holdout[i]; });
    var ids = pts.map(function (i) { return d.ids[i]; });
    var lo = Math.min.apply(null, xs.concat(ys)), hi = Math.max.apply(null, xs.concat(ys));
    var clip = clippedRange(xs.concat(ys));
    if (clip) { lo = clip[0]; hi = clip[1]; }
    var traces = [
      { type: traceType(pts.length), mode: "markers", name: "experiment", x: xs, y: ys, customdata: ids,
        marker: { size: 7, color: "#2563eb", opacity: 0.7 },
        hovertemplate: "#%{customdata}<br>validation %{x:.5g}<br>holdout %{y:.5g}<extra></extra>" },
      { type: "scatter", mode: "lines", name: "holdout = validation", x: [lo, hi], y: [lo, hi],
        line: { dash: "dot", color: "#9ca3af" }, hoverinfo: "skip" },
    ];
    var worse = d.direction === "maximize" ? "below" : "above";
    var layout = Object.assign({}, layoutBase, {
      xaxis: { title: { text: "validation " + d.metric }, range: clip || undefined },
      yaxis: { title: { text: "holdout " + d.metric + " (" + worse + " the line: worse than validation promised)" },
               range: clip || undefined },
    });
    return P.newPlot(el, traces, layout, config).then(function () { linkTo(el, d.url, null); });
  }

  function drawParallel(el, d, P) {
    var names = Object.keys(d.params || {});
    if (!d.ids.length || !names.length) {
      el.innerHTML = '<p class="muted">No numeric params that vary across completed experiments.</p>'; return;
    }
    var dims = names.map(function (n) {
      var vals = d.params[n].map(function (v) { return v === null ? NaN : v; });
      return { label: n, values: vals };
    });
    dims.push({ label: d.metric, values: d.values });
    var trace = { type: "parcoords", dimensions: dims,
      line: { color: d.values, colorscale: "Viridis", reversescale: !d.maximize, showscale: true,
              colorbar: { title: { text: d.metric } } } };
    return P.newPlot(el, [trace], Object.assign({}, layoutBase, { margin: { l: 64, r: 64, t: 48, b: 24 } }), config);
  }

  function drawSeries(el, d, P) {
    if (!d.series || !d.series.length) { el.innerHTML = '<p class="muted">Nothing to draw yet.</p>'; return; }
    var traces = d.series.map(function (s) {
      return { type: traceType(s.y.length), mode: s.mode || "lines+markers", name: s.name, x: s.x || d.x, y: s.y,
               customdata: s.ids || d.ids, line: s.shape ? { shape: s.shape } : undefined,
               hovertemplate: (s.name + " = %{y:.5g}<extra></extra>") };
    });
    var layout = Object.assign({}, layoutBase, {
      xaxis: { title: { text: d.x_title || "" } }, yaxis: { title: { text: d.y_title || "" } },
    });
    return P.newPlot(el, traces, layout, config).then(function () { linkTo(el, d.url, d.ids); });
  }

  var drawers = { history: drawHistory, scatter: drawScatter, parallel: drawParallel, series: drawSeries };

  function draw(el) {
    var kind = el.dataset.chart, src = el.dataset.src;
    if (!drawers[kind] || !src || el.dataset.drawn === src) return;
    el.dataset.drawn = src;
    el.setAttribute("aria-busy", "true");
    Promise.all([loadPlotly(), fetch(src, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error("chart data: HTTP " + r.status);
      return r.json();
    })]).then(function (res) {
      var prev = el.parentNode.querySelector(".chart-tools");
      if (prev) prev.remove();
      return drawers[kind](el, res[1], res[0]);
    }).then(function () {
      el.removeAttribute("aria-busy"); el.dataset.ready = "1";
    }).catch(function (err) {
      el.removeAttribute("aria-busy");
      el.innerHTML = '<p class="muted">Chart unavailable: ' + String(err.message || err).replace(/</g, "&lt;") + "</p>";
    });
  }

  function drawAll(root) {
    (root || document).querySelectorAll("[data-chart]").forEach(draw);
  }

  window.dojoCharts = { draw: draw, drawAll: drawAll, loadPlotly: loadPlotly };
  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  document.addEventListener("htmx:load", function (ev) { drawAll(ev.target); });
  document.addEventListener("chart:refresh", function (ev) {
    var el = ev.target; if (el && el.dataset) { delete el.dataset.drawn; draw(el); }
  });
})();
