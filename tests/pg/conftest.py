"""One PostgreSQL cluster per test session; each test gets its own fresh database."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from runner.pg import create_pool, migrate
from tests.pg.cluster import Cluster, start_cluster, stop_cluster

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """The session's cluster (started once, stopped at the end)."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.fixture
async def pg_url(pg_cluster: Cluster) -> AsyncIterator[str]:
    """A URL to a new, empty database of its own (dropped afterwards)."""
    name = f"t{next(_numbers)}"
    admin = await asyncpg.connect(pg_cluster.url())
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    finally:
        await admin.close()
    yield pg_cluster.url(name)
    admin = await asyncpg.connect(pg_cluster.url())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def migrated_url(pg_url: str) -> str:
    """A URL to a fresh database with the schema migrated."""
    conn = await asyncpg.connect(pg_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return pg_url


@pytest.fixture
async def pools(migrated_url: str) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    """Two pools on the migrated database: two "hosts"."""
    first = await create_pool(migrated_url)
    second = await create_pool(migrated_url)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()
