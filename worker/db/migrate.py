"""Running the Alembic migrations from code (`reenrich migrate`, tests).

Alembic is imported only when migrating: every other command compares the
database's revision with SCHEMA_HEAD, which a test keeps equal to Alembic's head.

A downgrade drops tables. `downgrade_plan` says which ones, with their row
counts, before anything is run, so `reenrich migrate --downgrade` can refuse
without `--yes` when a dropped table holds rows.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text

from worker.errors import ReenrichError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

# The newest migration's revision (tests/integration/test_migrations.py checks it).
SCHEMA_HEAD = "0009"

_DROP_TABLE = re.compile(r"\bDROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?([\w.]+)", re.IGNORECASE)


class MigrationError(ReenrichError):
    """A migration cannot run as asked (unknown revision, wrong direction)."""


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("worker.migrations")))
    config.attributes["url"] = url
    return config


def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(""))


def revisions() -> list[str]:
    """Every revision, oldest first, after `base`."""
    return ["base", *reversed([r.revision for r in _scripts().walk_revisions()])]


def _alembic_failure(exc: Exception, revision: str) -> MigrationError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return MigrationError(f"cannot migrate to {revision!r}: {first}; the revisions are "
                          f"{', '.join(revisions())} (or -1, -2 ... steps down)")


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command
    from alembic.util import CommandError

    try:
        command.upgrade(alembic_config(url), revision)
    except CommandError as exc:
        raise _alembic_failure(exc, revision) from exc


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command
    from alembic.util import CommandError

    try:
        command.downgrade(alembic_config(url), revision)
    except CommandError as exc:
        raise _alembic_failure(exc, revision) from exc


def alembic_head() -> str | None:
    return _scripts().get_current_head()


def current_revision(conn: Connection) -> str | None:
    if not conn.execute(text("SELECT to_regclass('alembic_version') IS NOT NULL")).scalar_one():
        return None
    value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return str(value) if value is not None else None


def tables_dropped_by(revision: str) -> list[str]:
    """The tables a revision's downgrade drops, read from its DROP TABLE statements."""
    module = _scripts().get_revision(revision).module
    sql = getattr(module, "DOWNGRADE", None)
    source = sql if isinstance(sql, str) else inspect.getsource(module.downgrade)
    return _DROP_TABLE.findall(source)


@dataclass
class DowngradePlan:
    current: str | None
    target: str
    steps: list[str] = field(default_factory=list)  # revisions undone, newest first
    rows: dict[str, int] = field(default_factory=dict)  # dropped table -> rows it holds now

    @property
    def rows_lost(self) -> int:
        return sum(self.rows.values())

    def describe(self) -> str:
        tables = ", ".join(f"{name} ({count} row{'s' if count != 1 else ''})"
                           for name, count in self.rows.items())
        return (f"downgrading from {self.current} to {self.target} drops "
                f"{len(self.rows)} table(s) holding {self.rows_lost} row(s): {tables}")


def downgrade_plan(conn: Connection, target: str) -> DowngradePlan:
    """What `downgrade(target)` would undo on this database, and the rows it would drop."""
    current = current_revision(conn)
    plan = DowngradePlan(current=current, target=target)
    if current is None:
        return plan
    try:
        steps = list(_scripts().iterate_revisions(current, target))
    except Exception as exc:  # alembic's ResolutionError / CommandError: unknown revision
        raise _alembic_failure(exc, target) from exc
    plan.steps = [step.revision for step in steps]
    if steps:  # "-1" and the like, as a revision
        down = steps[-1].down_revision
        plan.target = down if isinstance(down, str) else "base"
    for revision in plan.steps:
        for table in tables_dropped_by(revision):
            exists = conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"),
                                  {"t": table}).scalar_one()
            if exists:
                quoted = ".".join('"' + part.replace('"', '""') + '"'
                                  for part in table.split("."))
                plan.rows[table] = int(conn.execute(
                    text(f"SELECT count(*) FROM {quoted}")).scalar_one())  # noqa: S608
    return plan
