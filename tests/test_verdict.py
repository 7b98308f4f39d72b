"""``lm-eval-approx leaderboard verdict`` on small leaderboard folders built here.

Each pair's Δ and interval are the ones ``leaderboard compare`` and ``intervals`` give for the same
two rows (same bootstrap seed), the verdict line names exactly the baselines whose interval does
not exclude 0 on the better side, a lower-is-better metric flips that side, the cost ratio is the
ratio of the FLOPs means, and the gap closed is the leaderboard table's own."""

from __future__ import annotations

import json
import math

import pytest

from lm_eval_approx.cli import build_parser, main
from lm_eval_approx.commands.leaderboard_analysis import verdict_command
from lm_eval_approx.leaderboard.comparisons import ONE_SEED, interval_text
from lm_eval_approx.leaderboard.intervals import DOCUMENTS_ONLY, TWO_LEVEL, paired_interval, two_level_interval
from lm_eval_approx.leaderboard.paired_rows import RowComparisonError, compare_rows, runs_of
from lm_eval_approx.leaderboard.report import build_board
from lm_eval_approx.leaderboard.verdict import VERDICT_FILE, VerdictError, pair, verdict

TARGET, N = "approx_agnews", 80


def _docs(hits: int, shift: int) -> dict[str, float]:
    """N documents, ``hits`` of them right; ``shift`` moves which (another seed, other documents)."""
    return {str(i): float((i + shift) % N < hits) for i in range(N)}


def _cell(label, kind, seed, per_doc, metric="acc", higher=True, flops=None, seconds=None):
    if metric == "acc":
        value = sum(per_doc.values()) / len(per_doc)
    else:
        value = math.exp(-sum(v[0] for v in per_doc.values()) / sum(v[1] for v in per_doc.values()))
    leaderboard = {"cell": f"{label}-s{seed}", "kind": kind, "label": label, "k": 4 if kind == "approx" else 0,
                   "seed": seed, "target": TARGET, "metric": metric, "limits": {TARGET: N}, "strategy": label,
                   "per_doc": {metric: per_doc}}
    if flops is not None:
        leaderboard["selection_cost"] = {"flops": flops}
    if seconds is not None:
        leaderboard["selection_seconds"] = seconds
    return {"results": {TARGET: {f"{metric},none": value}}, "higher_is_better": {TARGET: {metric: higher}},
            "config": {"leaderboard": leaderboard}}


def _grid(folder, cells, planned=()):
    (folder / "results").mkdir(parents=True)
    for cell in cells:
        (folder / "results" / f"{cell['config']['leaderboard']['cell']}.json").write_text(json.dumps(cell))
    labels = {c["config"]["leaderboard"]["label"] for c in cells if c["config"]["leaderboard"]["kind"] == "approx"}
    (folder / "leaderboard.json").write_text(json.dumps({"name": "tiny", "strategies": [
        {"label": label} for label in [*sorted(labels), *planned]]}))
    return folder


@pytest.fixture
def grid(tmp_path):
    """select_quota beats random and rds (rds with one seed), is not separated from gen_knn and is
    below dsir (whose selection costs no FLOPs); select lacks a FLOPs record; ``later`` is planned."""
    cells = [_cell("theta0", "theta0", 0, _docs(30, 0)), _cell("expert", "expert", 0, _docs(76, 0))]
    for seed in range(3):
        cells += [_cell("random", "approx", seed, _docs(40 + 2 * seed, 7 * seed), flops=1e13 * (seed + 1), seconds=10),
                  _cell("select_quota", "approx", seed, _docs(64 - seed, 5 * seed), flops=8e13, seconds=30),
                  _cell("gen_knn", "approx", seed, _docs(62, 3 * seed), flops=4e13, seconds=60),
                  _cell("dsir", "approx", seed, _docs(78, seed), flops=0, seconds=3)]
    cells += [_cell("select", "approx", s, _docs(60, s)) for s in (0, 1)]
    cells.append(_cell("rds", "approx", 0, _docs(30, 2), flops=2e13, seconds=20))
    return _grid(tmp_path / "grid", cells, planned=["later"])


BASELINES = ["random", "gen_knn", "rds", "dsir", "later"]


def test_each_pair_has_the_interval_compare_gives_and_the_verdict_names_what_it_does_not_beat(grid, capsys):
    assert main(["leaderboard", "verdict", "--out", str(grid), "--row", "select_quota", "--row", "select",
                 *[arg for b in BASELINES for arg in ("--baseline", b)]]) == 0
    printed = capsys.readouterr().out
    assert printed == verdict(grid, ["select_quota", "select"], BASELINES)
    lines = printed.splitlines()
    not_beaten = []
    for baseline in ["random", "gen_knn", "rds", "dsir"]:
        found = pair(grid, [], "select_quota", baseline, 4, "acc")
        row_runs, base_runs = runs_of(grid, "select_quota", 4, "acc")[0], runs_of(grid, baseline, 4, "acc")[0]
        seeds = sorted(set(row_runs) & set(base_runs))
        assert found.seeds == seeds
        row, base = [row_runs[s] for s in seeds], [base_runs[s] for s in seeds]
        if len(seeds) > 1:
            assert found.interval == two_level_interval(row, base, "acc") and found.interval.method == TWO_LEVEL
            shown = compare_rows(grid, "select_quota", baseline)[3]
            assert shown.startswith(f"  two-level (seeds, then documents): {found.interval.delta:+.3f} "
                                    f"[{found.interval.low:+.3f}, {found.interval.high:+.3f}]")
        else:
            assert found.interval == paired_interval(row, base, "acc") and found.interval.method == DOCUMENTS_ONLY
        text = interval_text(found.interval, True, ONE_SEED if len(seeds) == 1 else "")
        assert any(line.startswith(f"| select_quota | {baseline} | {', '.join(map(str, seeds))} |") and text in line
                   for line in lines)
        if not found.interval.low > 0:
            not_beaten.append((baseline, found.interval.high < 0, text))
    assert [b for b, _, _ in not_beaten] == ["gen_knn", "dsir"]
    reasons = "; ".join(f"{'worse than' if below else 'not separated from'} {b} (Δ {text})"
                        for b, below, text in not_beaten)
    assert (f"select_quota beats every baseline (random, gen_knn, rds, dsir): no: {reasons}"
            " — provisional: one seed against rds (documents-only interval)") in lines
    assert "Not compared (no finished cell with per-document acc at k=4): later." in lines
    assert "¹ one seed: documents-only interval (a side with one seed has no seed spread to resample)." in lines


