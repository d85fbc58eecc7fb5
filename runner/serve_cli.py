"""The `corral serve` command: read the settings, then serve (`runner.daemon`) or `--check` them.

Settings come from `runner.daemon_settings` (a TOML file, `CORRAL_*` variables, these flags, the
later winning). Exit status: 0 after a graceful stop or a clean check; 1 when a check fails or
the service cannot start; 2 when the settings are unusable; 128 + N after a second signal N
forced the exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from protocol import loop_factory, tune_allocator

from .daemon_settings import (
    CONFIG_FILE_VARIABLE,
    DaemonSettingsError,
    load_daemon_settings,
    to_environ,
    unknown_variables,
)
from .errors import RunnerError
from .logs import configure_logging
from .sd_notify import Notifier

_log = logging.getLogger(__name__)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "listen_host": args.host,
        "listen_port": args.port,
        "state_dir": args.state_dir,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "shutdown_grace_seconds": args.shutdown_grace,
    }


def _serve(args: argparse.Namespace) -> int:
    if args.check:
        return _check(args)
    from .daemon import kill_descendants, run  # the whole host: only when serving

    environ = dict(os.environ)
    try:
        settings = load_daemon_settings(environ, args.config, _overrides(args))
    except DaemonSettingsError as exc:
        for problem in exc.problems:
            print(f"corral serve: {problem}", file=sys.stderr)
        return 2
    for name in unknown_variables(environ):
        _log.warning("%s is not a corral setting (a typo?); it is ignored", name)
    merged = to_environ(settings, environ)
    # Code that reads os.environ directly (the worker launcher) must see the file's values too.
    # Nothing runs in other threads yet, so changing the environment here is safe.
    os.environ.update({k: v for k, v in merged.items() if os.environ.get(k) != v})
    if {"log_format", "log_level"} & settings.model_fields_set:
        configure_logging(force=True)  # `corral` set it up before the file was read
    tune_allocator()  # frame-sized buffers stay in the heap instead of an mmap per call
    notifier = Notifier.from_env(environ)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as loop_runner:
            status = loop_runner.run(run(settings, merged, notifier))
    except (RunnerError, OSError) as exc:
        print(f"corral serve: cannot start: {exc}", file=sys.stderr)
        status = 1
    finally:
        notifier.close()
    if status != 0:
        kill_descendants()  # whatever happened, no worker outlives the daemon
    return status


def _check(args: argparse.Namespace) -> int:
    from .serve_check import check, format_report  # opens every subsystem's settings

    report = check(dict(os.environ), args.config, _overrides(args))
    if args.json:
        print(json.dumps(report.as_json()))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def add_serve_command(commands: Any) -> None:
    """Register `serve` under the top-level `commands` subparsers."""
    serve = commands.add_parser(
        "serve",
        help="run the host (HTTP on loopback by default)",
        description="Serve the admin API and webhooks until SIGTERM or SIGINT (a second one "
        "forces the exit); SIGHUP reloads. Settings: docs/configuration.md; running it: "
        "docs/operations.md.",
        epilog="exit status: 0 after a graceful stop, or a clean --check; 1 when a check fails "
        "or the service cannot start; 2 when the settings are unusable; 128+N when a second "
        "signal N forced the exit",
    )
    serve.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML settings file (default: ${CONFIG_FILE_VARIABLE}, else none); "
        "CORRAL_* variables override it, these flags override both",
    )
    serve.add_argument(
        "--check",
        action="store_true",
        help="validate settings, TLS files, state dir, config store, trust files and the "
        "sandbox, print every problem, and exit (1 on any) without serving",
    )
    serve.add_argument("--json", action="store_true", help="with --check: machine-readable")
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port to bind (default 8080)")
    serve.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="plugin store, worker scratch and runtime (default: $CORRAL_STATE_DIR, "
        "/var/lib/corral as root, else ~/.local/state/corral)",
    )
    serve.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain")
    serve.add_argument("--tls-key", type=Path, default=None, help="PEM private key")
    serve.add_argument(
        "--shutdown-grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long in-flight requests may finish after SIGTERM (default 30)",
    )
    serve.set_defaults(func=_serve)
