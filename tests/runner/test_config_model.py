"""The config document model and the store's settings from the environment."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from runner.config_errors import ConfigInvalidError, ConfigSettingsError
from runner.config_model import (
    ApiKeyRecord,
    ConfigDocument,
    Features,
    default_document,
    parse_document,
)
from runner.config_settings import ConfigSettings, FeatureOverrides
from runner.config_store import JsonConfigStore

HASH = "sha256:" + "ab" * 32


def test_the_default_document() -> None:
    doc = default_document()
    assert doc.model_dump(mode="json") == {
        "version": 1,
        "tenants": {},
        "api_keys": [],
        "features": {"v3_plugins": True, "plugin_install": False},
    }


def test_a_full_document_round_trips() -> None:
    raw = {
        "version": 1,
        "tenants": {
            "global": {
                "settings": {"plugins": {"dev.corral.audit": {"bucket": "b"}}},
                "activations": [{"plugin_id": "dev.corral.audit", "enabled": True}],
            },
            "3f1c2a9e-0000-4000-8000-000000000001": {
                "settings": {"branding": {"colour": "teal"}, "plugins": {}},
                "activations": [{"plugin_id": "dev.corral.twilio-sms", "enabled": False}],
            },
        },
        "api_keys": [
            {
                "id": "0123456789abcdef",
                "name": "ops",
                "hash": HASH,
                "scopes": ["admin:plugins:read"],
                "tenant_id": None,
                "created_at": "2025-01-01T00:00:00Z",
                "revoked_at": None,
            }
        ],
        "features": {"v3_plugins": False, "plugin_install": True},
    }
    doc = parse_document(raw, "test")
    assert doc.tenants["global"].activation("dev.corral.audit") is not None
    assert doc.tenants["global"].activation("other") is None
    again = parse_document(doc.model_dump(mode="json"), "again")
    assert again == doc
    assert doc.api_keys[0].is_active


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"version": 1, "surprise": 1}, "$.surprise"),
        ({"version": 1, "tenants": {"bad id": {}}}, "$.tenants.bad id"),
        ({"version": 1, "tenants": {"t": {"activations": [{"plugin_id": "p", "x": 1}]}}}, "x"),
        ({"version": 1, "features": {"v3_plugins": "perhaps"}}, "$.features.v3_plugins"),
        ({"version": 1, "api_keys": [{"id": "k", "hash": "plaintext-key"}]}, "hash"),
        ({"version": "1"}, "$.version"),
        ([], "$"),
    ],
)
def test_invalid_documents_name_the_path(raw: object, path: str) -> None:
    with pytest.raises(ConfigInvalidError) as info:
        parse_document(raw, "test")
    assert any(path in problem for problem in info.value.problems), info.value.problems


def test_duplicates_are_refused() -> None:
    key = {"id": "k", "hash": HASH, "created_at": "2025-01-01T00:00:00Z"}
    with pytest.raises(ConfigInvalidError, match="used twice"):
        parse_document({"version": 1, "api_keys": [key, key]}, "test")
    twice = [{"plugin_id": "p"}, {"plugin_id": "p"}]
    with pytest.raises(ConfigInvalidError, match="activated twice"):
        parse_document({"version": 1, "tenants": {"t": {"activations": twice}}}, "test")


def test_a_newer_schema_version_is_refused() -> None:
    with pytest.raises(ConfigInvalidError, match="newer than this corral"):
        parse_document({"version": 2}, "test")


def test_validation_problems_never_quote_values() -> None:
    secret = "sk_live_not-in-any-message"
    raw = {"version": 1, "tenants": {"t": {"activations": [{"plugin_id": 1, "x": secret}]}}}
    with pytest.raises(ConfigInvalidError) as info:
        parse_document(raw, "test")
    assert secret not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_api_keys_need_an_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone"):
        ApiKeyRecord(id="k", hash=HASH, created_at=datetime(2025, 1, 1))
    ApiKeyRecord(id="k", hash=HASH, created_at=datetime(2025, 1, 1, tzinfo=UTC))


def test_tenant_adds_a_missing_tenant() -> None:
    doc = ConfigDocument()
    doc.tenant("t1").settings.plugins["p"] = {"a": 1}
    assert doc.tenants["t1"].settings.plugins == {"p": {"a": 1}}


# Settings.


def test_settings_defaults(tmp_path: Path) -> None:
    settings = ConfigSettings.from_env({}, tmp_path)
    assert settings.path == tmp_path / "config" / "corral.config.json"
    assert settings.key_file == tmp_path / "config" / "corral.secret.key"
    assert settings.backups == 5 and not settings.is_hipaa
    assert settings.features == FeatureOverrides()


def test_settings_accept_the_faxbot_names(tmp_path: Path) -> None:
    settings = ConfigSettings.from_env(
        {
            "FAXBOT_CONFIG_PATH": "/etc/faxbot/faxbot.config.json",
            "FEATURE_V3_PLUGINS": "false",
            "FEATURE_PLUGIN_INSTALL": "true",
            "CORRAL_SECRET_KEY_FILE": "keys/secret.key",
            "CORRAL_PROFILE": "HIPAA",
            "CORRAL_CONFIG_BACKUPS": "2",
        },
        tmp_path,
    )
    assert settings.path == Path("/etc/faxbot/faxbot.config.json")
    assert settings.key_file == tmp_path / "keys" / "secret.key"
    assert settings.features == FeatureOverrides(v3_plugins=False, plugin_install=True)
    assert settings.is_hipaa and settings.backups == 2


def test_the_corral_names_win_over_the_aliases(tmp_path: Path) -> None:
    settings = ConfigSettings.from_env(
        {
            "CORRAL_CONFIG_PATH": "mine.json",
            "FAXBOT_CONFIG_PATH": "theirs.json",
            "CORRAL_FEATURE_V3_PLUGINS": "on",
            "FEATURE_V3_PLUGINS": "off",
        },
        tmp_path,
    )
    assert settings.path == tmp_path / "mine.json"
    assert settings.features.v3_plugins is True


@pytest.mark.parametrize(
    "environ",
    [
        {"FEATURE_V3_PLUGINS": "maybe"},
        {"CORRAL_CONFIG_BACKUPS": "-1"},
        {"CORRAL_CONFIG_BACKUPS": "x"},
    ],
)
def test_unusable_settings_are_refused(tmp_path: Path, environ: dict[str, str]) -> None:
    with pytest.raises(ConfigSettingsError):
        ConfigSettings.from_env(environ, tmp_path)


def test_feature_overrides_apply_over_the_document() -> None:
    stored = Features(v3_plugins=True, plugin_install=False)
    assert FeatureOverrides().apply(stored) == stored
    assert FeatureOverrides(v3_plugins=False).apply(stored) == Features(
        v3_plugins=False, plugin_install=False
    )


async def test_the_store_applies_the_environment_over_the_document(tmp_path: Path) -> None:
    settings = ConfigSettings.from_env({"FEATURE_V3_PLUGINS": "false"}, tmp_path)
    store = await JsonConfigStore.open(settings)
    snapshot = await store.load()
    assert snapshot.document.features.v3_plugins is True  # the document keeps its own value
    assert store.features(snapshot) == Features(v3_plugins=False, plugin_install=False)
