"""`reenrich stats`: composition numbers against the data, and the HTML page in Chromium."""

from __future__ import annotations

import html
import itertools
import json
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.conftest import run_cli
from tests.dataset_helpers import enriched, params_key, stored
from tests.helpers import import_records
from worker import synthetic
from worker.config import EnrichmentConfig
from worker.dataset.stats import collect
from worker.dataset.stats_html import Bar, BarChart, Heatmap, bar_svg, charts, heatmap_svg, render
from worker.enrichment.enrich import ENRICHMENT_VERSION

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def test_composition_matches_the_documents(engine: Engine, tmp_path: Path,
                                           config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=30)
    # Two more rows, never enriched: one a legacy row (no input_parameters).
    extra = list(synthetic.conversation_records(40, seed=5))[-2:]
    import_records(engine, tmp_path, extra, name="extra.jsonl")
    documents = dict(stored(engine))
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT conversation_id, coalesce(quality_score, 3.0) AS q, "
            "parsed_json ? 'input_parameters' AS has_params, persona_id IS NULL "
            "AND emotional_arc_id IS NULL AND training_topic_id IS NULL AS bare "
            "FROM conversations")).all()
    stats = collect(engine, thin=2)

    assert stats["conversations"] == 32 and stats["enriched"] == 30
    assert stats["not_enriched"] == 2
    assert stats["legacy_rows"] == sum(1 for r in rows if not r.has_params)
    assert stats["rows_without_scaffolding_reference"] == sum(1 for r in rows if r.bare)
    assert stats["pairs"] == sum(len(d["training_pairs"]) for d in documents.values())
    assert stats["assistant_pairs"] == sum(
        1 for d in documents.values() for p in d["training_pairs"]
        if p["target_response"] is not None)
    tiers = Counter(d["dataset_metadata"]["quality_tier"] for d in documents.values())
    assert stats["quality_tiers"] == dict(tiers)
    assert list(stats["quality_tiers"]) == [t for t in ("seed_dataset", "production",
                                                        "experimental", "rejected") if t in tiers]
    assert stats["enrichment_versions"] == {str(ENRICHMENT_VERSION): 30}

    keys = {cid: (params_key(d, "persona_key"), params_key(d, "emotional_arc_key"),
                  params_key(d, "training_topic_key")) for cid, d in documents.items()}
    assert stats["scaffolding"]["none"] == sum(1 for k in keys.values() if k == (None,) * 3)
    assert stats["scaffolding"]["complete"] == sum(1 for k in keys.values() if None not in k)
    quality = {r.conversation_id: r.q for r in rows}
    by_persona = next(b for b in stats["breakdowns"] if b["dimensions"] == ["persona"])
    expected: dict[str | None, list[float]] = defaultdict(list)
    for cid, k in keys.items():
        expected[k[0]].append(quality[cid])
    assert {r["persona"]: (r["conversations"], r["avg_quality"]) for r in by_persona["rows"]} \
        == {p: (len(v), round(sum(v) / len(v), 2)) for p, v in expected.items()}
    assert [b["dimensions"] for b in stats["breakdowns"]] == [
        ["persona"], ["arc"], ["topic"], ["persona", "arc"], ["persona", "topic"],
        ["arc", "topic"], ["persona", "arc", "topic"]]

    cells = stats["cells"]
    filled = Counter(k for k in keys.values() if None not in k)
    axes = [sorted(row[0] for row in table)
            for table in (synthetic.PERSONAS, synthetic.ARCS, synthetic.TOPICS)]
    assert cells["cells"] == len(synthetic.PERSONAS) * len(synthetic.ARCS) * len(synthetic.TOPICS)
    assert cells["filled"] == len(filled)
    assert {(c["persona"], c["arc"], c["topic"]) for c in cells["thin"]} == \
        {k for k, n in filled.items() if n < 2}
    empty = {(c["persona"], c["arc"], c["topic"]) for c in cells["empty"]}
    assert empty == set(itertools.product(*axes)) - set(filled)

    narrow = collect(engine, by=("arc",))
    assert [b["dimensions"] for b in narrow["breakdowns"]] == [["arc"]]
    assert narrow["cells"]["cells"] == len(synthetic.ARCS)


