"""The host: aiohttp app, admin API, webhooks, install and verification, supervisor, CLI.

It composes `protocol` (the wire) and `sandbox` (confinement); they know nothing of each other.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
