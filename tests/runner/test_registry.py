from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from protocol.manifest import load_manifest
from runner.errors import RunnerError
from runner.registry import (
    DEFAULT_REGISTRY_PATH,
    MAX_PROBLEMS,
    MAX_REGISTRY_BYTES,
    REGISTRY_ENV,
    Registry,
    RegistryError,
    load_registry,
    parse_registry,
    registry_path_from_env,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _provider(provider_id: str = "dev.corral.test.fax", **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": provider_id,
        "name": "Test Fax",
        "type": "outbound_fax",
        "version": "1.0.0",
        "manifest": {"id": provider_id, "version": "1.0.0"},
    }
    entry.update(fields)
    return entry


def _write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(document))
    return path


def _problems(tmp_path: Path, document: object) -> list[str]:
    with pytest.raises(RegistryError) as info:
        load_registry(_write(tmp_path, document))
    assert info.value.source == str(tmp_path / "registry.json")
    return info.value.problems


# --- a good file ------------------------------------------------------------------------------


def test_a_valid_registry_loads_with_every_field(tmp_path: Path) -> None:
    entry = _provider(
        type=["outbound_fax", "webhook_handler"],
        description="Sends faxes.",
        homepage="https://example.com/fax",
        manifest={"id": "dev.corral.test.fax", "nested": {"list": [1, 2.5, None, True]}},
    )
    registry = load_registry(_write(tmp_path, {"providers": [entry, _provider("faxbot-style")]}))

    assert [p.id for p in registry.providers] == ["dev.corral.test.fax", "faxbot-style"]
    first = registry.providers[0]
    assert first.types == ("outbound_fax", "webhook_handler")
    assert registry.providers[1].types == ("outbound_fax",)
    assert first.model_dump(mode="json") == entry
    assert registry.get("faxbot-style") is registry.providers[1]
    assert registry.get("nope") is None


def test_the_type_keeps_the_form_the_file_used(tmp_path: Path) -> None:
    registry = load_registry(
        _write(tmp_path, {"providers": [_provider("a", type="x"), _provider("b", type=["x"])]})
    )
    answer = registry.to_json()
    assert [p["type"] for p in answer["providers"]] == ["x", ["x"]]
    json.dumps(answer, allow_nan=False)  # JSON-ready as it is


def test_an_empty_registry_is_valid(tmp_path: Path) -> None:
    registry = load_registry(_write(tmp_path, {"providers": []}))
    assert registry.search(None) == [] and registry.to_json() == {"providers": []}


def test_registry_error_is_a_runner_error() -> None:
    assert issubclass(RegistryError, RunnerError)


# --- bad files --------------------------------------------------------------------------------


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as info:
        load_registry(tmp_path / "absent.json")
    assert info.value.problems == ["$: no such file"]


def test_a_directory_is_not_a_registry(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as info:
        load_registry(tmp_path)
    assert info.value.problems == ["$: not a regular file"]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "registry.json"
    os.mkfifo(fifo)
    with pytest.raises(RegistryError) as info:
        load_registry(fifo)
    assert info.value.problems == ["$: not a regular file"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "$: not JSON: Expecting value (line 1)"),
        ('{"providers": [}', "$: not JSON: Expecting value (line 1)"),
        ('{"providers": [], "x": NaN}', "$: not JSON: NaN is not valid JSON"),
        ('{"providers": [], "x": -Infinity}', "$: not JSON: -Infinity is not valid JSON"),
        ("[" * 100_000, "$: not JSON: nested too deeply"),
    ],
)
def test_text_that_is_not_json_is_an_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "registry.json"
    path.write_text(text)
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    assert info.value.problems == [expected]


def test_bytes_that_are_not_utf8_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    path.write_bytes(b'{"providers": ["\xff"]}')
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    assert info.value.problems[0].startswith("$: not JSON: ")


def test_a_file_over_the_cap_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    with path.open("wb") as f:
        f.write(b'{"providers": []}')
        f.write(b" " * MAX_REGISTRY_BYTES)  # valid JSON, only too large
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    assert info.value.problems == [f"$: larger than {MAX_REGISTRY_BYTES} bytes"]


