"""The admin console, end to end: a real service with sandboxed workers and a real Chromium."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.console.harness import ServiceThread, wait_for
from tests.console.pages import HTTP_FAX, PHAXIO, TWILIO, Console

UNKNOWN_KEY = "crl_" + "0" * 16 + "_" + "A" * 43
PHAXIO_WORKER = f"tenant-a:{PHAXIO}:0"
TYPED_SECRET = "s3cret-typed-in-the-browser"
PLANTED_SECRET = "planted-secret-never-shown"


def test_console_is_served_with_a_strict_policy(served: ServiceThread) -> None:
    page = served.call("GET", "/admin/")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"
    assert b"<script>" not in page.body and b'type="module" src="app.js"' in page.body
    script = served.call("GET", "/admin/app.js")
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    assert "Content-Security-Policy" in script.headers
    for missing in ("/admin/nothing.js", "/admin/..%2Fconsole_routes.py", "/admin/.hidden.js"):
        assert served.call("GET", missing).status == 404, missing
    parts = urlsplit(served.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request("GET", "/admin")
        answer = connection.getresponse()
        assert (answer.status, answer.getheader("Location")) == (308, "/admin/")
        answer.read()
    finally:
        connection.close()
    document = served.call("GET", "/api/v1/openapi.json").body
    console_ops = [document["paths"][p]["get"] for p in ("/admin", "/admin/", "/admin/{name}")]
    assert all(op["tags"] == ["console"] and "security" not in op for op in console_ops)


def test_a_wrong_key_shows_the_apis_error_and_is_not_kept(console: Console) -> None:
    console.sign_in(UNKNOWN_KEY)
    assert "invalid API key" in console.sign_in_error()
    assert console.stored_key() is None
    assert not console.by_id("console-view").is_displayed()


def test_a_field_error_then_a_valid_save_then_the_worker_restarts(
    console: Console, served: ServiceThread
) -> None:
    console.sign_in(served.key)
    console.wait_signed_in()
    assert console.stored_key() == served.key
    assert console.by_id("api-key").get_attribute("value") == ""
    console.switch_tenant("tenant-a")
    console.open_provider("outbound_fax", PHAXIO)
    console.set_field("api_key", "pk-test-1")
    console.set_field("api_secret", TYPED_SECRET)
    console.set_field("callback_url", "ftp://fax.example/status")
    console.set_enabled(True)
    console.save()

    error = console.field_error("callback_url")
    assert "does not satisfy pattern" in error
    beside = console.driver.find_element(By.CSS_SELECTOR, '.field[data-field="callback_url"]')
    assert beside.find_element(By.CLASS_NAME, "field-error").text == error
    assert console.field("callback_url").get_attribute("aria-invalid") == "true"
    assert "validation_failed" in console.by_id("form-error").text

    console.set_field("callback_url", "https://fax.example/status")
    console.set_field("caller_id", "+15551230001")
    console.save()
    assert "started" in console.wait_saved()
    assert console.field("api_secret").get_attribute("value") == ""
    assert console.field("api_secret").get_attribute("placeholder") == "***"
    assert TYPED_SECRET not in console.driver.page_source

    console.tab("workers")
    first = console.ready_pid(PHAXIO_WORKER)

    console.open_provider("outbound_fax", PHAXIO)
    console.set_field("caller_id", "+15551230002")
    console.save()
    assert "switched" in console.wait_saved()  # new settings: a new worker took over
    console.tab("workers")
    second = console.ready_pid(PHAXIO_WORKER, other_than=first)

    console.restart(PHAXIO_WORKER)
    third = console.ready_pid(PHAXIO_WORKER, other_than=second)
    assert len({first, second, third}) == 3
    kept = served.run(served.service.store.plugin_config("tenant-a", PHAXIO))  # type: ignore[union-attr]
    assert kept["api_secret"] == TYPED_SECRET  # sent back as *** and kept
    assert kept["caller_id"] == "+15551230002"

    console.open_provider("outbound_fax", HTTP_FAX)  # switching: a guide, and one form only
    guide = console.by_id("switch-guide").text
    assert "Enabled now for tenant-a: Phaxio Fax." in guide
    assert "public fax-status webhook URL" not in console.by_id("category-panel").text


def test_deactivate_and_activate_for_a_tenant(console: Console, served: ServiceThread) -> None:
    settings = {"api_key": "pk-act", "api_secret": "secret-act"}
    body = {"enabled": False, "settings": settings}
    assert served.call("PUT", f"/plugins/{PHAXIO}/config?tenant_id=tenant-act", body).status == 200
    console.sign_in(served.key)
    console.wait_signed_in()
    console.switch_tenant("tenant-act")
    console.open_provider("outbound_fax", PHAXIO)
    assert console.by_id("activation-state").text == "not enabled"
    assert "started" in console.activation("activate")
    assert console.by_id("activation-state").text == "enabled"
    assert console.by_id("plugin-enabled").is_selected()
    assert "stopped" in console.activation("deactivate")
    assert console.by_id("activation-state").text == "not enabled"


def test_secrets_are_masked_and_kept_when_sent_back(
    console: Console, served: ServiceThread
) -> None:
    settings = {"api_key": "pk-masked", "api_secret": PLANTED_SECRET}
    body = {"enabled": False, "settings": settings}
    assert served.call("PUT", f"/plugins/{PHAXIO}/config?tenant_id=tenant-s", body).status == 200
    console.sign_in(served.key)
    console.wait_signed_in()
    console.switch_tenant("tenant-s")
    console.open_provider("outbound_fax", PHAXIO)
    secret = console.field("api_secret")
    assert secret.get_attribute("type") == "password"
    assert (secret.get_attribute("value"), secret.get_attribute("placeholder")) == ("", "***")
    assert console.field("callback_token").get_attribute("placeholder") == "not set"
    assert PLANTED_SECRET not in console.driver.page_source
    console.set_field("caller_id", "+15551239999")
    console.save()
    console.wait_saved()
    stored = served.run(served.service.store.plugin_config("tenant-s", PHAXIO))  # type: ignore[union-attr]
    assert stored == {**settings, "caller_id": "+15551239999"}
    storage = console.driver.execute_script(
        "return JSON.stringify([Object.keys(sessionStorage).sort(), Object.keys(localStorage)])"
    )
    assert storage == '[["corral.apiKey","corral.tenant"],[]]'


def test_only_the_selected_providers_settings_and_help_are_shown(
    console: Console, served: ServiceThread
) -> None:
    console.sign_in(served.key)
    console.wait_signed_in()
    console.switch_tenant("tenant-iso")
    console.open_provider("outbound_fax", HTTP_FAX)
    options = Select(console.by_id("provider-select")).options
    assert {o.get_attribute("value") for o in options} == {PHAXIO, HTTP_FAX}
    panel = console.by_id("category-panel").text
    assert len(console.driver.find_elements(By.CSS_SELECTOR, "article.provider")) == 1
    assert "declared in provider.json" in panel
    assert "this example has no webhook route of its own" in panel
    assert "receive status callbacks" not in panel  # Phaxio plugin's own description
    assert "public fax-status webhook URL" not in panel  # Phaxio plugin's own help
    assert not console.driver.find_elements(By.ID, "field-callback_token")

    console.open_provider("outbound_fax", PHAXIO)
    panel = console.by_id("category-panel").text
    assert len(console.driver.find_elements(By.CSS_SELECTOR, "article.provider")) == 1
    assert "public fax-status webhook URL" in panel
    assert "declared in provider.json" not in panel
    assert "this example has no webhook route of its own" not in panel
    assert console.field("callback_token").is_displayed()


def test_a_tenant_key_sees_only_its_tenant(console: Console, served: ServiceThread) -> None:
    created = served.call(
        "POST",
        "/api/v1/admin/keys",
        {"name": "tenant-b reader", "scopes": ["admin:plugins:read"], "tenant_id": "tenant-b"},
    )
    assert created.status == 201
    console.sign_in(created.body["key"])
    console.wait_signed_in()
    tenant = console.by_id("tenant")
    assert tenant.get_attribute("value") == "tenant-b"
    assert tenant.get_attribute("readonly") is not None
    assert not console.by_id("tenant-apply").is_displayed()
    console.tab("workers")
    error = wait_for(console.driver, lambda d: console.by_id("workers-error").text)
    assert "forbidden" in error
    console.sign_out()
    assert console.stored_key() is None


def test_the_registry_is_searchable(console: Console, served: ServiceThread) -> None:
    console.sign_in(served.key)
    console.wait_signed_in()
    console.tab("registry")
    every = served.call("GET", "/plugin-registry").body["providers"]
    wanted = served.call("GET", "/plugin-registry?q=twilio").body["providers"]
    assert len(every) > len(wanted) >= 1
    shown = "li.card[data-provider-id]"
    wait_for(console.driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, shown)) == len(every))
    console.by_id("registry-q").send_keys("twilio")
    console.driver.find_element(By.CSS_SELECTOR, "#registry-form button").click()
    wait_for(console.driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, shown)) == len(wanted))
    cards = {
        c.get_attribute("data-provider-id"): c
        for c in console.driver.find_elements(By.CSS_SELECTOR, shown)
    }
    assert set(cards) == {p["id"] for p in wanted} and TWILIO in cards
    assert "installed" in cards[TWILIO].text
