"""Configuration from the environment, a ``.env`` file, or arguments (pydantic-settings).

API keys are ``SecretStr``: their repr is ``'**********'``, so a logged or printed
Settings object never shows one. They are read under the provider's own conventional
variable names (LAMBDA_API_KEY …) so existing ``.env`` files keep working.

A value that does not parse (``GPUFSM_HTTP_TIMEOUT=abc``) is a
:class:`gpufsm.errors.ValidationError` naming the *variable* a person set, the rule and
the value (never the value of a secret), raised by ``Settings()`` itself: Settings is
built in many places (every command, every adapter), and a pydantic traceback naming a
Python field is not something a person can act on.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from gpufsm.errors import ValidationError
from gpufsm.providers import PROVIDERS

__all__ = ["Settings", "check_database_url", "default_database_url"]

_PREFIX = "GPUFSM_"
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

#: What each checked setting must be, in the words of the error a person reads.
_RULES: dict[str, str] = {
    "http_timeout": "must be a number of seconds > 0 and <= 600",
    "reconcile_interval": "must be a number of seconds > 0",
    "sqlite_synchronous": f"must be one of {', '.join(_SYNCHRONOUS)}",
    "webhook_urls": 'must be a JSON list of URLs, e.g. ["https://example.com/hook"]',
}
#: Settings whose value may be echoed in an error. Not the others: keys and the webhook
#: secret are secrets, and webhook or database URLs often carry a token or a password.
_ECHOED = frozenset({"http_timeout", "reconcile_interval", "sqlite_synchronous"})


def default_database_url() -> str:
    """SQLite under the user's data directory (XDG), created on first use."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return f"sqlite:///{base / 'gpufsm' / 'gpufsm.db'}"


def check_database_url(url: str, *, field: str = "GPUFSM_DATABASE_URL") -> str:
    """``url`` if gpufsm can open it; else a ValidationError naming ``field`` and the fix.

    The mistakes people make: a file path where a URL belongs (``/tmp/x.db``,
    ``~/x.db``: the error gives the exact URL meant, ``~`` expanded), a ``~`` inside a
    SQLite URL (SQLite does not expand it), a database gpufsm does not support, and
    PostgreSQL without its driver. Checked before SQLAlchemy sees the URL, whose own
    errors are tracebacks (``Could not parse SQLAlchemy URL``, ``No module named
    'MySQLdb'``). The URL itself is never echoed: it may carry a password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        if "/" in url or url.startswith(("~", ".")) or url.endswith((".db", ".sqlite",
                                                                      ".sqlite3")):
            path = Path(url).expanduser().absolute()
            raise ValidationError(field, f"{url!r} is a file path, not a URL: use "
                                  f"sqlite:///{path}", value=url)
        raise ValidationError(field, "not a database URL: use sqlite:////abs/path/gpufsm.db "
                              "or postgresql+psycopg://user@host/dbname")
    backend, _, driver = scheme.lower().partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        database = rest.partition("/")[2].partition("?")[0]
        if database.startswith("~"):
            path = Path(database).expanduser()
            raise ValidationError(field, f"SQLite does not expand ~ in a URL: use "
                                  f"sqlite:///{path}")
        return url
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg", "psycopg2"):
        if driver != "psycopg":
            raise ValidationError(field, f"{scheme}:// is not supported: write "
                                  "postgresql+psycopg://… (gpufsm uses psycopg 3)")
        if importlib.util.find_spec("psycopg") is None:
            raise ValidationError(field, "PostgreSQL needs psycopg: pip install "
                                  "'gpufsm[postgres]'")
        return url
    raise ValidationError(field, f"{scheme}:// is not supported: gpufsm supports sqlite "
                          "and postgresql+psycopg")


def _api_key(provider: str) -> Any:
    """The field of ``provider``'s API key: read under the provider's own variable
    (``PROVIDERS[provider].key_env``, so existing ``.env`` files keep working) or the same
    name with our prefix."""
    env = PROVIDERS[provider].key_env
    return Field(default=None, validation_alias=AliasChoices(env, f"{_PREFIX}{env}"))


class Settings(BaseSettings):
    """Everything gpufsm reads from its environment. Unknown variables are ignored.

    A bad value raises :class:`gpufsm.errors.ValidationError` whose field is the
    environment variable (``GPUFSM_HTTP_TIMEOUT: must be …, got 'abc'``).
    """

    model_config = SettingsConfigDict(
        env_prefix=_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = Field(default_factory=default_database_url,
                              description="SQLAlchemy URL; SQLite file or postgresql+psycopg://")
    sqlite_synchronous: str = Field(default="FULL",
                                    description="FULL: a committed row survives power loss")
    # One key and one base URL per provider in gpufsm.providers.PROVIDERS, whose record
    # names these fields (key_setting, url_setting) and the variable each key is read
    # under; tests/test_providers_registry.py fails when a record has no fields here.
    # Written out, not generated, so ``Settings().lambda_api_key`` stays typed.
    lambda_api_key: SecretStr | None = _api_key("lambda")
    vast_api_key: SecretStr | None = _api_key("vastai")
    novita_api_key: SecretStr | None = _api_key("novita")
    runpod_api_key: SecretStr | None = _api_key("runpod")
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

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except PydanticValidationError as exc:
            raise _from_pydantic(exc, values) from None
        except SettingsError as exc:  # a complex value (a list) that is not JSON
            match = re.search(r'field "(\w+)"', str(exc))
            name = match.group(1) if match else "webhook_urls"
            rule = _RULES.get(name, "cannot be parsed")
            raise ValidationError(_variable(name, values), rule) from None

    @field_validator("sqlite_synchronous", mode="before")
    @classmethod
    def _synchronous(cls, value: object) -> object:
        """One of SQLite's levels; ``full`` means FULL (the pragma is case-insensitive)."""
        if not isinstance(value, str) or value.strip().upper() not in _SYNCHRONOUS:
            raise ValueError(_RULES["sqlite_synchronous"])
        return value.strip().upper()


def _variable(name: str, given: dict[str, Any]) -> str:
    """The name a person set ``name`` under: the keyword argument, else the variable."""
    if name in given:
        return name
    alias = Settings.model_fields[name].validation_alias if name in Settings.model_fields \
        else None
    if isinstance(alias, AliasChoices):
        choices = [str(c) for c in alias.choices]
        return next((c for c in choices if c in os.environ), choices[0])
    return _PREFIX + name.upper()


def _from_pydantic(exc: PydanticValidationError, given: dict[str, Any]) -> ValidationError:
    """The first error, named by its variable, in our words; a secret is never echoed."""
    error = exc.errors()[0]
    loc = str(error["loc"][0]) if error["loc"] else ""
    name = next((n for n, info in Settings.model_fields.items()
                 if loc == n or (isinstance(info.validation_alias, AliasChoices)
                                 and loc in info.validation_alias.choices)), loc)
    rule = _RULES.get(name, "invalid")
    if name in _ECHOED:
        rule += f", got {error.get('input')!r}"
    return ValidationError(_variable(name, given), rule)
