"""Plugin bundles shipped with corral, and `plugins.sdk`: the SDK and the worker runtime."""
