"""Declarative HTTP providers: a bundle whose `provider.json` (Faxbot's HTTP manifest: `actions`
and `allowed_domains`) stands in for plugin code, served by a generic runtime.

The entry module of such a bundle is two lines:

    from plugins.sdk.http_manifest import load_provider
    plugin = load_provider(__file__)

The worker is the same sandboxed worker as for any plugin; requests go through the host's
`http.request`, so the egress broker enforces plugin.toml's `network.outbound` grants, which must
equal `allowed_domains`. Schema: `plugins.sdk.http_spec`; checks: `plugins.sdk.http_compile`;
runtime: `plugins.sdk.http_provider`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from protocol import ManifestError, load_manifest

from .http_compile import parse_provider
from .http_provider import HttpOutboundFax
from .http_spec import PROVIDER_FILE, Provider, ProviderManifestError
from .plugin import Plugin

# How each supported category is served; `http_compile.REQUIRED_ACTIONS` lists the same kinds.
_ADAPTERS: Final = {"outbound_fax": HttpOutboundFax}


def check_bundle(bundle_dir: Path) -> Provider:
    """Validate a bundle's plugin.toml and provider.json together; return the compiled provider.

    Raise ProviderManifestError listing every problem with its JSON path (`$.actions.send_fax.url:
    ...`). Reads two files and runs no plugin code, so installers and CLIs may call it.
    """
    try:
        manifest = load_manifest(bundle_dir)
    except ManifestError as exc:
        raise ProviderManifestError(exc.problems, str(bundle_dir / "plugin.toml")) from exc
    path = bundle_dir / PROVIDER_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProviderManifestError([f"$: cannot read: {exc.strerror}"], str(path)) from exc
    return parse_provider(data, manifest, source=str(path))


def load_provider(module_file: str | Path) -> Plugin:
    """Return the Plugin for the bundle holding `module_file` (pass the entry module's `__file__`).

    Raise ProviderManifestError (a PluginDefinitionError) when the bundle is invalid: the worker
    then refuses to start, naming each problem.
    """
    provider = check_bundle(Path(module_file).resolve().parent)
    plugin = Plugin()
    for kind in provider.categories:
        base = _ADAPTERS[kind]  # http_compile refused any other kind
        cls = type(f"{base.__name__}Bound", (base,), {"provider": provider})
        plugin.category(kind)(cls)
    return plugin


__all__ = ["Provider", "ProviderManifestError", "check_bundle", "load_provider"]
