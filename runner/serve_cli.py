"""The `corral serve` command: open the service, bind HTTP, run until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from protocol import tune_allocator

from . import __version__
from .paths import default_state_dir
from .service import Service, ServiceSettings


def _serve(args: argparse.Namespace) -> int:
    return asyncio.run(_serve_async(args))


async def _serve_async(args: argparse.Namespace) -> int:
    tune_allocator()  # frame-sized buffers stay in the heap instead of an mmap per call
    state_dir = args.state_dir or default_state_dir()
    service = await Service.start(ServiceSettings.from_env(state_dir))
    host = service.host
    runner = web.AppRunner(service.app, access_log=None)
    try:
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        loaded = ", ".join(sorted(host.plugins)) or "none"
        key_note = (
            f"; bootstrap API key in {service.bootstrap_key_file}"
            if service.bootstrap_key_file
            else ""
        )
        print(
            f"corral {__version__}: http://{args.host}:{args.port}/ (state {state_dir}, config "
            f"{service.store.path}, profile {host.settings.profile}, sandbox "
            f"{host.sandbox.settings.mode}); verified plugins: {loaded}; "
            f"{service.restored} activation(s) restored{key_note}. Admin API at /api/v1 "
            f"(OpenAPI: /api/v1/openapi.json); webhooks at /webhook/{{slug}}/{{tenant}}/....",
            file=sys.stderr,
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await service.close()
    return 0


def add_serve_command(commands: Any) -> None:
    """Register `serve` under the top-level `commands` subparsers."""
    serve = commands.add_parser("serve", help="run the host (HTTP on loopback by default)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    serve.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="plugin store, worker scratch and runtime (default: $CORRAL_STATE_DIR, "
        "/var/lib/corral as root, else ~/.local/state/corral)",
    )
    serve.set_defaults(func=_serve)