def test_parse_registry_applies_the_cap_too() -> None:
    with pytest.raises(RegistryError):
        parse_registry(b" " * (MAX_REGISTRY_BYTES + 1))


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ([], ["$: expected a JSON object"]),
        ({}, ["$.providers: Field required"]),
        ({"providers": {}}, ["$.providers: expected a JSON array"]),
        ({"providers": [], "version": 1}, ["$.version: Extra inputs are not permitted"]),
        ({"providers": ["x"]}, ["$.providers[0]: expected a JSON object"]),
    ],
)
def test_the_top_level_shape_is_checked(
    tmp_path: Path, document: object, expected: list[str]
) -> None:
    assert _problems(tmp_path, document) == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"id": 7}, "$.providers[0].id: expected a JSON string"),
        ({"id": "Has Spaces"}, "$.providers[0].id: 'Has Spaces' is not an id"),
        ({"id": "a\n"}, "$.providers[0].id: 'a\\n' is not an id"),
        ({"name": ""}, "$.providers[0].name: must not be blank"),
        ({"name": ["x"]}, "$.providers[0].name: expected a JSON string"),
        ({"type": 3}, "$.providers[0].type: expected a string or a non-empty list of strings"),
        ({"type": []}, "$.providers[0].type: expected a string or a non-empty list of strings"),
        ({"type": ["fax", 1]}, "$.providers[0].type: 1 is not a type"),
        ({"type": "Fax!"}, "$.providers[0].type: 'Fax!' is not a type"),
        ({"type": "fax\n"}, "$.providers[0].type: 'fax\\n' is not a type"),
        ({"type": ["fax", "fax"]}, "$.providers[0].type: a type is listed twice"),
        ({"version": "1.0"}, "$.providers[0].version: '1.0' is not a semantic version"),
        ({"version": 1}, "$.providers[0].version: expected a JSON string"),
        ({"homepage": "ftp://x"}, "$.providers[0].homepage: 'ftp://x' is not an http(s) URL"),
        ({"description": None}, "$.providers[0].description: expected a JSON string"),
        ({"manifest": []}, "$.providers[0].manifest: expected a JSON object"),
        ({"manifest": "plugin.toml"}, "$.providers[0].manifest: expected a JSON object"),
        ({"categories": ["x"]}, "$.providers[0].categories: Extra inputs are not permitted"),
    ],
)
def test_each_provider_field_is_checked(
    tmp_path: Path, fields: dict[str, Any], expected: str
) -> None:
    problems = _problems(tmp_path, {"providers": [_provider(**fields)]})
    assert len(problems) == 1 and problems[0].startswith(expected), problems


@pytest.mark.parametrize("field", ["id", "name", "type", "version", "manifest"])
def test_each_required_field_is_required(tmp_path: Path, field: str) -> None:
    entry = _provider()
    del entry[field]
    assert _problems(tmp_path, {"providers": [entry]}) == [
        f"$.providers[0].{field}: Field required"
    ]


def test_every_problem_is_listed_with_its_path(tmp_path: Path) -> None:
    document = {"providers": [_provider(), _provider("b", name="", version="x"), 5]}
    assert [p.split(":")[0] for p in _problems(tmp_path, document)] == [
        "$.providers[1].name",
        "$.providers[1].version",
        "$.providers[2]",
    ]


def test_duplicate_ids_are_an_error(tmp_path: Path) -> None:
    document = {"providers": [_provider("a"), _provider("b"), _provider("a")]}
    assert _problems(tmp_path, document) == ["$.providers[2].id: 'a' duplicates $.providers[0].id"]


def test_the_manifest_summary_must_agree_with_its_entry(tmp_path: Path) -> None:
    entry = _provider("a", manifest={"id": "b", "version": "2.0.0"})
    assert _problems(tmp_path, {"providers": [entry]}) == [
        "$.providers[0].manifest.id: 'b' differs from $.providers[0].id 'a'",
        "$.providers[0].manifest.version: '2.0.0' differs from $.providers[0].version '1.0.0'",
    ]


def test_huge_values_are_never_quoted_in_full(tmp_path: Path) -> None:
    huge = "X" * 100_000
    document = {"providers": [_provider(huge, type=huge, homepage=huge, manifest={"id": huge})]}
    with pytest.raises(RegistryError) as info:
        load_registry(_write(tmp_path, document))
    assert len(str(info.value)) < 1000
    assert all(len(problem) < 200 for problem in info.value.problems)


