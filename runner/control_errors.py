"""Errors of `runner.control`, chosen by what the caller does next; HTTP maps them in one place."""

from __future__ import annotations

from .errors import RunnerError


class PluginUnknownError(RunnerError):
    """No plugin with this id is installed and verified (404)."""

    def __init__(self, plugin_id: str) -> None:
        super().__init__(f"no installed plugin {plugin_id!r}")
        self.plugin_id = plugin_id


class PluginInUseError(RunnerError):
    """The plugin is active for `tenants`; uninstalling it needs `force` (409)."""

    def __init__(self, plugin_id: str, tenants: list[str]) -> None:
        super().__init__(
            f"{plugin_id} is active for {len(tenants)} tenant(s); deactivate it first "
            "or uninstall with force=true"
        )
        self.plugin_id = plugin_id
        self.tenants = tenants


class SettingsInvalidError(RunnerError):
    """Settings do not fit the plugin's JSON Schema (422); `problems` are `(json path, rule)`.

    The rule is named (`does not satisfy minLength 8`), never the value, which may be a secret.
    """

    def __init__(self, plugin_id: str, problems: list[tuple[str, str]]) -> None:
        super().__init__(f"the settings do not fit {plugin_id}'s schema")
        self.plugin_id = plugin_id
        self.problems = problems


class NotAppliedError(RunnerError):
    """The new settings were saved but no worker started with them, so they were taken back.

    The previous settings (and their workers) stay in force (503).
    """
