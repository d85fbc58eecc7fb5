"""Floods: thousands of oversized, slow and malformed requests at a real `corral serve`.

The host runs in a process of its own (so its resident memory is its own) with the shipped
Phaxio and Twilio plugins active for one tenant. From 127.0.0.1 (and 127.0.0.3 for bad keys) the
test sends, at bounded concurrency: bodies declared or streamed past a route's or the admin API's
limit (413), bad signatures (401), bad JSON (400), unknown keys (401, then the per-address
lockout's 429) and garbage bytes (400), while slowloris connections dribble request heads byte by
byte. An operator on 127.0.0.2 keeps calling the admin API and a provider keeps posting signed
callbacks: every one of those must be answered 200, during the flood and after it. The host's
RSS must stay within a generous bound of where it started, and every slow header sender must be
cut off within the header timeout.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
import pytest

from runner.app import HEADER_TIMEOUT_S
from tests.runner.phaxio_stub import callback_body, fax_resource, phaxio_signature

from .conftest import Served, Tally, bounded, served

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

PHAXIO, TWILIO = "dev.corral.phaxio-fax", "dev.corral.twilio-sms"
TENANT = "tenant-f"
CALLBACK_TOKEN = "callback-token-of-f-" + "7" * 16
PHAXIO_SETTINGS = {
    "api_key": "key-of-f",
    "api_secret": "secret-of-f-" + "9" * 16,
    "callback_token": CALLBACK_TOKEN,
    "caller_id": "+15550001111",
}
TWILIO_SETTINGS = {
    "account_sid": "AC" + "0" * 32,
    "auth_token": "token-of-f-" + "1" * 20,
    "from_number": "+15550001111",
}
PHAXIO_ROUTE = f"/webhook/phaxio/{TENANT}/fax-status"
TWILIO_ROUTE = f"/webhook/twilio/{TENANT}/sms-status"
TWILIO_MAX_BODY = 16384  # the sms-status route's max_body_bytes
ADMIN_MAX_BODY = 1024 * 1024  # runner.app.DEFAULT_MAX_BODY_BYTES
ATTACKER, OPERATOR, GUESSER = "127.0.0.1", "127.0.0.2", "127.0.0.3"
LANES = 24
SLOW_SENDERS = 200
SLOW_BODY_SENDERS = 50
PHAXIO_TIMEOUT_S = 5.0  # the fax-status route's timeout_seconds: a body must be whole by then
SLOW_BYTE_EVERY_S = 1.0
OPERATOR_PAUSE_S = 0.05
BOUND_S = 15.0  # no single flood request may take longer than this to be answered
RSS_BOUND_BYTES = 150 * 1024 * 1024
# How many of each: about 3,500 requests in all, plus the slow senders.
COUNTS = {
    "declared_413": 800,
    "chunked_413": 400,
    "admin_413": 60,
    "bad_signature": 800,
    "bad_json": 500,
    "bad_key": 400,
    "garbage": 600,
}
GARBAGE = [
    b"\x00\xff\x13\x37" * 64 + b"\r\n\r\n",
    b"GET /\x00\x01 HTTP/1.1\r\n\r\n",
    b"POST " + PHAXIO_ROUTE.encode() + b" HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
]  # (a head that never ends, such as bare CRLFs, is the slow senders' case: cut at the timeout)


async def raw(served: Served, data: bytes, *, local: str = ATTACKER) -> str:
    """Send `data` on a fresh connection; return the answer's status code, or `closed`."""
    host, port = served.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(local, 0))
    try:
        writer.write(data)
        await writer.drain()
        line = await reader.readline()
        return line.split()[1].decode() if line.startswith(b"HTTP/") else "closed"
    except ConnectionError:
        return "closed"
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


async def setup_tenant(served: Served, http: aiohttp.ClientSession) -> None:
    for plugin_id, settings in ((PHAXIO, PHAXIO_SETTINGS), (TWILIO, TWILIO_SETTINGS)):
        async with http.put(
            served.url(f"/plugins/{plugin_id}/config?tenant_id={TENANT}"),
            json={"enabled": True, "settings": settings},
            headers={"X-API-Key": served.key},
        ) as answer:
            assert answer.status == 200, await answer.text()


