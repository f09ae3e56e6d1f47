/* FedEye dashboard charts: small inline-SVG charts, no dependencies.
 *
 * FedEyeCharts.line(container, {series, rounds, yLabel, yMin, yMax, refLines})
 *   series:   [{name, color, points: [[round, value], ...], dashed, kind}]
 *   rounds:   x values to tick (server rounds)
 *   refLines: [{value, color, label}] dotted horizontal lines (budgets)
 * Draws one <path class="series"> per series with points, one <circle class="pt">
 * per point, and an HTML legend with one .legend-item per series.
 *
 * FedEyeCharts.reliability(container, {series})
 *   series: [{name, color, kind, valueText, points: [{x, y, n, title}, ...]}]
 * A reliability diagram: x and y both 0..1 (mean predicted probability, observed
 * positive rate), the dashed diagonal of perfect calibration (<line class="diagonal">),
 * one <path class="series"> and one <circle class="pt"> per point, its area growing
 * with n (images in the bin) and its <title> the given text; the legend shows valueText.
 */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var W = 640, H = 280, M = {top: 14, right: 18, bottom: 42, left: 58};
  // Okabe-Ito palette: distinguishable with the common colour-vision deficiencies.
  var PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7F6A00", "#8C564B"];

  function svgEl(tag, attrs, text) {
    var node = document.createElementNS(NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function niceTicks(lo, hi, count) {
    if (hi <= lo) { hi = lo + 1; }
    var raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 2.5, 5, 10].map(function (f) { return f * mag; }).filter(function (s) { return s >= raw; })[0];
    var ticks = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toFixed(10));
    return ticks;
  }

  function roundTicks(rounds) {
    if (rounds.length <= 12) return rounds;
    var every = Math.ceil(rounds.length / 12);
    return rounds.filter(function (_, i) { return i % every === 0 || i === rounds.length - 1; });
  }

  function fmt(v) { return v === null || v === undefined ? "-" : (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3)); }

  function line(container, opts) {
    container.textContent = "";
    var rounds = opts.rounds, series = opts.series.filter(function (s) { return s.points.length; });
    var values = [];
    series.forEach(function (s) { s.points.forEach(function (p) { if (p[1] !== null) values.push(p[1]); }); });
    (opts.refLines || []).forEach(function (r) { values.push(r.value); });
    var yMin = opts.yMin !== undefined ? Math.min(opts.yMin, Math.min.apply(null, values)) : Math.min.apply(null, values);
    var yMax = opts.yMax !== undefined ? Math.max(opts.yMax, Math.max.apply(null, values)) : Math.max.apply(null, values);
    if (opts.yMin === undefined) yMin = Math.max(0, yMin - 0.1 * (yMax - yMin || 1));
    if (opts.yMax === undefined) yMax = yMax + 0.1 * (yMax - yMin || 1);
    var yTicks = niceTicks(yMin, yMax, 5);
    yMin = Math.min(yMin, yTicks[0]); yMax = Math.max(yMax, yTicks[yTicks.length - 1]);
    var xLo = rounds[0], xHi = rounds[rounds.length - 1];
    var iw = W - M.left - M.right, ih = H - M.top - M.bottom;
    var x = function (r) { return M.left + (xHi === xLo ? iw / 2 : (r - xLo) / (xHi - xLo) * iw); };
    var y = function (v) { return M.top + ih - (v - yMin) / (yMax - yMin) * ih; };

    var svg = svgEl("svg", {viewBox: "0 0 " + W + " " + H, role: "img", "class": "line-chart",
      "aria-label": opts.yLabel + " by round"});
    var grid = svgEl("g", {"class": "grid"});
    yTicks.forEach(function (t) {
      grid.appendChild(svgEl("line", {x1: M.left, x2: W - M.right, y1: y(t), y2: y(t)}));
      grid.appendChild(svgEl("text", {x: M.left - 8, y: y(t) + 4, "text-anchor": "end", "class": "y-tick"}, fmt(t).replace(/0+$/, "").replace(/\.$/, "")));
    });
    roundTicks(rounds).forEach(function (r) {
      grid.appendChild(svgEl("line", {x1: x(r), x2: x(r), y1: M.top + ih, y2: M.top + ih + 5, "class": "tick-mark"}));
      grid.appendChild(svgEl("text", {x: x(r), y: M.top + ih + 20, "text-anchor": "middle", "class": "x-tick"}, String(r)));
    });
    grid.appendChild(svgEl("line", {x1: M.left, x2: W - M.right, y1: M.top + ih, y2: M.top + ih, "class": "axis"}));
    grid.appendChild(svgEl("text", {x: M.left + iw / 2, y: H - 4, "text-anchor": "middle", "class": "axis-label"}, "Round"));
    grid.appendChild(svgEl("text", {x: 14, y: M.top + ih / 2, "text-anchor": "middle", "class": "axis-label",
      transform: "rotate(-90 14 " + (M.top + ih / 2) + ")"}, opts.yLabel));
    svg.appendChild(grid);

    (opts.refLines || []).forEach(function (r) {
      var g = svgEl("g", {"class": "ref-line"});
      g.appendChild(svgEl("line", {x1: M.left, x2: W - M.right, y1: y(r.value), y2: y(r.value), stroke: r.color,
        "stroke-dasharray": "2 4", "stroke-width": 2}));
      g.appendChild(svgEl("title", {}, r.label));
      svg.appendChild(g);
    });

    series.forEach(function (s) {
      var pts = s.points.filter(function (p) { return p[1] !== null; });
      var d = pts.map(function (p, i) { return (i ? "L" : "M") + x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1); }).join("");
      var g = svgEl("g", {"class": "series-group " + (s.kind || "site"), "data-name": s.name});
      g.appendChild(svgEl("path", {d: d, "class": "series", fill: "none", stroke: s.color,
        "stroke-width": s.dashed ? 2.5 : 2.5, "stroke-dasharray": s.dashed ? "7 5" : "none"}));
      pts.forEach(function (p) {
        var c = svgEl("circle", {cx: x(p[0]), cy: y(p[1]), r: 4.5, fill: s.color, "class": "pt"});
        c.appendChild(svgEl("title", {}, s.name + ", round " + p[0] + ": " + fmt(p[1])));
        g.appendChild(c);
      });
      svg.appendChild(g);
    });
    container.appendChild(svg);
    container.appendChild(legend(series));
  }

  function legend(series) {
    var ul = document.createElement("ul");
    ul.className = "legend";
    series.forEach(function (s) {
      var li = document.createElement("li");
      li.className = "legend-item " + (s.kind || "site");
      var sw = document.createElement("span");
      sw.className = "swatch" + (s.dashed ? " dashed" : "");
      sw.style.borderColor = s.color;
      li.appendChild(sw);
      var last = s.points.length ? s.points[s.points.length - 1][1] : null;
      li.appendChild(document.createTextNode(s.name));
      var val = document.createElement("span");
      val.className = "legend-value";
      val.textContent = s.valueText !== undefined ? s.valueText : fmt(last);
      li.appendChild(val);
      ul.appendChild(li);
    });
    return ul;
  }

  var RW = 480, RH = 440;  // nearly square plot area, so the diagonal is close to 45 degrees

  function reliability(container, opts) {
    container.textContent = "";
    var series = opts.series;
    var iw = RW - M.left - M.right, ih = RH - M.top - M.bottom, ticks = [0, 0.2, 0.4, 0.6, 0.8, 1];
    var x = function (v) { return M.left + v * iw; };
    var y = function (v) { return M.top + ih - v * ih; };
    var maxN = 1;
    series.forEach(function (s) { s.points.forEach(function (p) { maxN = Math.max(maxN, p.n); }); });
    var radius = function (n) { return 3 + 6 * Math.sqrt(n / maxN); };

    var svg = svgEl("svg", {viewBox: "0 0 " + RW + " " + RH, role: "img", "class": "line-chart reliability-chart",
      "aria-label": "Reliability diagram: observed positive rate against mean predicted probability"});
    svg.style.maxWidth = RW + "px";
    var grid = svgEl("g", {"class": "grid"});
    ticks.forEach(function (t) {
      grid.appendChild(svgEl("line", {x1: M.left, x2: RW - M.right, y1: y(t), y2: y(t)}));
      grid.appendChild(svgEl("text", {x: M.left - 8, y: y(t) + 4, "text-anchor": "end", "class": "y-tick"}, String(t)));
      grid.appendChild(svgEl("line", {x1: x(t), x2: x(t), y1: M.top + ih, y2: M.top + ih + 5, "class": "tick-mark"}));
      grid.appendChild(svgEl("text", {x: x(t), y: M.top + ih + 20, "text-anchor": "middle", "class": "x-tick"}, String(t)));
    });
    grid.appendChild(svgEl("line", {x1: M.left, x2: RW - M.right, y1: M.top + ih, y2: M.top + ih, "class": "axis"}));
    grid.appendChild(svgEl("text", {x: M.left + iw / 2, y: RH - 4, "text-anchor": "middle", "class": "axis-label"},
      "Mean predicted probability"));
    grid.appendChild(svgEl("text", {x: 14, y: M.top + ih / 2, "text-anchor": "middle", "class": "axis-label",
      transform: "rotate(-90 14 " + (M.top + ih / 2) + ")"}, "Observed positive rate"));
    svg.appendChild(grid);

    var diagonal = svgEl("line", {x1: x(0), y1: y(0), x2: x(1), y2: y(1), stroke: "#7b8794", "stroke-width": 1.5,
      "stroke-dasharray": "6 5", "class": "diagonal"});
    diagonal.appendChild(svgEl("title", {}, "Perfectly calibrated: observed rate equals predicted probability"));
    svg.appendChild(diagonal);

    series.forEach(function (s) {
      var pts = s.points.slice().sort(function (a, b) { return a.x - b.x; });
      var d = pts.map(function (p, i) { return (i ? "L" : "M") + x(p.x).toFixed(1) + "," + y(p.y).toFixed(1); }).join("");
      var g = svgEl("g", {"class": "series-group " + (s.kind || ""), "data-name": s.name});
      g.appendChild(svgEl("path", {d: d, "class": "series", fill: "none", stroke: s.color, "stroke-width": 2.5}));
      pts.forEach(function (p) {
        var c = svgEl("circle", {cx: x(p.x), cy: y(p.y), r: radius(p.n).toFixed(1), fill: s.color, "class": "pt",
          "data-images": p.n});
        c.appendChild(svgEl("title", {}, p.title));
        g.appendChild(c);
      });
      svg.appendChild(g);
    });
    container.appendChild(svg);
    container.appendChild(legend(series.concat([{name: "perfectly calibrated", color: "#7b8794", points: [],
      dashed: true, kind: "diagonal", valueText: ""}])));
  }

  window.FedEyeCharts = {line: line, reliability: reliability, palette: PALETTE, fmt: fmt};
})();
