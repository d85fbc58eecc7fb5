"""Turn a Faxbot registry entry with an HTTP `manifest` (`actions`, `allowed_domains`) into a corral
bundle: plugin.toml, provider.json and the two-line entry module of the generic runtime.

The bundle is checked as the worker will check it (`plugins.sdk.http_manifest`) before anything is
written. Writing a bundle approves nothing: it still needs its checksums.txt line and an
allowlist.toml entry, like any other bundle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from plugins.sdk.http_compile import parse_provider
from plugins.sdk.http_spec import PROVIDER_FILE, ProviderManifestError
from protocol import ManifestError, parse_manifest
from protocol.manifest import MANIFEST_NAME

from .errors import RunnerError

DEFAULT_ID_PREFIX: Final = "local.http"
_PLACEHOLDER: Final = re.compile(r"\{\{\s*([^{}|]+?)\s*\}\}")
_REVERSE_DNS: Final = re.compile(r"^[a-z][a-z0-9-]*(\.[a-z0-9][a-z0-9-]*)+$")
_SECRET_WORDS: Final = ("secret", "token", "password")
_SAFE_SEGMENT: Final = re.compile(r"[^a-z0-9-]+")
# Faxbot's template variables, in corral's terms; `settings.*` and `creds.*` become config fields.
_FAXBOT_VARIABLES: Final[Mapping[str, str]] = {
    "to": "request.to",
    "from": "request.caller_id",
    "file_url": "request.content_url",
    "file": "request.document",
    "file_base64": "request.file_base64",
    "job_id": "request.job_id",
}
_FILE_FIELDS: Final = frozenset({"file", "attachment"})  # Faxbot's multipart file keys


class HttpManifestBundleError(RunnerError):
    """The entry cannot become a valid bundle; `problems` lists each with its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("cannot write bundle: " + "; ".join(problems))
        self.problems = problems


