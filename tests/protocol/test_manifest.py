from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from protocol import ManifestError, categories, config_schema, load_manifest, parse_manifest

VALID = """
id = "com.example.fax"
version = "1.2.3-beta.1+build.5"
display_name = "Example Fax"
protocol_version = 1
slug = "example-fax"
permissions = ["network.outbound:api.example.com", "network.outbound:*.example.net:8443"]

[[categories]]
kind = "outbound_fax"
priority = 10

[[categories]]
kind = "webhook_handler"

[[config]]
name = "api_key"
required = true
secret = true

[[config]]
name = "region"
enum = ["us", "eu"]
default = "us"

[[config]]
name = "retries"
type = "integer"
default = 3

[[webhook]]
route_id = "status"
path = "/status"
verify = "hmac-sha256"
secret_field = "api_key"
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text)
    return info.value.problems


def test_a_valid_manifest_parses_with_defaults() -> None:
    m = parse_manifest(VALID)
    assert m.id == "com.example.fax" and m.url_slug == "example-fax"
    assert m.outbound_hosts == ["api.example.com", "*.example.net:8443"]
    assert m.priority("outbound_fax") == 10 and m.priority("webhook_handler") == 100
    assert m.secret_fields == {"api_key"}
    route = m.webhook[0]
    assert (route.methods, route.max_body_bytes, route.timeout_seconds) == (["POST"], 2**20, 10.0)


def test_unknown_keys_are_errors_with_their_path() -> None:
    assert problems_of("colour = 'blue'\n" + VALID) == ["$: Object contains unknown field `colour`"]
    text = VALID.replace('kind = "outbound_fax"', 'kind = "outbound_fax"\nweight = 3')
    assert problems_of(text) == ["$.categories[0]: Object contains unknown field `weight`"]


def test_wrong_types_name_the_field() -> None:
    text = VALID.replace("priority = 10", 'priority = "high"')
    assert problems_of(text) == ["$.categories[0].priority: Expected `int`, got `str`"]


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        ('id = "com.example.fax"', 'id = "ExampleFax"', "$.id"),
        ('version = "1.2.3-beta.1+build.5"', 'version = "1.2"', "$.version"),
        ('slug = "example-fax"', 'slug = "Example Fax!"', "$.slug"),
        ('kind = "outbound_fax"', 'kind = "teleport"', "$.categories[0].kind"),
        ("network.outbound:api.example.com", "filesystem.write:/", "$.permissions[0]"),
        ("network.outbound:api.example.com", "network.outbound:http://x", "$.permissions[0]"),
        ('default = "us"', 'default = "mars"', "$.config[1].default"),
        ("default = 3", 'default = "three"', "$.config[2].default"),
        ('path = "/status"', 'path = "status"', "$.webhook[0].path"),
        ('secret_field = "api_key"', 'secret_field = "nope"', "$.webhook[0].secret_field"),
    ],
)
def test_semantic_problems_are_reported_with_their_path(old: str, new: str, path: str) -> None:
    assert old in VALID
    problems = problems_of(VALID.replace(old, new))
    assert any(p.startswith(f"{path}:") for p in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    text = VALID.replace('id = "com.example.fax"', 'id = "bad"').replace("1.2.3-beta", "x")
    assert len(problems_of(text)) >= 2


def test_webhook_routes_need_the_webhook_handler_category() -> None:
    text = VALID.replace('[[categories]]\nkind = "webhook_handler"\n', "")
    assert any(p.startswith("$.webhook:") for p in problems_of(text))


def test_invalid_toml_is_a_manifest_error() -> None:
    assert problems_of("id = ")[0].startswith("$: invalid TOML")


def test_load_manifest_reads_a_bundle_directory(tmp_path: Path) -> None:
    (tmp_path / "plugin.toml").write_text(VALID)
    assert load_manifest(tmp_path).id == "com.example.fax"
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "missing")


def test_config_schema_validates_settings() -> None:
    schema = config_schema(parse_manifest(VALID))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors({"api_key": "k", "region": "eu", "retries": 2}))
    errors = {e.json_path: e.message for e in validator.iter_errors({"region": "mars", "x": 1})}
    assert "$" in errors and "$.region" in errors  # missing api_key / unknown x, bad enum
    assert schema["properties"]["api_key"]["writeOnly"] is True


def test_every_category_declares_typed_methods() -> None:
    assert len(categories.known_kinds()) >= 14
    for kind in categories.known_kinds():
        spec = categories.get(kind)
        assert spec.kind == kind and spec.methods
        for name in spec.methods:
            assert spec.wire_name(name) == f"{kind}.{name}"
    with pytest.raises(KeyError):
        categories.get("teleport")
