"""The console as a test sees it: the steps a person takes, each waiting (bounded) for it."""

from __future__ import annotations

import time
from typing import Any

from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from tests.console.harness import wait_for

PHAXIO = "dev.corral.phaxio-fax"
HTTP_FAX = "dev.corral.http-fax-example"
TWILIO = "dev.corral.twilio-sms"


class Console:
    """One browser tab on the console of one service."""

    def __init__(self, driver: Any, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url

    # -- navigation and session ----------------------------------------------------------------

    def open_fresh(self) -> None:
        """Load the console signed out (this tab's sessionStorage emptied)."""
        # Cleared on a page of the same origin that runs no script, so that no sign-in still
        # in flight on the console can store its key again.
        self.driver.get(self.base_url + "/healthz")
        self.driver.execute_script("sessionStorage.clear()")
        self.driver.get(self.base_url + "/admin/")
        wait_for(self.driver, lambda d: self.by_id("api-key").is_displayed())

    def sign_in(self, key: str) -> None:
        """Type a key and submit the sign-in form."""
        field = self.by_id("api-key")
        field.clear()
        field.send_keys(key)
        self.by_id("sign-in").click()

    def wait_signed_in(self) -> None:
        """Wait for the console and its plugin categories."""
        wait_for(self.driver, lambda d: self.by_id("console-view").is_displayed())
        wait_for(self.driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#categories .category"))

    def sign_in_error(self) -> str:
        """Wait for the sign-in error and return its text."""
        return str(wait_for(self.driver, lambda d: self.by_id("sign-in-error").text.strip()))

    def stored_key(self) -> str | None:
        """Return the key this tab's sessionStorage holds."""
        key: str | None = self.driver.execute_script(
            "return sessionStorage.getItem('corral.apiKey')"
        )
        return key

    def sign_out(self) -> None:
        """Click Sign out and wait for the sign-in form."""
        self.by_id("sign-out").click()
        wait_for(self.driver, lambda d: self.by_id("api-key").is_displayed())

    def switch_tenant(self, tenant: str) -> None:
        """Type a tenant id and switch to it."""
        field = self.by_id("tenant")
        field.clear()
        field.send_keys(tenant)
        self.by_id("tenant-apply").click()
        wait_for(self.driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#categories .category"))

    def tab(self, name: str) -> None:
        """Open the Plugins, Workers or Registry tab."""
        self.by_id(f"tab-{name}").click()
        wait_for(self.driver, lambda d: self.by_id(f"{name}-view").is_displayed())

    # -- plugins -------------------------------------------------------------------------------

    def open_provider(self, category: str, plugin_id: str) -> None:
        """Open a category and choose one provider in it; wait for that provider's form."""
        self.tab("plugins")
        button = self.driver.find_element(
            By.CSS_SELECTOR, f'#categories .category[data-category="{category}"]'
        )
        button.click()
        selects = self.driver.find_elements(By.ID, "provider-select")
        if selects:
            wait_for(self.driver, lambda d: self.by_id("provider-select").is_displayed())
            Select(self.by_id("provider-select")).select_by_value(plugin_id)
        wait_for(
            self.driver,
            lambda d: d.find_elements(
                By.CSS_SELECTOR, f'#settings-form[data-plugin-id="{plugin_id}"]'
            ),
        )

    def field(self, name: str) -> WebElement:
        """Return the form control of a setting."""
        return self.by_id(f"field-{name}")

    def set_field(self, name: str, value: str) -> None:
        """Replace a text setting's value."""
        control = self.field(name)
        control.clear()
        if value:
            control.send_keys(value)

    def set_enabled(self, enabled: bool) -> None:
        """Tick or untick "Enabled for <tenant>"."""
        box = self.by_id("plugin-enabled")
        if box.is_selected() != enabled:
            box.click()

    def save(self) -> None:
        """Submit the settings form."""
        self.by_id("save").click()

    def wait_saved(self) -> str:
        """Wait for the save to succeed; return the status line (`Saved. Workers: ...`)."""
        return str(
            wait_for(self.driver, lambda d: _text_if(d, "save-status", lambda t: "Saved" in t))
        )

    def field_error(self, name: str) -> str:
        """Wait for the error shown next to a setting and return it."""
        return str(wait_for(self.driver, lambda d: _text_if(d, f"error-{name}", bool)))

    def activation(self, verb: str) -> str:
        """Click Activate or Deactivate; return the status line once the panel shows it."""
        self.by_id(verb).click()
        done = "Activated" if verb == "activate" else "Deactivated"
        return str(
            wait_for(self.driver, lambda d: _text_if(d, "activation-status", lambda t: done in t))
        )

    # -- workers -------------------------------------------------------------------------------

    def ready_pid(self, worker_id: str, other_than: int | None = None) -> int:
        """Wait until the Workers view shows the worker ready (with a pid not `other_than`)."""

        def ready(driver: Any) -> int | None:
            rows = driver.find_elements(By.CSS_SELECTOR, f'tr[data-worker-id="{worker_id}"]')
            if not rows:
                return None
            try:
                state = rows[0].find_element(By.CSS_SELECTOR, "td.state").text
                pid_text = rows[0].find_element(By.CSS_SELECTOR, "td.pid").text
            except (StaleElementReferenceException, NoSuchElementException):
                return None
            if state != "ready" or not pid_text.isdigit() or int(pid_text) == other_than:
                return None
            return int(pid_text)

        last_click = [time.monotonic()]

        def refreshed(driver: Any) -> int | None:
            pid = ready(driver)
            if pid is None and time.monotonic() - last_click[0] >= 1.0:
                last_click[0] = time.monotonic()
                self.by_id("workers-refresh").click()  # the view polls only while settling
            return pid

        return int(wait_for(self.driver, refreshed, timeout_s=30))

    def restart(self, worker_id: str) -> None:
        """Click a worker's Restart button."""
        self.driver.find_element(
            By.CSS_SELECTOR, f'button.restart[data-worker-id="{worker_id}"]'
        ).click()

    # -- helpers -------------------------------------------------------------------------------

    def by_id(self, element_id: str) -> WebElement:
        """Return the element with this id."""
        element: WebElement = self.driver.find_element(By.ID, element_id)
        return element


def _text_if(driver: Any, element_id: str, accept: Any) -> str | None:
    try:
        text = str(driver.find_element(By.ID, element_id).text.strip())
    except (StaleElementReferenceException, NoSuchElementException):
        return None
    return text if accept(text) else None