def test_the_list_of_problems_is_capped(tmp_path: Path) -> None:
    problems = _problems(tmp_path, {"providers": [1] * (MAX_PROBLEMS + 10)})
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1] == "... and 10 more problems"


# --- search -----------------------------------------------------------------------------------


@pytest.fixture
def registry() -> Registry:
    return parse_registry(
        json.dumps(
            {
                "providers": [
                    _provider("zeta.sms", name="Zeta SMS", type="notification_channel"),
                    _provider(
                        "alpha.fax",
                        name="Alpha Fax",
                        description="Sends via HTTPS.",
                        manifest={"permissions": ["network.outbound:api.example.com"]},
                    ),
                    _provider("mid.hook", name="Mid", type=["webhook_handler", "audit_sink"]),
                ]
            }
        )
    )


def _ids(registry: Registry, q: str | None) -> list[str]:
    return [p.id for p in registry.search(q)]


@pytest.mark.parametrize("q", [None, "", "   "])
def test_an_empty_query_returns_every_provider_by_id(registry: Registry, q: str | None) -> None:
    assert _ids(registry, q) == ["alpha.fax", "mid.hook", "zeta.sms"]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("fax", ["alpha.fax"]),  # the id, name and type
        ("channel", ["zeta.sms"]),  # the type only
        ("ZETA", ["zeta.sms"]),  # the id, case-insensitively
        ("alpha f", ["alpha.fax"]),  # the name, with its space
        ("audit", ["mid.hook"]),  # one of several types
        ("https", ["alpha.fax"]),  # the description
        (" sms ", ["zeta.sms"]),  # surrounding blanks are ignored
        ("nothing-like-it", []),
    ],
)
def test_search_matches_substrings_of_id_name_types_and_description(
    registry: Registry, q: str, expected: list[str]
) -> None:
    assert _ids(registry, q) == expected


def test_search_does_not_look_inside_the_manifest(registry: Registry) -> None:
    assert _ids(registry, "example") == []
    assert _ids(registry, "1.0.0") == []  # nor at the version


def test_to_json_orders_providers_by_id(registry: Registry) -> None:
    answer = registry.to_json()
    assert [p["id"] for p in answer["providers"]] == ["alpha.fax", "mid.hook", "zeta.sms"]
    assert parse_registry(json.dumps(answer)).to_json() == answer  # a registry in, the same out


# --- settings ---------------------------------------------------------------------------------


def test_the_path_comes_from_the_environment(tmp_path: Path) -> None:
    assert registry_path_from_env({REGISTRY_ENV: str(tmp_path / "r.json")}) == tmp_path / "r.json"
    assert registry_path_from_env({REGISTRY_ENV: "rel/r.json"}) == Path("rel/r.json")


@pytest.mark.parametrize("environ", [{}, {REGISTRY_ENV: ""}, {REGISTRY_ENV: "  "}])
def test_the_default_path_is_the_shipped_file(environ: dict[str, str]) -> None:
    assert registry_path_from_env(environ) == DEFAULT_REGISTRY_PATH == REPO_ROOT / "registry.json"


# --- the shipped registry ---------------------------------------------------------------------


def _shipped_manifests() -> dict[str, Any]:
    manifests = (load_manifest(p) for p in sorted((REPO_ROOT / "plugins").glob("*/plugin.toml")))
    return {m.id: m for m in manifests}


def test_the_shipped_registry_loads() -> None:
    registry = load_registry(DEFAULT_REGISTRY_PATH)
    assert [p.id for p in registry.search(None)] == [
        "dev.corral.http-fax-example",
        "dev.corral.phaxio-fax",
        "dev.corral.twilio-sms",
    ]


def test_the_shipped_registry_matches_the_shipped_plugin_toml_files() -> None:
    registry = load_registry(DEFAULT_REGISTRY_PATH)
    manifests = _shipped_manifests()
    hint = "registry.json drifted from plugins/*/plugin.toml; update its entry from the manifest"
    assert sorted(p.id for p in registry.providers) == sorted(manifests), hint
    for provider in registry.providers:
        manifest = manifests[provider.id]
        assert provider.version == manifest.version, hint
        assert provider.name == manifest.display_name, hint
        assert provider.types == tuple(c.kind for c in manifest.categories), hint
        assert provider.description == manifest.description, hint
        assert provider.homepage == manifest.homepage, hint
        assert provider.manifest == msgspec.to_builtins(manifest), hint
