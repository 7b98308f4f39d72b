"""Leaderboard plots (matplotlib figures rendered by Agg to PNG): the target metric against k per
strategy with seed error bars (θ0 and the expert as horizontal lines), the gap closed per strategy,
and the source composition of each selection when the candidate corpus mixes several sources.

Figures are ``matplotlib.figure.Figure`` objects, not pyplot's global state, and matplotlib is
imported only when a plot is drawn: the command line loads this module at start."""

from __future__ import annotations

from pathlib import Path

from lm_eval_approx.leaderboard.config import APPROX, EXPERT, THETA0
from lm_eval_approx.leaderboard.report import Board

METRIC_PNG, GAP_PNG, SOURCES_PNG = "metric_vs_k.png", "gap_closed.png", "sources.png"
FIGSIZE = (7.0, 4.2)
DPI = 110
BAR_WIDTH = 0.8
LOG_K_SPAN = 5  # largest k / smallest k from which the k axis is logarithmic


def _approx_labels(board: Board) -> list[str]:
    return list(dict.fromkeys(r.label for r in board.rows if r.kind == APPROX))


def metric_vs_k(board: Board, path: Path) -> Path:
    budgets = sorted({r.k for r in board.rows if r.kind == APPROX and r.k is not None})
    if len(budgets) == 1:
        return _metric_by_strategy(board, path, budgets[0])
    fig, ax = _figure()
    for label in _approx_labels(board):
        rows = sorted((r for r in board.rows if r.label == label and r.kind == APPROX), key=lambda r: r.k or 0)
        ax.errorbar([r.k for r in rows], [r.mean for r in rows], yerr=[r.std or 0.0 for r in rows],
                    marker="o", capsize=3, label=label)
    _reference_lines(board, ax)
    if budgets and budgets[-1] >= LOG_K_SPAN * budgets[0]:  # k grids are usually geometric (100, 300, 1000)
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(k) for k in budgets])
        ax.minorticks_off()
    ax.set_xlabel("k (selected documents)")
    ax.set_ylabel(f"{board.target} {board.metric}")
    ax.set_title(f"{board.metric} vs k ({'higher' if board.higher_is_better else 'lower'} is better)")
    ax.legend(fontsize="small")
    return _save(fig, path)


def _metric_by_strategy(board: Board, path: Path, k: int) -> Path:
    """One budget: a metric-vs-k line would stack every strategy on one x, so each strategy gets its
    own column (mean ± sd over seeds), with θ0 and the expert as reference lines."""
    fig, ax = _figure()
    labels = _approx_labels(board)
    rows = [next(r for r in board.rows if r.label == label and r.kind == APPROX) for label in labels]
    ax.errorbar(range(len(rows)), [r.mean for r in rows], yerr=[r.std or 0.0 for r in rows],
                fmt="o", capsize=3, label="approximation (± sd over seeds)")
    _reference_lines(board, ax)
    ax.set_xticks(range(len(rows)), [f"{r.label}\n({len(r.seeds)} seed{'s' if len(r.seeds) > 1 else ''})" for r in rows],
                  rotation=30, ha="right")
    ax.set_ylabel(f"{board.target} {board.metric}")
    ax.set_title(f"{board.metric} at k = {k} ({'higher' if board.higher_is_better else 'lower'} is better)")
    ax.legend(fontsize="small")
    return _save(fig, path)


def _reference_lines(board: Board, ax) -> None:
    for kind, style in ((THETA0, ":"), (EXPERT, "--")):
        ref = next((r for r in board.rows if r.kind == kind), None)
        if ref is not None:
            ax.axhline(ref.mean, linestyle=style, color="gray", label=f"{kind} ({ref.mean:.3f})")


def gap_closed(board: Board, path: Path) -> Path:
    labels = _approx_labels(board)
    budgets = sorted({r.k for r in board.rows if r.kind == APPROX and r.k is not None})
    fig, ax = _figure()
    width = BAR_WIDTH / max(len(budgets), 1)
    for j, k in enumerate(budgets):
        values = [next((r.gap_theta0 for r in board.rows if r.label == lab and r.k == k), None) for lab in labels]
        xs = [i + (j - (len(budgets) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, [100 * (v or 0.0) for v in values], width, label=f"k={k}")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.axhline(100.0, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel("gap closed vs θ0 (%)")
    ax.set_title("share of the θ0 → expert gap closed")
    if budgets:  # a grid with no approximation cell yet has no bars to name (matplotlib would warn)
        ax.legend(fontsize="small")
    return _save(fig, path)


def sources(board: Board, path: Path) -> Path | None:
    """Stacked bars of each selection's source fractions; None when the corpus has one source."""
    rows = [r for r in board.rows if r.kind == APPROX and r.sources]
    names = sorted({n for r in rows for n in r.sources})
    if len(names) < 2:
        return None
    fig, ax = _figure()
    bottom = [0.0] * len(rows)
    for name in names:
        shares = [100 * r.sources.get(name, 0.0) for r in rows]
        ax.bar(range(len(rows)), shares, BAR_WIDTH, bottom=bottom, label=name)
        bottom = [b + s for b, s in zip(bottom, shares)]
    ax.set_xticks(range(len(rows)), [f"{r.label} k={r.k}" for r in rows], rotation=30, ha="right")
    ax.set_ylabel("share of the selection (%)")
    ax.set_title("source composition of each selection")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: stacks reach 100%
    return _save(fig, path)


def _figure():
    """A new figure and its one axes, rendered by Agg when saved."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE)
    return fig, fig.add_subplot()


def _save(fig, path: Path) -> Path:
    """Save to a temporary name and rename, so a PNG on disk is always complete."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=DPI)
    tmp.replace(path)
    return path


def write_plots(board: Board, out: str | Path) -> list[Path]:
    """Every plot that applies, written into ``out``."""
    out = Path(out)
    made = [metric_vs_k(board, out / METRIC_PNG), gap_closed(board, out / GAP_PNG), sources(board, out / SOURCES_PNG)]
    return [p for p in made if p is not None]
