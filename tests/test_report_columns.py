"""The leaderboard's columns beyond the score: the knew column, the Δ columns with the interval each
prints (two-level, or documents-only marked ¹, ✓ following the printed one, † where the two rows
knew different things), and the selection cost, in the Markdown, the CSV and the HTML page."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from lm_eval_approx.leaderboard.html import render
from lm_eval_approx.leaderboard.intervals import DOCUMENTS_ONLY, TWO_LEVEL, paired_interval, two_level_interval
from lm_eval_approx.leaderboard.report import build_board, columns, to_csv, to_markdown

N = 400


def _cell(label, kind, seed, hits, strategy=None, **record):
    """A cell of ``N`` test documents, the first ``hits`` right (or a given per-document list)."""
    values = hits if isinstance(hits, list) else [float(i < hits) for i in range(N)]
    per_doc = {str(i): v for i, v in enumerate(values)}
    leaderboard = {"cell": f"{label}-{seed}", "kind": kind, "label": label, "k": 5 if kind == "approx" else 0,
                   "seed": seed, "target": "approx_agnews", "metric": "acc", "limits": {"approx_agnews": N},
                   "strategy": strategy or label, "per_doc": {"acc": per_doc}, **record}
    return {"results": {"approx_agnews": {"acc,none": sum(values) / N}},
            "higher_is_better": {"approx_agnews": {"acc": True}}, "config": {"leaderboard": leaderboard}}


def _board(folder, cells, snapshot=None):
    (folder / "results").mkdir(parents=True)
    for i, cell in enumerate(cells):
        (folder / "results" / f"{i:02d}.json").write_text(json.dumps(cell))
    if snapshot is not None:
        (folder / "leaderboard.json").write_text(json.dumps(snapshot))
    return build_board(folder)


def _csv(board):
    return {r["strategy"]: r for r in csv.DictReader(to_csv(board).splitlines())}


def _shuffled(hits, seed):
    values = np.zeros(N)
    values[np.random.default_rng(seed).permutation(N)[:hits]] = 1.0
    return values.tolist()


def test_multi_seed_rows_print_the_two_level_interval_and_the_mark_follows_it(tmp_path):
    """Seeds that disagree: documents-only would exclude 0, the two-level interval (printed) does not."""
    random = [_shuffled(240, s) for s in (1, 2, 3)]
    noisy = [_shuffled(hits, s) for hits, s in ((200, 4), (340, 5), (250, 6))]  # mean 0.658 vs 0.6, spread ±0.18
    steady = [_shuffled(300, s) for s in (7, 8, 9)]
    cells = [_cell("theta0", "theta0", 0, 200), _cell("expert", "expert", 0, 360),
             *[_cell("random", "approx", s, v) for s, v in enumerate(random)],
             *[_cell("select", "approx", s, v) for s, v in enumerate(noisy)],
             *[_cell("steady", "approx", s, v, strategy="select_quota") for s, v in enumerate(steady)]]
    board = _board(tmp_path, cells)
    rows = {r.label: r for r in board.rows}
    runs = lambda values: [{str(i): v for i, v in enumerate(run)} for run in values]  # noqa: E731
    printed = rows["select"].vs_random
    assert printed == two_level_interval(runs(noisy), runs(random), "acc") and printed.method == TWO_LEVEL
    assert paired_interval(runs(noisy), runs(random), "acc").excludes_zero()  # what the old column said
    assert not printed.excludes_zero()
    table = to_markdown(board)
    select_line = next(line for line in table.splitlines() if line.startswith("| select |"))
    assert "[" in select_line and "✓" not in select_line
    steady_line = next(line for line in table.splitlines() if line.startswith("| steady |"))
    assert "✓" in steady_line and "¹" not in table  # every side has 3 seeds: no one-seed mark, no footnote
    assert "two-level paired bootstrap" in table
    # Δ vs select: the select_quota row against the select row, same k and recipe
    assert "Δ vs select [95% CI]" in table
    assert rows["steady"].deltas["select"].interval == two_level_interval(runs(steady), runs(noisy), "acc")
    assert "select" not in rows["random"].deltas and "select" not in rows["select"].deltas
    by_label = _csv(board)
    assert by_label["select"]["delta_vs_random_interval"] == TWO_LEVEL
    assert float(by_label["select"]["delta_vs_random_ci_low"]) == pytest.approx(printed.low, abs=1e-4)
    assert by_label["steady"]["delta_vs_select_interval"] == TWO_LEVEL
    assert by_label["random"]["delta_vs_random"] == "" and by_label["random"]["delta_vs_select"] == ""


def test_a_one_seed_side_gets_the_documents_only_interval_marked_with_a_footnote(tmp_path):
    cells = [_cell("theta0", "theta0", 0, 200), _cell("expert", "expert", 0, 360),
             _cell("random", "approx", 0, 240), _cell("random", "approx", 1, 250), _cell("select", "approx", 0, 320)]
    board = _board(tmp_path, cells)
    select = {r.label: r for r in board.rows}["select"]
    assert select.vs_random.method == DOCUMENTS_ONLY
    table = to_markdown(board)
    assert f"{select.vs_random.high:+.4f}]¹ ✓" in table
    assert "¹ one seed: documents-only interval" in table
    assert _csv(board)["select"]["delta_vs_random_interval"] == DOCUMENTS_ONLY


def test_the_knew_column_and_a_delta_between_rows_that_knew_different_things(tmp_path):
    snapshot = {"name": "knew", "expert": {"data": "ag_news:train"}, "corpus": {"spec": "seed:wikitext2"},
                "retraining": {"stop_on": "task_agreement"}, "strategies": []}
    cells = [_cell("theta0", "theta0", 0, 200), _cell("expert", "expert", 0, 360),
             _cell("random", "approx", 0, 240, knew="weights"), _cell("select", "approx", 0, 320)]
    board = _board(tmp_path, cells, snapshot)
    rows = {r.label: r for r in board.rows}
    assert [rows[n].knew for n in ("theta0", "expert", "random", "select")] == \
        ["weights", "true data", "weights", "task texts"]
    assert rows["select"].deltas["random"].knew_differs
    table = to_markdown(board)
    assert table.splitlines()[2].startswith("| strategy | k | seeds | knew |")
    assert "| select | 5 | 1 | task texts |" in table
    assert "]¹† ✓" in table and "† the row and its reference knew different things" in table
    page = render(board, [])  # the page prints the same cells and notes
    assert ']¹† <span class="win">✓</span>' in page and "† the row and its reference knew different things" in page
    by_label = _csv(board)
    assert by_label["select"]["knew"] == "task texts" and by_label["select"]["delta_vs_random_reference_knew"] == "weights"
    assert by_label["theta0"]["knew"] == "weights"
    # rows that knew the same: no mark, no footnote
    same = _board(tmp_path / "same", [_cell("random", "approx", 0, 240), _cell("select", "approx", 0, 320)])
    assert "†" not in to_markdown(same)


def test_the_selection_cost_is_a_mean_over_seeds_blank_for_older_cells(tmp_path):
    cost = lambda flops, tokens: {"flops": flops, "forward_tokens": tokens, "backward_tokens": tokens // 2,  # noqa: E731
                                  "generated_tokens": 0}
    cells = [_cell("theta0", "theta0", 0, 200), _cell("expert", "expert", 0, 360),
             _cell("random", "approx", 0, 240, selection_seconds=1.0),
             _cell("select", "approx", 0, 320, selection_cost=cost(1.0e15, 3000), selection_seconds=100.0),
             _cell("select", "approx", 1, 310, selection_cost=cost(1.4e15, 5000), selection_seconds=140.0)]
    board = _board(tmp_path, cells)
    rows = {r.label: r for r in board.rows}
    assert rows["select"].selection_cost == pytest.approx(
        {"flops": 1.2e15, "forward_tokens": 4000, "backward_tokens": 2000, "generated_tokens": 0})
    assert rows["random"].selection_cost is None
    table = to_markdown(board)
    header = table.splitlines()[2].split(" | ")
    assert header.index("selection FLOPs") == header.index("selection s") + 1  # the seconds beside it
    assert "| 120.0 | 1.2e15 |" in table
    by_label = _csv(board)
    assert float(by_label["select"]["selection_flops"]) == pytest.approx(1.2e15)
    assert by_label["select"]["selection_forward_tokens"] == "4000"
    assert by_label["random"]["selection_flops"] == "" and by_label["random"]["selection_s"] == "1.0"
    # a table of older cells only has no FLOPs column in the Markdown, and blank CSV cells
    old = _board(tmp_path / "old", [_cell("random", "approx", 0, 240), _cell("select", "approx", 0, 320)])
    assert "selection FLOPs" not in to_markdown(old)
    assert {r["selection_flops"] for r in _csv(old).values()} == {""}


def test_the_csv_and_the_page_carry_every_new_column(tmp_path):
    board = _board(tmp_path, [_cell("random", "approx", 0, 240), _cell("random", "approx", 1, 230),
                              _cell("select", "approx", 0, 320, selection_cost={"flops": 2.5e12})])
    names = columns(board)
    for name in ("knew", "delta_vs_random", "delta_vs_random_interval", "delta_vs_random_reference_knew",
                 "delta_vs_select", "delta_vs_select_interval", "selection_s", "selection_flops",
                 "selection_forward_tokens", "selection_backward_tokens", "selection_generated_tokens"):
        assert name in names, name
    assert len(set(names)) == len(names)
    assert all(len(row) == len(names) for row in csv.reader(to_csv(board).splitlines()))
    page = render(board, [])  # the page shows the Markdown's columns: result columns, context folded per row
    assert "<th>knew</th>" in page and "<th>Δ vs random [95% CI]</th>" in page and "delta_vs" not in page
    assert "<dt>selection FLOPs</dt><dd>2.5e12</dd>" in page and "¹ one seed: documents-only interval" in page


def test_a_metric_the_results_lack_is_a_named_error_and_the_right_one_still_reports(tmp_path):
    """A misspelt leaderboard metric, or a cell whose results lack it, names the metric instead of
    putting None among a row's scores (which crashed in Row.mean)."""
    from lm_eval_approx.errors import ConfigError
    from lm_eval_approx.leaderboard.report import CSV_FILE, MD_FILE, write_tables

    def cells(metric, lacking=None):
        made = [_cell("theta0", "theta0", 0, 200, metric=metric), _cell("random", "approx", 0, 240, metric=metric),
                _cell("select", "approx", 0, 320, metric=metric), _cell("select", "approx", 1, 300, metric=metric)]
        if lacking is not None:  # this cell's results report another metric only
            made[lacking]["results"]["approx_agnews"] = {"acc_norm,none": 0.5}
        return made

    for folder, made in (("misspelt", cells("accuracy")), ("lacking", cells("acc", lacking=3))):
        wanted = "accuracy" if folder == "misspelt" else "acc"
        (tmp_path / folder / "results").mkdir(parents=True)
        for i, cell in enumerate(made):
            (tmp_path / folder / "results" / f"{i:02d}.json").write_text(json.dumps(cell))
        with pytest.raises(ConfigError, match=rf"metric='{wanted}'.*approx_agnews") as caught:
            write_tables(tmp_path / folder)
        assert caught.value.field == "metric" and caught.value.value == wanted
        assert not (tmp_path / folder / MD_FILE).exists() and not (tmp_path / folder / CSV_FILE).exists()
    board = _board(tmp_path / "right", cells("acc"))
    assert board.metric == "acc"
    assert {r.label: r.mean for r in board.rows} == pytest.approx({"theta0": 0.5, "random": 0.6, "select": 0.775})
    assert "| select |" in to_markdown(board)


def test_the_records_listing_names_a_metric_the_results_lack(tmp_path):
    """``leaderboard records`` prints each trained cell's score: a misspelt metric is the same named
    error there, not a None formatted as a number."""
    from lm_eval_approx.errors import ConfigError
    from lm_eval_approx.leaderboard.retraining_records import retraining_records

    for folder, metric in (("misspelt", "accuracy"), ("right", "acc")):
        (tmp_path / folder / "results").mkdir(parents=True)
        for i, hits in enumerate((240, 320)):
            cell = _cell("select", "approx", i, hits, metric=metric)
            (tmp_path / folder / "results" / f"{i:02d}.json").write_text(json.dumps(cell))
    with pytest.raises(ConfigError, match=r"metric='accuracy'.*approx_agnews"):
        retraining_records(tmp_path / "misspelt")
    lines, _ = retraining_records(tmp_path / "right")
    assert [line.split(";")[0] for line in lines] == ["00: score 0.6000", "01: score 0.8000"]
