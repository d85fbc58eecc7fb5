"""A real corral service on a loopback port, and a real headless Chromium driven by selenium.

The service runs in its own thread with its own event loop, so browser tests stay plain
synchronous code; it trusts the shipped plugins through the repository's own allowlist and
checksums (so outbound fax has two providers: Phaxio and the declarative HTTP example).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from runner.service import Service, ServiceSettings

T = TypeVar("T")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMEDRIVER_PATHS = ("chromedriver", "/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver")
# Without the background-networking flags Chromium stalls on a closed network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


@dataclass(frozen=True)
class Browsers:
    """Where Chromium and its driver are."""

    chromium: str
    chromedriver: str


def find_chromium() -> Browsers | None:
    """Return Chromium and chromedriver, or None when either cannot be found."""
    chromium = next((p for n in CHROMIUM_NAMES if (p := shutil.which(n))), None)
    driver = next((p for n in CHROMEDRIVER_PATHS if (p := shutil.which(n))), None)
    if chromium is None or driver is None:
        return None
    return Browsers(chromium, driver)


@dataclass
class Answer:
    """An API answer read with urllib: status, headers, JSON body (or None)."""

    status: int
    headers: dict[str, str]
    body: Any


class ServiceThread:
    """`corral`'s service (store, audit, sandboxed workers) serving HTTP from its own thread."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.url = ""
        self.key = ""
        self.service: Service | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="corral-console", daemon=True)
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        """Start the service; raise what stopped it from starting."""
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise TimeoutError("the service did not start in time")
        if self._error is not None:
            raise RuntimeError("the service did not start") from self._error

    def stop(self) -> None:
        """Stop serving and close the service (workers stopped, fork-server closed)."""
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STOP_TIMEOUT_S)
        if self._thread.is_alive():
            raise TimeoutError("the service did not stop in time")

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the service's loop (to look at its store) and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(STOP_TIMEOUT_S)

    def call(self, method: str, path: str, body: Any = None, key: str | None = None) -> Answer:
        """Send one API request with the bootstrap key (or `key`)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("X-API-Key", key or self.key)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, headers, raw = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            status, headers, raw = exc.code, dict(exc.headers), exc.read()
            exc.close()
        is_json = headers.get("Content-Type", "").startswith("application/json")
        return Answer(status, headers, json.loads(raw) if is_json else raw)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        environ = {
            **os.environ,
            "CORRAL_CONFIG_PATH": str(self.state / "config" / "corral.config.json"),
            "CORRAL_AUDIT_FSYNC": "false",
            "CORRAL_RATE_FAILED_AUTH_PER_MINUTE": "1000",
            "CORRAL_RATE_READS_PER_MINUTE": "100000",
            "CORRAL_RATE_WRITES_PER_MINUTE": "100000",
        }
        runner: web.AppRunner | None = None
        try:
            settings = ServiceSettings.from_env(self.state, environ)
            self.service = await Service.start(settings)
            runner = web.AppRunner(self.service.app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"
            self.key = settings.bootstrap_key_path.read_text().strip()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            if runner is not None:
                await runner.cleanup()
            if self.service is not None:
                await self.service.close()
            return
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await self.service.close()


@contextmanager
def running_service() -> Iterator[ServiceThread]:
    """Start a service over a fresh state directory; stop it and remove the directory."""
    state = Path(tempfile.mkdtemp(prefix="corral-console-", dir="/tmp"))
    os.chmod(state, 0o755)  # worker uids must traverse it
    thread = ServiceThread(state)
    try:
        thread.start()
        yield thread
    finally:
        thread.stop()
        shutil.rmtree(state, ignore_errors=True)


@contextmanager
def chromium(browsers: Browsers, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """Yield a headless Chromium webdriver with a fresh profile; quit it afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    profile = tempfile.mkdtemp(prefix="corral-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browsers.chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=DriverService(browsers.chromedriver))
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def script_errors(driver: Any) -> list[str]:
    """Return the browser's log lines about script errors and policy (CSP) violations."""
    return [
        str(entry["message"])
        for entry in driver.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Uncaught" in entry["message"]
    ]


def wait_for(driver: Any, condition: Callable[[Any], Any], timeout_s: float = 20.0) -> Any:
    """Wait (bounded) until `condition(driver)` is truthy and return its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(condition)