def test_cli_stats_json_and_text(engine: Engine, db_url: str, tmp_path: Path,
                                 config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=12)
    html_path = tmp_path / "stats.html"
    result = run_cli(db_url, "stats", "--by", "persona,topic", "--json", "--html",
                     str(html_path))
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["by"] == ["persona", "topic"] and stats["enriched"] == 12
    assert html_path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    result = run_cli(db_url, "stats")
    assert result.returncode == 0
    assert result.stdout.startswith("conversations: 12 (12 enriched, 0 not enriched)")
    assert "\nby persona × emotional arc × training topic\n" in result.stdout


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


# Appended to a copy of the page only (the page has no script): Chromium lays the page out,
# then this writes what it drew into the DOM that --dump-dom prints.
MEASURE = """<script>
var drawn = Array.prototype.map.call(document.querySelectorAll("figure.chart svg"),
  function (svg) {
    var box = svg.getBoundingClientRect();
    var bars = Array.prototype.map.call(svg.querySelectorAll("rect"), function (rect) {
      return Math.round(rect.getBoundingClientRect().width * 100) / 100;
    });
    return {width: box.width, height: box.height, rects: bars,
            texts: svg.querySelectorAll("text").length};
  });
document.body.setAttribute("data-measured", JSON.stringify(drawn));
</script>"""


def _chromium(browser: str, page: Path, profile: Path) -> str:
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_html_page_is_self_contained_and_draws_its_charts_in_chromium(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium) to render the page")
    enriched(engine, tmp_path, config, count=20)
    stats = collect(engine)
    page = render(stats)
    assert "<script" not in page.lower()  # the charts are SVG in the page: no script at all
    assert "<link" not in page and "@import" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", page)
    path = tmp_path / "stats.html"
    path.write_text(page, encoding="utf-8")

    dom = _chromium(browser, path, tmp_path / "profile")
    drawn = charts(stats)
    assert drawn.count() == len(drawn.bars) + 1
    assert f'data-charts="{drawn.count()}"' in dom
    assert dom.count('<rect class="bar"') == sum(len(c.bars) for c in drawn.bars)
    heatmap = drawn.heatmap
    assert heatmap is not None
    assert dom.count('<rect class="cell"') == len(heatmap.rows) * len(heatmap.cols)
    assert dom.count("<svg") == drawn.count()
    assert dom.count("<title id=") == drawn.count()  # every chart has its accessible name
    # The page drew the stored numbers: the persona chart has a bar per persona key.
    personas = {params_key(d, "persona_key") or "(none)" for _, d in stored(engine)}
    for persona in personas:
        assert f">{persona}</text>" in dom

    # Laid out by Chromium: every chart has a size, every bar and cell a non-zero width,
    # the longest bar of a chart is the widest.
    measured_page = tmp_path / "measured.html"
    measured_page.write_text(page.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    found = re.search(r'data-measured="([^"]*)"', _chromium(browser, measured_page,
                                                             tmp_path / "profile2"))
    assert found is not None
    measured = json.loads(html.unescape(found.group(1)))
    assert len(measured) == drawn.count()
    for chart, box in zip(drawn.bars, measured, strict=False):
        assert box["width"] > 0 and box["height"] > 0
        assert len(box["rects"]) == len(chart.bars) and all(w > 0 for w in box["rects"])
        values = [b.value for b in chart.bars]
        if values and max(values) > 0:
            assert box["rects"][values.index(max(values))] == max(box["rects"])
        assert box["texts"] == 2 * len(chart.bars)
    cells = measured[-1]["rects"]
    assert len(cells) == len(heatmap.rows) * len(heatmap.cols) and all(w > 0 for w in cells)


def test_html_page_escapes_keys_in_its_charts() -> None:
    hostile = '<img src=x onerror="alert(1)">'
    chart = BarChart("Conversations by persona", (Bar(hostile, 3, "avg quality 4.0"),))
    svg = str(bar_svg(chart, "c"))
    assert "<img" not in svg and svg.count("&lt;img src=x") == 3  # label, tooltip, desc
    heat = Heatmap("t <b>", (hostile,), ('</svg>"', "x"), ((2, 0),))
    svg = str(heatmap_svg(heat, "h"))
    assert "<img" not in svg and "<b>" not in svg
    assert svg.count("</svg>") == 1 and svg.endswith("</svg>")
    assert not re.search(r'="[^"]*</svg', svg)  # nor in an attribute
