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
report: the same export gives the same card.

Anything that comes from the data (persona, arc and topic keys, stratum
labels, filter values, paths) is written through `_code`, so a hostile key
cannot open HTML, a heading or a table row.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from worker.dataset.formats import CONDITION_LINES
from worker.dataset.versions import reenrich_version

if TYPE_CHECKING:
    from worker.dataset.export import ExportOptions

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


def _relative(path: str, card: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), card.resolve().parent)).as_posix()


def check_card_place(options: ExportOptions, card: Path | None) -> None:
    """Refuse a card its data files are not under (its paths would need `../`)."""
    from worker.dataset.export import ExportUsageError

    if card is None:
        return
    if options.hub is not None:
        raise ExportUsageError("--hub DIR writes its card as DIR/README.md: leave out --card")
    for path in (options.output, options.validation_output):
        if path is not None and _relative(str(path), card).startswith("../"):
            raise ExportUsageError(f"--card {card} is not in the folder of {path}: a Hub "
                                   "repository cannot reach ../ paths; put the card in that "
                                   "folder (or one above it), or use --hub DIR")


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


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    # A pipe inside a cell would end it (stratum labels hold pipes): escape it, unless
    # `_text` did already.
    lines += ["| " + " | ".join(_UNESCAPED_PIPE.sub(r"\\|", str(v)) for v in row) + " |"
              for row in rows]
    return lines


def _composition(report: dict[str, Any], key: str, title: str) -> list[str]:
    splits = report["splits"]
    names = sorted({name for split in splits.values() for name in split[key]})
    rows = [[_code(name), *(splits[s][key].get(name, 0) for s in splits)] for name in names]
    return [f"### {title}", "", *_table([title.lower(), *splits], rows), ""]


def _header(report: dict[str, Any], card_path: Path) -> dict[str, Any]:
    splits = report["splits"]
    hub = report.get("hub")
    header: dict[str, Any] = {
        "configs": [{"config_name": "default", "data_files": [
            {"split": name, "path": _relative(split["path"], card_path)}
            for name, split in splits.items()]}],
    }
    if hub is not None:
        from worker.dataset.hub import dataset_info_yaml

        header["dataset_info"] = dataset_info_yaml(hub)
    header.update({
        "license": hub["license"] if hub is not None else "other",
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["conversational", "sft", "lora", "synthetic", "reenrich",
                 f"format-{report['format']}"],
        "size_categories": [size_category(report["rows"])],
        "pretty_name": _title(report),
    })
    return header


def _title(report: dict[str, Any]) -> str:
    version = report.get("dataset_version")
    if version is not None:
        return str(version["name"])
    return Path(report["splits"]["train"]["path"]).stem


def render_card(report: dict[str, Any], card_path: Path) -> str:
    header = _header(report, card_path)
    # safe_dump quotes anything that could end the header or start a YAML construct.
    lines = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---",
             "", f"# {_text(_title(report))}", "",
             f"Format `{report['format']}`: {FORMAT_NOTES[report['format']]}", ""]
    lines += _columns_note(report)
    lines += _composition_section(report)
    lines += _made_section(report)
    lines += _lengths_section(report)
    lines += _version_section(report)
    lines += _training_section(report)
    return "\n".join(lines).rstrip("\n") + "\n"


def _columns_note(report: dict[str, Any]) -> list[str]:
    fmt = report["format"]
    if fmt in ("chat", "prompt-completion"):
        meta = "left out (`--strip-metadata`)" if report["strip_metadata"] else (
            "top-level columns beside the messages: conversation_id, persona_archetype, "
            "emotional_arc_key, training_topic_key, quality_score, quality_tier"
            + (", turn_number" if fmt == "prompt-completion" else ""))
        return [f"Metadata: {meta}.", ""]
    if fmt == "brightrun-v4" and report.get("meta"):
        return ["**The first line is a `_meta` line** (`{\"_meta\": {file_name, total_pairs, "
                "version}}`), not a training pair: a loader that reads every line (such as "
                "`datasets.load_dataset`) makes it an extra row. Skip it "
                "(`dataset.select(range(1, len(dataset)))`) or export without `--meta`.", ""]
    return []


