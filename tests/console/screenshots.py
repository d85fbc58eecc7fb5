"""Save screenshots of the console's main screens to docs/console/ (linked from docs/console.md).

Run from the repository root: `.venv/bin/python -m tests.console.screenshots [directory]`.
It starts a real service and a headless Chromium, like the tests, and walks the same steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

from selenium.webdriver.common.by import By

from tests.console.harness import chromium, find_chromium, running_service, wait_for
from tests.console.pages import PHAXIO, Console

REPO = Path(__file__).resolve().parents[2]
WRONG_KEY = "crl_" + "0" * 16 + "_" + "A" * 43


def main(argv: list[str]) -> int:
    """Write sign-in.png, plugin-field-error.png, workers.png and registry.png; return 0."""
    out = Path(argv[0]) if argv else REPO / "docs" / "console"
    out.mkdir(parents=True, exist_ok=True)
    browsers = find_chromium()
    if browsers is None:
        print("chromium and chromedriver not found (make test installs them)", file=sys.stderr)
        return 1
    with running_service() as served, chromium(browsers, 1280, 900) as driver:
        console = Console(driver, served.url)
        console.open_fresh()
        console.sign_in(WRONG_KEY)
        console.sign_in_error()
        _save(driver, out / "sign-in.png")

        console.sign_in(served.key)
        console.wait_signed_in()
        console.switch_tenant("tenant-a")
        console.open_provider("outbound_fax", PHAXIO)
        console.set_field("api_key", "pk-demo")
        console.set_field("api_secret", "demo-secret")
        console.set_field("caller_id", "+15551230001")
        console.set_enabled(True)
        console.save()
        console.wait_saved()
        console.set_field("callback_url", "ftp://fax.example/status")
        console.save()
        console.field_error("callback_url")
        _save(driver, out / "plugin-field-error.png")

        console.tab("workers")
        console.ready_pid(f"tenant-a:{PHAXIO}:0")
        _save(driver, out / "workers.png")

        console.tab("registry")
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.card[data-provider-id]"))
        _save(driver, out / "registry.png")
    print(f"screenshots written to {out}")
    return 0


def _save(driver: object, path: Path) -> None:
    """Save the whole page (the window grows to the page's height first)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")  # type: ignore[attr-defined]
    driver.set_window_size(1280, max(900, min(int(height) + 160, 2400)))  # type: ignore[attr-defined]
    driver.execute_script("window.scrollTo(0, 0)")  # type: ignore[attr-defined]
    driver.save_screenshot(str(path))  # type: ignore[attr-defined]
    driver.set_window_size(1280, 900)  # type: ignore[attr-defined]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
