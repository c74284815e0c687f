"""Configuration: the only module that reads the environment.

Every setting is an environment variable (documented in the README's
configuration table). Command-line flags override them per invocation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """A setting is unusable; the message names the variable and what to change."""


def _default_data_dir() -> Path:
    # Project-local, like a virtualenv: the embedded server's data sits beside the work.
    return Path(".reenrich")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REENRICH_", extra="ignore")

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "REENRICH_DATABASE_URL")
    )
    data_dir: Path = Field(default_factory=_default_data_dir)
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
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("REENRICH_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return upper


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with non-None overrides from the command line."""
    try:
        base = Settings()
    except Exception as exc:  # pydantic's ValidationError lists the bad variables
        raise ConfigError(f"invalid configuration: {exc}") from exc
    clean = {k: v for k, v in overrides.items() if v is not None}
    return base.model_copy(update=clean) if clean else base


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
