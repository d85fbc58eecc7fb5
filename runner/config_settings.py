"""The config store's settings from the environment, with the Faxbot names accepted as aliases.

| corral name | alias | meaning |
|---|---|---|
| `CORRAL_CONFIG_PATH` | `FAXBOT_CONFIG_PATH` | the document (`<state dir>/config/...json`) |
| `CORRAL_FEATURE_V3_PLUGINS` | `FEATURE_V3_PLUGINS` | overrides `features.v3_plugins` |
| `CORRAL_PLUGIN_INSTALL` | `FEATURE_PLUGIN_INSTALL` | overrides `features.plugin_install` |

The corral name wins when both are set. docs/configuration.md lists every setting.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .config_errors import ConfigSettingsError
from .config_model import Features
from .install_remote import HIPAA_PROFILE, profile_from_env

DEFAULT_CONFIG_PATH: Final = Path("config/corral.config.json")
DEFAULT_KEY_FILE_NAME: Final = "corral.secret.key"
DEFAULT_BACKUPS: Final = 5
MAX_BACKUPS: Final = 100
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FeatureOverrides:
    """Feature flags set in the environment; None leaves the document's value in force."""

    v3_plugins: bool | None = None
    plugin_install: bool | None = None

    def apply(self, features: Features) -> Features:
        """Return `features` with the overrides applied (the document itself is unchanged)."""
        changes = {
            name: value
            for name, value in (
                ("v3_plugins", self.v3_plugins),
                ("plugin_install", self.plugin_install),
            )
            if value is not None
        }
        return features.model_copy(update=changes)


@dataclass(frozen=True, slots=True)
class ConfigSettings:
    """Where the document and its key live, how many backups to keep, and the profile."""

    path: Path = DEFAULT_CONFIG_PATH
    secret_key_file: Path | None = None  # None: `corral.secret.key` beside the document
    backups: int = DEFAULT_BACKUPS
    profile: str = "default"
    features: FeatureOverrides = field(default_factory=FeatureOverrides)

    @property
    def is_hipaa(self) -> bool:
        """Whether the HIPAA profile is in force: the key file is then required, never made."""
        return self.profile == HIPAA_PROFILE

    @property
    def key_file(self) -> Path:
        """The secret key file to use."""
        return self.secret_key_file or self.path.parent / DEFAULT_KEY_FILE_NAME

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] = os.environ,
        cwd: Path | None = None,
        *,
        state_dir: Path | None = None,
    ) -> ConfigSettings:
        """Read the settings; relative paths are taken from `cwd` (default: the working dir).

        Without `CORRAL_CONFIG_PATH` the document is `<state_dir>/config/corral.config.json`
        (the daemon and the CLI then find the same one from any directory), or
        `config/corral.config.json` below `cwd` when no state directory is given.

        Raises ConfigSettingsError on a value that cannot be used, e.g. `FEATURE_V3_PLUGINS=maybe`.
        """
        base = cwd or Path.cwd()
        path = base / (_named(environ, "CORRAL_CONFIG_PATH", "FAXBOT_CONFIG_PATH") or "")
        if path == base:
            path = (state_dir if state_dir is not None else base) / DEFAULT_CONFIG_PATH
        key_file = environ.get("CORRAL_SECRET_KEY_FILE", "").strip()
        backups_text = environ.get("CORRAL_CONFIG_BACKUPS", "").strip() or str(DEFAULT_BACKUPS)
        if not backups_text.isdigit() or not 0 <= int(backups_text) <= MAX_BACKUPS:
            raise ConfigSettingsError(f"CORRAL_CONFIG_BACKUPS={backups_text!r}: 0..{MAX_BACKUPS}")
        return cls(
            path=path,
            secret_key_file=base / key_file if key_file else None,
            backups=int(backups_text),
            profile=profile_from_env(environ),
            features=FeatureOverrides(
                v3_plugins=_flag(environ, "CORRAL_FEATURE_V3_PLUGINS", "FEATURE_V3_PLUGINS"),
                plugin_install=_flag(environ, "CORRAL_PLUGIN_INSTALL", "FEATURE_PLUGIN_INSTALL"),
            ),
        )


def _named(environ: Mapping[str, str], name: str, alias: str) -> str | None:
    value = environ.get(name, "").strip()
    aliased = environ.get(alias, "").strip()
    if value and aliased and value != aliased:
        _log.warning("%s and %s disagree; using %s", name, alias, name)
    return value or aliased or None


def _flag(environ: Mapping[str, str], name: str, alias: str) -> bool | None:
    text = _named(environ, name, alias)
    if text is None:
        return None
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigSettingsError(f"{name} (or {alias}) is {text!r}; use true or false")
