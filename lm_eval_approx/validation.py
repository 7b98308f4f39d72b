"""Dataclass fields with help text, shared by the config dataclasses (FeatureConfig, ApproxConfig)."""

from __future__ import annotations

from dataclasses import field


def help_field(text: str, default):
    """A dataclass field whose ``metadata["help"]`` documents it (CLI help and README come from it)."""
    return field(default=default, metadata={"help": text})
