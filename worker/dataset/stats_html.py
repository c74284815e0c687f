"""`reenrich stats --html`: one self-contained page, without script or network.

The charts are inline SVG drawn here, in Python: bars and a heat map with
their labels and values as SVG text, presentation attributes instead of CSS
(mail clients and repository previews drop style sheets), a <title> and
<desc> per chart and a <title> per bar or cell for assistive technology. The
page reads the same in a browser, a mail client, a repository preview or a
PDF. The tables below the charts hold the same numbers.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from markupsafe import Markup

from worker.dataset import dedup_stats, review_stats
from worker.dataset.stats import DIMENSION_TITLE, Stats, StatsJson
from worker.dataset.text import label

BAR_COLOUR, EMPTY_CELL = "#3b6fb6", "#f6e3e1"
TEXT_COLOUR, FONT_SIZE = "#1d2430", 11
ROW, LABELS, BAR_SPACE = 22, 190, 460  # bar charts: row height, label column, longest bar
CELL = 26  # heat map: cell size


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    note: str  # shown in the bar's tooltip


@dataclass(frozen=True)
class BarChart:
    title: str
    bars: tuple[Bar, ...]


@dataclass(frozen=True)
class Heatmap:
    title: str
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    values: tuple[tuple[int, ...], ...]  # values[row][col]


@dataclass(frozen=True)
class Charts:
    bars: tuple[BarChart, ...]
    heatmap: Heatmap | None

    def count(self) -> int:
        return len(self.bars) + (1 if self.heatmap is not None else 0)


def charts(stats: Stats | StatsJson) -> Charts:
    """What the page draws: bar charts, and a heat map of the first two dimensions."""
    stats = stats.stats if isinstance(stats, StatsJson) else stats
    bars = [BarChart(f"Conversations by {DIMENSION_TITLE[b.dimensions[0]]}", tuple(
        Bar(label(row.keys[b.dimensions[0]]), row.conversations,
            f"avg quality {row.avg_quality}") for row in b.rows))
        for b in stats.breakdowns if len(b.dimensions) == 1]
    for title, counts in (("Quality tiers", stats.quality_tiers),
                          ("Scaffolding of enriched documents", stats.scaffolding.as_dict()),
                          ("Enrichment versions", stats.enrichment_versions)):
        bars.append(BarChart(title, tuple(Bar(k, v, "") for k, v in counts.items())))
    heatmap = None
    if len(stats.by) >= 2:
        first, second = stats.by[0], stats.by[1]
        pair = stats.breakdown((first, second)).rows
        rows = sorted({label(r.keys[first]) for r in pair})
        cols = sorted({label(r.keys[second]) for r in pair})
        values = {(label(r.keys[first]), label(r.keys[second])): r.conversations
                  for r in pair}
        heatmap = Heatmap(f"Conversations: {DIMENSION_TITLE[first]} × "
                          f"{DIMENSION_TITLE[second]}", tuple(rows), tuple(cols),
                          tuple(tuple(values.get((r, c), 0) for c in cols) for r in rows))
    return Charts(tuple(bars), heatmap)


# ------------------------------------------------------------ SVG


def _round(value: float) -> int:
    """Half up, as a browser's Math.round (Python's round() goes to even)."""
    return math.floor(value + 0.5)


def _el(name: str, attrs: dict[str, Any], *children: str, text: str | None = None) -> str:
    """One element, its attribute values and text escaped; `children` are markup."""
    shown = "".join(f' {key}="{html.escape(str(value), quote=True)}"'
                    for key, value in attrs.items())
    body = (html.escape(text, quote=False) if text is not None else "") + "".join(children)
    return f"<{name}{shown}>{body}</{name}>"


def _svg(width: int, height: int, title: str, desc: str, parts: Sequence[str], ident: str,
         ) -> Markup:
    # The title names the chart and the desc lists its numbers for a screen reader.
    svg = _el("svg", {"xmlns": "http://www.w3.org/2000/svg",
                      "viewBox": f"0 0 {width} {height}", "width": "100%",
                      "style": f"max-width:{width}px", "role": "img",
                      "aria-labelledby": f"{ident}-title {ident}-desc",
                      "font-family": "sans-serif", "font-size": FONT_SIZE,
                      "fill": TEXT_COLOUR},
              _el("title", {"id": f"{ident}-title"}, text=title),
              _el("desc", {"id": f"{ident}-desc"}, text=desc), *parts)
    return Markup(svg)  # built by _el: every value escaped


def bar_svg(chart: BarChart, ident: str) -> Markup:
    """Bars from a common left edge, the label before each and the value after it."""
    top = max([b.value for b in chart.bars] + [1])
    width, height = LABELS + BAR_SPACE + 60, len(chart.bars) * ROW + 6
    parts: list[str] = []
    for i, bar in enumerate(chart.bars):
        y, length = i * ROW + 3, max(1, _round(BAR_SPACE * bar.value / top))
        tip = f"{bar.label}: {bar.value}" + (f" ({bar.note})" if bar.note else "")
        parts += [_el("text", {"x": LABELS - 6, "y": y + 14, "text-anchor": "end"},
                      text=bar.label),
                  _el("rect", {"class": "bar", "x": LABELS, "y": y, "width": length,
                               "height": ROW - 6, "fill": BAR_COLOUR},
                      _el("title", {}, text=tip)),
                  _el("text", {"x": LABELS + length + 4, "y": y + 14}, text=str(bar.value))]
    desc = "; ".join(f"{b.label}: {b.value}" for b in chart.bars) or "no data"
    return _svg(width, height, chart.title, desc, parts, ident)


def heatmap_svg(heatmap: Heatmap, ident: str) -> Markup:
    """A cell per row × column key, shaded by its count; the columns' labels slanted."""
    longest = max([len(c) for c in heatmap.cols] + [1])
    top = 16 + _round(longest * 5.4)
    most = max([1, *(v for row in heatmap.values for v in row)])
    width = LABELS + len(heatmap.cols) * CELL + _round(longest * 3.6) + 10
    height = top + len(heatmap.rows) * CELL + 10
    parts = [_el("text", {"x": x, "y": top - 6, "transform": f"rotate(-55 {x} {top - 6})"},
                 text=col)
             for j, col in enumerate(heatmap.cols) for x in [LABELS + j * CELL + CELL // 2]]
    for i, row in enumerate(heatmap.rows):
        y = top + i * CELL
        parts.append(_el("text", {"x": LABELS - 6, "y": y + CELL // 2 + 4,
                                  "text-anchor": "end"}, text=row))
        for j, col in enumerate(heatmap.cols):
            value, x = heatmap.values[i][j], LABELS + j * CELL
            shade = ({"fill": EMPTY_CELL} if value == 0 else
                     {"fill": BAR_COLOUR, "fill-opacity": f"{0.15 + 0.85 * value / most:.3f}"})
            parts.append(_el("rect", {"class": "cell", "x": x, "y": y, "width": CELL,
                                      "height": CELL, **shade, "stroke": "#fff"},
                             _el("title", {}, text=f"{row} × {col}: {value}")))
            if value > 0:
                parts.append(_el("text", {"x": x + CELL // 2, "y": y + CELL // 2 + 4,
                                          "text-anchor": "middle"}, text=str(value)))
    desc = "; ".join(f"{row} × {col}: {v}" for row, values in zip(
        heatmap.rows, heatmap.values, strict=True) for col, v in zip(
        heatmap.cols, values, strict=True) if v) or "no data"
    return _svg(width, height, heatmap.title, desc, parts, ident)


def svg_charts(drawn: Charts) -> list[tuple[str, Markup]]:
    """(title, SVG) of every chart, in page order."""
    out = [(chart.title, bar_svg(chart, f"chart-{i}")) for i, chart in enumerate(drawn.bars)]
    if drawn.heatmap is not None:
        out.append((drawn.heatmap.title, heatmap_svg(drawn.heatmap, "chart-heatmap")))
    return out


# ------------------------------------------------------------ the page


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _markup_table(header: list[str], rows: list[list[Any]]) -> Markup:
    return Markup(_table(header, rows))  # _table escapes every cell


_PAGES = jinja2.Environment(loader=jinja2.PackageLoader("worker.dataset", "templates"),
                            autoescape=True, undefined=jinja2.StrictUndefined,
                            trim_blocks=True, lstrip_blocks=True)


def _tables(stats: Stats) -> dict[str, Any]:
    cells = stats.cells
    return {
        "breakdowns": [(" × ".join(DIMENSION_TITLE[d] for d in b.dimensions), _markup_table(
            [*b.dimensions, "conversations", "pairs", "assistant pairs", "avg quality"],
            [[*(label(v) for v in r.keys.values()), r.conversations, r.pairs,
              r.assistant_pairs, r.avg_quality] for r in b.rows])) for b in stats.breakdowns],
        "cell_tables": [(kind, _markup_table([*cells.dimensions, "conversations"], [
            [*(label(v) for v in c.keys.values()), c.conversations] for c in listed]))
            for kind, listed in (("Thin", cells.thin), ("Empty", cells.empty)) if listed],
        "status": _markup_table(["", "count"], [
            *[[f"quality tier {k}", v] for k, v in stats.quality_tiers.items()],
            *[[f"enrichment version {k}", v] for k, v in stats.enrichment_versions.items()],
            *[[f"open failure {k}", v] for k, v in stats.open_failures.items()],
            ["status failed", stats.status_failed], ["status pending", stats.status_pending]]),
        # Both sections escape what they show (with _table, and html.escape).
        "reviews": Markup(review_stats.html_section(stats.review_coverage, _table)),
        "duplicates": Markup(dedup_stats.render_html(stats.duplicates, _table)),
    }


def render(stats: Stats | StatsJson) -> str:
    stats = stats.stats if isinstance(stats, StatsJson) else stats
    summary = [
        ("conversations", stats.conversations), ("enriched", stats.enriched),
        ("not enriched", stats.not_enriched), ("pairs", stats.pairs),
        ("assistant pairs", stats.assistant_pairs), ("average quality", stats.avg_quality),
        ("legacy rows", stats.legacy_rows),
        ("rows without scaffolding reference", stats.rows_without_scaffolding_reference),
        ("open failures", sum(stats.open_failures.values())),
    ]
    return _PAGES.get_template("stats.html.j2").render(
        summary=summary, charts=svg_charts(charts(stats)), cells=stats.cells,
        **_tables(stats))
