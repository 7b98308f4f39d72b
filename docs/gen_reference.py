"""Writes the generated pages of the site on every ``mkdocs build`` (the mkdocs-gen-files plugin runs
this script; see mkdocs.yml): the CLI, configuration and strategy references from the code
(``lm_eval_approx/docs_reference.py``), and a copy of ``results/`` so that the site's results pages
are the repository's own files, links and plots included."""

from __future__ import annotations

import os
from pathlib import Path

import mkdocs_gen_files

# The references document the built-in plugin's strategies and commands, whatever else is installed.
os.environ["LM_EVAL_APPROX_LOAD_PLUGINS"] = ""

from lm_eval_approx.docs_reference import cli_reference, config_reference, strategies_reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
# What a results page links to or shows; the per-cell results JSON stay in the repository only.
RESULT_SUFFIXES = {".md", ".png", ".yaml", ".csv", ".html"}

for name, text in (("reference/cli.md", cli_reference()), ("reference/configuration.md", config_reference()),
                   ("reference/strategies.md", strategies_reference())):
    with mkdocs_gen_files.open(name, "w") as page:
        page.write(text)

for path in sorted(RESULTS.rglob("*")):
    if path.is_file() and path.suffix in RESULT_SUFFIXES:
        target = path.relative_to(ROOT).as_posix()
        with mkdocs_gen_files.open(target, "wb") as copy:
            copy.write(path.read_bytes())
