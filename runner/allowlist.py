"""`allowlist.toml`: which plugins the operator allows, parsed once into a frozen `Allowlist`.

It names allowed plugin ids, optional version ranges, optional pinned tree digests, trusted
ed25519 keys and whether a signature is required. Code receives the parsed object, never the
path. Applying it to a bundle (and refusing) is the installer's job; docs/plugins.md has the format.
"""

from __future__ import annotations

import base64
import binascii
import tomllib
from pathlib import Path
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from .digest import is_sha256_hex
from .errors import RunnerError
from .install_versions import VersionRange

ED25519_KEY_BYTES = 32


class AllowlistError(RunnerError):
    """allowlist.toml is invalid; `problems` lists each problem with its path (`$.plugin[0].id`)."""

    def __init__(self, problems: list[str], source: str = "allowlist.toml") -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.problems = problems
        self.source = source


def _parse_range(value: Any) -> VersionRange:
    if isinstance(value, VersionRange):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a string like '>=1.0.0,<2.0.0'")
    return VersionRange.parse(value)


def _parse_key(value: Any) -> bytes:
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError("not base64") from exc
    else:
        raise ValueError("expected the base64 of a raw ed25519 public key")
    if len(raw) != ED25519_KEY_BYTES:
        raise ValueError(f"an ed25519 public key is {ED25519_KEY_BYTES} bytes, not {len(raw)}")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ValueError("not a valid ed25519 public key") from exc
    return raw


Range = Annotated[VersionRange, BeforeValidator(_parse_range), PlainSerializer(str)]
PublicKey = Annotated[
    bytes,
    BeforeValidator(_parse_key),
    PlainSerializer(lambda raw: base64.b64encode(raw).decode()),
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class TrustedKey(_Frozen):
    """An ed25519 public key that may sign bundles, under an operator-chosen name."""

    name: str = Field(min_length=1)
    public_key: PublicKey


class PluginRule(_Frozen):
    """What the allowlist says about one plugin id."""

    id: str = Field(min_length=1)
    versions: Range | None = None
    digests: tuple[str, ...] = ()
    require_signature: bool | None = None  # None: the allowlist-wide default
    keys: tuple[str, ...] | None = None  # None: every trusted key

    @field_validator("digests")
    @classmethod
    def _hex_digests(cls, digests: tuple[str, ...]) -> tuple[str, ...]:
        for digest in digests:
            if not is_sha256_hex(digest):
                raise ValueError(f"{digest!r} is not 64 lower-case hex digits")
        return digests

    def allows_version(self, version: str) -> bool:
        """Return whether `version` is in this rule's range (any version when none is set)."""
        return self.versions is None or self.versions.contains(version)


class Allowlist(_Frozen):
    """A parsed allowlist.toml. Build it with `load_allowlist` or `parse_allowlist`."""

    require_signature: bool = False
    key: tuple[TrustedKey, ...] = ()
    plugin: tuple[PluginRule, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Allowlist:
        names = [k.name for k in self.key]
        if len(set(names)) != len(names):
            raise ValueError("a key name is declared twice")
        ids = [p.id for p in self.plugin]
        if len(set(ids)) != len(ids):
            raise ValueError("a plugin id is declared twice")
        for rule in self.plugin:
            unknown = sorted(set(rule.keys or ()) - set(names))
            if unknown:
                raise ValueError(f"plugin {rule.id!r} names unknown keys {unknown}")
            if self.signature_required(rule) and not self.keys_for(rule):
                raise ValueError(f"plugin {rule.id!r} requires a signature but trusts no key")
        return self

    def rule(self, plugin_id: str) -> PluginRule | None:
        """Return the rule for `plugin_id`, or None when it is not allowlisted."""
        return next((r for r in self.plugin if r.id == plugin_id), None)

    def signature_required(self, rule: PluginRule) -> bool:
        """Return whether bundles of `rule`'s plugin must carry a valid signature."""
        return self.require_signature if rule.require_signature is None else rule.require_signature

    def keys_for(self, rule: PluginRule) -> tuple[TrustedKey, ...]:
        """Return the keys trusted to sign `rule`'s plugin."""
        if rule.keys is None:
            return self.key
        return tuple(k for k in self.key if k.name in rule.keys)


def _location(loc: tuple[int | str, ...]) -> str:
    path = "$"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def parse_allowlist(text: str, *, source: str = "allowlist.toml") -> Allowlist:
    """Parse allowlist TOML; raise AllowlistError listing every problem (unknown keys included)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AllowlistError([f"$: invalid TOML: {exc}"], source) from exc
    try:
        return Allowlist.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{_location(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise AllowlistError(problems, source) from exc


def load_allowlist(path: Path) -> Allowlist:
    """Read and parse the allowlist at `path` (blocking; it is small)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AllowlistError([f"$: cannot read: {exc}"], str(path)) from exc
    return parse_allowlist(text, source=str(path))
