"""Where a leaderboard config comes from: a YAML file or a shipped preset, with ``--set`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lm_eval_approx.errors import UnknownNameError
from lm_eval_approx.leaderboard.config import (
    LeaderboardConfig,
    config_from_dict,
    field_error,
)

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(config_file: str | None = None, preset: str | None = None) -> dict[str, Any]:
    """The raw mapping of a config file or of a shipped preset."""
    if (config_file is None) == (preset is None):
        raise field_error("--config/--preset", (config_file, preset), "exactly one of --config FILE or --preset NAME")
    if preset is not None:
        if preset not in preset_names():
            raise UnknownNameError("preset", preset, preset_names())
        path = PRESET_DIR / f"{preset}.yaml"
    else:
        path = Path(config_file)  # type: ignore[arg-type]  # one of the two is given (checked above)
        if not path.is_file():
            raise field_error("--config", config_file, "an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise field_error("--config", str(path), f"a readable UTF-8 YAML file ({exc})") from None
    return data if isinstance(data, dict) else {"config": data}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (dotted keys for nesting, values read as YAML) applied over ``data``."""
    out = yaml.safe_load(yaml.safe_dump(data))
    for item in overrides:
        if not isinstance(item, str):
            raise field_error("--set", item, "key=value strings")
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise field_error("--set", item, "key=value, e.g. base=/path/to/model or expert.size=100")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise field_error(f"--set {key.strip()}", value, f"a YAML value ({exc})") from None
    return out


def read_config(config_file: str | None = None, preset: str | None = None,
                overrides: list[str] | None = None) -> LeaderboardConfig:
    """Read, override and check a leaderboard config (not resolved: nothing it names is looked up)."""
    return config_from_dict(apply_overrides(read_yaml(config_file, preset), overrides or []))


def load_config(config_file: str | None = None, preset: str | None = None,
                overrides: list[str] | None = None) -> LeaderboardConfig:
    """``read_config``, then resolved (``LeaderboardConfig.resolve``: the target task loaded, the
    strategies and task names looked up); raises before any compute on a bad key."""
    return read_config(config_file, preset, overrides).resolve()
