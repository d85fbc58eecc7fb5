"""A config-store writer process for the crash and multi-process tests.

Usage: config_writer.py CONFIG_PATH KEY_FILE PREFIX START COUNT

Opens the store, prints `ready`, then performs COUNT writes; write i sets the tenant setting
`<PREFIX><i>` to i and the secret `token` of plugin `p` to `secret-<PREFIX><i>`. After each write
is acknowledged by the store (it returned, so it is durable), prints `ack <PREFIX><i>`.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from runner.config_model import ConfigDocument
from runner.config_settings import ConfigSettings
from runner.config_store import JsonConfigStore

TENANT = "t1"
PLUGIN = "p"


def secret_fields(plugin_id: str) -> frozenset[str]:
    return frozenset({"token"}) if plugin_id == PLUGIN else frozenset()


async def main(path: Path, key_file: Path, prefix: str, start: int, count: int) -> None:
    settings = ConfigSettings(path=path, secret_key_file=key_file, backups=3)
    store = await JsonConfigStore.open(settings, secret_fields=secret_fields)
    print("ready", flush=True)
    for i in range(start, start + count):
        name = f"{prefix}{i}"

        def write(doc: ConfigDocument, name: str = name, i: int = i) -> ConfigDocument:
            settings = doc.tenant(TENANT).settings
            setattr(settings, name, i)  # an extra (free-form) tenant setting
            settings.plugins[PLUGIN] = {"token": f"secret-{name}", "n": i}
            return doc

        await store.update(write)
        print(f"ack {name}", flush=True)


if __name__ == "__main__":
    path, key_file, prefix, start, count = sys.argv[1:6]
    asyncio.run(main(Path(path), Path(key_file), prefix, int(start), int(count)))
