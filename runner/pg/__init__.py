"""corral's state in PostgreSQL (`CORRAL_STORE=postgresql://...`): schema and migrations, the
config store, the audit chain, the webhook replay cache and the shared bundles.

docs/store-postgresql.md describes the schema, the migrations and the concurrency rules.
"""

from .audit import PgAuditSink, verify_database
from .backend import PgBackend
from .bundles import PgBundles, pack_tree
from .config_store import CHANNEL, ConfigVersion, PgConfigStore
from .connect import STORE_VARIABLE, check_url, connect, create_pool, redact, store_url
from .errors import (
    SchemaError,
    SchemaOutdatedError,
    SchemaTooNewError,
    StoreError,
    StoreSettingsError,
    StoreUnavailableError,
)
from .migrations import SchemaStatus, migrate, require_current, status
from .replay import PgReplayCache
from .schema import LATEST, MIGRATIONS, Migration

__all__ = [
    "CHANNEL",
    "LATEST",
    "MIGRATIONS",
    "STORE_VARIABLE",
    "ConfigVersion",
    "Migration",
    "PgAuditSink",
    "PgBackend",
    "PgBundles",
    "PgConfigStore",
    "PgReplayCache",
    "SchemaError",
    "SchemaOutdatedError",
    "SchemaStatus",
    "SchemaTooNewError",
    "StoreError",
    "StoreSettingsError",
    "StoreUnavailableError",
    "check_url",
    "connect",
    "create_pool",
    "migrate",
    "pack_tree",
    "redact",
    "require_current",
    "status",
    "store_url",
    "verify_database",
]
