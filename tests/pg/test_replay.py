"""The replay cache shared in PostgreSQL: a nonce accepted by one host is refused by another."""

from __future__ import annotations

import asyncio

import asyncpg

from runner.pg import PgReplayCache

KEY = ("t1", "dev.corral.sms", "status", "nonce-1")


async def test_a_nonce_claimed_on_one_host_is_refused_on_the_other(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], migrated_url: str
) -> None:
    one, two = (PgReplayCache(pool, migrated_url) for pool in pools)
    assert await one.claim(KEY, expires_at=1300.0, now=1000.0)
    assert not await two.claim(KEY, expires_at=1400.0, now=1100.0)
    assert not await one.claim(KEY, expires_at=1400.0, now=1100.0)
    other_tenant = ("t2", *KEY[1:])
    assert await two.claim(other_tenant, expires_at=1400.0, now=1100.0)
    # Once expired, the same nonce may be accepted again (the provider's window has passed).
    assert await two.claim(KEY, expires_at=1700.0, now=1301.0)


async def test_concurrent_claims_of_one_nonce_have_exactly_one_winner(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], migrated_url: str
) -> None:
    caches = [PgReplayCache(pool, migrated_url) for pool in pools]
    won = await asyncio.gather(
        *(caches[i % 2].claim(KEY, expires_at=2000.0, now=1000.0) for i in range(20))
    )
    assert won.count(True) == 1


async def test_expired_nonces_are_cleaned_up_in_bounded_batches(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], migrated_url: str
) -> None:
    cache = PgReplayCache(pools[0], migrated_url, cleanup_every_s=0, cleanup_batch=10)
    for i in range(25):
        assert await cache.claim(("t1", "p", "r", f"n{i}"), expires_at=100.0, now=50.0)
    await cache.claim(("t1", "p", "r", "live"), expires_at=1000.0, now=200.0)
    assert cache.removed == 10
    await cache.claim(("t1", "p", "r", "live2"), expires_at=1000.0, now=200.0)
    await cache.claim(("t1", "p", "r", "live3"), expires_at=1000.0, now=200.0)
    assert cache.removed == 25
    async with pools[0].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM webhook_replay") == 3
