"""The curated plugin registry (`registry.json`): what the admin API offers to install.

The file has Faxbot's shape, `{"providers": [{"id", "name", "type", "version", "manifest"},
...]}`, and is validated once at load into a `Registry` (a reload swaps a new one's providers in
whole: `Registry.replace_with`). Listing a plugin here grants nothing: installing it still goes
through checksums.txt and allowlist.toml (`runner.install`).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from .errors import RunnerError
from .install_versions import Version

REGISTRY_ENV: Final = "CORRAL_PLUGIN_REGISTRY"
DEFAULT_REGISTRY_PATH: Final = Path(__file__).resolve().parents[1] / "registry.json"
MAX_REGISTRY_BYTES: Final = 8 * 1024 * 1024
MAX_PROBLEMS: Final = 50  # a broken generated file must not produce a megabyte of errors
_PREVIEW_CHARS: Final = 40

# Looser than a manifest id (reverse DNS) so that Faxbot's ids (`phaxio`, `sinch`) fit too.
_ID: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_TYPE: Final = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_HOMEPAGE: Final = re.compile(r"^https?://\S+$")


class RegistryError(RunnerError):
    """registry.json is missing or invalid; `problems` lists each with its path (`$.providers[0]`).

    Values are never quoted at length, so the message stays small whatever the file holds.
    """

    def __init__(self, problems: list[str], source: str = "registry.json") -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.problems = problems
        self.source = source


def _shorten(text: str) -> str:
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 3] + "..."


def _preview(value: object) -> str:
    return _shorten(repr(value))


def _check_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise ValueError(f"{_preview(value)} is not an id: lower-case letters, digits, . _ -")
    return value


def _check_name(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _check_version(value: str) -> str:
    Version.parse(value)  # its message quotes the value, which max_length has bounded
    return value


def _check_homepage(value: str) -> str:
    if value and not _HOMEPAGE.fullmatch(value):
        raise ValueError(f"{_preview(value)} is not an http(s) URL")
    return value


def _parse_type(value: Any) -> str | list[str]:
    """Accept one type or a non-empty list of distinct types; keep the form the file used."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError("expected a string or a non-empty list of strings")
    for item in items:
        if not isinstance(item, str) or not _TYPE.fullmatch(item):
            raise ValueError(f"{_preview(item)} is not a type like 'outbound_fax'")
    if len(set(items)) != len(items):
        raise ValueError("a type is listed twice")
    return value if isinstance(value, str) else list(items)


