"""Plugins: the pluggy manager, the registries built from its hooks, and the built-in plugin."""