def _composition_section(report: dict[str, Any]) -> list[str]:
    splits = report["splits"]
    lines = ["## Composition", ""]
    lines += _table(["split", "rows", "conversations", "assistant pairs"],
                    [[name, s["rows"], s["conversations"], s["pairs"]]
                     for name, s in splits.items()])
    lines.append("")
    lines += _composition(report, "personas", "Persona")
    lines += _composition(report, "emotional_arcs", "Emotional arc")
    lines += _composition(report, "training_topics", "Training topic")
    if report["sampling"]["stratify_by"]:
        lines += [f"### Strata ({', '.join(report['sampling']['stratify_by'])})", ""]
        lines += _table(["stratum", "available", "picked", "shortfall", "train rows",
                         "validation rows"],
                        [[_code(label), s.get("available", ""), s.get("picked", ""),
                          s.get("shortfall", 0), s.get("train_rows", 0),
                          s.get("validation_rows", 0)]
                         for label, s in report["strata"].items()])
        lines.append("")
    return lines


def _options_line(title: str, values: dict[str, Any] | None) -> str:
    shown = ", ".join(_code(f"{k}={v}") for k, v in (values or {}).items())
    return f"- {title}: {shown or 'none'}."


def _made_section(report: dict[str, Any]) -> list[str]:
    sampling, version = report["sampling"], report.get("dataset_version") or {}
    lines = ["## How it was made", "",
             f"- Source: the stored enriched documents of a reenrich database "
             f"(reenrich {_text(reenrich_version())}), contract version "
             f"{version.get('contract_version', 'unknown')}; enrichment versions: "
             + (", ".join(f"{_text(v)} ({n} conversations)"
                          for v, n in report["enrichment_versions"].items()) or "none") + ".",
             _options_line("Filters", report["filters"]),
             "- Left out: " + (", ".join(f"{_text(k)} {v}" for k, v in report["removed"].items())
                                or "nothing") + f" (of {report['conversations_in_table']} "
             "conversations considered)."
             + (" Quality tier `rejected` is left out unless the export keeps it "
                "(`--include-rejected-tier`)." if "include_rejected_tier"
                not in report["filters"] else ""),
             "- Sampling (by conversation): "
             + (f"stratified by {', '.join(sampling['stratify_by'])}; "
                if sampling["stratify_by"] else "")
             + (f"{sampling['per_stratum']} per stratum; " if sampling["per_stratum"] else "")
             + ("balanced to the smallest stratum; " if sampling["balance"] else "")
             + (f"validation split {sampling['split_validation']} per stratum; "
                if sampling["split_validation"] else "")
             + f"seed {sampling['seed']} (a conversation's pick depends only on the seed "
             "and its id).",
             _options_line("Dedup", report.get("dedup")),
             _options_line("Review filters", report.get("review", {}).get("rules")),
             f"- Conditioning: `{report['condition']}`."]
    if report["condition"] == "system":
        template = "\n".join(f"{label}: <{key}>" for label, key in CONDITION_LINES)
        lines += ["", "The system message ends with the conversation's scaffolding; prompt "
                  "the trained model the same way at inference (leave out a line whose value "
                  "is unknown):", "", "```", "<system prompt>", "", template, "```", "",
                  "where `persona_archetype` is the persona key (e.g. `pragmatic_optimist`), "
                  "`emotional_arc` the arc's name (e.g. `Fear → Confidence`) and "
                  "`training_topic` the topic's name (e.g. `Roth Conversion Ladder`), as the "
                  "pairs' conversation_metadata holds them."]
    return [*lines, ""]


