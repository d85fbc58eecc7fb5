"""API keys: creation, hashing, verification, revocation, scopes and tenant binding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from runner.auth import (
    ApiKeys,
    AuthenticationError,
    KeyNotFoundError,
    KeyRequestError,
    PermissionDeniedError,
    Principal,
    authorize,
    generate_key,
    hash_key,
    parse_key,
    presented_key,
)
from runner.keys import ALL_SCOPES, DuplicateKeyError, InMemoryKeyRepository, KeyRecord, Scope

READ, WRITE, MANAGE = Scope.PLUGINS_READ, Scope.PLUGINS_WRITE, Scope.KEYS_MANAGE


class Ticker:
    """A wall clock that advances one second per reading."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def make_keys() -> ApiKeys:
    return ApiKeys(InMemoryKeyRepository(), now=Ticker())


def test_generated_keys_carry_their_id_and_a_long_secret() -> None:
    key_id, key = generate_key()
    parsed = parse_key(key)
    assert parsed is not None and parsed[0] == key_id
    assert key.startswith(f"crl_{key_id}_") and len(parsed[1]) == 43  # 256 bits
    assert generate_key()[1] != key
    for bad in ("", "crl_", f"crl_{key_id}", f"xyz_{key_id}_{parsed[1]}", key + "!", key[:-1]):
        assert parse_key(bad) is None


async def test_created_key_authenticates_as_its_record() -> None:
    keys = make_keys()
    record, key = await keys.create("ops", [READ, WRITE], "acme", by=None)
    principal = await keys.authenticate(key)
    assert principal == Principal(record.id, "ops", frozenset({READ, WRITE}), "acme")
    assert not principal.is_operator
    assert record.created_at.tzinfo is not None and record.revoked_at is None


async def test_the_stored_hash_neither_equals_nor_contains_the_key() -> None:
    keys = make_keys()
    record, key = await keys.create("ops", [READ], by=None)
    secret = (parse_key(key) or ("", "?"))[1]
    stored = (await keys.repository.get(record.id)) or pytest.fail("record not stored")
    assert stored.hash == hash_key(key) and stored.hash.startswith("sha256:")
    for text in (stored.hash, stored.model_dump_json(), str(record.public())):
        assert key not in text and secret not in text
    assert "hash" not in record.public()


async def test_unknown_wrong_malformed_and_revoked_keys_are_refused_alike() -> None:
    keys = make_keys()
    record, key = await keys.create("ops", [READ], by=None)
    _, other = generate_key()
    wrong_secret = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    cases = {other: "unknown key id", wrong_secret: "wrong secret", "nonsense": "malformed key"}
    for presented, detail in cases.items():
        with pytest.raises(AuthenticationError) as caught:
            await keys.authenticate(presented)
        assert (caught.value.reason, caught.value.detail) == ("invalid", detail)
        assert str(caught.value) == "invalid API key"
    await keys.revoke(record.id, by=None)
    with pytest.raises(AuthenticationError) as caught:
        await keys.authenticate(key)
    assert caught.value.detail == "revoked key" and str(caught.value) == "invalid API key"
    with pytest.raises(AuthenticationError) as caught:
        await keys.authenticate(None)
    assert caught.value.reason == "missing"


async def test_revocation_is_idempotent_and_keeps_the_first_time() -> None:
    keys = make_keys()
    record, _ = await keys.create("ops", [READ], by=None)
    first = await keys.revoke(record.id, by=None)
    second = await keys.revoke(record.id, by=None)
    assert first.revoked_at is not None and second.revoked_at == first.revoked_at
    with pytest.raises(KeyNotFoundError):
        await keys.revoke("0" * 16, by=None)


def test_keys_come_from_x_api_key_or_a_bearer_token() -> None:
    assert presented_key({"X-API-Key": "k1"}) == "k1"
    assert presented_key({"Authorization": "Bearer k2"}) == "k2"
    assert presented_key({"Authorization": "bearer   k3 "}) == "k3"
    assert presented_key({"X-API-Key": "k", "Authorization": "Bearer k"}) == "k"
    assert presented_key({"Authorization": "Basic dXNlcjpwdw=="}) is None
    assert presented_key({"Authorization": "Bearer"}) is None
    assert presented_key({}) is None
    with pytest.raises(AuthenticationError):
        presented_key({"X-API-Key": "k1", "Authorization": "Bearer k2"})


def test_authorize_needs_every_scope_and_the_right_tenant() -> None:
    operator = Principal("a" * 16, "op", frozenset({READ, WRITE}), None)
    tenant = Principal("b" * 16, "t", frozenset({READ, WRITE}), "acme")
    authorize(operator, [READ], None)
    authorize(operator, [READ, WRITE], "acme")
    authorize(tenant, [WRITE], "acme")
    with pytest.raises(PermissionDeniedError) as caught:
        authorize(operator, [WRITE, MANAGE], "acme")
    assert caught.value.missing_scopes == {MANAGE}
    with pytest.raises(PermissionDeniedError) as caught:
        authorize(tenant, [READ], "other")
    assert caught.value.tenant_id == "other"
    with pytest.raises(PermissionDeniedError):
        authorize(tenant, [READ], None)  # operator-wide acts are not a tenant key's


async def test_a_tenant_key_cannot_grant_more_than_it_holds_or_reach_another_tenant() -> None:
    keys = make_keys()
    creator_record, _ = await keys.create("t", [READ, MANAGE], "acme", by=None)
    creator = Principal.of(creator_record)
    await keys.create("child", [READ], "acme", by=creator)
    with pytest.raises(PermissionDeniedError):
        await keys.create("child", [WRITE], "acme", by=creator)
    with pytest.raises(PermissionDeniedError):
        await keys.create("child", [READ], "other", by=creator)
    with pytest.raises(PermissionDeniedError):
        await keys.create("child", [READ], None, by=creator)


async def test_a_tenant_key_sees_and_revokes_only_its_tenants_keys() -> None:
    keys = make_keys()
    mine, _ = await keys.create("mine", [READ, MANAGE], "acme", by=None)
    theirs, _ = await keys.create("theirs", [READ], "other", by=None)
    op, _ = await keys.create("op", list(ALL_SCOPES), None, by=None)
    me = Principal.of(mine)
    assert [r.id for r in await keys.list_keys(by=me)] == [mine.id]
    assert [r.id for r in await keys.list_keys(by=Principal.of(op))] == [mine.id, theirs.id, op.id]
    with pytest.raises(KeyNotFoundError):
        await keys.revoke(theirs.id, by=me)
    assert (await keys.repository.get(theirs.id)) == theirs


async def test_bad_key_requests_are_refused() -> None:
    keys = make_keys()
    for name, scopes in (("", [READ]), ("  ", [READ]), ("x" * 201, [READ]), ("a\nb", [READ])):
        with pytest.raises(KeyRequestError):
            await keys.create(name, scopes, by=None)
    with pytest.raises(KeyRequestError):
        await keys.create("ops", [], by=None)


async def test_the_memory_repository_refuses_a_duplicate_id() -> None:
    repo = InMemoryKeyRepository()
    record = KeyRecord(
        id="c" * 16,
        name="x",
        hash=hash_key("k"),
        scopes=frozenset({READ}),
        created_at=datetime.now(UTC),
    )
    await repo.add(record)
    with pytest.raises(DuplicateKeyError):
        await repo.add(record)
    assert await repo.revoke("d" * 16, datetime.now(UTC)) is None
