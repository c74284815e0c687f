"""The dataset card: `--card PATH`, and DIR/README.md of `--hub DIR`.

Markdown with the YAML header the Hugging Face Hub reads (`configs` with
`data_files` per split, license, language, task, size, pretty name, and for
`--hub` the `dataset_info` of the Parquet files), then the composition
tables, how the files were made (format, contract version, filters,
sampling and seed, dedup, review filters, conditioning with the inference
prompt it implies, enrichment versions), the dataset version, and
recommended trainer settings. Data file paths are relative to the card, and
a card that is not in (or above) its data files' folder is refused: a Hub
repository cannot reach `../` paths. Everything comes from the export
report: the same export gives the same card. The prose is the template
templates/card.md.j2; this module computes the escaped values and tables.

Anything that comes from the data (persona, arc and topic keys, stratum
labels, filter values, paths) is written through `_code`, so a hostile key
cannot open HTML, a heading or a table row.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import yaml

from worker.dataset.formats import CONDITION_LINES
from worker.dataset.versions import reenrich_version
from worker.enrichment.models import QualityTier

if TYPE_CHECKING:
    from worker.dataset.export_report import ExportSummary, SamplingSummary, SplitSummary

FORMAT_NOTES = {
    "chat": "one row per conversation: `messages` (system, then alternating user and "
            "assistant turns up to the last assistant turn); each assistant turn is trained "
            "once. Read by TRL's SFTTrainer, Axolotl's chat_template datasets and OpenAI chat "
            "fine-tuning.",
    "prompt-completion": "one row per assistant turn: `prompt` (system and the conversation "
                         "so far, ending on the user turn) and `completion` (the assistant "
                         "turn): TRL's conversational prompt-completion format, loss on the "
                         "completion only.",
    "brightrun-v4": "one line per assistant training pair, as stored by reenrich "
                    "(brightrun-lora-v4 pairs).",
    "full-json": "one JSON document: training_file_metadata, consultant_profile, conversations "
                 "(brightrun-lora-v4 full training file).",
}


def size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if rows < limit:
            return name
    return "10M<n<100M"


def relative_path(path: str, card: Path) -> str:
    """`path` as the card at `card` names it (a Hub repository reads posix paths)."""
    return Path(os.path.relpath(Path(path).resolve(), card.resolve().parent)).as_posix()


_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
_SAFE_CODE = re.compile(r"^[\w .:/@+=,'()\[\]-]+$")
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def _text(value: Any) -> str:
    """Plain text from the data, every Markdown and HTML character escaped, on one line."""
    return _PUNCTUATION.sub(r"\\\1", " ".join(str(value).split()))


def _code(value: Any) -> str:
    """A value from the data as inline code when it is plainly safe (keys, paths, filter
    lists), else as escaped text: nothing from the data can end the code span or a table
    cell, or reach a renderer as HTML."""
    flat = " ".join(str(value).split())
    if not _SAFE_CODE.match(flat):
        return _text(flat)
    return f"`{flat}`"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    # A pipe inside a cell would end it (stratum labels hold pipes): escape it, unless
    # `_text` did already.
    lines += ["| " + " | ".join(_UNESCAPED_PIPE.sub(r"\\|", str(v)) for v in row) + " |"
              for row in rows]
    return "\n".join(lines)


def _composition(report: ExportSummary, counts: Callable[[SplitSummary], dict[str, int]],
                 title: str) -> tuple[str, str]:
    splits = report.splits
    names = sorted({name for split in splits.values() for name in counts(split)})
    rows = [[_code(name), *(counts(split).get(name, 0) for split in splits.values())]
            for name in names]
    return title, _table([title.lower(), *splits], rows)


def _header(report: ExportSummary, card_path: Path) -> dict[str, Any]:
    hub = report.hub
    header: dict[str, Any] = {
        "configs": [{"config_name": "default", "data_files": [
            {"split": name, "path": relative_path(split.path, card_path)}
            for name, split in report.splits.items()]}],
    }
    if hub is not None:
        from worker.dataset.hub import dataset_info_yaml

        header["dataset_info"] = dataset_info_yaml(hub)
    header.update({
        "license": hub.license if hub is not None else "other",
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["conversational", "sft", "lora", "synthetic", "reenrich",
                 f"format-{report.format}"],
        "size_categories": [size_category(report.rows)],
        "pretty_name": _title(report),
    })
    return header


def _title(report: ExportSummary) -> str:
    if report.dataset_version is not None:
        return report.dataset_version.name
    return Path(report.splits["train"].path).stem


def _columns_note(report: ExportSummary) -> str:
    fmt = report.format
    if fmt in ("chat", "prompt-completion"):
        meta = "left out (`--strip-metadata`)" if report.strip_metadata else (
            "top-level columns beside the messages: conversation_id, persona_archetype, "
            "emotional_arc_key, training_topic_key, quality_score, quality_tier"
            + (", turn_number" if fmt == "prompt-completion" else ""))
        return f"Metadata: {meta}."
    if fmt == "brightrun-v4" and report.meta:
        return ("**The first line is a `_meta` line** (`{\"_meta\": {file_name, total_pairs, "
                "version}}`), not a training pair: a loader that reads every line (such as "
                "`datasets.load_dataset`) makes it an extra row. Skip it "
                "(`dataset.select(range(1, len(dataset)))`) or export without `--meta`.")
    return ""


def _strata_table(report: ExportSummary) -> str:
    if not report.sampling.stratify_by:
        return ""

    def known(value: int | None) -> int | str:
        return "" if value is None else value

    return _table(["stratum", "available", "picked", "shortfall", "train rows",
                   "validation rows"],
                  [[_code(label), known(s.available), known(s.picked), s.shortfall or 0,
                    s.train_rows or 0, s.validation_rows or 0]
                   for label, s in report.strata.items()])


def _options_line(title: str, values: Mapping[str, Any] | None) -> str:
    shown = ", ".join(_code(f"{k}={v}") for k, v in (values or {}).items())
    return f"- {title}: {shown or 'none'}."


def _sampling(sampling: SamplingSummary) -> str:
    """The sampling line's options before its seed, each ending in "; "."""
    return ((f"stratified by {', '.join(sampling.stratify_by)}; "
             if sampling.stratify_by else "")
            + (f"{sampling.per_stratum} per stratum; " if sampling.per_stratum else "")
            + ("balanced to the smallest stratum; " if sampling.balance else "")
            + (f"validation split {sampling.split_validation} per stratum; "
               if sampling.split_validation else ""))


