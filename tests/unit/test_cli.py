"""The CLI's own pieces (pure): the command registry, the parser's imports, the table renderer."""

from __future__ import annotations

import argparse
import subprocess
import sys

from tests.conftest import ROOT
from worker.cli.app import COMMANDS, build_parser
from worker.cli.output import Column, table


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
            ) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found: list[tuple[tuple[str, ...], argparse.ArgumentParser]] = []
    for action in parser._actions:  # argparse keeps subparsers here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _leaves(sub, (*path, name))
    return found or [(path, parser)]


def test_every_command_runs_a_function_and_keeps_its_help_order() -> None:
    leaves = _leaves(build_parser())
    for path, parser in leaves:
        if path[0] == "datasets":  # its actions are read from args.datasets_command
            continue
        assert callable(parser.get_default("func")), path
    assert [p[0] for p, _ in leaves] == [
        "migrate", "import", "backfill", "cancel", "status", "failures", "show", "enrich",
        "follow", "workers", "export", "datasets", "datasets", "datasets", "validate", "stats",
        "dedup", "demo", "review", "review", "review", "review"]
    assert all(callable(module.register) for module in COMMANDS)


def test_building_the_parser_imports_no_database_or_dataset_libraries() -> None:
    # A fresh interpreter: this one has imported them for other tests.
    code = ("import sys; from worker.cli.app import build_parser; build_parser(); "
            "print(sorted(m for m in ('sqlalchemy', 'psycopg', 'pydantic', 'pyarrow', 'rensa', "
            "'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"


COLUMNS: tuple[Column[tuple[str, str, int]], ...] = (
    Column("NAME", lambda r: r[0], shrink=6),
    Column("NOTE", lambda r: r[1], drop=1),
    Column("N", lambda r: r[2], right=True),
)
ROWS = [("a-rather-long-name", "note", 7), ("b", "x\x1b[31m", 12)]


def test_a_table_without_a_width_shows_every_column_and_escapes_control_characters() -> None:
    lines: list[str] = []
    table(ROWS, COLUMNS, lines.append)
    assert lines == ["NAME                NOTE        N",
                     "a-rather-long-name  note        7",
                     r"b                   x\x1b[31m  12"]


def test_a_table_drops_optional_columns_then_shrinks_long_ones_to_fit() -> None:
    lines: list[str] = []
    table(ROWS, COLUMNS, lines.append, width=15)
    assert lines == ["NAME          N", "a-rather-l…   7", "b            12"]
    assert all(len(line) <= 15 for line in lines)


def test_the_tier_choices_are_the_contract_tiers() -> None:
    # Written out so `--help` loads no pydantic; kept equal to the one definition here.
    from worker.cli.export import TIERS
    from worker.enrichment.models import QualityTier

    assert tuple(QualityTier) == TIERS
