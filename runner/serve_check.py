"""`corral serve --check`: validate everything `corral serve` would use, without serving.

Settings (file and environment), TLS files, the state directory, the audit log's directory, the
config store (read only: nothing is created, rolled back or rewritten), the trust files, the
registry, and whether the sandbox can run workers in the mode asked for. Every problem is listed;
none binds a port or starts a worker.
"""

from __future__ import annotations

import datetime
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from sandbox import SandboxPolicy, probe, required_layers_missing
from sandbox.uids import DEFAULT_FIRST_UID

from .allowlist import load_allowlist
from .checksums import load_checksums
from .config_errors import ConfigError
from .config_recovery import list_backups
from .config_secrets import SecretBox, check_document
from .config_snapshot import ConfigSnapshot, decode_document
from .daemon import service_settings, tls_context
from .daemon_settings import (
    DaemonSettings,
    DaemonSettingsError,
    load_daemon_settings,
    to_environ,
    unknown_variables,
)
from .errors import RunnerError
from .pg.check import check_database
from .registry import load_registry
from .service import ServiceSettings

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True, slots=True)
class Check:
    """One thing checked: its name, whether it passed, and why (never a secret value)."""

    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class CheckReport:
    """Every check made, and warnings that do not fail the check."""

    checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return all(check.ok for check in self.checks)

    def add(self, name: str, problem: str | None, fine: str) -> None:
        """Record a check: failed with `problem`, or passed with `fine`."""
        self.checks.append(Check(name, problem is None, problem or fine))

    def as_json(self) -> dict[str, Any]:
        """Return the report as `--json` prints it."""
        return {
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "warnings": self.warnings,
        }


