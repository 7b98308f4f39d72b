"""Reference pages of the documentation site, written from the code itself at build time.

``docs/gen_reference.py`` (run by mkdocs-gen-files on every ``mkdocs build``) writes what these
functions return, so the pages never disagree with the code they describe:

* ``cli_reference``: every subcommand of ``lm-eval-approx`` (nested ones included), from the
  argparse parsers that ``cli.build_parser`` assembles through the ``register_commands`` hook;
* ``config_reference``: every field of ``ApproxConfig``, ``FeatureConfig`` and ``TrainingRecipe``
  (type, default, the help text the CLI shows), the retraining rule, and the leaderboard YAML keys;
* ``strategies_reference``: every registered strategy with what it needs and its options.

Nothing here runs a model: building the parsers imports no torch, and the config modules only
declare dataclasses.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lm_eval_approx.cli import build_parser
from lm_eval_approx.config_checks import field_default
from lm_eval_approx.features.config import FeatureConfig
from lm_eval_approx.leaderboard import config as leaderboard_config
from lm_eval_approx.leaderboard.config import CorpusConfig, ExpertConfig, LeaderboardConfig
from lm_eval_approx.leaderboard.rows import StrategyConfig
from lm_eval_approx.approx_config import ApproxConfig
from lm_eval_approx.strategies.base import NoOptions
from lm_eval_approx.strategies.registry import strategy_registry
from lm_eval_approx.tasks.kinds import CLASSIFICATION
from lm_eval_approx.training.recipe import RECIPE_DEST, TrainingRecipe
from lm_eval_approx.training.retraining_rule import CONDITIONS, retraining_rule

PROGRAM = "lm-eval-approx"
# Help text is wrapped to this many columns, whatever terminal builds the site, so the page is the
# same on every machine.
HELP_COLUMNS = 80
LANGUAGE_MODELLING = "lm"
# The YAML example that opens leaderboard/config.py's docstring, between these two markers.
LAYOUT_START, LAYOUT_END = "Layout", "``--set key=value``"


@contextmanager
def _help_width(columns: int) -> Iterator[None]:
    """argparse wraps help to the terminal width it reads from COLUMNS; pin it for one block."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand of ``parser``, in registration order."""
    found = []
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            found += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return found


