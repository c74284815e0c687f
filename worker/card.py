"""`reenrich export --card PATH`: a dataset card for the exported files.

Markdown with the YAML header the Hugging Face Hub reads (`configs` with
`data_files` per split, language, task, size), then the composition tables
and how the files were made: format, filters, sampling and seed,
conditioning (with the inference prompt it implies), enrichment versions.
Data file paths are written relative to the card, so put the card beside the
files (as README.md) when uploading. Everything comes from the export
report: the same export gives the same card.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from worker.formats import CONDITION_LINES

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


def _version() -> str:
    try:
        return metadata.version("reenrich")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    # A pipe inside a cell would end it (stratum labels hold pipes): escape it.
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
              for row in rows]
    return lines


def _composition(report: dict[str, Any], key: str, title: str) -> list[str]:
    splits = report["splits"]
    names = sorted({name for split in splits.values() for name in split[key]})
    rows = [[f"`{name}`", *(splits[s][key].get(name, 0) for s in splits)] for name in names]
    return [f"### {title}", "", *_table([title.lower(), *splits], rows), ""]


def render_card(report: dict[str, Any], card_path: Path) -> str:
    splits = report["splits"]
    header = {
        "configs": [{"config_name": "default", "data_files": [
            {"split": name, "path": _relative(split["path"], card_path)}
            for name, split in splits.items()]}],
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["conversational", "sft", "lora", "synthetic", "reenrich",
                 f"format-{report['format']}"],
        "size_categories": [size_category(report["rows"])],
    }
    title = Path(splits["train"]["path"]).stem
    lines = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---",
             "", f"# {title}", "",
             f"Format `{report['format']}`: {FORMAT_NOTES[report['format']]}", ""]
    if report["format"] in ("chat", "prompt-completion"):
        meta = "left out (`--strip-metadata`)" if report["strip_metadata"] else (
            "top-level columns beside the messages: conversation_id, persona_archetype, "
            "emotional_arc_key, training_topic_key, quality_score, quality_tier"
            + (", turn_number" if report["format"] == "prompt-completion" else ""))
        lines += [f"Metadata: {meta}.", ""]

    lines += ["## Composition", ""]
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
                        [[f"`{label}`", s.get("available", ""), s.get("picked", ""),
                          s.get("shortfall", 0), s.get("train_rows", 0),
                          s.get("validation_rows", 0)]
                         for label, s in report["strata"].items()])
        lines.append("")

    sampling = report["sampling"]
    filters = report["filters"]
    lines += ["## How it was made", "",
              f"- Source: the stored enriched documents of a reenrich database "
              f"(reenrich {_version()}); enrichment versions: "
              + (", ".join(f"{v} ({n} conversations)"
                           for v, n in report["enrichment_versions"].items()) or "none") + ".",
              "- Filters: " + (", ".join(f"{k}={v}" for k, v in filters.items()) or "none")
              + ".",
              "- Left out: " + (", ".join(f"{k} {v}" for k, v in report["removed"].items())
                                 or "nothing") + f" (of {report['conversations_in_table']} "
              "conversations in the table).",
              "- Sampling (by conversation): "
              + (f"stratified by {', '.join(sampling['stratify_by'])}; "
                 if sampling["stratify_by"] else "")
              + (f"{sampling['per_stratum']} per stratum; " if sampling["per_stratum"] else "")
              + ("balanced to the smallest stratum; " if sampling["balance"] else "")
              + (f"validation split {sampling['split_validation']} per stratum; "
                 if sampling["split_validation"] else "")
              + f"seed {sampling['seed']} (a conversation's pick depends only on the seed "
              "and its id).",
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
    chars = report["lengths"]["chars"]
    if chars["total"]:
        lines += ["", "## Lengths", ""]
        rows = [[f"characters, {part}", *(chars[part][k] for k in ("min", "median", "p95", "max"))]
                for part in ("prompt", "completion", "total") if chars[part]]
        tokens = report["lengths"]["tokens"]
        if tokens and tokens["total"]:
            rows += [[f"tokens, {part}", *(tokens[part][k]
                                          for k in ("min", "median", "p95", "max"))]
                     for part in ("prompt", "completion", "total") if tokens[part]]
        lines += _table(["", "min", "median", "p95", "max"], rows)
    return "\n".join(lines) + "\n"
