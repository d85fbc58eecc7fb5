"""The operator's egress settings and their reading from `CORRAL_EGRESS_*` variables.

What a plugin may reach is its manifest's business (`network.outbound:` grants); these settings
only restrict it further, size and time the requests, and (for tests) redirect provider hosts
to local stubs. docs/egress.md describes each one.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeVar

from yarl import URL

from .egress_errors import EgressSettingsError
from .egress_policy import DEFAULT_PORTS, HostPattern, IPAddress, IPNetwork, parse_patterns
from .install_remote import HIPAA_PROFILE, profile_from_env

PREFIX: Final = "CORRAL_EGRESS_"
DEFAULT_MAX_REQUEST_BYTES: Final = 4 * 1024 * 1024
# A response travels back to the worker in one frame (8 MiB by default), headers included.
DEFAULT_MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024
DEFAULT_TIMEOUT_S: Final = 60.0
DEFAULT_MAX_REDIRECTS: Final = 5
DEFAULT_CONCURRENCY: Final = 8
DEFAULT_CONCURRENCY_WAIT_S: Final = 2.0
DEFAULT_MAX_CONNECTIONS: Final = 100

_T = TypeVar("_T")
_NONE: Final[tuple[HostPattern, ...]] = ()


@dataclass(frozen=True, slots=True)
class HostOverride:
    """Where requests for one host really go (tests only): a scheme and an IP address and port.

    The permission check still uses the URL as the plugin wrote it; only the connection moves.
    """

    scheme: str
    address: IPAddress
    port: int

    @classmethod
    def parse(cls, text: str) -> HostOverride:
        """Parse `http://127.0.0.1:8081` (or https, or `[::1]`); raise ValueError."""
        url = URL(text.strip())
        if url.scheme not in DEFAULT_PORTS or not url.raw_host or url.port is None:
            raise ValueError(f"{text!r} must be http://<ip>:<port> or https://<ip>:<port>")
        if url.raw_path not in ("", "/") or url.raw_query_string or url.user is not None:
            raise ValueError(f"{text!r} must not carry a path, query or credentials")
        return cls(url.scheme, ipaddress.ip_address(url.raw_host), url.port)

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class EgressSettings:
    """Operator policy and limits for outbound HTTP; see docs/egress.md for each field."""

    allowed_private_networks: tuple[IPNetwork, ...] = ()
    http_hosts: tuple[HostPattern, ...] = ()
    deny_hosts: tuple[HostPattern, ...] = ()
    allow_hosts: tuple[HostPattern, ...] | None = None  # None: no global restriction
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    concurrency: int = DEFAULT_CONCURRENCY
    concurrency_wait_s: float = DEFAULT_CONCURRENCY_WAIT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    host_overrides: Mapping[str, HostOverride] = field(default_factory=dict)  # tests only
    profile: str = "default"

    def __post_init__(self) -> None:
        problems = [
            name
            for name, ok in (
                ("max_request_bytes", self.max_request_bytes >= 0),
                ("max_response_bytes", self.max_response_bytes >= 0),
                ("timeout_s", self.timeout_s > 0),
                ("max_redirects", self.max_redirects >= 0),
                ("concurrency", self.concurrency >= 1),
                ("concurrency_wait_s", self.concurrency_wait_s >= 0),
                ("max_connections", self.max_connections >= 1),
            )
            if not ok
        ]
        if problems:
            raise EgressSettingsError(f"egress settings out of range: {', '.join(problems)}")
        if self.host_overrides and self.profile == HIPAA_PROFILE:
            raise EgressSettingsError(
                "egress host overrides are for tests only and are refused under the hipaa "
                "profile (CORRAL_PROFILE=hipaa); unset CORRAL_EGRESS_HOST_OVERRIDES"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> EgressSettings:
        """Read the `CORRAL_EGRESS_*` variables (and `CORRAL_PROFILE`); unset ones keep defaults.

        Lists are separated by commas or whitespace. Raises EgressSettingsError naming the
        variable of the first bad value.
        """
        env = _Env(environ)
        allow = env.text("ALLOW_HOSTS")
        return cls(
            allowed_private_networks=env.parse("ALLOWED_PRIVATE_NETWORKS", _networks, ()),
            http_hosts=env.parse("HTTP_HOSTS", parse_patterns, _NONE),
            deny_hosts=env.parse("DENY_HOSTS", parse_patterns, _NONE),
            allow_hosts=None if allow is None else env.parse("ALLOW_HOSTS", parse_patterns, _NONE),
            max_request_bytes=env.parse("MAX_REQUEST_BYTES", _int, DEFAULT_MAX_REQUEST_BYTES),
            max_response_bytes=env.parse("MAX_RESPONSE_BYTES", _int, DEFAULT_MAX_RESPONSE_BYTES),
            timeout_s=env.parse("TIMEOUT_S", _float, DEFAULT_TIMEOUT_S),
            max_redirects=env.parse("MAX_REDIRECTS", _int, DEFAULT_MAX_REDIRECTS),
            concurrency=env.parse("CONCURRENCY", _int, DEFAULT_CONCURRENCY),
            concurrency_wait_s=env.parse("CONCURRENCY_WAIT_S", _float, DEFAULT_CONCURRENCY_WAIT_S),
            max_connections=env.parse("MAX_CONNECTIONS", _int, DEFAULT_MAX_CONNECTIONS),
            host_overrides=env.parse("HOST_OVERRIDES", parse_overrides, {}),
            profile=profile_from_env(environ),
        )


def parse_overrides(items: list[str]) -> dict[str, HostOverride]:
    """Parse `host=scheme://ip:port` items into a host → override mapping; raise ValueError."""
    overrides: dict[str, HostOverride] = {}
    for item in items:
        host, sep, target = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} must be host=scheme://ip:port")
        pattern = HostPattern.parse(host)
        if pattern.is_wildcard or pattern.port is not None:
            raise ValueError(f"{host!r} must be a plain host name")
        overrides[pattern.host] = HostOverride.parse(target)
    return overrides


class _Env:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(PREFIX + name)
        return None if value is None or not value.strip() else value

    def parse(self, name: str, convert: Callable[[list[str]], _T], default: _T) -> _T:
        text = self.text(name)
        if text is None:
            return default
        try:
            return convert(text.replace(",", " ").split())
        except ValueError as exc:
            raise EgressSettingsError(f"{PREFIX}{name}: {exc}") from exc


def _networks(items: list[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def _int(items: list[str]) -> int:
    (item,) = items
    return int(item)


def _float(items: list[str]) -> float:
    (item,) = items
    return float(item)
