"""The placeholder language of declarative HTTP providers: `{{config.api_key}}`,
`{{request.caller_id | config.caller_id}}`, and nothing more.

A template is literal text with placeholders; a placeholder names one or more dotted paths into a
scope (`config`, `request`) and takes the first that is not null. There is no expression syntax,
no filters and no escaping, so rendering cannot run code. Type checks against the variables a
scope offers happen at load (`plugins.sdk.http_manifest`); this module parses and renders.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

ROOTS: Final = ("config", "request")
_PLACEHOLDER: Final = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_PATH: Final = re.compile(r"^(config|request)(\.[A-Za-z0-9_-]+)+$")


class TemplateError(ValueError):
    """A template's text is malformed (the message never quotes more than the placeholder)."""


class MissingValueError(LookupError):
    """Every alternative of a placeholder rendered into text was null; `placeholder` names it."""

    def __init__(self, placeholder: Placeholder) -> None:
        super().__init__(f"no value for {placeholder}")
        self.placeholder = placeholder


@dataclass(frozen=True, slots=True)
class Placeholder:
    """`{{a.b | c.d}}`: each alternative is a path split on dots; the first non-null one wins."""

    alternatives: tuple[tuple[str, ...], ...]

    def __str__(self) -> str:
        return "{{" + " | ".join(".".join(p) for p in self.alternatives) + "}}"

    def resolve(self, scope: Mapping[str, Any]) -> Any:
        """Return the first non-null value the alternatives reach in `scope`, else None."""
        for path in self.alternatives:
            value = lookup(scope, path)
            if value is not None:
                return value
        return None


def parse_path(text: str) -> tuple[str, ...]:
    """Split `request.tags.order` into its segments; raise TemplateError if it is no path."""
    text = text.strip()
    if not _PATH.match(text):
        roots = " or ".join(ROOTS)
        raise TemplateError(f"{text[:60]!r} is not a path under {roots} like config.api_key")
    return tuple(text.split("."))


def lookup(scope: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """Follow `path` through nested mappings; return None where it leads nowhere."""
    value: Any = scope
    for segment in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(segment)
    return value


def to_text(value: Any) -> str:
    """Render a scalar as text: JSON's spelling for booleans, `str` for the rest."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    # Load-time checks keep bytes and mappings out of text; this guards a checker bug.
    raise TypeError(f"cannot render a {type(value).__name__} as text")


@dataclass(frozen=True, slots=True)
class Template:
    """Literal text and placeholders, in order."""

    parts: tuple[str | Placeholder, ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        """Parse `text`; raise TemplateError for a malformed or unterminated placeholder."""
        parts: list[str | Placeholder] = []
        position = 0
        for match in _PLACEHOLDER.finditer(text):
            if match.start() > position:
                parts.append(text[position : match.start()])
            alternatives = tuple(parse_path(p) for p in match.group(1).split("|"))
            parts.append(Placeholder(alternatives))
            position = match.end()
        rest = text[position:]
        if "{{" in rest or "}}" in rest:
            raise TemplateError("unbalanced '{{' or '}}'")
        if rest:
            parts.append(rest)
        return cls(tuple(parts))

    @property
    def placeholders(self) -> Iterator[Placeholder]:
        """Every placeholder, in order."""
        return (p for p in self.parts if isinstance(p, Placeholder))

    @property
    def sole(self) -> Placeholder | None:
        """The placeholder when the template is exactly one and nothing else, else None."""
        if len(self.parts) == 1 and isinstance(self.parts[0], Placeholder):
            return self.parts[0]
        return None

    def render(self, scope: Mapping[str, Any], encode: Callable[[str], str] = str) -> str:
        """Return the text with each placeholder's value passed through `encode`.

        Raise MissingValueError when a placeholder has no value: text never silently loses one.
        """
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = part.resolve(scope)
            if value is None:
                raise MissingValueError(part)
            out.append(encode(to_text(value)))
        return "".join(out)

    def value(self, scope: Mapping[str, Any]) -> Any:
        """Return a sole placeholder's raw value (None included), else the rendered text."""
        sole = self.sole
        return sole.resolve(scope) if sole is not None else self.render(scope)
