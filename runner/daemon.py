"""The daemon's life: start the service, bind HTTP(S), tell systemd, serve until a signal, stop.

SIGTERM or SIGINT stops accepting connections, lets in-flight requests finish within the grace
period, stops the workers and returns 0; a second one abandons that, kills every child process
and returns 128 + the signal number. SIGHUP calls `service.reload()` (when this build has it)
and never stops the daemon, whatever the reload does. Settings come from `runner.daemon_settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import ssl
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Final

import psutil
from aiohttp import web

from . import __version__
from .daemon_settings import DaemonSettings
from .errors import RunnerError
from .paths import default_state_dir
from .sd_notify import Notifier, watchdog, watchdog_interval_s
from .service import Service, ServiceSettings

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
WORKERS_STOP_S: Final = 60.0  # service.close() drains and stops every worker within this
KILL_WAIT_S: Final = 5.0
_log = logging.getLogger(__name__)


class TlsError(RunnerError):
    """The TLS certificate or key cannot be loaded; `path` names the certificate."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot load the TLS certificate {path} with its key: {reason}")
        self.path = path


def service_settings(settings: DaemonSettings, environ: Mapping[str, str]) -> ServiceSettings:
    """Build what `Service.start` reads: `environ` (from `to_environ`) plus the trust file paths."""
    state_dir = settings.state_dir or default_state_dir(environ)
    base = ServiceSettings.from_env(state_dir, environ)
    host = base.host
    if settings.allowlist_path is not None:
        host = replace(host, allowlist_path=settings.allowlist_path)
    if settings.checksums_path is not None:
        host = replace(host, checksums_path=settings.checksums_path)
    return replace(base, host=host)


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """Return a server context for `cert` and `key`, TLS 1.2 or newer; raise TlsError. Blocks."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError included; the message names no key material
        raise TlsError(cert, exc.strerror or str(exc)) from None
    return context


class SignalQueue:
    """Signals as a bounded queue: the handler only enqueues (style: no work in handlers)."""

    def __init__(self, signals: tuple[int, ...] = (*STOP_SIGNALS, signal.SIGHUP)) -> None:
        self._loop = asyncio.get_running_loop()
        self._signals = signals
        self._queue: asyncio.Queue[int] = asyncio.Queue(maxsize=32)
        for signum in signals:
            self._loop.add_signal_handler(signum, self._put, signum)

    def _put(self, signum: int) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # 32 pending signals say enough
            self._queue.put_nowait(signum)

    async def get(self) -> int:
        """Return the next signal received."""
        return await self._queue.get()

    async def next_stop(self) -> int:
        """Return the next SIGTERM or SIGINT, skipping others."""
        while (signum := await self._queue.get()) not in STOP_SIGNALS:
            _log.info("ignoring %s while stopping", signal.Signals(signum).name)
        return signum

    def close(self) -> None:
        """Restore the default handlers."""
        for signum in self._signals:
            self._loop.remove_signal_handler(signum)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit and return it.

    Each live worker holds 4 descriptors in the host and 1 in the fork-server (which inherits
    the limit): the common soft default of 1,024 would stop at ~250 workers.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            _log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return soft


async def run(settings: DaemonSettings, environ: Mapping[str, str], notifier: Notifier) -> int:
    """Serve until stopped; return the exit status (0 after a graceful stop)."""
    signals = SignalQueue()
    raise_fd_limit()
    try:
        context = None
        if settings.tls_cert is not None and settings.tls_key is not None:
            context = await asyncio.to_thread(tls_context, settings.tls_cert, settings.tls_key)
        notifier.notify("STATUS=starting: opening the store, verifying plugins")
        service = await Service.start(service_settings(settings, environ))
        runner = web.AppRunner(
            service.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=settings.shutdown_grace_seconds,
        )
        try:
            await runner.setup()
            site = web.TCPSite(
                runner, settings.listen_host, settings.listen_port, ssl_context=context
            )
            await site.start()
        except BaseException:
            await runner.cleanup()
            await service.close()
            raise
        # Everything loaded so far lives as long as the daemon: keep it out of the collector's
        # scans (measured: -17% host CPU per webhook request, docs/performance.md).
        gc.freeze()
        url = _announce(service, settings)
        notifier.notify("READY=1", f"STATUS=serving on {url}")
        async with watchdog(notifier, watchdog_interval_s()):
            signum = await _serve_until_stop(signals, service, notifier, url)
            name = signal.Signals(signum).name
            _log.info("%s: stopping (grace %.0f s)", name, settings.shutdown_grace_seconds)
            notifier.notify("STOPPING=1", f"STATUS=stopping on {name}: finishing requests")
            return await _stop(runner, service, signals, settings.shutdown_grace_seconds)
    finally:
        signals.close()


def _announce(service: Service, settings: DaemonSettings) -> str:
    scheme = "https" if settings.is_tls else "http"
    host = settings.listen_host
    url = f"{scheme}://{f'[{host}]' if ':' in host else host}:{settings.listen_port}/"
    loaded = ", ".join(sorted(service.host.plugins)) or "none"
    key_note = (
        f"; bootstrap API key in {service.bootstrap_key_file}" if service.bootstrap_key_file else ""
    )
    _log.info(
        "%s",
        f"corral {__version__}: {url} (state {service.host.settings.state_dir}, config "
        f"{service.store.path}, profile {service.host.settings.profile}, sandbox "
        f"{service.host.sandbox.settings.mode}); verified plugins: {loaded}; "
        f"{service.restored} activation(s) restored{key_note}. Admin API at /api/v1 "
        f"(OpenAPI: /api/v1/openapi.json); webhooks at /webhook/{{slug}}/{{tenant}}/....",
    )
    return url


async def _serve_until_stop(
    signals: SignalQueue, service: Service, notifier: Notifier, url: str
) -> int:
    """Run reloads on SIGHUP (one at a time) until SIGTERM or SIGINT; return that signal."""
    reloading: asyncio.Task[None] | None = None
    try:
        while True:
            signum = await signals.get()
            if signum in STOP_SIGNALS:
                return signum
            if reloading is not None and not reloading.done():
                _log.info("SIGHUP: a reload is already running")
                continue
            reloading = asyncio.create_task(_reload(service, notifier, url), name="reload")
    finally:
        if reloading is not None:
            reloading.cancel()  # stopping wins over a reload still draining
            await asyncio.wait([reloading])


async def _reload(service: Service, notifier: Notifier, url: str) -> None:
    """Call `service.reload()` if this build has one; log the outcome; never raise."""
    reload = getattr(service, "reload", None)
    if reload is None:
        _log.warning("SIGHUP: this build cannot reload; restart corral to apply changes")
        return
    notifier.reloading()
    started = time.monotonic()
    try:
        report = await reload()
    except Exception:  # a reload must never bring the daemon down
        _log.error("reload failed; the previous state stays in force", exc_info=True)
    else:
        took = time.monotonic() - started
        summary = report.summary() if hasattr(report, "summary") else str(report)
        if getattr(report, "ok", True):
            _log.info("reload finished in %.1f s: %s", took, summary)
        else:  # some part was invalid and kept its old state
            _log.warning("reload finished in %.1f s with problems: %s", took, summary)
    finally:
        notifier.notify("READY=1", f"STATUS=serving on {url}")


async def _stop(
    runner: web.AppRunner, service: Service, signals: SignalQueue, grace_s: float
) -> int:
    """Stop gracefully, unless a second signal (or a failure) forces the exit."""
    graceful = asyncio.create_task(_graceful(runner, service), name="graceful-stop")
    second = asyncio.create_task(signals.next_stop(), name="second-signal")
    try:
        await asyncio.wait([graceful, second], return_when=asyncio.FIRST_COMPLETED)
        if graceful.done() and not graceful.cancelled() and graceful.exception() is None:
            _log.info("stopped cleanly")
            return 0
        if second.done():
            signum = second.result()
            status = 128 + signum
            _log.error(
                "second %s: forcing the exit (status %d) and killing every worker",
                signal.Signals(signum).name,
                status,
            )
        else:
            _log.error(
                "the graceful stop failed; killing every worker", exc_info=graceful.exception()
            )
            status = 1
        # Kill first: whatever the graceful stop still waits for (a drain, a worker) is then gone.
        killed = await asyncio.to_thread(kill_descendants)
        _log.warning("killed %d child process(es)", len(killed))
        return status
    finally:
        for task in (graceful, second):
            task.cancel()
        await asyncio.wait([graceful, second], timeout=KILL_WAIT_S)


async def _graceful(runner: web.AppRunner, service: Service) -> None:
    """Close the listener, let in-flight requests finish (aiohttp bounds it), stop the workers."""
    await runner.cleanup()  # site.stop closes the socket; then the shutdown_timeout wait
    async with asyncio.timeout(WORKERS_STOP_S):
        await service.close()


def kill_descendants() -> list[int]:
    """SIGKILL every process below this one and wait (bounded) until they are gone. Blocks.

    Zombies left for the event loop's child watcher count as gone: waiting for them here would
    steal their exit status.
    """
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline and any(_is_alive(c) for c in children):
        time.sleep(0.02)
    return [c.pid for c in children]


def _is_alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
