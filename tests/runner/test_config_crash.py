"""Real writer processes: SIGKILLed at random moments, and two of them writing at once.

The writer (`config_writer.py`) prints `ack <name>` after each write the store acknowledged;
every acknowledged write must be on disk, and the document must be valid after every kill.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

from runner.config_model import parse_document
from runner.config_settings import ConfigSettings
from runner.config_store import JsonConfigStore

REPO = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("config_writer.py")
BUDGET_S = 12.0  # the test takes about this long, plus the last checks
MIN_ROUNDS = 12
MIN_ACKED = 300
MAX_ROUNDS = 200


async def start_writer(
    path: Path, key_file: Path, prefix: str, start: int, count: int
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(WRITER),
        str(path),
        str(key_file),
        prefix,
        str(start),
        str(count),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


async def read_acks(
    process: asyncio.subprocess.Process, acked: list[str], ready: asyncio.Event | None = None
) -> None:
    assert process.stdout is not None
    async for line in process.stdout:
        word, _, name = line.decode().strip().partition(" ")
        if word == "ack":
            acked.append(name)
        elif word == "ready" and ready is not None:
            ready.set()


def assert_valid_and_complete(path: Path, acked: list[str]) -> None:
    """The document parses and validates, holds every acknowledged write, and no plaintext."""
    data = path.read_bytes()
    doc = parse_document(json.loads(data), path.name)
    present = doc.tenants["t1"].settings.model_extra or {} if "t1" in doc.tenants else {}
    missing = [name for name in acked if name not in present]
    assert missing == [], f"acknowledged writes lost: {missing[:5]}"
    assert b"secret-" not in data, "a secret reached the disk in plaintext"


async def test_a_writer_killed_at_random_moments_leaves_a_valid_document(tmp_path: Path) -> None:
    path = tmp_path / "config" / "corral.config.json"
    key_file = tmp_path / "secret.key"
    rng = random.Random(int(time.time()))
    acked: list[str] = []
    rounds = mid_write = 0
    deadline = time.monotonic() + BUDGET_S
    # Time-boxed, but on a slow machine it goes on until enough kills and writes were seen
    # (bounded: a writer that acknowledges nothing at all fails at MAX_ROUNDS).
    while (
        time.monotonic() < deadline or rounds < MIN_ROUNDS or len(acked) < MIN_ACKED
    ) and rounds < MAX_ROUNDS:
        process = await start_writer(path, key_file, f"r{rounds}-", 0, 100_000)
        killed = False
        try:
            ready = asyncio.Event()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(read_acks(process, acked, ready))  # ends at EOF, after the kill
                # One kill in five lands during start-up (open, clean-up); the rest amid writes.
                if rng.random() < 0.2:
                    await asyncio.sleep(rng.uniform(0.0, 0.8))
                else:
                    async with asyncio.timeout(30):
                        await ready.wait()
                    await asyncio.sleep(rng.uniform(0.0, 0.4))
                process.send_signal(signal.SIGKILL)
                killed = True
        finally:
            if not killed:  # a second signal would reap the child behind asyncio's back
                process.kill()
            await process.wait()
        assert process.returncode == -signal.SIGKILL
        rounds += 1
        if path.parent.exists():
            mid_write += any(p.name.endswith(".tmp") for p in path.parent.iterdir())
        if path.exists():
            assert_valid_and_complete(path, acked)
    print(f"{rounds} kills ({mid_write} left a temp file), {len(acked)} acknowledged writes")
    assert rounds >= MIN_ROUNDS and len(acked) >= MIN_ACKED, (rounds, len(acked))
    # A store opening after the last kill needs no rollback and sees every write.
    store = await JsonConfigStore.open(ConfigSettings(path=path, secret_key_file=key_file))
    assert store.rollback is None
    assert_valid_and_complete(path, acked)
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


async def test_two_writer_processes_lose_no_acknowledged_write(tmp_path: Path) -> None:
    path = tmp_path / "config" / "corral.config.json"
    key_file = tmp_path / "secret.key"
    await JsonConfigStore.open(ConfigSettings(path=path, secret_key_file=key_file))
    acked: list[str] = []
    writers = [await start_writer(path, key_file, prefix, 0, 60) for prefix in ("a", "b")]
    async with asyncio.timeout(60):
        await asyncio.gather(*(read_acks(w, acked) for w in writers))
        assert [await w.wait() for w in writers] == [0, 0]
    assert len(acked) == 120
    assert_valid_and_complete(path, acked)