def command_tree(parser: argparse.ArgumentParser | None = None,
                 prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    """Every command path below ``parser`` (``("leaderboard",)``, and deeper ones when a command has
    subcommands of its own), with its one-line help and its parser, depth first."""
    parser = parser or build_parser()
    tree = []
    for name, text, sub in _subcommands(parser):
        path = (*prefix, name)
        tree.append((path, text, sub))
        tree += command_tree(sub, path)
    return tree


def cli_reference() -> str:
    """The CLI reference page: a summary table, then each command's full ``--help``."""
    parser = build_parser()
    tree = command_tree(parser)
    lines = ["# Command-line reference", "",
             f"Generated from the argparse parsers of `{PROGRAM}` each time the site is built: the text",
             f"below is exactly what `{PROGRAM} COMMAND --help` prints. Commands come from the",
             "`register_commands` plugin hook, so an installed plugin's commands appear in `--help` too.", "",
             "| command | what it does |", "|---|---|"]
    lines += [f"| [`{' '.join(path)}`](#{_anchor(path)}) | {_cell(text)} |" for path, text, _ in tree]
    with _help_width(HELP_COLUMNS):
        lines += ["", f"## {PROGRAM}", "", "```text", parser.format_help().rstrip(), "```"]
        for path, text, sub in tree:
            lines += ["", f"## {PROGRAM} {' '.join(path)} {{#{_anchor(path)}}}", "", _cell(text), "",
                      "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _anchor(path: tuple[str, ...]) -> str:
    return "-".join(path)


def _cell(text: object) -> str:
    """Text that stays inside one Markdown table cell: pipes escaped outside code spans (inside them
    the table extension keeps a pipe as it is, and a backslash would show), newlines folded."""
    parts = str(text).replace("\n", " ").split("`")
    return "`".join(part if i % 2 else part.replace("|", "\\|") for i, part in enumerate(parts)).strip()


def _code(value: object) -> str:
    """``value`` as a code span inside a table cell."""
    return _cell(f"`{value}`")


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) if value else "[]"
    if value == "":
        return '""'
    return str(value)


def _type_name(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def command_flags(command: tuple[str, ...], dest_prefix: str = "") -> dict[str, str]:
    """Field name → the flag that sets it on ``lm-eval-approx COMMAND`` (argparse ``dest`` is the
    field name, after ``dest_prefix``), read from the parser itself."""
    parser = next(sub for path, _, sub in command_tree() if path == command)
    return {action.dest[len(dest_prefix):]: action.option_strings[-1] for action in parser._actions
            if action.option_strings and action.dest.startswith(dest_prefix)}


def field_table(cls, flags: dict[str, str] | None = None) -> list[str]:
    """A Markdown table of the dataclass ``cls``: field (and the CLI flag that sets it, from
    ``flags``), type, default, and the help text kept in the field's metadata."""
    head = "| field | flag | type | default | meaning |" if flags is not None else \
        "| field | type | default | meaning |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for f in dataclasses.fields(cls):
        meaning = f.metadata.get("help", "")
        if "choices" in f.metadata:
            meaning += f" (one of: {', '.join(f.metadata['choices'])})"
        cells = [f"`{f.name}`"]
        if flags is not None:
            cells.append(f"`{flags[f.name]}`" if f.name in flags else "–")
        cells += [_code(_type_name(f)), _code(_shown(field_default(f))), _cell(meaning) or "–"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _leaderboard_layout() -> list[str]:
    """The annotated YAML example of leaderboard/config.py's docstring, as a code block."""
    doc = leaderboard_config.__doc__ or ""
    start, end = doc.index(LAYOUT_START), doc.index(LAYOUT_END)
    body = doc[start:end].split("::", 1)[1]
    lines = [line[4:] if line.startswith("    ") else line for line in body.strip("\n").splitlines()]
    return ["```yaml", *[line.rstrip() for line in lines if line.strip() or lines], "```"]


def _rule_table() -> list[str]:
    rows = ["| task kind | condition | recipe fields the rule sets |", "|---|---|---|"]
    for kind, label in ((CLASSIFICATION, "classification"), (LANGUAGE_MODELLING, "language modelling")):
        for condition in CONDITIONS:
            fields = ", ".join(f"`{k}: {v}`" for k, v in retraining_rule(kind, condition).items())
            rows.append(f"| {label} | `{condition}` | {fields} |")
    return rows


def config_reference() -> str:
    """The configuration reference page: every config dataclass, field by field."""
    lines = [
        "# Configuration reference", "",
        "Generated from the config dataclasses each time the site is built: names, types, defaults and",
        "the help text are the ones the code validates and the CLI prints.", "",
        "## ApproxConfig: one approximation", "",
        "`lm_eval_approx.approx_config.ApproxConfig` (also importable from `lm_eval_approx.pipeline`). The same fields are the model arguments of",
        "`lm-eval-approx run --model approx` (`--model_args base=...,finetuned=...,k=300`), and the `approx:`",
        "mapping of a leaderboard config or of one of its strategy rows. Under `--model approx`, a",
        "training-recipe field is `train_<field>` (`train_epochs=2`), a strategy option `strategy_<option>`",
        "(`strategy_batch_size=16`), and `recipe=FILE.json` starts from a saved recipe. List values join",
        "their items with `+` there, because commas already separate model arguments.", "",
        *field_table(ApproxConfig), "",
        "## FeatureConfig: gradient features", "",
        "`lm_eval_approx.features.config.FeatureConfig`: what `lm-eval-approx features` extracts; the",
        "flag column is the flag of that command that sets the field.", "",
        *field_table(FeatureConfig, command_flags(("features",))), "",
        "## TrainingRecipe: how θ0 is trained", "",
        "`lm_eval_approx.training.recipe.TrainingRecipe`: one recipe makes the expert",
        "(`lm-eval-approx finetune`) and every retraining (`lm-eval-approx train`, `--model approx`, the",
        "leaderboard). Every field is a flag of `train` and `finetune`, a `train_<field>` model argument of",
        "`--model approx`, and a key of a leaderboard `recipe:` / `retraining:` mapping. `--recipe FILE.json`",
        "starts from a saved `recipe.json`.", "",
        *field_table(TrainingRecipe, command_flags(("train",), RECIPE_DEST)), "",
        "## The retraining rule", "",
        "What an approximation's retraining adds over `recipe:` by default (a leaderboard's `retraining:`",
        "replaces it; `retraining: {}` keeps the plain recipe). `--model approx` and",
        "`train --retraining-rule` use the `task_texts` row of the task's kind. The expert's recipe is never",
        "changed by the rule.", "",
        *_rule_table(), "",
        "## Leaderboard YAML", "",
        "`lm-eval-approx leaderboard --config FILE` (or `--preset NAME`; `--set key=value` overrides any key,",
        "dotted for nesting). The annotated layout, from `lm_eval_approx/leaderboard/config.py`:", "",
        *_leaderboard_layout(), "",
        "Top-level keys (`base`, `expert` and `strategies` are required):", "",
        *field_table(LeaderboardConfig), "",
        "`expert:` keys:", "", *field_table(ExpertConfig), "",
        "`corpus:` keys (a plain string is read as `spec`):", "", *field_table(CorpusConfig), "",
        "A `strategies:` entry is a strategy name or a mapping with these keys:", "",
        *field_table(StrategyConfig), "",
    ]
    return "\n".join(lines) + "\n"


def strategies_reference() -> str:
    """The registered strategies: provider, inputs, options (with defaults and help)."""
    lines = ["# Strategy reference", "",
             "Generated from the strategy registry each time the site is built (the built-in plugin's",
             "strategies; `lm-eval-approx strategies` lists those of installed plugins too).", "",
             "| strategy | aliases | needs | description |", "|---|---|---|---|"]
    entries = list(strategy_registry())
    for entry in entries:
        needs = ", ".join(sorted(entry.obj.requires)) or "–"
        aliases = ", ".join(entry.aliases) or "–"
        lines.append(f"| [`{entry.name}`](#{entry.name}) | {aliases} | {needs} | {_cell(entry.description)} |")
    for entry in entries:
        cls = entry.obj
        lines += ["", f"## {entry.name} {{#{entry.name}}}", "", _cell(entry.description), "",
                  f"Provided by `{entry.plugin.distribution}`; class `{cls.__module__}.{cls.__qualname__}`.",
                  "May return fewer than k documents." if cls.allows_fewer else "Returns exactly k documents.", ""]
        if cls.Options is NoOptions or not dataclasses.fields(cls.Options):
            lines.append("No options.")
        else:
            lines += ["Options (`--option NAME=VALUE`, `strategy_NAME=` under `--model approx`, `options:` in a "
                      "leaderboard row):", "", *field_table(cls.Options)]
    return "\n".join(lines) + "\n"
