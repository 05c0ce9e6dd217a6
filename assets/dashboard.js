/* touchline dashboard (SPEC 9.2): draws the analytics API's reports for the key typed
   into the page. The key stays in this tab's sessionStorage, is sent only as a bearer
   header to this origin, and every value is written with textContent (partner ids and
   link codes are other people's text). Money is shown as the API's exact strings; only
   the chart's bar heights are floats. */
(function (w, d) {
  "use strict";
  var $ = function (id) { return d.getElementById(id); };
  var store = w.sessionStorage;
  var GROUP_COLUMN = { partner: "partner_id", link: "link_code" };

  function day(t) { return t.toISOString().slice(0, 10); }

  function el(tag, attrs, text) {
    var e = d.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function shown(v) { return v === null || v === undefined ? "\u2014" : String(v); }

  function status(text, error) {
    $("status").textContent = text;
    $("status").className = error ? "error" : "";
  }

  /* The window the inputs name: `to` is inclusive, so the API gets the next midnight. */
  function range() {
    var to = new Date($("to").value + "T00:00:00Z");
    to.setUTCDate(to.getUTCDate() + 1);
    return { from: $("from").value, to: day(to) };
  }

  function get(report, params) {
    var q = new URLSearchParams(range());
    var program = $("program").value.trim();
    if (program) q.set("program_id", program);
    Object.keys(params || {}).forEach(function (k) { q.set(k, params[k]); });
    return fetch("/api/v1/analytics/" + report + "?" + q.toString(), {
      headers: { authorization: "Bearer " + store.getItem("tl_key") },
      cache: "no-store"
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (!r.ok) {
          var e = body.error || {};
          throw new Error(r.status + " " + (e.field ? e.field + ": " : "") + (e.message || r.statusText));
        }
        return body;
      });
    });
  }

  var TILES = [
    ["clicks", "Clicks"], ["unique_clicks", "Unique clicks"], ["bot_clicks", "Bot clicks"],
    ["sales", "Sales"], ["recurring", "Recurring"], ["leads", "Leads"], ["signups", "Signups"],
    ["revenue", "Revenue"], ["commission", "Commission"], ["commission_pending", "Pending"],
    ["commission_held", "Held"], ["commission_approved", "Approved"], ["commission_paid", "Paid"],
    ["conversion_rate", "Conversion rate"], ["epc", "EPC"]
  ];

  function overview(body) {
    var row = body.rows[0] || {};
    var box = $("overview");
    box.replaceChildren();
    TILES.forEach(function (t) {
      var tile = el("div", { "class": "tile", "data-field": t[0] });
      tile.append(el("div", { "class": "label" }, t[1]), el("div", { "class": "value" }, shown(row[t[0]])));
      box.append(tile);
    });
    var who = body.partner_id ? "partner " + body.partner_id + " of " : "program ";
    $("scope").textContent = who + body.program_id + ", " + body.currency;
  }

  function table(id, columns, rows) {
    var t = $(id);
    t.replaceChildren();
    var head = el("tr");
    columns.forEach(function (c) { head.append(el("th", {}, c[1])); });
    t.append(head);
    rows.forEach(function (r) {
      var tr = el("tr");
      columns.forEach(function (c) {
        var v = r[c[0]];
        // Names and periods read from the left; counts and money line up on the right.
        var kind = typeof v === "number" || /^-?[0-9]+(\.[0-9]+)?$/.test(v) ? "num" : "text";
        tr.append(el("td", { "data-field": c[0], "class": kind }, shown(v)));
      });
      t.append(tr);
    });
    if (!rows.length) {
      var empty = el("tr");
      empty.append(el("td", { colspan: columns.length }, "no rows"));
      t.append(empty);
    }
  }

  var SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, title) {
    var e = d.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (title) e.append(Object.assign(d.createElementNS(SVG, "title"), { textContent: title }));
    return e;
  }

  /* Two bars a day, revenue and commission, on one scale; hover shows the exact figures. */
  function chart(body) {
    var rows = body.rows, W = 900, H = 180, pad = 24;
    var max = rows.reduce(function (m, r) { return Math.max(m, parseFloat(r.revenue) || 0); }, 0) || 1;
    var step = (W - pad) / Math.max(rows.length, 1), bar = Math.max(step / 2 - 1, 1);
    var s = svg("svg", { viewBox: "0 0 " + W + " " + (H + pad), width: "100%", role: "img" });
    rows.forEach(function (r, i) {
      var x = pad + i * step, tip = r.period.slice(0, 10) + ": revenue " + r.revenue + ", commission " + r.commission;
      [["revenue", 0], ["commission", bar]].forEach(function (b) {
        var h = (parseFloat(r[b[0]]) || 0) / max * H;
        s.append(svg("rect", { "class": b[0], x: x + b[1], y: H - h, width: bar, height: h }, tip));
      });
      if (i % Math.ceil(rows.length / 8) === 0) {
        s.append(Object.assign(svg("text", { x: x, y: H + 14 }), { textContent: r.period.slice(5, 10) }));
      }
    });
    s.append(Object.assign(svg("text", { x: 0, y: 10 }), { textContent: "max " + max.toFixed(2) }));
    $("chart").replaceChildren(s);
  }

  function funnel() {
    var by = $("group_by").value, column = GROUP_COLUMN[by] || by;
    return get("funnel", { group_by: by }).then(function (b) {
      table("funnel", [[column, by], ["clicks", "clicks"], ["unique_clicks", "unique"], ["leads", "leads"],
        ["signups", "signups"], ["sales", "sales"], ["revenue", "revenue"], ["conversion_rate", "conv. rate"]], b.rows);
    });
  }

  function load() {
    var started = performance.now();
    status("Loading\u2026");
    return Promise.all([
      get("overview").then(overview),
      get("timeseries", { interval: "day" }).then(chart),
      get("leaderboard", { rank_by: "revenue", limit: "10" }).then(function (b) {
        table("leaderboard", [["rank", "#"], ["partner_id", "partner"], ["clicks", "clicks"],
          ["unique_clicks", "unique"], ["sales", "sales"], ["revenue", "revenue"],
          ["commission", "commission"], ["epc", "EPC"]], b.rows);
      }),
      funnel(),
      get("cohorts").then(function (b) {
        table("cohorts", [["cohort", "cohort"], ["months_since", "months since"],
          ["cohort_customers", "cohort size"], ["customers", "active"], ["revenue", "revenue"],
          ["commission", "commission"], ["ltv", "lifetime value"]], b.rows);
      })
    ]).then(function () {
      $("panels").hidden = false;
      status("Loaded " + $("from").value + " to " + $("to").value + " in " +
        Math.round(performance.now() - started) + " ms.");
      d.body.setAttribute("data-loaded", "true");
    }, function (e) {
      $("panels").hidden = true;
      status(e.message, true);
      d.body.setAttribute("data-loaded", "error");
    });
  }

  var now = new Date();
  $("to").value = day(now);
  $("from").value = day(new Date(now.getTime() - 29 * 86400000));
  $("login").addEventListener("submit", function (e) {
    e.preventDefault();
    var typed = $("key").value.trim();
    if (typed) store.setItem("tl_key", typed);
    $("key").value = "";
    if (!store.getItem("tl_key")) return status("Enter a key first.", true);
    d.body.removeAttribute("data-loaded");
    load();
  });
  $("forget").addEventListener("click", function () {
    store.removeItem("tl_key");
    $("panels").hidden = true;
    status("Key forgotten.");
  });
  $("group_by").addEventListener("change", function () {
    funnel().catch(function (e) { status(e.message, true); });
  });
  if (store.getItem("tl_key")) load();
})(window, document);