def _lengths_section(report: dict[str, Any]) -> list[str]:
    chars = report["lengths"]["chars"]
    if not chars["total"]:
        return []
    lines = ["## Lengths", ""]
    rows = [[f"characters, {part}", *(chars[part][k] for k in ("min", "median", "p95", "max"))]
            for part in ("prompt", "completion", "total") if chars[part]]
    tokens = report["lengths"]["tokens"]
    if tokens and tokens["total"]:
        rows += [[f"tokens, {part}", *(tokens[part][k] for k in ("min", "median", "p95", "max"))]
                 for part in ("prompt", "completion", "total") if tokens[part]]
    lines += _table(["", "min", "median", "p95", "max"], rows)
    lines.append("")
    if report.get("tokenizer"):
        line = (f"Tokens counted with the tokenizer {_code(Path(report['tokenizer']).name)} "
                "(message contents only, without a chat template's special tokens).")
        if report.get("max_tokens"):
            line += (f" Limit {report['max_tokens']} tokens: {report['rows_over_max_tokens']} "
                     "rows over it, ")
            line += (f"{report['rows_dropped_over_max_tokens']} of them dropped from the files "
                     "(the lengths above are those of the rows kept)."
                     if report["rows_dropped_over_max_tokens"] else "none dropped.")
        lines += [line, ""]
    return lines


def _version_section(report: dict[str, Any]) -> list[str]:
    version = report.get("dataset_version")
    if version is None:
        return []
    lines = ["## Dataset version", "",
             f"Dataset version {_code(version['name'])}: {version['members']} conversations, "
             "recorded in the reenrich database with each file's SHA-256 and each "
             "conversation's split and document hash. `reenrich datasets show "
             f"{version['name']}` lists them, `reenrich datasets verify {version['name']} "
             "DIR` checks these files against it, and `reenrich export --from-version "
             f"{version['name']}` rebuilds the same members from the current documents."]
    source = report.get("from_version")
    if source:
        lines += ["", f"Rebuilt from dataset version {_code(source['name'])} "
                      f"({source['members']} members): {len(source['changed'])} documents "
                      f"changed since, {len(source['missing'])} conversations no longer exist, "
                      f"{len(source['not_enriched'])} not enriched now."]
    return [*lines, ""]


def _sequence_advice(report: dict[str, Any]) -> str:
    sequence = report.get("sequence_length")
    if not sequence:
        chars = report["lengths"]["chars"]["total"]
        longest = f" (rows run up to {chars['max']} characters)" if chars else ""
        return ("- Sequence length: no tokenizer was given to the export" + longest + "; "
                "export with `--tokenizer PATH` (the base model's tokenizer.json) to get "
                "token lengths and a recommendation. TRL's default `max_length=1024` and "
                "Axolotl's default `sequence_len: 512` are likely too short for these rows.")
    return (f"- Sequence length: rows run to {sequence['max_tokens']} tokens, p95 "
            f"{sequence['p95_tokens']}. Use `max_length={sequence['recommended']}` (TRL) / "
            f"`sequence_len: {sequence['recommended']}` (Axolotl), which covers the p95 row "
            f"with room for the chat template ({sequence['rows_longer']} rows longer), or "
            f"{sequence['covers_every_row']} to cover every row. TRL's default "
            "`max_length=1024` truncates longer rows (and drops prompt-completion rows whose "
            "prompt fills it); Axolotl's default `sequence_len: 512` drops longer rows.")


def _training_section(report: dict[str, Any]) -> list[str]:
    fmt = report["format"]
    if fmt not in ("chat", "prompt-completion"):
        return []
    loss = ("- Loss on assistant turns only: `assistant_only_loss=True` in TRL's `SFTConfig` "
            "(it needs a chat template with `{% generation %}` markers; without them use the "
            "prompt-completion export), `roles_to_train: [\"assistant\"]` in Axolotl. With "
            "TRL's defaults a chat row also trains on the system and user tokens."
            if fmt == "chat" else
            "- Loss on the completion only: TRL's default for prompt-completion rows "
            "(`completion_only_loss`); keep it on.")
    lines = ["## Recommended trainer settings", "", loss, _sequence_advice(report)]
    if "validation" in report["splits"]:
        lines.append("- Evaluation split: `validation` (`trl sft --dataset_test_split "
                     "validation`, or `eval_dataset=dataset[\"validation\"]`).")
    return [*lines, ""]
