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
from worker.cli import build_parser


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
    assert "failed 6" in out and "finished_with_failures" in out
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
