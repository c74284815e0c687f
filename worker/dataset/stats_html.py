"""`reenrich stats --html`: one self-contained page (inline CSS and script, no network).

The tables are plain HTML (readable without script); the charts are SVG
drawn by the inline script from the JSON embedded in the page. When it has
drawn them, the script sets `data-charts-drawn` on the root element to the
number of charts, so a headless browser can tell a drawn page from a broken
one.
"""

from __future__ import annotations

import html
import json
from typing import Any

from worker.dataset import dedup_stats, review_stats
from worker.dataset.stats import DIMENSION_TITLE, NONE_LABEL


def _label(value: Any) -> str:
    return NONE_LABEL if value is None else str(value)


def charts(stats: dict[str, Any]) -> dict[str, Any]:
    """What the script draws: bar charts, and a heat map of the first two dimensions."""
    bars: list[dict[str, Any]] = []
    for breakdown in stats["breakdowns"]:
        dims = breakdown["dimensions"]
        if len(dims) != 1:
            continue
        name = dims[0]
        bars.append({"title": f"Conversations by {DIMENSION_TITLE[name]}", "bars": [
            {"label": _label(row[name]), "value": row["conversations"],
             "note": f"avg quality {row['avg_quality']}"} for row in breakdown["rows"]]})
    for title, counts in (("Quality tiers", stats["quality_tiers"]),
                          ("Scaffolding of enriched documents", stats["scaffolding"]),
                          ("Enrichment versions", stats["enrichment_versions"])):
        bars.append({"title": title, "bars": [
            {"label": str(k), "value": v, "note": ""} for k, v in counts.items()]})
    heatmap = None
    by = stats["by"]
    if len(by) >= 2:
        first, second = by[0], by[1]
        pair = next(b for b in stats["breakdowns"] if b["dimensions"] == [first, second])
        rows = sorted({_label(r[first]) for r in pair["rows"]})
        cols = sorted({_label(r[second]) for r in pair["rows"]})
        values = {(_label(r[first]), _label(r[second])): r["conversations"]
                  for r in pair["rows"]}
        heatmap = {"title": f"Conversations: {DIMENSION_TITLE[first]} × "
                            f"{DIMENSION_TITLE[second]}",
                   "rows": rows, "cols": cols,
                   "values": [[values.get((r, c), 0) for c in cols] for r in rows]}
    return {"bars": bars, "heatmap": heatmap}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _script_json(value: Any) -> str:
    # Inside <script>, "</" would end the element: escape every "<".
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c")


STYLE = """
:root { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2430; }
body { margin: 2rem auto; max-width: 72rem; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.summary { display: grid; grid-template-columns: repeat(auto-fill, minmax(11rem, 1fr));
           gap: .75rem; }
.summary div { background: #f3f5f8; border-radius: 6px; padding: .6rem .8rem; }
.summary b { display: block; font-size: 1.3rem; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(30rem, 1fr));
          gap: 1.5rem; }
.chart h3 { font-size: .95rem; margin: 0 0 .4rem; }
svg text { font-size: 11px; fill: #1d2430; }
rect.bar { fill: #3b6fb6; } rect.cell { stroke: #fff; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .85rem; }
th, td { border-bottom: 1px solid #dde2e8; padding: .25rem .6rem; text-align: left; }
th { background: #f3f5f8; }
td:nth-child(n+2) { font-variant-numeric: tabular-nums; }
"""

SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById("chart-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  function el(name, attrs, text) {
    var node = document.createElementNS(NS, name);
    for (var key in attrs) { node.setAttribute(key, attrs[key]); }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }
  function box(title) {
    var div = document.createElement("div");
    div.className = "chart";
    var h = document.createElement("h3");
    h.textContent = title;
    div.appendChild(h);
    document.getElementById("charts").appendChild(div);
    return div;
  }
  var drawn = 0;
  data.bars.forEach(function (chart) {
    var row = 22, left = 190, width = 460;
    var max = Math.max.apply(null, chart.bars.map(function (b) { return b.value; }).concat([1]));
    var w0 = left + width + 60, h0 = chart.bars.length * row + 6;
    var svg = el("svg", {viewBox: "0 0 " + w0 + " " + h0, width: "100%",
                         style: "max-width:" + w0 + "px", role: "img",
                         "aria-label": chart.title});
    chart.bars.forEach(function (b, i) {
      var y = i * row + 3, w = Math.max(1, Math.round(width * b.value / max));
      svg.appendChild(el("text", {x: left - 6, y: y + 14, "text-anchor": "end"}, b.label));
      var bar = el("rect", {"class": "bar", x: left, y: y, width: w, height: row - 6});
      var tip = b.label + ": " + b.value + (b.note ? " (" + b.note + ")" : "");
      bar.appendChild(el("title", {}, tip));
      svg.appendChild(bar);
      svg.appendChild(el("text", {x: left + w + 4, y: y + 14}, String(b.value)));
    });
    box(chart.title).appendChild(svg);
    drawn += 1;
  });
  if (data.heatmap) {
    var hm = data.heatmap, size = 26, left = 190;
    var longest = Math.max.apply(null, hm.cols.map(function (c) { return c.length; }).concat([1]));
    var top = 16 + Math.round(longest * 5.4);
    var max = Math.max.apply(null, [].concat.apply([1], hm.values));
    var w1 = left + hm.cols.length * size + Math.round(longest * 3.6) + 10;
    var h1 = top + hm.rows.length * size + 10;
    var svg = el("svg", {viewBox: "0 0 " + w1 + " " + h1, width: "100%",
                         style: "max-width:" + w1 + "px", role: "img", "aria-label": hm.title});
    hm.cols.forEach(function (c, j) {
      var x = left + j * size + size / 2;
      svg.appendChild(el("text", {x: x, y: top - 6,
                                  transform: "rotate(-55 " + x + " " + (top - 6) + ")"}, c));
    });
    hm.rows.forEach(function (r, i) {
      var y = top + i * size;
      svg.appendChild(el("text", {x: left - 6, y: y + size / 2 + 4, "text-anchor": "end"}, r));
      hm.cols.forEach(function (c, j) {
        var v = hm.values[i][j];
        var shade = v === 0 ? "#f6e3e1" : "rgba(59,111,182," + (0.15 + 0.85 * v / max) + ")";
        var cell = el("rect", {"class": "cell", x: left + j * size, y: y, width: size,
                               height: size, fill: shade});
        cell.appendChild(el("title", {}, r + " × " + c + ": " + v));
        svg.appendChild(cell);
        if (v > 0) {
          svg.appendChild(el("text", {x: left + j * size + size / 2, y: y + size / 2 + 4,
                                      "text-anchor": "middle"}, String(v)));
        }
      });
    });
    box(hm.title).appendChild(svg);
    drawn += 1;
  }
  document.documentElement.setAttribute("data-charts-drawn", String(drawn));
})();
"""


def render(stats: dict[str, Any]) -> str:
    summary = [
        ("conversations", stats["conversations"]), ("enriched", stats["enriched"]),
        ("not enriched", stats["not_enriched"]), ("pairs", stats["pairs"]),
        ("assistant pairs", stats["assistant_pairs"]), ("average quality", stats["avg_quality"]),
        ("legacy rows", stats["legacy_rows"]),
        ("rows without scaffolding reference", stats["rows_without_scaffolding_reference"]),
        ("open failures", sum(stats["open_failures"].values())),
    ]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>reenrich: dataset composition</title>",
             f"<style>{STYLE}</style></head><body>",
             "<h1>Dataset composition</h1>", '<section class="summary">']
    parts += [f"<div>{html.escape(name)}<b>{html.escape(str(value))}</b></div>"
              for name, value in summary]
    parts += ["</section>", "<h2>Charts</h2>", '<section class="charts" id="charts"></section>',
              "<noscript><p>The charts need JavaScript; the tables below hold the same numbers."
              "</p></noscript>"]
    for breakdown in stats["breakdowns"]:
        dims = breakdown["dimensions"]
        parts.append(f"<h2>By {html.escape(' × '.join(DIMENSION_TITLE[d] for d in dims))}</h2>")
        parts.append(_table([*dims, "conversations", "pairs", "assistant pairs", "avg quality"],
                            [[*(_label(r[d]) for d in dims), r["conversations"], r["pairs"],
                              r["assistant_pairs"], r["avg_quality"]]
                             for r in breakdown["rows"]]))
    cells = stats["cells"]
    dims = cells["dimensions"]
    parts.append(f"<h2>Cells {html.escape(' × '.join(dims))}</h2>")
    parts.append(f"<p>{cells['cells']} cells, {cells['filled']} filled, "
                 f"{len(cells['empty'])} empty, {len(cells['thin'])} thin (fewer than "
                 f"{cells['thin_below']} conversations).</p>")
    for kind in ("thin", "empty"):
        if cells[kind]:
            parts.append(f"<h3>{kind.capitalize()} cells</h3>")
            parts.append(_table([*dims, "conversations"],
                                [[*(_label(c[d]) for d in dims), c["conversations"]]
                                 for c in cells[kind]]))
    parts.append("<h2>Status</h2>")
    parts.append(_table(["", "count"], [
        *[[f"quality tier {k}", v] for k, v in stats["quality_tiers"].items()],
        *[[f"enrichment version {k}", v] for k, v in stats["enrichment_versions"].items()],
        *[[f"open failure {k}", v] for k, v in stats["open_failures"].items()],
        ["status failed", stats["enrichment_status"]["failed"]],
        ["status pending", stats["enrichment_status"]["pending"]],
    ]))
    parts.append(review_stats.html_section(stats["review_coverage"], _table))
    parts.append(dedup_stats.render_html(stats.get("duplicates"), _table))
    parts.append(f'<script type="application/json" id="chart-data">'
                 f"{_script_json(charts(stats))}</script>")
    parts.append(f"<script>{SCRIPT}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