def _lengths_table(report: ExportSummary) -> str:
    if report.chars.total is None:
        return ""
    rows = [[f"characters, {part}", v.min, v.median, v.p95, v.max]
            for part, v in report.chars.parts()]
    tokens = report.tokens
    if tokens is not None and tokens.total is not None:
        rows += [[f"tokens, {part}", v.min, v.median, v.p95, v.max]
                 for part, v in tokens.parts()]
    return _table(["", "min", "median", "p95", "max"], rows)


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("worker.dataset", "templates"),
    autoescape=False,  # Markdown: values are escaped by the `code` and `text` filters
    undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    keep_trailing_newline=True)
_TEMPLATES.filters.update(code=_code, text=_text)


def render_card(report: ExportSummary, card_path: Path) -> str:
    # safe_dump quotes anything that could end the header or start a YAML construct.
    header = yaml.safe_dump(_header(report, card_path), sort_keys=False, allow_unicode=True)
    compositions = [_composition(report, lambda s: s.personas, "Persona"),
                    _composition(report, lambda s: s.emotional_arcs, "Emotional arc"),
                    _composition(report, lambda s: s.training_topics, "Training topic")]
    text = _TEMPLATES.get_template("card.md.j2").render(
        r=report, yaml_header=header.rstrip(), title=_title(report),
        format_note=FORMAT_NOTES[report.format], columns_note=_columns_note(report),
        split_table=_table(["split", "rows", "conversations", "assistant pairs"],
                           [[name, s.rows, s.conversations, s.pairs]
                            for name, s in report.splits.items()]),
        compositions=compositions, strata_table=_strata_table(report),
        reenrich_version=reenrich_version(),
        enrichment_versions=", ".join(f"{_text(v)} ({n} conversations)"
                                      for v, n in report.enrichment_versions.items()),
        removed=", ".join(f"{_text(k)} {v}" for k, v in report.removed.items()),
        rejected_tier=QualityTier.REJECTED.value, sampling=_sampling(report.sampling),
        options_line=_options_line, condition_lines=CONDITION_LINES,
        lengths_table=_lengths_table(report),
        tokenizer_name=Path(report.tokenizer).name if report.tokenizer else "")
    return text.rstrip("\n") + "\n"
