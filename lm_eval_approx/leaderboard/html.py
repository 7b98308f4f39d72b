"""One self-contained ``leaderboard.html``: inline CSS and JS, every plot embedded as a base64 PNG
data URI, so the page opens offline and can be mailed as one file.

The table is the Markdown table (``report.readable_table``: the same headers, cells and notes, so no
number is formatted twice). Its result columns form the table, sortable by clicking a header; the
context columns (other tasks, costs, kept epochs, similarity, pseudo-labels) fold into a ``<details>``
line under each row, so the table fits a laptop screen however many context columns a grid has.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from lm_eval_approx.cache.atomic import write_text_atomic
from lm_eval_approx.leaderboard.report import Board, Table, readable_table

HTML_FILE = "leaderboard.html"
WIN = "✓"

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1d2433;background:#fff}
h1{font-size:22px;margin:0 0 4px}p.sub{color:#5b6472;margin:0 0 16px;max-width:1100px}
div.board{overflow-x:auto;margin-bottom:8px}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #d5d9e0;padding:4px 8px;text-align:right}
th{background:#eef1f6;cursor:pointer;user-select:none;vertical-align:bottom;max-width:150px}th:hover{background:#dde3ee}
td{white-space:nowrap}td:first-child,th:first-child{text-align:left}
tbody.ref td{background:#f7f4e8;font-style:italic}
tr.main td{border-bottom:none}
tr.more td{border-top:none;padding:0 8px 4px;text-align:left;font-size:12px;color:#5b6472;white-space:normal;max-width:0}
summary{cursor:pointer;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:4px 0 2px 16px;color:#1d2433}
dt{color:#5b6472}dd{margin:0}
span.win{color:#1a7f37;font-weight:600}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
p.note{color:#5b6472;font-size:13px;margin:4px 0;max-width:1100px}
img{max-width:100%;border:1px solid #d5d9e0;margin:16px 12px 12px 0}
"""

# Rows are <tbody> elements (the result line and its folded context line), sorted together by the
# text of the clicked column: a leading number sorts numerically ("0.81 ± 0.01", "46.2%", "+0.03 [..]").
SCRIPT = """
document.querySelectorAll('#board thead th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var table = document.querySelector('#board');
    var rows = Array.from(table.tBodies);
    var asc = !th.classList.contains('asc');
    document.querySelectorAll('#board thead th').forEach(function(h){h.classList.remove('asc','desc');});
    th.classList.add(asc ? 'asc' : 'desc');
    rows.sort(function(a, b){
      var x = a.rows[0].cells[col].textContent, y = b.rows[0].cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      if (x === '' && y !== '') return 1;
      if (y === '' && x !== '') return -1;
      return asc ? cmp : -cmp;
    });
    rows.forEach(function(r){table.appendChild(r);});
  });
});
"""


def _image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def _cell(text: str) -> str:
    """A cell's text, escaped, its ✓ coloured."""
    return html.escape(text).replace(WIN, f'<span class="win">{WIN}</span>')


def _row(table: Table, is_reference: bool, cells: list[str]) -> str:
    """One row's <tbody>: its result cells, then its non-empty context cells folded under it."""
    main = "".join(f"<td>{_cell(c)}</td>" for c in cells[: table.leading])
    context = [(name, value) for name, value in zip(table.header[table.leading :], cells[table.leading :]) if value]
    more = ""
    if context:
        listed = "".join(f"<dt>{html.escape(name)}</dt><dd>{_cell(value)}</dd>" for name, value in context)
        summary = " · ".join(f"{html.escape(name)} {_cell(value)}" for name, value in context)
        more = (f'<tr class="more"><td colspan="{table.leading}"><details><summary>{summary}</summary>'
                f"<dl>{listed}</dl></details></td></tr>")
    cls = ' class="ref"' if is_reference else ""
    return f'<tbody{cls}><tr class="main">{main}</tr>{more}</tbody>'


def render(board: Board, images: list[Path]) -> str:
    """The page's HTML text."""
    table = readable_table(board)
    head = "".join(f"<th>{html.escape(name)}</th>" for name in table.header[: table.leading])
    body = "".join(_row(table, row.k is None, cells) for row, cells in table.rows)
    notes = "".join(f'<p class="note">{_cell(note)}</p>' for note in table.notes)
    direction = "higher" if board.higher_is_better else "lower"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(board.name)} leaderboard</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(board.name)} leaderboard</h1>"
        f"<p class=\"sub\">target {html.escape(board.target)}, metric {html.escape(board.metric)} ({direction} is "
        "better), mean ± sd over seeds. gap closed = (row − baseline) / (expert − baseline), the baseline being "
        "random documents of the pool at the same k and recipe, or θ0: 0% is no better than the baseline, 100% "
        "recreates the expert. knew = what the row knew of the target (weights, task texts or true data). "
        "The line under each row opens its other columns; click a header to sort; leaderboard.csv beside this "
        "page holds every column as plain numbers.</p>"
        f"<div class=\"board\"><table id=\"board\"><thead><tr>{head}</tr></thead>{body}</table></div>{notes}"
        f"<div>{''.join(_image(p) for p in images)}</div>"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def write_html(board: Board, images: list[Path], out: str | Path) -> Path:
    return write_text_atomic(Path(out) / HTML_FILE, render(board, images))