def check(
    environ: Mapping[str, str],
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> CheckReport:
    """Run every check with the settings `corral serve` would use. Blocks (file reads, a probe)."""
    report = CheckReport()
    report.warnings += [f"{name} is not a corral setting" for name in unknown_variables(environ)]
    try:
        settings = load_daemon_settings(environ, config_file, overrides)
    except DaemonSettingsError as exc:
        for problem in exc.problems:
            report.add("settings", problem, "")
        return report
    report.add("settings", None, f"{len(settings.model_fields_set)} setting(s) given")
    merged = to_environ(settings, environ)
    try:
        service = service_settings(settings, merged)
    except (RunnerError, ValueError) as exc:
        report.add("settings", str(exc), "")
        return report
    _check_tls(settings, report)
    _check_dirs(service, report)
    _check_store(service, report)
    _check_trust(service, report)
    _check_sandbox(service, report)
    exposed = settings.listen_host not in _LOOPBACK
    if settings.profile == "hipaa" and not settings.is_tls and exposed:
        report.warnings.append(
            f"hipaa profile serving plain HTTP on {settings.listen_host}: put TLS in front "
            "(a proxy) or set tls_cert and tls_key"
        )
    return report


def _check_tls(settings: DaemonSettings, report: CheckReport) -> None:
    if settings.tls_cert is None or settings.tls_key is None:
        return
    try:
        tls_context(settings.tls_cert, settings.tls_key)
        cert = x509.load_pem_x509_certificate(settings.tls_cert.read_bytes())
    except (RunnerError, OSError, ValueError) as exc:
        report.add("tls", str(exc), "")
        return
    now = datetime.datetime.now(datetime.UTC)
    expires = cert.not_valid_after_utc
    if expires <= now:
        report.add("tls", f"the certificate {settings.tls_cert} expired on {expires:%Y-%m-%d}", "")
        return
    report.add("tls", None, f"{settings.tls_cert}: TLS 1.2+, valid until {expires:%Y-%m-%d}")
    if expires - now < datetime.timedelta(days=14):
        report.warnings.append(f"the TLS certificate expires on {expires:%Y-%m-%d}")


def _check_dirs(service: ServiceSettings, report: CheckReport) -> None:
    state = service.host.state_dir
    problem = _writable_dir(state)
    if problem is None and os.geteuid() == 0:
        problem = _traversable(state)
    report.add("state_dir", problem, f"{state}: writable")
    audit_dir = service.audit.path.parent
    report.add("audit_log", _writable_dir(audit_dir), f"{service.audit.path}: writable")


def _check_store(service: ServiceSettings, report: CheckReport) -> None:
    config = service.config
    if service.store_url is not None:  # PostgreSQL: reachable, schema current; the key file
        problem, fine = check_database(service.store_url)
        report.add("config_store", problem, fine)
        report.add("secret_key", _key_problem(service, None), f"{config.key_file}: checked")
        return
    path = config.path
    problem = _writable_dir(path.parent)
    snapshot: ConfigSnapshot | None = None
    fine = f"{path}: absent, a fresh document will be created"
    if problem is None and path.exists():
        try:
            snapshot = decode_document(path.read_bytes(), path.name)
            fine = f"{path}: valid"
        except ConfigError as exc:
            problem = f"{exc}; corral would roll back to a backup at start"
        except OSError as exc:
            problem = f"{path}: cannot read ({exc.strerror or exc})"
    elif problem is None and list_backups(path):
        problem = f"{path} is missing but backups exist; corral would roll back at start"
    report.add("config_store", problem, fine)
    key = config.key_file
    state = "usable" if key.exists() else "absent, generated at the first start"
    report.add("secret_key", _key_problem(service, snapshot), f"{key}: {state}")


def _key_problem(service: ServiceSettings, snapshot: ConfigSnapshot | None) -> str | None:
    config = service.config
    if config.is_hipaa and config.secret_key_file is None:
        return "the hipaa profile requires CORRAL_SECRET_KEY_FILE (secret_key_file)"
    if not config.key_file.exists():
        if config.is_hipaa:
            return f"the secret key file {config.key_file} does not exist (never generated)"
        return None  # generated at the first start
    try:
        box = SecretBox.open(config.key_file, create=False, strict_mode=config.is_hipaa)
        if snapshot is not None:
            check_document(snapshot.document, box)
    except ConfigError as exc:
        return str(exc)
    except OSError as exc:
        return f"{config.key_file}: cannot read ({exc.strerror or exc})"
    return None


def _check_trust(service: ServiceSettings, report: CheckReport) -> None:
    host = service.host
    loaders: list[tuple[str, Path, Callable[[Path], object]]] = [
        ("allowlist", host.allowlist_path, load_allowlist),
        ("checksums", host.checksums_path, load_checksums),
        ("registry", service.registry_path, load_registry),
    ]
    for name, path, load in loaders:
        try:
            load(path)
        except (RunnerError, OSError) as exc:
            report.add(name, str(exc), "")
        else:
            report.add(name, None, f"{path}: valid")
    configured = service.environ.get("CORRAL_BOOTSTRAP_KEY_FILE", "").strip()
    if configured and not Path(configured).is_file():
        report.add("bootstrap_key", f"{configured} (CORRAL_BOOTSTRAP_KEY_FILE) is not a file", "")


def _check_sandbox(service: ServiceSettings, report: CheckReport) -> None:
    """Probe like `corral sandbox doctor`; missing layers fail strict mode, warn otherwise."""
    try:
        result = probe()
    except (RunnerError, OSError, RuntimeError) as exc:
        report.add("sandbox", f"the sandbox probe failed: {exc}", "")
        return
    is_root = os.geteuid() == 0
    policy = SandboxPolicy(
        scratch_dir="/nonexistent",
        uid=DEFAULT_FIRST_UID if is_root else None,
        cgroup_dirs=("-",) if result.cgroups.parents else (),
    )
    missing = ", ".join(str(status.layer) for status in required_layers_missing(policy, result))
    strict = service.host.is_hipaa or service.host.sandbox_mode.value == "strict"
    if missing and strict:
        report.add(
            "sandbox",
            f"strict mode would refuse to start workers: missing {missing} "
            "(run `corral sandbox doctor`)",
            "",
        )
    else:
        report.add("sandbox", None, "every layer strict mode requires is available")
        if missing:
            report.warnings.append(f"permissive sandbox: workers start without {missing}")


def _writable_dir(path: Path) -> str | None:
    """Return why corral could not create or write `path` (a directory), or None."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by uid {os.geteuid()}"
    return None


def _traversable(path: Path) -> str | None:
    """Return which ancestor of `path` workers (other uids) cannot traverse, or None."""
    for parent in path.resolve().parents:
        if not parent.exists():
            continue
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            return f"{parent} (mode {stat.S_IMODE(mode):o}) keeps workers out of {path}"
    return None


def format_report(report: CheckReport) -> str:
    """Return the report as a terminal shows it: one line per check, then warnings."""
    lines = [f"{'ok  ' if c.ok else 'FAIL'}  {c.name:13} {c.detail}" for c in report.checks]
    lines += [f"warn  {warning}" for warning in report.warnings]
    lines.append("all checks passed" if report.ok else "corral would not start: see FAIL above")
    return "\n".join(lines)