class _Converter:
    """Rewrite a Faxbot HTTP manifest into provider.json, collecting the config it refers to."""

    def __init__(self) -> None:
        self.config: dict[str, bool] = {}  # config field -> secret
        self.required: set[str] = set()

    def template(self, text: str) -> str:
        def rewrite(match: re.Match[str]) -> str:
            name = match.group(1)
            root, _, rest = name.partition(".")
            if name in _FAXBOT_VARIABLES:
                return "{{" + _FAXBOT_VARIABLES[name] + "}}"
            if root in ("settings", "creds", "config") and rest:
                secret = root == "creds" or any(w in rest for w in _SECRET_WORDS)
                self.config[rest] = self.config.get(rest, False) or secret
                return "{{config." + rest + "}}"
            return match.group(0)  # request.* and anything unknown: the checker has the last word

        return _PLACEHOLDER.sub(rewrite, text)

    def tree(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.template(value)
        if isinstance(value, dict):
            return {k: self.tree(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.tree(v) for v in value]
        return value

    def credential(self, name: str, *, secret: bool) -> str:
        self.config[name] = self.config.get(name, False) or secret
        self.required.add(name)
        return "{{config." + name + "}}"

    def provider(self, entry: Mapping[str, Any], manifest: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(manifest.get("id", entry.get("id", ""))),
            "name": str(manifest.get("name", entry.get("name", ""))),
            "allowed_domains": list(manifest.get("allowed_domains") or []),
        }
        if "timeout_ms" in manifest:
            out["timeout_ms"] = manifest["timeout_ms"]
        for key in ("headers", "status_map", "unknown_status"):
            if key in manifest:
                out[key] = self.tree(manifest[key])
        query: tuple[str, str] | None = None
        auth = manifest.get("auth")
        if isinstance(auth, dict):
            out_auth, header, query = self.auth(auth)
            if out_auth is not None:
                out["auth"] = out_auth
            if header is not None:
                out.setdefault("headers", {})[header[0]] = header[1]
        actions = manifest.get("actions")
        out["actions"] = {
            name: self.action(action, query) if isinstance(action, dict) else action
            for name, action in (actions.items() if isinstance(actions, dict) else [])
        }
        # Faxbot maps statuses per action, often on send_fax only; a provider's words are the same
        # whichever action returns them, so every action's map also serves the others.
        shared = out.setdefault("status_map", {})
        for action in out["actions"].values():
            response = action.get("response") if isinstance(action, dict) else None
            if isinstance(response, dict) and isinstance(response.get("status_map"), dict):
                for word, status in response["status_map"].items():
                    shared.setdefault(word, status)
        return out

    def auth(
        self, auth: Mapping[str, Any]
    ) -> tuple[dict[str, Any] | None, tuple[str, str] | None, tuple[str, str] | None]:
        """Return (auth, extra header, query parameter) for Faxbot's `{"scheme": ...}`."""
        if "basic" in auth or "bearer" in auth:  # already corral's form
            return self.tree(dict(auth)), None, None
        scheme = auth.get("scheme", "none")
        if scheme == "basic":
            user = self.credential("api_key", secret=False)
            return {"basic": [user, self.credential("api_secret", secret=True)]}, None, None
        if scheme == "bearer":
            return {"bearer": self.credential("api_key", secret=True)}, None, None
        if scheme == "api_key_header":
            name = str(auth.get("header") or auth.get("name") or "X-API-Key")
            return None, (name, self.credential("api_key", secret=True)), None
        if scheme == "api_key_query":
            name = str(auth.get("param") or auth.get("name") or "api_key")
            return None, None, (name, self.credential("api_key", secret=True))
        if scheme == "none":
            return None, None, None
        raise HttpManifestBundleError([f"$.manifest.auth.scheme: {str(scheme)[:40]!r} unknown"])

    def action(self, action: Mapping[str, Any], query: tuple[str, str] | None) -> dict[str, Any]:
        out = {k: self.tree(v) for k, v in action.items() if k not in ("path_params", "response")}
        if query is not None and isinstance(out.get("url"), str):
            separator = "&" if "?" in out["url"] else "?"
            out["url"] = f"{out['url']}{separator}{query[0]}={query[1]}"
        body = out.get("body")
        if isinstance(body, dict) and body.get("kind") == "multipart":
            template = body.get("template")
            if isinstance(template, dict):
                for key in sorted(_FILE_FIELDS & template.keys()):
                    del template[key]
                    body.setdefault("files", {})[key] = {
                        "data": "{{request.document}}",
                        "filename": "{{request.filename}}",
                        "content_type": "{{request.content_type}}",
                    }
        response = action.get("response")
        if isinstance(response, dict):
            out["response"] = {k: v for k, v in response.items() if k != "status_map"}
            if "status_map" in response:
                out["response"]["status_map"] = {
                    str(k): str(v).lower() for k, v in dict(response["status_map"]).items()
                }
        return out


def _plugin_id(entry: Mapping[str, Any]) -> str:
    raw = str(entry.get("id", ""))
    if _REVERSE_DNS.match(raw):
        return raw
    segment = _SAFE_SEGMENT.sub("-", raw.lower()).strip("-") or "provider"
    if not segment[0].isalnum():
        segment = "p" + segment
    return f"{DEFAULT_ID_PREFIX}.{segment}"


def _toml(value: Any) -> str:
    # JSON's string and array syntax is valid TOML for what is written here (strings, bools).
    return json.dumps(value, ensure_ascii=False)


def _plugin_toml(
    entry: Mapping[str, Any], plugin_id: str, category: str, module: str, converter: _Converter
) -> str:
    domains = entry["manifest"].get("allowed_domains") or []
    lines = [
        f"id = {_toml(plugin_id)}",
        f"version = {_toml(str(entry.get('version', '')))}",
        f"display_name = {_toml(str(entry.get('name', '')))}",
        f"description = {_toml(str(entry.get('description', '')))}",
        f"homepage = {_toml(str(entry.get('homepage', '')))}",
        "protocol_version = 1",
        f"entrypoint = {_toml(module)}",
        f"permissions = {_toml([f'network.outbound:{d}' for d in domains])}",
        "",
        "[[categories]]",
        f"kind = {_toml(category)}",
    ]
    for name, secret in sorted(converter.config.items()):
        lines += ["", "[[config]]", f"name = {_toml(name)}", f"label = {_toml(name)}"]
        if name in converter.required:
            lines.append("required = true")
        if secret:
            lines.append("secret = true")
    return "\n".join(lines) + "\n"


def write_bundle(
    entry: dict[str, Any],
    out_dir: Path,
    *,
    category: str = "outbound_fax",
    plugin_id: str | None = None,
) -> Path:
    """Write a bundle for the registry `entry` into the new directory `out_dir`; return it.

    `plugin_id` defaults to the entry's id when it is reverse-DNS, else `local.http.<id>`. Raise
    HttpManifestBundleError (listing every problem) when the entry has no HTTP manifest or the
    bundle would not load; FileExistsError when `out_dir` exists and is not empty. Nothing is
    written unless the bundle is valid.
    """
    manifest = entry.get("manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("actions"), dict):
        raise HttpManifestBundleError(["$.manifest: has no `actions`: not an HTTP provider"])
    plugin_id = plugin_id or _plugin_id(entry)
    module = "http_" + plugin_id.rsplit(".", 1)[-1].replace("-", "_")
    converter = _Converter()
    provider = converter.provider(entry, manifest)
    provider_text = json.dumps(provider, indent=2, ensure_ascii=False) + "\n"
    toml_text = _plugin_toml(entry, plugin_id, category, module, converter)
    try:
        parsed = parse_manifest(toml_text, source=MANIFEST_NAME)
        parse_provider(provider_text.encode(), parsed)
    except (ManifestError, ProviderManifestError) as exc:
        raise HttpManifestBundleError(exc.problems) from exc
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).write_text(toml_text, encoding="utf-8")
    (out_dir / PROVIDER_FILE).write_text(provider_text, encoding="utf-8")
    (out_dir / f"{module}.py").write_text(
        f'"""{plugin_id}: declared in provider.json, run by the generic HTTP runtime."""\n\n'
        "from plugins.sdk.http_manifest import load_provider\n\n"
        "plugin = load_provider(__file__)\n",
        encoding="utf-8",
    )
    return out_dir


__all__ = ["HttpManifestBundleError", "write_bundle"]
