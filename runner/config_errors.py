"""Errors raised by the config store, its secrets and its key file.

One root, `ConfigError`, with subclasses chosen by what the caller does next: retry with a fresh
ETag, refuse to start, fix the key file, or report a failed write and keep serving.
"""

from __future__ import annotations

from .errors import RunnerError


class ConfigError(RunnerError):
    """Root of every error raised by the config store."""


class PreconditionFailedError(ConfigError):
    """The caller's ETag no longer matches: someone else wrote first (HTTP 412).

    `expected` is what the caller sent, `current` what the store holds now, and `scope` is
    `"document"` or `"<tenant>/<plugin>"`.
    """

    def __init__(self, scope: str, expected: str, current: str) -> None:
        super().__init__(
            f"precondition failed for {scope}: expected ETag {expected}, current is {current}"
        )
        self.scope = scope
        self.expected = expected
        self.current = current


class ConfigInvalidError(ConfigError):
    """A document (on disk or returned by a mutator) does not validate; nothing was written.

    `problems` lists each finding as `<json path>: <message>`.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source} is not a valid config document: " + "; ".join(problems))
        self.source = source
        self.problems = problems


class ConfigUnrecoverableError(ConfigError):
    """No valid version of the document exists (neither it nor any backup); refuse to start.

    `candidates` maps each file that was tried to why it was rejected.
    """

    def __init__(self, path: str, candidates: dict[str, str]) -> None:
        tried = "; ".join(f"{name}: {why}" for name, why in candidates.items())
        super().__init__(
            f"no valid config document at {path} and no valid backup ({tried}); refusing to start "
            "rather than start empty. Restore a backup by hand or move the files away to start "
            "a fresh install."
        )
        self.path = path
        self.candidates = candidates


class ConfigWriteError(ConfigError):
    """A write failed (disk full, permissions); the last good document is still in place."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}; the previous document is unchanged")
        self.path = path
        self.reason = reason


class SecretKeyError(ConfigError):
    """The secret key file is missing, unreadable or malformed, or a secret cannot be decrypted.

    Under the HIPAA profile a missing key file is this error at start-up.
    """


class SecretsMaskedError(ConfigError):
    """A masked value (`***`) was sent for a secret field that has no stored value to keep."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field}: '***' keeps a stored secret, but none is stored")
        self.field = field


class ConfigSettingsError(ConfigError):
    """An environment variable of the config store has a value that cannot be used."""
