/* FedEye site page: fetch the site's JSON and draw. Values go in with textContent only. */
(function () {
  "use strict";
  var POLL_MS = 5000;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  function empty(text) { return el("p", "empty", text); }
  function fill(id, node) { var box = document.getElementById(id); box.textContent = ""; box.appendChild(node); }
  function when(iso) { return iso ? new Date(iso).toLocaleString() : "-"; }
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
  function badge(status) { return el("span", "badge status-" + status, status); }
  function getJson(url) {
    return fetch(url, {credentials: "same-origin"}).then(function (r) { return r.json().then(function (b) { return {ok: r.ok, body: b}; }); });
  }
  function kib(n) { return (n / 1024).toFixed(1) + " KiB"; }
  function dp(req) { return req.dp ? "DP, \u03b5 " + req.epsilon + " per run" : "no DP"; }

  function drawSummary(s) {
    fill("summary", facts([["Site", s.folder], ["Kind", s.deployed ? "deployment" : "simulation"], ["Approval", s.approval],
      ["\u03b5 per run (site ceiling)", s.epsilon_per_run === null ? "none set" : s.epsilon_per_run]]));
  }

  function drawPending(rows) {
    if (!rows.length) { fill("pending", empty("No run is waiting for approval.")); return; }
    fill("pending", table(["Run", "Name", "Strategy", "Model", "Rounds", "Privacy", "FedEye", "Code", "Asked"],
      rows.map(function (r) {
        var q = r.request;
        return [r.run, r.name, q.strategy, q.architecture + " (" + q.model_mode + ")", String(q.rounds), dp(q),
          q.fedeye_version, String(q.code_sha256).slice(0, 12), when(q.requested_at || r.last_seen)];
      })));
  }

  function drawRuns(rows) {
    if (!rows.length) { fill("runs", empty("No run has asked for this site's data yet.")); return; }
    fill("runs", table(["Run", "Name", "Decision", "By", "Strategy", "Rounds joined", "Messages sent", "Sent", "Last seen"],
      rows.map(function (r) {
        return [r.run, r.name, badge(r.status), r.decided_by || "-", r.request.strategy || "-", String(r.rounds_joined),
          String(r.messages_sent), kib(r.bytes_sent), when(r.last_seen)];
      })));
  }

  function drawOutgoing(rows) {
    if (!rows.length) { fill("outgoing", empty("Nothing has left this site yet.")); return; }
    fill("outgoing", table(["Time", "Run", "Round", "Message", "Tensors", "Metrics", "Size"], rows.map(function (o) {
      var names = Object.keys(o.metrics);
      return [when(o.time), o.run, o.round === null ? "-" : String(o.round), o.type + (o.status === "ok" ? "" : " (" + o.status + ")"),
        String(o.tensors), names.length + " (" + names.slice(0, 4).join(", ") + (names.length > 4 ? ", ..." : "") + ")", kib(o.bytes)];
    })));
  }

  function eps(x) { return x === null || x === undefined ? "-" : Number(x).toFixed(2); }
  function small(x) { return x === null || x === undefined ? "-" : Number(x).toPrecision(2); }
  function facts(pairs) {
    var box = el("div", "facts");
    pairs.forEach(function (f) {
      var d = box.appendChild(el("div", "fact"));
      d.appendChild(el("span", "fact-label", f[0]));
      d.appendChild(el("span", "fact-value", String(f[1])));
    });
    return box;
  }

  function drawPrivacy(p) {
    var box = el("div");
    box.appendChild(facts([
      ["\u03b5 over all runs", eps(p.lifetime_epsilon) + (p.lifetime_budget === null ? " (no lifetime budget set)" : " of " + eps(p.lifetime_budget))],
      ["\u03b5 budget per run", p.run_budget === null ? "none set" : eps(p.run_budget)],
      ["Accountant", p.accountant + (p.delta === null ? "" : ", \u03b4 " + small(p.delta))]]));
    if (!p.runs.length) box.appendChild(empty("No DP training has run on this site's data yet."));
    else box.appendChild(table(["Run", "Rounds", "\u03b5 spent", "\u03b4", "Unconfirmed"], p.runs.map(function (r) {
      return [r.run, String(r.rounds), eps(r.epsilon) + (p.run_budget === null ? "" : " of " + eps(p.run_budget)), small(r.delta), String(r.booked)];
    })));
    fill("privacy", box);
  }

  function drawRuntime(r) {
    fill("runtime", facts(Object.keys(r).map(function (k) { return [k, r[k]]; })));
  }

  function drawData(d) {
    var box = el("div");
    box.appendChild(el("p", null, d.ok ? "OK: " + d.images + " images of " + d.patients + " patients (" + d.format + ")"
      : "Problems found: fix them before the site joins a run."));
    d.problems.forEach(function (p) { box.appendChild(el("p", "error", p)); });
    fill("data", box);
  }

  function load() {
    getJson("/api/site").then(function (res) {
      if (!res.ok) { fill("summary", empty(res.body.detail || "Could not load the site.")); return; }
      drawSummary(res.body.site);
      drawPending(res.body.pending);
      drawRuns(res.body.runs);
      drawOutgoing(res.body.outgoing);
      drawPrivacy(res.body.privacy);
      drawRuntime(res.body.runtime);
      document.getElementById("live").textContent = "updated " + new Date().toLocaleTimeString();
      setTimeout(load, POLL_MS);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    load();
    getJson("/api/check").then(function (res) { if (res.ok) drawData(res.body); else fill("data", empty("The data check failed.")); });
  });
})();
