"""The documentation site: the generated references cover everything they claim to, the hand-written
pages link only to what exists, and no page speaks of the project's history.

``make test`` also builds the whole site with ``mkdocs build --strict``; these tests pin what a build
cannot see (a reference that silently drops a command or a field) and run without mkdocs."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from lm_eval_approx.approx_config import ApproxConfig
from lm_eval_approx.cli import build_parser
from lm_eval_approx.docs_reference import (
    cli_reference,
    command_flags,
    command_tree,
    config_reference,
    strategies_reference,
)
from lm_eval_approx.features.config import FeatureConfig
from lm_eval_approx.leaderboard.config import TOP_KEYS, CorpusConfig, ExpertConfig, LeaderboardConfig
from lm_eval_approx.leaderboard.rows import StrategyConfig
from lm_eval_approx.strategies.registry import strategy_registry
from lm_eval_approx.training.recipe import RECIPE_DEST, TrainingRecipe

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GENERATED = {"reference/cli.md", "reference/configuration.md", "reference/strategies.md"}


def _hand_written_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _all_commands(parser, prefix=()) -> list[tuple[str, ...]]:
    """Every command path, found through argparse's own subparser choices (not the docs module)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(*prefix, name), *_all_commands(sub, (*prefix, name))]
    return found


def test_cli_reference_names_every_subcommand():
    page = cli_reference()
    commands = _all_commands(build_parser())
    assert {"run", "strategies", "tasks", "plugins", "train", "finetune", "select", "features",
            "leaderboard"} <= {path[0] for path in commands}
    assert commands == [path for path, _, _ in command_tree()]
    for path in commands:
        heading = f"## lm-eval-approx {' '.join(path)} {{#{'-'.join(path)}}}"
        assert heading in page, f"the CLI reference has no section for {' '.join(path)}"
        assert f"[`{' '.join(path)}`](#{'-'.join(path)})" in page


def test_cli_reference_holds_each_commands_own_help():
    page = cli_reference()
    for path, _, parser in command_tree():
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in page, f"{' '.join(path)} {flag} is missing from the CLI reference"


@pytest.mark.parametrize("cls", [ApproxConfig, FeatureConfig, TrainingRecipe, LeaderboardConfig, ExpertConfig,
                                 CorpusConfig, StrategyConfig])
def test_config_reference_lists_every_field(cls):
    page = config_reference()
    for f in dataclasses.fields(cls):
        assert f"| `{f.name}` |" in page, f"{cls.__name__}.{f.name} is missing from the configuration reference"


def test_config_reference_lists_every_leaderboard_key_and_real_flags():
    page = config_reference()
    for key in TOP_KEYS:
        assert f"| `{key}` |" in page, key
    train_flags = command_flags(("train",), RECIPE_DEST)
    assert set(train_flags) == {f.name for f in dataclasses.fields(TrainingRecipe)}, "every recipe field is a flag"
    for name, flag in train_flags.items():
        assert f"| `{name}` | `{flag}` |" in page
    assert "| `corpus_limit` | `--limit` |" in page, "the features flag is read from its parser, not guessed"


def test_strategies_reference_lists_every_registered_strategy():
    page = strategies_reference()
    for entry in strategy_registry():
        assert f"## {entry.name} {{#{entry.name}}}" in page
        for f in dataclasses.fields(entry.obj.Options):
            assert f"| `{f.name}` |" in page, f"{entry.name} option {f.name}"


def _hooks():
    """docs/hooks.py, the mkdocs hook, loaded from its file as mkdocs loads it."""
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("markdown", "page", "expected"), [
    ("[r](../results/README.md)", "results.md", "[r](results/README.md)"),
    ("![p](../results/cpu/agnews/epochs.png)", "reproduction.md", "![p](results/cpu/agnews/epochs.png)"),
    ("[g](../docs/guide.md#the-retraining-rule)", "results/README.md", "[g](../guide.md#the-retraining-rule)"),
    ("[home](../README.md)", "results/README.md", "[home](../index.md)"),
    ("[f](cpu/FINDINGS.md)", "results/README.md", "[f](cpu/FINDINGS.md)"),
    ("[c](cli.md#run)", "reference/configuration.md", "[c](cli.md#run)"),
    ("[x](https://example.org/a.md) [y](#here)", "guide.md", "[x](https://example.org/a.md) [y](#here)"),
    ("[code](../lm_eval_approx/cli.py)", "guide.md", "[code](../lm_eval_approx/cli.py)"),
])
def test_links_are_rewritten_from_repository_to_site_paths(markdown, page, expected):
    assert _hooks().rewrite_links(markdown, page) == expected


def test_hand_written_pages_link_only_to_existing_files():
    """Relative links of docs/*.md resolve in the repository (or to a generated reference page), as
    GitHub shows them; the hook above maps the same links into the site."""
    for page in _hand_written_pages():
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue
            resolved = (page.parent / target).resolve()
            generated = resolved.relative_to(DOCS).as_posix() in GENERATED if resolved.is_relative_to(DOCS) else False
            assert resolved.exists() or generated, f"{page.relative_to(ROOT)} links to missing {target}"


def test_no_page_speaks_of_the_projects_history():
    for page in [ROOT / "README.md", *_hand_written_pages()]:
        text = page.read_text(encoding="utf-8")
        name = page.relative_to(ROOT)
        assert not re.search(r"\bsessions?\b", text, flags=re.I), f"{name} says session"
        assert not re.search(r"issue [0-9]|#[0-9][0-9]", text), f"{name} cites an issue"
        assert not re.search(r"\bours\b|our best|\(ours\)", text, flags=re.I), f"{name} says ours"


def test_every_nav_page_exists():
    nav = re.findall(r":\s+([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), flags=re.M)
    assert nav, "mkdocs.yml has a nav"
    for page in nav:
        assert (DOCS / page).is_file() or page in GENERATED or (ROOT / page).is_file(), page