def test_costs_are_ratios_of_the_means_over_shared_seeds_and_the_gap_is_the_leaderboards(grid):
    lines = verdict(grid, ["select_quota", "select"], ["random", "dsir", "rds"]).splitlines()
    quota = {line.split(" | ")[1]: line.split(" | ") for line in lines if line.startswith("| select_quota |")}
    assert quota["random"][6] == "4.00× (8.0e13 / 2.0e13)"  # random's FLOPs 1, 2, 3 e13: mean 2e13
    assert quota["random"][7] == "3.00× (30 s / 10 s)"
    assert quota["dsir"][6] == "n/a (8.0e13 / 0)"
    assert quota["rds"][6] == "4.00× (8.0e13 / 2.0e13)"  # seed 0 only: the seeds both finished
    select = [line.split(" | ") for line in lines if line.startswith("| select |")]
    assert select[0][6] == "" and select[0][2] == "0, 1"
    gaps = {row.label: row.gap_random for row in build_board(grid).rows}
    assert {cells[8].rstrip(" |") for cells in quota.values()} == {f"{100 * gaps['select_quota']:.1f}%"}
    assert select[0][8].rstrip(" |") == f"{100 * gaps['select']:.1f}%"
    assert "select beats every baseline (random, dsir, rds): no: worse than dsir" in "\n".join(lines)


def _pairs(mean_ll: float, shift: int) -> dict[str, list[float]]:
    """Per-document (log-likelihood, words): a higher log-likelihood is a lower perplexity."""
    return {str(i): [mean_ll - 0.5 * ((i + shift) % 4), 10.0] for i in range(N)}


def test_a_lower_is_better_metric_flips_the_better_side(tmp_path):
    cell = lambda label, seed, ll: _cell(label, "approx", seed, _pairs(ll, seed),  # noqa: E731
                                         metric="word_perplexity", higher=False)
    out = _grid(tmp_path / "ppl", [cell("random", s, -30.0) for s in (0, 1)] + [cell("good", s, -25.0) for s in (0, 1)]
                + [cell("bad", s, -35.0) for s in (0, 1)])
    text = verdict(out, ["good", "bad"], ["random"], metric="word_perplexity")
    good, bad = (pair(out, [], row, "random", 4, "word_perplexity").interval for row in ("good", "bad"))
    assert good.high < 0 < bad.low
    assert "(lower is better)" in text
    assert interval_text(good, False) in text and interval_text(good, False).endswith(" ✓")
    assert "good beats every baseline (random): yes" in text
    assert f"bad beats every baseline (random): no: worse than random (Δ {interval_text(bad, False)})" in text
    assert "provisional" not in text and ONE_SEED not in text


def test_write_puts_the_printed_text_in_verdict_md(grid, capsys):
    args = ["leaderboard", "verdict", "--out", str(grid), "--row", "select", "--baseline", "random"]
    assert main(args) == 0 and not (grid / VERDICT_FILE).exists()
    printed = capsys.readouterr().out
    assert build_parser().parse_args(args).func is verdict_command
    assert main([*args, "--write"]) == 0
    assert (grid / VERDICT_FILE).read_text(encoding="utf-8") == printed
    assert capsys.readouterr().out == printed + f"written to {grid / VERDICT_FILE}\n"


def test_named_errors_say_what_was_wrong(grid, tmp_path, capsys):
    cases = [
        (tmp_path, ["select"], ["random"], "has no results/ folder"),
        (grid, ["select"], ["rdss"], "no cell of"),
        (grid, ["select"], ["select", "random"], "is both a --row and a --baseline"),
    ]
    for out, rows, baselines, message in cases:
        with pytest.raises(VerdictError, match=message):
            verdict(out, rows, baselines)
    with pytest.raises(VerdictError, match="recorded: acc"):
        verdict(grid, ["select"], ["random"], metric="word_perplexity")
    with pytest.raises(VerdictError, match="its budgets are"):
        verdict(grid, ["select"], ["random"], k=9)
    assert issubclass(VerdictError, RowComparisonError)
    assert main(["leaderboard", "verdict", "--out", str(grid), "--row", "select", "--baseline", "rdss"]) == 2
    assert "its labels are dsir, expert, gen_knn, later, random, rds, select, select_quota, theta0" in \
        capsys.readouterr().err
