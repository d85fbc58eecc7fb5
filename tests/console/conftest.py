"""Fixtures for the console's browser tests: one service and one Chromium per module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.console.harness import (
    Browsers,
    ServiceThread,
    chromium,
    find_chromium,
    running_service,
    script_errors,
)
from tests.console.pages import Console


@pytest.fixture(scope="module")
def browsers() -> Browsers:
    """Chromium and chromedriver (`make test` installs Debian's); skip only if absent."""
    found = find_chromium()
    if found is None:
        pytest.skip("chromium and chromedriver not found (make test installs them)")
    return found


@pytest.fixture(scope="module")
def served() -> Iterator[ServiceThread]:
    """A real service with sandboxed workers, on a loopback port."""
    with running_service() as service:
        yield service


@pytest.fixture(scope="module")
def driver(browsers: Browsers) -> Iterator[Any]:
    """One headless Chromium for the module."""
    with chromium(browsers) as driver:
        yield driver


@pytest.fixture
def console(driver: Any, served: ServiceThread) -> Iterator[Console]:
    """The console, loaded signed out; afterwards, no script error nor CSP violation logged."""
    page = Console(driver, served.url)
    script_errors(driver)  # drop what earlier tests left in the log
    page.open_fresh()
    yield page
    assert script_errors(driver) == []
