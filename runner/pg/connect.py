"""Connecting to PostgreSQL: the `CORRAL_STORE` URL, pools and single connections, and errors.

asyncpg's exceptions are translated here (and in the modules using a connection) into
`StoreUnavailableError`; a URL is only ever shown with its password removed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from .errors import StoreSettingsError, StoreUnavailableError

STORE_VARIABLE: Final = "CORRAL_STORE"
SCHEMES: Final = ("postgresql", "postgres")
DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0
DEFAULT_POOL_SIZE: Final = 10
# asyncpg is untyped: these name what a value is, for readers (they are Any to mypy).
Connection = Any
Pool = Any
_log = logging.getLogger(__name__)

# What a lost or refused connection raises, in asyncpg and below it.
CONNECTION_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.OperatorInterventionError,  # the backend was terminated, or the server shuts down
    # A pooled connection whose backend was terminated while idle can report this on its next
    # use, before asyncpg has seen the connection close.
    asyncpg.InternalClientError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidCatalogNameError,
)


def store_url(environ: Mapping[str, str]) -> str | None:
    """Return the `CORRAL_STORE` URL, or None when unset (the JSON store is used).

    Raises StoreSettingsError when it is set but not a `postgresql://` URL.
    """
    url = environ.get(STORE_VARIABLE, "").strip()
    if not url:
        return None
    check_url(url)
    return url


def check_url(url: str) -> None:
    """Raise StoreSettingsError unless `url` is a `postgresql://` (or `postgres://`) URL."""
    if urlsplit(url).scheme not in SCHEMES:
        raise StoreSettingsError(f"{STORE_VARIABLE} must be a postgresql:// URL")


def redact(url: str) -> str:
    """Return `url` without its password (and without query options): safe to log and show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def connect(url: str, *, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> Connection:
    """Open one connection; raise StoreUnavailableError (naming the redacted URL) if refused."""
    try:
        return await asyncpg.connect(url, timeout=timeout_s)
    except CONNECTION_ERRORS as exc:
        raise unavailable(url, exc) from exc


async def create_pool(
    url: str,
    *,
    max_size: int = DEFAULT_POOL_SIZE,
    timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> Pool:
    """Open a pool of connections (one at first); raise StoreUnavailableError if refused."""
    try:
        return await asyncpg.create_pool(
            url, min_size=1, max_size=max_size, timeout=timeout_s, command_timeout=timeout_s
        )
    except CONNECTION_ERRORS as exc:
        raise unavailable(url, exc) from exc


def unavailable(url: str, exc: BaseException) -> StoreUnavailableError:
    """Return the error saying `url` (redacted) cannot be used, and why (the error's class)."""
    reason = type(exc).__name__
    if isinstance(exc, asyncpg.PostgresError):
        reason = f"{reason}: {exc.args[0] if exc.args else ''}"
    elif isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    return StoreUnavailableError(f"PostgreSQL at {redact(url)} is unavailable ({reason})")
