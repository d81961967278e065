//! `GET /`: one self-contained HTML page (inline CSS and script, nothing fetched from
//! elsewhere) that draws the mesh matrix of `GET /mesh` and refreshes it every 5 s. Every
//! cell carries `data-from`, `data-to` and `data-state` (`up`, `down`, `none`: no link in
//! that host's table, `unknown`: that host did not report, `self`), which the browser
//! test reads; text from the daemons is inserted as text, never as markup.

/// The page.
pub const MESH_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>meshd: mesh status</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
#summary { margin: 0 0 1em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: .35em .7em; text-align: center; min-width: 5.5em; }
th { background: #eee; }
th.row { text-align: left; }
th.row[data-reported="no"] { color: #a00; }
td[data-state="up"] { background: #d7f5d7; }
td[data-state="down"] { background: #f7c9c9; font-weight: bold; }
td[data-state="none"], td[data-state="self"] { background: #f0f0f0; color: #999; }
td[data-state="unknown"] { background: #fff3cd; color: #856404; }
.err { color: #a00; }
small { color: #666; }
</style>
</head>
<body data-state="loading">
<h1>meshd mesh status <small id="host"></small></h1>
<p id="summary">loading /mesh …</p>
<table id="matrix" aria-label="link state: row host sees column peer"></table>
<p><small>Row: the host whose link table it is. Column: the peer. Refreshed every 5 s.</small></p>
<h2>Asymmetries</h2>
<ul id="asymmetries"></ul>
<h2>Hosts</h2>
<ul id="hosts"></ul>
<script>
"use strict";
function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}
function render(m) {
  document.getElementById("host").textContent = "(from " + m.host + ")";
  const names = m.hosts.map(h => h.host);
  const reported = new Set(m.hosts.filter(h => h.report).map(h => h.host));
  const cells = new Map(m.cells.map(c => [c.from + "\u0000" + c.to, c]));
  const table = document.getElementById("matrix");
  table.replaceChildren();
  const head = el("tr");
  head.appendChild(el("th", "sees \u2192"));
  for (const n of names) head.appendChild(el("th", n));
  table.appendChild(head);
  let down = 0;
  for (const from of names) {
    const tr = el("tr");
    tr.appendChild(el("th", from, {
      class: "row", "data-host": from, "data-reported": reported.has(from) ? "yes" : "no"
    }));
    for (const to of names) {
      const c = cells.get(from + "\u0000" + to);
      let state, text, title = "";
      if (from === to) { state = "self"; text = "\u2014"; }
      else if (c) {
        state = c.state;
        text = c.state === "up"
          ? "up" + (c.rtt_ms != null ? " " + c.rtt_ms.toFixed(2) + " ms" : "")
          : "DOWN";
        title = c.last_error || c.directions.join(", ");
        if (c.state !== "up") down++;
      } else if (reported.has(from)) { state = "none"; text = "no link"; }
      else { state = "unknown"; text = "?"; }
      tr.appendChild(el("td", text, {
        "data-from": from, "data-to": to, "data-state": state, title: title
      }));
    }
    table.appendChild(tr);
  }
  const asym = document.getElementById("asymmetries");
  asym.replaceChildren();
  for (const a of m.asymmetries) {
    asym.appendChild(el("li", a.up_at + " sees " + a.other + " up, " + a.other +
      " sees " + a.up_at + ": " + a.other_sees, { class: "err", "data-up-at": a.up_at,
      "data-other": a.other }));
  }
  if (!m.asymmetries.length) asym.appendChild(el("li", "none"));
  const hosts = document.getElementById("hosts");
  hosts.replaceChildren();
  for (const h of m.hosts) {
    const r = h.report;
    hosts.appendChild(r
      ? el("li", h.host + ": meshd " + r.version + ", config " + r.config_hash +
          ", up " + r.uptime_s + " s", { "data-host": h.host })
      : el("li", h.host + ": no report: " + (h.error || "unknown"),
          { class: "err", "data-host": h.host }));
  }
  const missing = m.hosts.length - reported.size;
  document.getElementById("summary").textContent =
    names.length + " hosts, " + down + " links down, " + missing + " without a report, " +
    m.asymmetries.length + " asymmetries; updated " + new Date().toLocaleTimeString();
  document.body.dataset.state = (down || missing || m.asymmetries.length) ? "degraded" : "ok";
}
async function refresh() {
  try {
    const r = await fetch("/mesh", { cache: "no-store" });
    if (!r.ok) throw new Error("GET /mesh answered " + r.status);
    render(await r.json());
  } catch (e) {
    document.getElementById("summary").textContent = "cannot read /mesh: " + e.message;
    document.body.dataset.state = "error";
  }
}
refresh();
setInterval(refresh, 5000);
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::MESH_PAGE;

    #[test]
    fn the_page_is_self_contained_and_reads_mesh() {
        for external in ["src=", "href=", "http://", "https://", "@import", "url("] {
            assert!(!MESH_PAGE.contains(external), "page references {external}");
        }
        assert!(MESH_PAGE.contains(r#"fetch("/mesh""#));
        // Daemon text goes in as text only.
        assert!(!MESH_PAGE.contains("innerHTML"));
    }
}
