"""The one error an install or an installed-plugin check raises, and its machine-readable reasons.

Every refusal (at install, at start-up verification, just before a spawn, at uninstall) is an
`InstallError` whose `reason` is one of `Reason`; docs/plugins.md lists them. Parsing errors of
the operator's own files (`checksums.txt`, `allowlist.toml`) are separate: they stop the host,
not one plugin.
"""

from __future__ import annotations

from enum import StrEnum

from .errors import RunnerError


class Reason(StrEnum):
    """Why a bundle was refused; stable strings for APIs, logs and the CLI's `--json`."""

    NOT_ALLOWLISTED = "not_allowlisted"
    VERSION_NOT_ALLOWED = "version_not_allowed"
    CHECKSUM_MISSING = "checksum_missing"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    PINNED_DIGEST_MISMATCH = "pinned_digest_mismatch"
    INVALID_MANIFEST = "invalid_manifest"
    SIGNATURE_MISSING = "signature_missing"
    SIGNATURE_INVALID = "signature_invalid"
    UNSAFE_ARCHIVE = "unsafe_archive"
    UNSAFE_BUNDLE = "unsafe_bundle"
    TOO_LARGE = "too_large"
    INVALID_BUNDLE = "invalid_bundle"
    REMOTE_INSTALL_DISABLED = "remote_install_disabled"
    REMOTE_INSTALL_FORBIDDEN = "remote_install_forbidden"
    INSECURE_URL = "insecure_url"
    DOWNLOAD_FAILED = "download_failed"
    MODIFIED = "modified"
    MISSING = "missing"
    NOT_INSTALLED = "not_installed"


class InstallError(RunnerError):
    """A bundle (or an installed plugin) was refused; `reason` says why, for machines.

    `member` names the offending archive member or file, `problems` lists manifest problems
    with their field paths (`$.version: ...`), and `plugin_id` is set once the manifest is known.
    """

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        source: str = "",
        member: str | None = None,
        problems: list[str] | None = None,
        plugin_id: str | None = None,
    ) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.source = source
        self.member = member
        self.problems = problems or []
        self.plugin_id = plugin_id

    @property
    def fields(self) -> list[str]:
        """The field paths named by `problems` (`$.version`), in order."""
        return [problem.split(":", 1)[0] for problem in self.problems]

    def to_dict(self) -> dict[str, object]:
        """Return the refusal as JSON-ready data (the CLI's `--json`, later the admin API)."""
        data: dict[str, object] = {"reason": str(self.reason), "message": self.message}
        if self.source:
            data["source"] = self.source
        if self.member is not None:
            data["member"] = self.member
        if self.problems:
            data["problems"] = self.problems
        if self.plugin_id is not None:
            data["plugin_id"] = self.plugin_id
        return data
