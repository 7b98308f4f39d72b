"""Every file a leaderboard folder shows beside its results: the tables, the plots and the page, all
rebuilt from the saved results JSONs (after a run, or after they were amended)."""

from __future__ import annotations

from pathlib import Path

from lm_eval_approx.leaderboard.html import write_html
from lm_eval_approx.leaderboard.plots import write_plots
from lm_eval_approx.leaderboard.report import to_markdown, write_tables


def write_outputs(out: str | Path) -> str:
    """Tables, plots and the HTML page from the results in ``out``; returns the Markdown table."""
    board = write_tables(out)
    write_html(board, write_plots(board, out), out)
    return to_markdown(board)
