"""Configuration from the environment, a ``.env`` file, or arguments (pydantic-settings).

API keys are ``SecretStr``: their repr is ``'**********'``, so a logged or printed
Settings object never shows one. They are read under the provider's own conventional
variable names (LAMBDA_API_KEY …) so existing ``.env`` files keep working.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "default_database_url"]


def default_database_url() -> str:
    """SQLite under the user's data directory (XDG), created on first use."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return f"sqlite:///{base / 'gpufsm' / 'gpufsm.db'}"


class Settings(BaseSettings):
    """Everything gpufsm reads from its environment. Unknown variables are ignored."""

    model_config = SettingsConfigDict(
        env_prefix="GPUFSM_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = Field(default_factory=default_database_url,
                              description="SQLAlchemy URL; SQLite file or postgresql+psycopg://")
    sqlite_synchronous: str = Field(default="FULL", pattern="^(OFF|NORMAL|FULL|EXTRA)$",
                                    description="FULL: a committed row survives power loss")
    lambda_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("LAMBDA_API_KEY", "GPUFSM_LAMBDA_API_KEY"))
    vast_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("VAST_API_KEY", "GPUFSM_VAST_API_KEY"))
    novita_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("NOVITA_API_KEY", "GPUFSM_NOVITA_API_KEY"))
    runpod_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("RUNPOD_API_KEY", "GPUFSM_RUNPOD_API_KEY"))
    http_timeout: float = Field(default=30.0, gt=0, le=600,
                                description="seconds for every provider call")
    # Where each provider's API lives: production by default; set to point an adapter
    # at an emulator (`gpufsm emulator`) or a proxy.
    lambda_base_url: str | None = None
    vast_base_url: str | None = None
    novita_base_url: str | None = None
    runpod_base_url: str | None = None
    reconcile_interval: float = Field(default=30.0, gt=0,
                                      description="seconds between reconcile passes")
    webhook_urls: list[str] = Field(default_factory=list, description=(
        'URLs called for every transition, as JSON: ["https://…"] (at least once)'))
    webhook_secret: SecretStr | None = Field(default=None, description=(
        "signs webhook bodies (X-Gpufsm-Signature: sha256=…)"))