async def well_formed(served: Served, http: aiohttp.ClientSession, n: int) -> list[int]:
    """One signed provider callback and one admin read; return both statuses."""
    body = callback_body(fax_resource(9000 + n, "success"))
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Phaxio-Signature": phaxio_signature(CALLBACK_TOKEN, body),
    }
    statuses = []
    async with http.post(served.url(PHAXIO_ROUTE), data=body, headers=headers) as answer:
        await answer.read()
        statuses.append(answer.status)
    async with http.get(
        served.url(f"/plugins/{PHAXIO}/config?tenant_id={TENANT}"),
        headers={"X-API-Key": served.key},
    ) as answer:
        await answer.read()
        statuses.append(answer.status)
    return statuses


async def slow_sender(served: Served) -> float:
    """Send a request head a byte at a time; return how long until the host hung up."""
    host, port = served.base.removeprefix("http://").split(":")
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(ATTACKER, 0))
    head = b"POST " + PHAXIO_ROUTE.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Slow: "

    async def dribble() -> None:
        writer.write(head)
        for byte in itertools.cycle(b"abcdefgh"):
            await asyncio.sleep(SLOW_BYTE_EVERY_S)
            writer.write(bytes([byte]))
            await writer.drain()

    dribbling = asyncio.create_task(dribble())
    try:
        async with asyncio.timeout(HEADER_TIMEOUT_S + 20):
            while await reader.read(4096):
                pass  # an answer, if any, then the end of the stream
    except ConnectionError:
        pass
    finally:
        dribbling.cancel()
        await asyncio.gather(dribbling, return_exceptions=True)
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass
    return time.monotonic() - started


async def slow_body_sender(served: Served) -> tuple[str, float]:
    """Send a whole head, then the body a byte at a time; return the answer and when it came."""
    host, port = served.base.removeprefix("http://").split(":")
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(ATTACKER, 0))
    writer.write(
        f"POST {PHAXIO_ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
    )

    async def dribble() -> None:
        while True:
            await asyncio.sleep(SLOW_BYTE_EVERY_S)
            writer.write(b"a")
            await writer.drain()

    dribbling = asyncio.create_task(dribble())
    try:
        async with asyncio.timeout(PHAXIO_TIMEOUT_S + 20):
            line = await reader.readline()
    finally:
        dribbling.cancel()
        await asyncio.gather(dribbling, return_exceptions=True)
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass
    status = line.split()[1].decode() if line.startswith(b"HTTP/") else "closed"
    return status, time.monotonic() - started


