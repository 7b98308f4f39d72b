"""``lm-eval-approx strategies|tasks|plugins [--json]``: what the loaded plugins registered.

``tasks --approximable [--include-path DIR]`` instead loads every task of the registered folders
(and DIR) and says which can be a target of the approximation — kind, text field, number of
choices — and, for the others, why not (the named error ``get_task_spec`` raises).
"""

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


def approximable_rows(include_path=None) -> list[dict]:
    """One row per task and group of the registered folders and ``include_path``: whether it can
    be approximated, its kind, text field and number of choices, or the reason it cannot."""
    from lm_eval_approx.errors import ApproxError, ConfigError
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec, local_task_names

    tasks, groups = local_task_names(include_path)
    rows = []
    for name in sorted({*tasks, *groups}):
        row = {"name": name, "approximable": False, "kind": "", "text_field": "", "choices": "", "reason": ""}
        try:
            spec = get_task_spec(name, include_path)
        except ApproxError as exc:
            row["reason"] = exc.accepted if isinstance(exc, ConfigError) else str(exc)
        else:
            row.update(approximable=True, kind=spec.kind, text_field=spec.text_field,
                       choices=spec.num_classes)
        rows.append(row)
    return rows


def list_tasks(args) -> int:
    if args.approximable:
        _print_rows(approximable_rows(args.include_path), args.json)
        return 0
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
        if name == "tasks":
            parser.add_argument("--approximable", action="store_true",
                                help="load each task and say whether it can be approximated (kind, text field, "
                                     "choices) or why not")
            parser.add_argument("--include-path", action="append", default=None, metavar="DIR",
                                help="another folder of lm-eval task YAML for --approximable (repeatable)")
        parser.set_defaults(func=func)
