"""One self-contained ``leaderboard.html``: inline CSS and JS, the table sortable by clicking a header
(numeric cells sort by their ``data-v`` value), every plot embedded as a base64 PNG data URI, so the
page opens offline and can be mailed as one file."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from lm_eval_approx.cache.atomic import write_text_atomic
from lm_eval_approx.leaderboard.report import Board, columns, row_values

HTML_FILE = "leaderboard.html"

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1d2433;background:#fff}
h1{font-size:22px;margin:0 0 4px}p.sub{color:#5b6472;margin:0 0 16px}
table{border-collapse:collapse;font-size:13px;margin-bottom:24px}
th,td{border:1px solid #d5d9e0;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#eef1f6;cursor:pointer;user-select:none}th:hover{background:#dde3ee}
td:first-child,th:first-child{text-align:left}
tr.ref td{background:#f7f4e8;font-style:italic}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
img{max-width:100%;border:1px solid #d5d9e0;margin:0 12px 12px 0}
"""

SCRIPT = """
document.querySelectorAll('#board th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var body = document.querySelector('#board tbody');
    var rows = Array.from(body.rows);
    var asc = !th.classList.contains('asc');
    document.querySelectorAll('#board th').forEach(function(h){h.classList.remove('asc','desc');});
    th.classList.add(asc ? 'asc' : 'desc');
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      if (x === '' && y !== '') return 1;
      if (y === '' && x !== '') return -1;
      return asc ? cmp : -cmp;
    });
    rows.forEach(function(r){body.appendChild(r);});
  });
});
"""


def _image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def render(board: Board, images: list[Path]) -> str:
    """The page's HTML text."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns(board))
    body = []
    for row in board.rows:
        values = row_values(board, row)
        cls = ' class="ref"' if row.k is None else ""
        cells = "".join(f'<td data-v="{html.escape(v)}">{html.escape(v)}</td>' for v in values)
        body.append(f"<tr{cls}>{cells}</tr>")
    direction = "higher" if board.higher_is_better else "lower"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(board.name)} leaderboard</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(board.name)} leaderboard</h1>"
        f"<p class=\"sub\">target {html.escape(board.target)}, metric {html.escape(board.metric)} ({direction} is better); "
        "gap closed = (score − baseline) / (expert − baseline); delta_vs_random (delta_vs_select) = row − the "
        "random (select) row on the same documents, with its paired bootstrap 95% interval (ci_low, ci_high), "
        "two-level (each row's seeds resampled, then the documents) or documents-only where a side has one "
        "seed (the _interval column says which): a row beats random when the interval excludes 0; knew = what "
        "the row knew of the target (weights, task texts, true data), _reference_knew = what its reference "
        "knew; selection_flops and tokens = the selection work, mean over seeds; click a header to sort</p>"
        f"<table id=\"board\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f"<div>{''.join(_image(p) for p in images)}</div>"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def write_html(board: Board, images: list[Path], out: str | Path) -> Path:
    return write_text_atomic(Path(out) / HTML_FILE, render(board, images))
