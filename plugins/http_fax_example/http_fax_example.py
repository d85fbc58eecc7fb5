"""Phaxio, declared rather than coded: the bundle's provider.json drives the generic runtime."""

from plugins.sdk.http_manifest import load_provider

plugin = load_provider(__file__)
