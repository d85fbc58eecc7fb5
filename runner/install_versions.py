"""Semantic versions and the small range syntax allowlist.toml uses (`>=1.0.0,<2.0.0`).

A range is comma-separated comparators (`==`, `!=`, `>=`, `<=`, `>`, `<`), all of which must
hold. Versions order by semver precedence, so `2.0.0-rc.1 < 2.0.0` and `<2.0.0` admits it;
write `<2.0.0-0` to exclude the prereleases of 2.0.0. Build metadata (`+...`) is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

_SEMVER: Final = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_COMPARATOR: Final = re.compile(r"^\s*(==|!=|>=|<=|>|<)\s*(\S+)\s*$")
_OPERATORS: Final[dict[str, Callable[[Version, Version], bool]]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
}

# A prerelease identifier sorts numeric ones first (by value), then alphanumeric (by ASCII).
_Identifier = tuple[int, int, str]


_Key = tuple[int, int, int, tuple[int, tuple[_Identifier, ...]]]


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """A semantic version; equality and order follow semver precedence (build ignored)."""

    # (major, minor, patch, pre): pre is (0, identifiers) for a prerelease and (1, ()) for a
    # release, so a release sorts after its prereleases.
    key: _Key
    text: str = field(compare=False)

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse `text`; raise ValueError if it is not a semantic version."""
        match = _SEMVER.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not a semantic version")
        major, minor, patch, pre, _build = match.groups()
        identifiers = tuple(
            (0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in (pre.split(".") if pre else ())
        )
        release = (0, identifiers) if pre else (1, ())
        return cls((int(major), int(minor), int(patch), release), text)


@dataclass(frozen=True, slots=True)
class VersionRange:
    """Comparators that must all hold; build it with `VersionRange.parse`."""

    comparators: tuple[tuple[str, Version], ...]

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        """Parse `>=1.0.0,<2.0.0`; raise ValueError naming the bad comparator."""
        comparators: list[tuple[str, Version]] = []
        for part in text.split(","):
            match = _COMPARATOR.match(part)
            if match is None:
                raise ValueError(f"{part.strip()!r} is not a comparator like '>=1.0.0'")
            comparators.append((match.group(1), Version.parse(match.group(2))))
        return cls(tuple(comparators))

    def contains(self, version: str) -> bool:
        """Return whether `version` satisfies every comparator (False if it is not semver)."""
        try:
            candidate = Version.parse(version)
        except ValueError:
            return False
        return all(_OPERATORS[op](candidate, bound) for op, bound in self.comparators)

    def __str__(self) -> str:
        return ",".join(f"{op}{bound.text}" for op, bound in self.comparators)
