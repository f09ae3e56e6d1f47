/* FedEye dashboard pages: fetch the JSON API and draw; poll while a run is live.
 * Values from the store are inserted with textContent only (never innerHTML). */
(function () {
  "use strict";
  var POLL_MS = 3000;
  var C = window.FedEyeCharts;
  var STATE_LABEL = {trained: "trained", evaluated: "evaluated", failed: "failed", dropped: "dropped",
    "left-budget": "left: budget spent", rejected: "rejected", "awaiting-approval": "awaiting approval",
    denied: "denied by the site"};

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  function empty(text) { return el("p", "empty", text); }
  function fill(id, node) { var box = document.getElementById(id); box.textContent = ""; box.appendChild(node); }
  function when(iso) { return iso ? new Date(iso).toLocaleString() : "-"; }
  function num(v, digits) { return v === null || v === undefined ? "-" : Number(v).toFixed(digits === undefined ? 3 : digits); }
  function badge(status) { return el("span", "badge status-" + status, status); }

  function table(headers, rows) {
    var t = el("table"), head = el("tr");
    headers.forEach(function (h) { head.appendChild(el("th", null, h)); });
    t.appendChild(el("thead")).appendChild(head);
    var body = t.appendChild(el("tbody"));
    rows.forEach(function (cells) {
      var tr = body.appendChild(el("tr"));
      cells.forEach(function (c) {
        var td = tr.appendChild(el("td"));
        if (c instanceof Node) td.appendChild(c); else td.textContent = c;
      });
    });
    return t;
  }

  function getJson(url) {
    return fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}}).then(function (r) {
      return r.json().then(function (body) { return {ok: r.ok, status: r.status, body: body}; });
    });
  }

  function setLive(running) {
    var live = document.getElementById("live");
    live.textContent = running ? "Live: updates every " + POLL_MS / 1000 + " s" : "";
    live.className = running ? "live on" : "live";
  }

  // ------------------------------------------------------------------ runs list
  function drawRuns(runs) {
    if (!runs.length) { fill("runs", empty("No runs recorded yet. Start one with `fedeye simulate` or `fedeye demo`.")); return; }
    fill("runs", table(["Run", "Status", "Strategy", "Sites", "Rounds", "Started", "Ended"], runs.map(function (r) {
      var link = el("a", null, r.name + " "); link.href = "/runs/" + encodeURIComponent(r.run_id);
      link.appendChild(el("span", "run-id", r.run_id));
      return [link, badge(r.status), r.strategy, String(r.num_sites), r.rounds_done + " / " + r.num_rounds,
        when(r.started_at), when(r.ended_at)];
    })));
  }

  function loadRuns() {
    getJson("/api/runs").then(function (res) {
      if (!res.ok) { fill("runs", empty(res.body.detail || "Could not load runs.")); return; }
      drawRuns(res.body);
      var running = res.body.some(function (r) { return r.status === "running"; });
      setLive(running);
      if (running) setTimeout(loadRuns, POLL_MS);
    });
  }

  // ------------------------------------------------------------------- run page
  function drawSummary(run) {
    document.getElementById("run-title").textContent = run.name + " (" + run.run_id + ")";
    document.title = "FedEye: " + run.name;
    var box = el("div", "facts");
    [["Status", badge(run.status)], ["Strategy", run.strategy], ["Sites", String(run.num_sites)],
     ["Rounds", run.rounds_done + " of " + run.num_rounds], ["Started", when(run.started_at)], ["Ended", when(run.ended_at)]]
      .forEach(function (f) {
        var d = box.appendChild(el("div", "fact"));
        d.appendChild(el("span", "fact-label", f[0]));
        var v = d.appendChild(el("span", "fact-value"));
        if (f[1] instanceof Node) v.appendChild(f[1]); else v.textContent = f[1];
      });
    var wrap = el("div");
    wrap.appendChild(box);
    if (run.error) wrap.appendChild(el("p", "error", (run.status === "interrupted" ? "Interrupted: " : "Error: ") + run.error));
    if (run.status === "stale") {
      wrap.appendChild(el("p", "error", "Stale: the process running it (" + (run.owner || "unknown") + ") is gone or has sent no " +
        "heartbeat since " + when(run.heartbeat_at || run.started_at) + "; it will not finish by itself."));
    }
    fill("summary", wrap);
  }

  function drawCurve(id, curves, metric, label, yMin, yMax) {
    var part = curves[metric], names = Object.keys(part.sites).sort();
    if (!names.length) { fill(id, empty("No site has reported " + label + " yet.")); return; }
    var series = names.map(function (name, i) {
      return {name: name, color: C.palette[i % C.palette.length], points: part.sites[name], kind: "site"};
    });
    if (part.federated.length) series.push({name: "Federated", color: "#1f2933", points: part.federated, dashed: true, kind: "federated"});
    C.line(document.getElementById(id), {series: series, rounds: curves.rounds, yLabel: label, yMin: yMin, yMax: yMax});
  }

  function drawParticipation(p) {
    if (!p.sites.length) { fill("participation", empty("No site has reported yet.")); return; }
    var rows = p.sites.map(function (site) {
      return [site].concat(p.rounds.map(function (r) {
        var cell = p.grid[site][String(r)], box = el("div", "chips");
        if (!cell) { box.appendChild(el("span", "chip none", "not sampled")); return box; }
        cell.states.slice().sort().reverse().forEach(function (s) {
          var label = s === "failed" && cell.failure ? "failed: " + cell.failure : (STATE_LABEL[s] || s);
          box.appendChild(el("span", "chip state-" + s, label));
        });
        if (cell.reasons.length) box.title = cell.reasons.join("\n");
        return box;
      }));
    });
    rows.push(["Total"].concat(p.counts.map(function (c) {
      var parts = [c.trained + " trained", c.evaluated + " evaluated"];
      ["failed", "dropped", "left-budget", "rejected", "awaiting-approval", "denied"].forEach(function (k) { if (c[k]) parts.push(c[k] + " " + STATE_LABEL[k]); });
      return parts.join(", ");
    })));
    var t = table(["Site"].concat(p.rounds.map(function (r) { return "Round " + r; })), rows);
    t.className = "participation";
    fill("participation", t);
  }

  function drawPrivacy(pr) {
    var names = Object.keys(pr.series).sort();
    if (!names.length) { fill("chart-privacy", empty("No differential privacy recorded for this run.")); return; }
    var series = [], refs = [];
    names.forEach(function (name, i) {
      var s = pr.series[name], color = name === "federation" ? "#1f2933" : C.palette[i % C.palette.length];
      var label = name + (s.status !== "ok" ? " (" + s.status + ")" : "");
      series.push({name: label, color: color, points: s.points, dashed: name === "federation", kind: s.scope});
      if (s.budget !== null) refs.push({value: s.budget, color: color, label: name + " budget: \u03b5 " + num(s.budget, 2)});
    });
    C.line(document.getElementById("chart-privacy"), {series: series, rounds: pr.rounds, yLabel: "\u03b5 spent", yMin: 0, refLines: refs});
    var budgets = el("p", "hint");
    var texts = names.map(function (n) { var b = pr.series[n].budget; return b === null ? "none set" : "\u03b5 " + num(b, 2); });
    var same = texts.every(function (t) { return t === texts[0]; });
    budgets.textContent = same ? "Budget: " + texts[0] + " for every hospital." :
      "Budgets: " + names.map(function (n, i) { return n + " " + texts[i]; }).join("; ") + ".";
    document.getElementById("chart-privacy").appendChild(budgets);
  }

  function drawFairness(f) {
    if (!f.sites.length) { fill("fairness", empty("No per-site results yet.")); return; }
    var wrap = el("div");
    wrap.appendChild(el("p", "hint", "From the " + (f.phase === "test" ? "final test" : "validation") +
      " results of round " + f.round + ". Groups with fewer than the minimum number of images are suppressed (never sent by the site)."));
    var cross = f.cross_site, keys = [["site.mean-auc", "Mean AUC over hospitals"], ["site.worst-auc", "Worst hospital AUC"],
      ["site.gap", "Best minus worst hospital"], ["site.es-auc", "Equity-scaled AUC over hospitals"]];
    if (Object.keys(cross).length) {
      var cards = wrap.appendChild(el("div", "cards"));
      keys.forEach(function (k) {
        if (!(k[0] in cross)) return;
        var c = cards.appendChild(el("div", "card"));
        c.appendChild(el("span", "card-value", num(cross[k[0]])));
        c.appendChild(el("span", "card-label", k[1]));
      });
    }
    var rows = [];
    f.sites.forEach(function (s) {
      s.attributes.forEach(function (a, i) {
        var groups = el("div", "chips");
        a.groups.forEach(function (g) { groups.appendChild(el("span", "chip group", g.group + ": AUC " + num(g.auc) + " (n=" + num(g.n, 0) + ")")); });
        if (a.suppressed) groups.appendChild(el("span", "chip suppressed", num(a.suppressed, 0) + " suppressed (too few images)"));
        if (!a.groups.length && !a.suppressed) groups.appendChild(el("span", "chip none", "no groups"));
        rows.push([i ? "" : s.site, i ? "" : num(s.auc), a.attribute, groups, num(a["es-auc"]), num(a["worst-auc"]),
          num(a.dpd), num(a.eod)]);
      });
      if (!s.attributes.length) rows.push([s.site, num(s.auc), "no attributes recorded", "", "-", "-", "-", "-"]);
    });
    var t = wrap.appendChild(table(["Site", "AUC", "Attribute", "Group AUC", "ES-AUC", "Worst group AUC", "DPD", "EOD"], rows));
    t.className = "fairness";
    wrap.appendChild(el("p", "hint", "ES-AUC: AUC scaled down by the spread of group AUCs (equal to AUC when groups do equally well). " +
      "DPD / EOD: demographic parity and equalized odds differences (0 is parity)."));
    fill("fairness", wrap);
  }

  function drawExperts(x) {
    if (!x.experts.length) { fill("experts", empty("no expert mixing recorded for this run")); return; }
    var rows = Object.keys(x.sites).map(function (site) {
      return [site].concat(x.experts.map(function (k) {
        var w = x.sites[site][k], bar = el("div", "bar");
        var fillBar = bar.appendChild(el("span", "bar-fill"));
        fillBar.style.width = Math.max(0, Math.min(1, w || 0)) * 100 + "%";
        bar.appendChild(el("span", "bar-label", num(w, 2)));
        return bar;
      }));
    });
    var owners = x.owners || {};
    fill("experts", table(["Site"].concat(x.experts.map(function (k) {
      return owners[k] ? "Expert " + k + " (" + owners[k] + ")" : "Expert " + k;
    })), rows));
  }

  // Reliability diagrams: all sites pooled first, then each site; the choice survives a refresh.
  var calibrationPick = 0;

  function drawCalibration(cal, run) {
    if (!cal.diagrams.length) {
      fill("calibration", empty(run.status === "running" ? "No reliability diagram yet: the sites send it with the final test." :
        "No reliability diagram recorded for this run: a multiclass task, every bin smaller than the sites' " +
        "minimum group size, or a run recorded before FedEye kept it."));
      return;
    }
    calibrationPick = Math.min(calibrationPick, cal.diagrams.length - 1);
    var wrap = el("div"), chart = el("div", "chart"), caption = el("p", "hint");
    if (cal.diagrams.length > 1) {
      var label = wrap.appendChild(el("label", "hint", "Diagram of: "));
      var pick = label.appendChild(el("select"));
      pick.id = "calibration-scope";
      cal.diagrams.forEach(function (d, i) { pick.appendChild(el("option", null, d.name)).value = String(i); });
      pick.value = String(calibrationPick);
      pick.addEventListener("change", function () {
        calibrationPick = Number(pick.value);
        drawDiagram(chart, caption, cal.diagrams[calibrationPick], cal);
      });
    }
    wrap.appendChild(chart);
    wrap.appendChild(caption);
    fill("calibration", wrap);
    drawDiagram(chart, caption, cal.diagrams[calibrationPick], cal);
  }

  function drawDiagram(chart, caption, diagram, cal) {
    var stages = [["before", "before calibration", C.palette[0]], ["after", "after calibration", C.palette[1]]];
    var series = stages.filter(function (st) { return diagram[st[0]]; }).map(function (st) {
      var part = diagram[st[0]];
      return {name: st[1], color: st[2], kind: st[0], valueText: "ECE " + num(part.ece),
        points: part.bins.filter(function (b) { return b.images > 0; }).map(function (b) {
          return {x: b.mean, y: b.observed, n: b.images, title: st[1] + ", bin " + num(b.low, 1) + "\u2013" + num(b.high, 1) +
            ": " + b.images + " images, mean predicted " + num(b.mean) + ", observed positive rate " + num(b.observed)};
        })};
    });
    C.reliability(chart, {series: series});
    var parts = [diagram.after ? "ECE " + num(diagram.before.ece) + " before calibration, " + num(diagram.after.ece) + " after" +
      (cal.temperature !== null ? " (bias " + num(cal.bias) + ", temperature " + num(cal.temperature) + ")." : ".") :
      "ECE " + num(diagram.before.ece) + "; no calibration recorded for this run."];
    parts.push(diagram.images + " images in the bins" + (diagram.withheld ? "; " + diagram.withheld +
      " more were in bins smaller than their site's minimum group size and were withheld." : "."));
    parts.push("A point's area grows with the images in its bin; hover it for the counts.");
    caption.textContent = parts.join(" ");
  }

  function runId() { return decodeURIComponent(location.pathname.split("/").pop()); }

  function loadRun() {
    getJson("/api/runs/" + encodeURIComponent(runId())).then(function (res) {
      if (!res.ok) { fill("summary", empty(res.body.detail || "Could not load this run.")); setLive(false); return; }
      var d = res.body;
      drawSummary(d.run);
      drawCurve("chart-auc", d.curves, "auc", "AUC", 0.5, 1);
      drawCurve("chart-loss", d.curves, "loss", "loss");
      drawParticipation(d.participation);
      drawPrivacy(d.privacy);
      drawFairness(d.fairness);
      drawExperts(d.experts);
      drawCalibration(d.calibration, d.run);
      var running = d.run.status === "running";
      setLive(running);
      if (running) setTimeout(loadRun, POLL_MS);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (document.body.dataset.page === "runs") loadRuns(); else loadRun();
  });
})();
