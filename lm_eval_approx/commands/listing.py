"""``lm-eval-approx strategies|tasks|plugins [--json]``: what the loaded plugins registered."""

from __future__ import annotations

import json

from lm_eval_approx.plugins.manager import list_plugins as loaded_plugins
from lm_eval_approx.plugins.registry import task_registry
from lm_eval_approx.strategies.registry import strategy_registry


def _print_rows(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("(none)")
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for row in rows:
        print("  ".join(str(row[k]).ljust(widths[k]) for k in keys))


def list_strategies(args) -> int:
    rows = [
        {
            "name": e.name,
            "description": e.description,
            "aliases": ",".join(e.aliases),
            "plugin": f"{e.plugin.distribution} {e.plugin.version}",
        }
        for e in strategy_registry()
    ]
    _print_rows(rows, args.json)
    return 0


def list_tasks(args) -> int:
    rows = [
        {
            "name": e.name,
            "description": e.description,
            "folder": str(e.obj),
            "plugin": f"{e.plugin.distribution} {e.plugin.version}",
        }
        for e in task_registry()
    ]
    _print_rows(rows, args.json)
    return 0


def list_plugins(args) -> int:
    rows = [{"name": p.name, "distribution": p.distribution, "version": p.version} for p in loaded_plugins()]
    _print_rows(rows, args.json)
    return 0


def add_parser(subparsers) -> None:
    for name, func, help_text in (
        ("strategies", list_strategies, "list registered selection strategies"),
        ("tasks", list_tasks, "list tasks and groups from the registered task folders"),
        ("plugins", list_plugins, "list loaded plugins with their distribution and version"),
    ):
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        parser.set_defaults(func=func)
