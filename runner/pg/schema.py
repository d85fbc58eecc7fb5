"""The schema's versioned migrations, numbered from 1; each runs once, in order, in SQL.

A migration is never edited once released: a change is a new one appended to `MIGRATIONS`.
Applying them (locking, bookkeeping, refusing a newer schema) is `migrations`' business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: its number, a short name, and the SQL run in the migration transaction."""

    version: int
    name: str
    sql: str


_V1: Final = """
-- The config document: every version kept (the newest N: the JSON store's backups), the head
-- row naming the current one. `document` holds the exact bytes the ETag is the digest of.
CREATE TABLE config_versions (
    version bigint PRIMARY KEY CHECK (version > 0),
    document text NOT NULL,
    etag text NOT NULL,
    reason text NOT NULL DEFAULT 'update',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE config_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version bigint NOT NULL REFERENCES config_versions (version)
);
-- The ids (never the keys) of the secret keys the document is encrypted with: a host whose key
-- file holds none of them refuses to start instead of writing secrets others cannot read.
CREATE TABLE secret_keys (
    key_id text PRIMARY KEY,
    registered_at timestamptz NOT NULL DEFAULT now()
);
-- Read-only views of the current document, for operators and reports (corral reads the row).
CREATE VIEW config_current AS
    SELECT v.version, v.etag, v.created_at, v.document::jsonb AS document
    FROM config_head h JOIN config_versions v ON v.version = h.version;
CREATE VIEW config_tenants AS
    SELECT t.key AS tenant_id, t.value AS tenant
    FROM config_current c, jsonb_each(c.document -> 'tenants') t;
CREATE VIEW config_activations AS
    SELECT t.tenant_id, a ->> 'plugin_id' AS plugin_id, (a ->> 'enabled')::boolean AS enabled,
           (a ->> 'activated_at')::timestamptz AS activated_at
    FROM config_tenants t, jsonb_array_elements(t.tenant -> 'activations') a;
CREATE VIEW config_api_keys AS
    SELECT k ->> 'id' AS key_id, k ->> 'name' AS name, k ->> 'tenant_id' AS tenant_id,
           k -> 'scopes' AS scopes, (k ->> 'created_at')::timestamptz AS created_at,
           (k ->> 'revoked_at')::timestamptz AS revoked_at
    FROM config_current c, jsonb_array_elements(c.document -> 'api_keys') k;

-- The audit chain: one for every host. `record` is the canonical JSON line; the head row is
-- locked by each append, so appends from every host are serialized.
CREATE TABLE audit_records (
    seq bigint PRIMARY KEY CHECK (seq > 0),
    hash text NOT NULL UNIQUE,
    record text NOT NULL
);
CREATE TABLE audit_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq bigint NOT NULL,
    hash text NOT NULL
);
INSERT INTO audit_head (seq, hash) VALUES (0, repeat('0', 64));
CREATE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_records is append-only';
END $$;
CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_records_append_only();

-- Accepted webhook nonces until they expire (Unix seconds), shared by every host.
CREATE TABLE webhook_replay (
    tenant_id text NOT NULL,
    plugin_id text NOT NULL,
    route_id text NOT NULL,
    nonce text NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (tenant_id, plugin_id, route_id, nonce)
);
CREATE INDEX webhook_replay_expires_at ON webhook_replay (expires_at);

-- Installed bundles: each tree stored once by its digest (a tar.gz of the sealed entry), and
-- the install records that name it.
CREATE TABLE bundle_blobs (
    digest text PRIMARY KEY CHECK (digest ~ '^[0-9a-f]{64}$'),
    archive bytea NOT NULL,
    archive_sha256 text NOT NULL,
    size_bytes bigint NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE installed_bundles (
    plugin_id text NOT NULL,
    version text NOT NULL,
    digest text NOT NULL REFERENCES bundle_blobs (digest),
    source text NOT NULL,
    source_sha256 text NOT NULL,
    signed_by text,
    installed_at text NOT NULL DEFAULT '',
    PRIMARY KEY (plugin_id, version)
);
CREATE INDEX installed_bundles_digest ON installed_bundles (digest);
"""

MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "config, secret keys, audit chain, replay cache, bundles", _V1),
)
LATEST: Final = MIGRATIONS[-1].version