def flood_jobs(
    served: Served, attacker: aiohttp.ClientSession, guesser: aiohttp.ClientSession, tally: Tally
) -> list[Callable[[], Coroutine[Any, Any, None]]]:
    """Every flood request as a job that counts its outcome as `(kind, status)`."""

    def job(kind: str, send: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        async def run() -> None:
            try:
                async with asyncio.timeout(BOUND_S):
                    tally.add((kind, await send()))
            except TimeoutError:
                tally.add((kind, "timeout"))
            except (aiohttp.ClientError, ConnectionError) as exc:
                tally.add((kind, type(exc).__name__))

        return run

    async def http_status(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> int:
        async with session.request(method, served.url(url), **kw) as answer:
            await answer.read()
            return answer.status

    async def chunks(total: int) -> AsyncIterator[bytes]:
        for _ in range(0, total, 4096):
            yield b"y" * 4096

    declared = (
        f"POST {PHAXIO_ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n".encode()
    )
    bad_body = callback_body(fax_resource(1, "failure"))
    admin_url = f"/plugins/{PHAXIO}/config?tenant_id={TENANT}"
    key = {"X-API-Key": served.key}
    makers: dict[str, Callable[[int], Any]] = {
        "declared_413": lambda n: raw(served, declared),
        "chunked_413": lambda n: http_status(
            attacker, "POST", TWILIO_ROUTE, data=chunks(TWILIO_MAX_BODY + 4096)
        ),
        "admin_413": lambda n: http_status(
            attacker,
            "PUT",
            admin_url,
            data=io.BytesIO(b"{" * (ADMIN_MAX_BODY + 1)),
            headers={**key, "Content-Type": "application/json"},
        ),
        "bad_signature": lambda n: http_status(
            attacker,
            "POST",
            PHAXIO_ROUTE if n % 2 else TWILIO_ROUTE,
            data=bad_body,
            headers={"X-Phaxio-Signature": "0" * 64, "X-Twilio-Signature": "AAAA"},
        ),
        "bad_json": lambda n: http_status(
            attacker,
            "PUT",
            admin_url,
            data=[b"{", b'{"enabled": tru', b"\xff\xfe", b"[]", b'{"settings": 1}'][n % 5],
            headers={**key, "Content-Type": "application/json"},
        ),
        "bad_key": lambda n: http_status(
            guesser, "GET", "/plugins", headers={"X-API-Key": f"crl_{n:016x}_" + "A" * 43}
        ),
        "garbage": lambda n: raw(served, GARBAGE[n % len(GARBAGE)]),
    }
    per_kind = [
        [job(kind, lambda make=makers[kind], n=n: make(n)) for n in range(count)]
        for kind, count in COUNTS.items()
    ]
    # Interleave the kinds, so that every kind is in flight all along.
    return [j for group in itertools.zip_longest(*per_kind) for j in group if j is not None]


EXPECTED = {
    "declared_413": {"413"},
    "chunked_413": {413},
    "admin_413": {413},
    "bad_signature": {401},
    "bad_json": {400, 422},
    "bad_key": {401, 429},
    "garbage": {"400"},
}


async def test_floods_leave_memory_bounded_and_well_formed_requests_served() -> None:
    def session(local: str) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(local, 0), limit=LANES),
            timeout=aiohttp.ClientTimeout(total=BOUND_S),
        )

    async with (
        served() as host,
        session(OPERATOR) as operator,
        session(ATTACKER) as attacker,
        session(GUESSER) as guesser,
    ):
        await setup_tenant(host, operator)
        for n in range(20):  # warm: workers, caches, allocator
            assert await well_formed(host, operator, n) == [200, 200]
        rss_start = host.rss_bytes()
        rss_peak = rss_start
        flood, good = Tally(), Tally()
        flooding = True

        async def watch_memory() -> None:
            nonlocal rss_peak
            while flooding:
                rss_peak = max(rss_peak, host.rss_bytes())
                await asyncio.sleep(0.2)

        async def operator_lane() -> None:
            for n in itertools.count(100):
                if not flooding:
                    return
                for status in await well_formed(host, operator, n):
                    good.add(status)
                await asyncio.sleep(OPERATOR_PAUSE_S)  # an operator, not a second flood

        started = time.monotonic()
        async with asyncio.TaskGroup() as tasks:
            slow = [tasks.create_task(slow_sender(host)) for _ in range(SLOW_SENDERS)]
            slow_bodies = [
                tasks.create_task(slow_body_sender(host)) for _ in range(SLOW_BODY_SENDERS)
            ]
            tasks.create_task(watch_memory())
            tasks.create_task(operator_lane())
            jobs = flood_jobs(host, attacker, guesser, flood)
            await bounded(LANES, (job() for job in jobs))
            flood_s = time.monotonic() - started
            await asyncio.gather(*slow, *slow_bodies)
            flooding = False
        cut_off = sorted(task.result() for task in slow)
        body_answers = {status for status, _ in (task.result() for task in slow_bodies)}
        body_cut_off = max(elapsed for _, elapsed in (task.result() for task in slow_bodies))
        after = [status for n in range(20) for status in await well_formed(host, operator, n)]
        rss_end = host.rss_bytes()

    mib = 1024 * 1024
    print(
        f"\n{flood.total} flood requests in {flood_s:.1f} s: {flood}\n"
        f"operator during the flood: {good}\nslow senders cut off after "
        f"{cut_off[0]:.1f}-{cut_off[-1]:.1f} s; slow bodies answered {body_answers} within "
        f"{body_cut_off:.1f} s\nhost RSS {rss_start / mib:.0f} MiB at the start, "
        f"{rss_peak / mib:.0f} MiB at the peak, {rss_end / mib:.0f} MiB at the end"
    )
    unexpected = {(k, s): c for (k, s), c in flood.counts.items() if s not in EXPECTED[k]}
    assert unexpected == {}, flood
    assert flood.total == sum(COUNTS.values())
    assert good.others({200}) == {} and good.total >= 20, good
    assert after == [200] * 40
    assert cut_off[-1] <= HEADER_TIMEOUT_S + 5.0, cut_off[-5:]
    assert body_answers == {"408"} and body_cut_off <= PHAXIO_TIMEOUT_S + 5.0, body_cut_off
    assert rss_peak - rss_start < RSS_BOUND_BYTES, (rss_start, rss_peak)
