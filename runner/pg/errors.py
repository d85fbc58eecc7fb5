"""The PostgreSQL backend's errors: one root, subclasses chosen by what the caller does next."""

from __future__ import annotations

from ..errors import RunnerError


class StoreError(RunnerError):
    """Root of every error raised by the PostgreSQL backend."""


class StoreSettingsError(StoreError):
    """`CORRAL_STORE` is not a `postgresql://` URL; fix the setting."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached (or the connection was lost); retry later.

    The message names the server with its password removed, never the full URL.
    """


class SchemaError(StoreError):
    """The database schema is not the one this corral expects; `current` and `latest` say how."""

    def __init__(self, message: str, *, current: int, latest: int) -> None:
        super().__init__(message)
        self.current = current
        self.latest = latest


class SchemaOutdatedError(SchemaError):
    """Migrations are pending: run `corral store migrate`."""


class SchemaTooNewError(SchemaError):
    """The schema was migrated by a newer corral; this one refuses to touch it (upgrade it)."""
