"""The command line as users meet it: compose file, README quick start, demo, module entry."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from worker.cli.app import build_parser


def _subcommands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:  # argparse keeps subparsers here
        if action.dest == "command":
            return set(action.choices)  # type: ignore[arg-type]
    raise AssertionError("no subcommands")


def _compose_commands() -> list[list[str]]:
    text = (ROOT / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    commands = [service["command"] for service in compose["services"].values()
                if "command" in service and service.get("build")]
    # The usage lines at the top: `docker compose run --rm worker reenrich ...`
    for line in text.splitlines():
        match = re.search(r"docker compose run (?:--rm )?worker (reenrich .*?)(?:\s+#.*)?$", line)
        if match:
            commands.append(shlex.split(match.group(1)))
    return commands


def test_every_compose_command_exists_in_the_cli() -> None:
    commands = _compose_commands()
    assert any(c[:2] == ["reenrich", "backfill"] for c in commands)
    assert any(c[:2] == ["reenrich", "migrate"] for c in commands)
    assert any(c[:2] == ["reenrich", "follow"] for c in commands)
    parser = build_parser()
    for command in commands:
        assert command[0] == "reenrich"
        assert command[1] in _subcommands(), command
        parser.parse_args(command[1:])  # flags are valid too (argparse exits otherwise)


def test_compose_database_has_volume_and_healthcheck() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    db = compose["services"]["db"]
    assert "healthcheck" in db and any(v.startswith("pgdata:") for v in db["volumes"])
    assert "pgdata" in compose["volumes"]
    assert (ROOT / "Dockerfile").exists()


def _quick_start() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:\w+)?\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the quick start has exactly one code block"
    return [line for line in blocks[0].splitlines() if line.strip()]


def test_readme_quick_start_has_two_commands_and_ci_runs_the_second() -> None:
    commands = _quick_start()
    assert len(commands) == 2
    assert "reenrich demo" in commands[0]
    assert "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_module_entry_point_help() -> None:
    result = subprocess.run([sys.executable, "-m", "worker", "--help"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert {"import", "backfill", "status", "failures", "show", "demo", "migrate"} <= \
        _subcommands()


@pytest.mark.slow
def test_demo_on_a_fresh_embedded_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k != "DATABASE_URL" and not k.startswith("REENRICH_")}
    env["REENRICH_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run([sys.executable, "-m", "worker", "demo"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"embedded PostgreSQL in {tmp_path / 'data'}" in out
    # The run reached the end with 6 failed rows: stored and shown as such.
    assert re.search(r"backfill run \S+: finished_with_failures; .*failed 6", out)
    assert "created a new, empty embedded database" in result.stderr
    document = json.loads(out.split("):\n", 1)[1])
    meta = document["training_pairs"][0]["conversation_metadata"]
    assert meta["persona_archetype"] == "clarity_seeker"
    assert meta["emotional_arc_key"] == "confusion_to_clarity"
    assert meta["training_topic_key"] == "hsa_vs_fsa_decision"
    # Second demo on the same data: nothing left to change.
    again = subprocess.run([sys.executable, "-m", "worker", "demo"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    assert "updated 0, unchanged 38, failed 6" in again.stdout
    assert "created a new" not in again.stderr


# ------------------------------------------------------------------ the README as a user guide


def _readme_section(title: str) -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split(f"\n{title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_leads_a_newcomer_from_zero_to_a_training_file() -> None:
    readme = (ROOT / "README.md").read_text()
    for needed in ("Python 3.11", "source .venv/bin/activate", ".venv/bin/reenrich",
                   "export DATABASE_URL=postgresql://", "docker compose up -d",
                   "reenrich migrate", "reenrich import my-data.json", "reenrich backfill",
                   "reenrich export --format chat", "load_dataset", "## Upgrading",
                   "## The embedded database", "/var/lib/reenrich", "REENRICH_DATA_DIR"):
        assert needed in readme, needed
    steps = _readme_section("## From your own data to a training file")
    assert steps.index("reenrich migrate") < steps.index("reenrich import") \
        < steps.index("reenrich backfill") < steps.index("reenrich export")
    # Reference material lives in docs/, linked from the README; the README keeps
    # only the headline figures, each with the command that measures it.
    for moved in ("## How it is built", "## Database", "py-spy"):
        assert moved not in readme, moved
    figures = _readme_section("## Performance")
    for bench in ("backfill_bench.py", "follow_drain_bench.py", "follow_latency.py",
                  "marks_bench.py", "export_bench.py"):
        assert bench in figures and (ROOT / "bench" / bench).is_file(), bench
    assert "docs/performance.md" in figures
    assert "| a backfill, 1 worker |" in (ROOT / "docs" / "performance.md").read_text()


def test_readme_import_example_imports_and_is_enriched(db_url: str, tmp_path: Path) -> None:
    from tests.conftest import run_cli

    steps = _readme_section("## From your own data to a training file")
    example = re.findall(r"```json\n(.*?)```", steps, re.S)
    assert len(example) == 1
    bundle = json.loads(example[0])
    (conversation,) = bundle["conversations"]
    assert "input_parameters" not in conversation["parsed_json"]  # the generator's document
    path = tmp_path / "my-data.json"
    path.write_text(example[0])
    imported = run_cli(db_url, "import", str(path))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "0 record(s) failed" in imported.stdout
    backfill = run_cli(db_url, "backfill")
    assert backfill.returncode == 0, backfill.stderr
    assert "processed 1 of 1, updated 1, unchanged 0, failed 0" in backfill.stdout
    shown = run_cli(db_url, "show", conversation["conversation_id"])
    meta = json.loads(shown.stdout)["training_pairs"][0]["conversation_metadata"]
    assert (meta["persona_archetype"], meta["emotional_arc_key"], meta["training_topic_key"]) \
        == (conversation["persona_key"], conversation["emotional_arc_key"],
            conversation["training_topic_key"])


def test_readme_exit_statuses_are_the_codes_the_cli_uses() -> None:
    from worker import errors

    table = _readme_section("### Exit statuses")
    rows = dict(re.findall(r"^\| (\d+) \| (.*) \|$", table, re.M))
    assert {int(code) for code in rows} == {
        errors.EXIT_OK, errors.EXIT_ERROR, errors.EXIT_USAGE, errors.EXIT_ROWS_FAILED,
        errors.EXIT_RUN_BUSY, errors.EXIT_CANCELLED, errors.EXIT_INTERRUPTED}
    assert "cancelled" in rows["5"] and "finished_with_failures" in rows["3"]
    assert "usage" in rows["2"] and "nothing was done" in rows["2"]
    assert "exit statuses: 0 done; 1 error; 2 usage error" in " ".join(
        build_parser().format_help().split())


def test_every_relative_link_in_the_readme_and_docs_exists() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 3
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), (page.name, target)
