"""The HTML report's stylesheet and script (no network needed to view the page)."""

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1d2330; }
h1 { font-size: 20px; margin: 0 0 12px; }
h2 { font-size: 16px; margin: 28px 0 8px; border-bottom: 1px solid #d8dce4; }
code, pre, .diff td { font: 12px/1.4 ui-monospace, Menlo, Consolas, monospace; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: 2px 8px; vertical-align: top; }
.facts th { color: #5a6375; font-weight: normal; white-space: nowrap; }
.cols { display: flex; flex-wrap: wrap; gap: 0 32px; align-items: flex-start; }
#why-not-fused { flex: 1; min-width: 480px; }
.tl-row { display: flex; align-items: center; gap: 10px; height: 20px; }
.tl-name { width: 210px; flex: none; font: 12px ui-monospace, monospace; color: inherit;
  text-decoration: none; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.tl-track { position: relative; flex: 1; height: 14px; background: #f1f3f7; }
.tl-bar { position: absolute; top: 0; bottom: 0; min-width: 2px; background: #9aa3b3; }
.tl-row.changed .tl-bar { background: #2f6fdb; }
.tl-row.unchanged .tl-name { color: #7a8396; }
.tl-info { width: 300px; flex: none; font-size: 12px; color: #5a6375; }
.ops td.num { text-align: right; }
.ops td.bars { width: 260px; }
.hbar { height: 5px; margin: 2px 0; }
.hbar.in, .key.in { background: #b9c0cc; }
.hbar.out, .key.out { background: #2f6fdb; }
.key { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 8px; }
#rejected { width: 100%; }
#rejected td:not(:nth-child(5)) { white-space: nowrap; }
#rejected td, #rejected th, .ops td, .ops th { border-bottom: 1px solid #eceef2; }
#rejected tr:nth-child(even) { background: #fafbfc; }
details.pass { margin: 6px 0; border: 1px solid #d8dce4; border-radius: 4px; }
details.pass > summary { padding: 4px 8px; cursor: pointer; background: #f6f7f9; }
.minus { color: #b3261e; } .plus { color: #1a7f37; }
.diff { width: 100%; table-layout: fixed; }
.diff col.ln { width: 40px; }
.diff td { white-space: pre-wrap; overflow-wrap: anywhere; padding: 0 6px; }
.diff td.ln { color: #9aa3b3; text-align: right; user-select: none; }
.diff td.del { background: #ffebe9; }
.diff td.add { background: #dafbe1; }
.diff td.empty { background: #f6f7f9; }
.diff tr.fold td { color: #7a8396; background: #f1f3f7; text-align: center; }
pre { background: #f6f7f9; padding: 8px; overflow-x: auto; }
#provenance-table { width: 100%; font-size: 12px; }
#provenance-table td, #provenance-table th { border-bottom: 1px solid #eceef2; }
#provenance-table td.origins { font: 12px ui-monospace, monospace; }
a.node { color: #2f6fdb; text-decoration: none; margin-right: 4px; }
.target { background: #fff3b0; }
"""

# Progressive enhancement only: the page reads the same with scripts off.
JS = """
(function () {
  document.documentElement.dataset.js = "on";
  var passes = document.querySelectorAll("details.pass");
  function setAll(open) { passes.forEach(function (d) { d.open = open; }); }
  var expand = document.getElementById("expand-all");
  var collapse = document.getElementById("collapse-all");
  if (expand) { expand.onclick = function () { setAll(true); }; }
  if (collapse) { collapse.onclick = function () { setAll(false); }; }
  function openTarget(hash) {
    var el = hash && document.getElementById(decodeURIComponent(hash.slice(1)));
    if (!el) { return; }
    for (var p = el; p; p = p.parentElement) {
      if (p.tagName === "DETAILS") { p.open = true; }
    }
    document.querySelectorAll(".target").forEach(function (t) { t.classList.remove("target"); });
    el.classList.add("target");
  }
  document.querySelectorAll('a[href^="#"]').forEach(function (a) {
    a.addEventListener("click", function () { openTarget(a.getAttribute("href")); });
  });
  openTarget(location.hash);
  var filter = document.getElementById("reject-filter");
  var count = document.getElementById("reject-count");
  if (!filter) { return; }
  var rows = Array.prototype.slice.call(document.querySelectorAll("#rejected tbody tr"));
  function apply() {
    var q = filter.value.toLowerCase(), shown = 0;
    rows.forEach(function (r) {
      r.hidden = r.textContent.toLowerCase().indexOf(q) < 0;
      shown += r.hidden ? 0 : 1;
    });
    count.textContent = shown + " of " + rows.length + " rows";
  }
  filter.addEventListener("input", apply);
  apply();
})();
"""