ProviderId = Annotated[str, AfterValidator(_check_id)]
SemVer = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_check_version)]
ProviderType = Annotated[str | list[str], PlainValidator(_parse_type)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Provider(_Strict):
    """One registry entry: a plugin the operator may install, with a summary of its manifest.

    `type` is a string or a list of strings (Faxbot uses one string, corral entries list the
    manifest's category kinds); answers keep the form the file used, and `types` gives a tuple.
    """

    id: ProviderId
    name: Annotated[str, Field(max_length=200), AfterValidator(_check_name)]
    type: ProviderType
    version: SemVer
    description: str = Field(default="", max_length=2000)
    homepage: Annotated[str, Field(max_length=2000), AfterValidator(_check_homepage)] = ""
    manifest: dict[str, Any]

    @property
    def types(self) -> tuple[str, ...]:
        """Return the provider's types, one or several."""
        return (self.type,) if isinstance(self.type, str) else tuple(self.type)

    def matches(self, needle: str) -> bool:
        """Return whether the casefolded `needle` occurs in the id, name, a type or description."""
        fields = (self.id, self.name, *self.types, self.description)
        return any(needle in text.casefold() for text in fields)

    def _manifest_problems(self, path: str) -> list[str]:
        """The manifest summary must not contradict the entry it belongs to."""
        problems: list[str] = []
        for key in ("id", "version"):
            if key in self.manifest and self.manifest[key] != getattr(self, key):
                problems.append(
                    f"{path}.manifest.{key}: {_preview(self.manifest[key])} differs from "
                    f"{path}.{key} {_preview(getattr(self, key))}"
                )
        return problems


class Registry(_Strict):
    """A validated registry.json. Build it with `load_registry` or `parse_registry`.

    Not frozen, for one reason: a reload swaps in new providers (`replace_with`) while the app
    keeps this object. Nothing else assigns to it.
    """

    model_config = ConfigDict(frozen=False, extra="forbid")

    providers: tuple[Provider, ...]

    def replace_with(self, other: Registry) -> bool:
        """Serve `other`'s providers from now on; return whether they differ from the current.

        One assignment of an immutable tuple: a reader sees the old providers or the new, whole.
        """
        changed = other.providers != self.providers
        self.providers = other.providers
        return changed

    def search(self, q: str | None = None) -> list[Provider]:
        """Return the providers whose id, name, type or description contains `q`, by id.

        Matching is case-insensitive and by substring; None, "" or blanks return every provider.
        """
        needle = (q or "").strip().casefold()
        ordered = sorted(self.providers, key=lambda p: p.id)
        return [p for p in ordered if p.matches(needle)] if needle else ordered

    def get(self, provider_id: str) -> Provider | None:
        """Return the provider with id `provider_id`, or None."""
        return next((p for p in self.providers if p.id == provider_id), None)

    def to_json(self) -> dict[str, Any]:
        """Return the registry as JSON-ready data in Faxbot's shape, providers ordered by id."""
        return {"providers": [p.model_dump(mode="json") for p in self.search(None)]}


def registry_path_from_env(environ: Mapping[str, str] = os.environ) -> Path:
    """Return the registry's path: `$CORRAL_PLUGIN_REGISTRY`, else the shipped registry.json.

    A relative path is taken from the working directory; unset or blank means the default.
    """
    value = environ.get(REGISTRY_ENV, "").strip()
    return Path(value).expanduser() if value else DEFAULT_REGISTRY_PATH


def load_registry(path: Path) -> Registry:
    """Read and validate the registry at `path` (blocking: call it with asyncio.to_thread).

    Raises RegistryError when the file is missing, unreadable, not a regular file, larger than
    MAX_REGISTRY_BYTES, not JSON, or not a valid registry (duplicate ids included).
    """
    return parse_registry(_read_capped(path), source=str(path))


def parse_registry(data: bytes | str, *, source: str = "registry.json") -> Registry:
    """Parse and validate registry JSON; raise RegistryError listing the problems found."""
    if len(data) > MAX_REGISTRY_BYTES:
        raise RegistryError([f"$: larger than {MAX_REGISTRY_BYTES} bytes"], source)
    try:
        raw = json.loads(data, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise RegistryError(["$: not JSON: nested too deeply"], source) from exc
    except json.JSONDecodeError as exc:
        raise RegistryError([f"$: not JSON: {exc.msg} (line {exc.lineno})"], source) from exc
    except ValueError as exc:  # not UTF-8, NaN/Infinity, an integer too long to convert
        raise RegistryError([f"$: not JSON: {_shorten(str(exc))}"], source) from exc
    try:
        registry = Registry.model_validate(raw)
    except ValidationError as exc:
        raise RegistryError(_capped([_problem(e) for e in exc.errors()]), source) from exc
    problems = _consistency_problems(registry)
    if problems:
        raise RegistryError(_capped(problems), source)
    return registry


def _read_capped(path: Path) -> bytes:
    source = str(path)
    try:
        # O_NONBLOCK: a FIFO put in the file's place must not hang the caller's thread.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise RegistryError(["$: no such file"], source) from exc
    except OSError as exc:
        raise RegistryError([f"$: cannot read: {exc.strerror}"], source) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RegistryError(["$: not a regular file"], source)
        chunks: list[bytes] = []
        remaining = MAX_REGISTRY_BYTES + 1
        while remaining and (chunk := os.read(fd, min(remaining, 1024 * 1024))):
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as exc:
        raise RegistryError([f"$: cannot read: {exc.strerror}"], source) from exc
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_REGISTRY_BYTES:
        raise RegistryError([f"$: larger than {MAX_REGISTRY_BYTES} bytes"], source)
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _consistency_problems(registry: Registry) -> list[str]:
    problems: list[str] = []
    first_index: dict[str, int] = {}
    for i, provider in enumerate(registry.providers):
        path = f"$.providers[{i}]"
        if provider.id in first_index:
            problems.append(
                f"{path}.id: {_preview(provider.id)} duplicates $.providers"
                f"[{first_index[provider.id]}].id"
            )
        first_index.setdefault(provider.id, i)
        problems.extend(provider._manifest_problems(path))
    return problems


# pydantic speaks of Python types; the file's authors write JSON.
_JSON_WORDING: Final = {
    "model_type": "expected a JSON object",
    "dict_type": "expected a JSON object",
    "tuple_type": "expected a JSON array",
    "list_type": "expected a JSON array",
    "string_type": "expected a JSON string",
}


def _problem(error: Mapping[str, Any]) -> str:
    path = "$"
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    kind = error["type"]
    if kind == "value_error":
        message = str(error.get("ctx", {}).get("error", error["msg"]))
    else:
        message = _JSON_WORDING.get(kind, str(error["msg"]))
    return f"{path}: {message}"


def _capped(problems: list[str]) -> list[str]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more problems"]
