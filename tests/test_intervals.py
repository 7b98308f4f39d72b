"""Paired bootstrap intervals: the vectorised bootstrap equals a loop written from the definition,
perplexity-type metrics are recomputed from (log-likelihood, weight) pairs on each resample, seeds
are averaged per document, and a clear difference excludes 0 while identical rows do not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lm_eval_approx.leaderboard.intervals import Interval, paired_interval, per_doc_values


def _runs(values: list[list[object]]) -> list[dict[str, object]]:
    return [{f"d{i}": v for i, v in enumerate(run)} for run in values]


def _slow(row, reference, metric, iterations, seed, level=0.95):
    """One resample at a time, from the definition."""
    ids = sorted(set.intersection(*(set(r) for r in [*row, *reference])))

    def per_doc(runs):
        return {i: np.mean([np.asarray(run[i], dtype=float) for run in runs], axis=0) for i in ids}

    a, b = per_doc(row), per_doc(reference)

    def metric_of(values, picks):
        chosen = [values[ids[j]] for j in picks]
        if np.ndim(chosen[0]) == 0:
            return float(np.mean(chosen))
        ll, w = np.sum(chosen, axis=0)
        return math.exp(-ll / w) if metric == "word_perplexity" else -ll / (w * math.log(2))

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(iterations, len(ids)))
    diffs = [metric_of(a, d) - metric_of(b, d) for d in draws]
    full = range(len(ids))
    return metric_of(a, full) - metric_of(b, full), *np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])


def test_accuracy_interval_matches_the_definition_and_averages_seeds():
    rng = np.random.default_rng(1)
    row = _runs([rng.integers(0, 2, 60).tolist(), rng.integers(0, 2, 60).tolist()])
    ref = _runs([rng.integers(0, 2, 60).tolist() for _ in range(3)])
    fast = paired_interval(row, ref, "acc", iterations=300, seed=5)
    delta, low, high = _slow(row, ref, "acc", 300, 5)
    assert isinstance(fast, Interval) and fast.documents == 60
    assert fast.delta == pytest.approx(delta) and fast.low == pytest.approx(low) and fast.high == pytest.approx(high)


@pytest.mark.parametrize("metric", ["word_perplexity", "bits_per_byte"])
def test_pair_metrics_are_recomputed_from_loglikelihood_and_weight(metric):
    rng = np.random.default_rng(2)
    row = _runs([[[-float(rng.uniform(20, 60)), int(rng.integers(10, 30))] for _ in range(40)]])
    ref = _runs([[[-float(rng.uniform(20, 60)), int(row[0][f"d{i}"][1])] for i in range(40)]])
    fast = paired_interval(row, ref, metric, iterations=200, seed=3)
    delta, low, high = _slow(row, ref, metric, 200, 3)
    assert fast.delta == pytest.approx(delta) and fast.low == pytest.approx(low) and fast.high == pytest.approx(high)


def test_a_clear_difference_excludes_zero_and_equal_rows_do_not():
    better = _runs([[1] * 90 + [0] * 10])
    worse = _runs([[1] * 50 + [0] * 50])
    assert paired_interval(better, worse, "acc").excludes_zero()
    same = paired_interval(worse, worse, "acc")
    assert same.delta == 0 and same.low == 0 and same.high == 0 and not same.excludes_zero()


def test_documents_are_paired_by_id_and_missing_data_gives_none():
    a = [{"x": 1.0, "y": 0.0, "z": 1.0}]
    b = [{"y": 0.0, "z": 0.0, "w": 1.0}]
    interval = paired_interval(a, b, "acc", iterations=50)
    assert interval.documents == 2 and interval.delta == pytest.approx(0.5)
    assert paired_interval([], b, "acc") is None
    assert paired_interval([{"x": 1.0}], [{"y": 1.0}], "acc") is None


def test_per_doc_values_read_lm_eval_samples():
    assert per_doc_values({"acc": 1.0, "doc_id": 3}, "acc") == 1.0
    assert per_doc_values({"word_perplexity": (-12.5, 7)}, "word_perplexity") == [-12.5, 7.0]
    assert per_doc_values({"acc": "x"}, "acc") is None
    assert per_doc_values({}, "acc") is None


def _cell(label: str, kind: str, seed: int, per_doc: dict[str, float]) -> dict:
    acc = sum(per_doc.values()) / len(per_doc)
    return {"results": {"approx_agnews": {"acc,none": acc}}, "higher_is_better": {"approx_agnews": {"acc": True}},
            "config": {"leaderboard": {"cell": f"{label}-{seed}", "kind": kind, "label": label,
                                       "k": 5 if kind == "approx" else 0, "seed": seed, "target": "approx_agnews",
                                       "metric": "acc", "limits": {"approx_agnews": None},
                                       "strategy": label.split("_")[0], "per_doc": {"acc": per_doc}}}}


def test_the_board_shows_each_row_minus_random_with_its_paired_interval(tmp_path):
    import csv
    import json

    from lm_eval_approx.leaderboard.report import build_board, to_csv, to_markdown

    n = 200
    docs = lambda hits: {str(i): float(i < hits) for i in range(n)}  # noqa: E731
    cells = [_cell("theta0", "theta0", 0, docs(100)), _cell("expert", "expert", 0, docs(180)),
             _cell("random", "approx", 0, docs(110)), _cell("random", "approx", 1, docs(120)),
             _cell("select", "approx", 0, docs(160)), _cell("topk", "approx", 0, docs(116))]
    (tmp_path / "results").mkdir()
    for i, cell in enumerate(cells):
        (tmp_path / "results" / f"{i}.json").write_text(json.dumps(cell))
    board = build_board(tmp_path)
    rows = {r.label: r for r in board.rows}
    assert rows["select"].vs_random.delta == pytest.approx(0.80 - 0.575)
    assert rows["select"].vs_random.excludes_zero()
    assert rows["random"].vs_random is None and rows["theta0"].vs_random is None
    expected = paired_interval([docs(116)], [docs(110), docs(120)], "acc")
    assert rows["topk"].vs_random == expected and not expected.excludes_zero()
    table = to_markdown(board)
    assert "Δ vs random [95% CI]" in table and "+0.2250 [" in table and "✓" in table
    by_label = {r["strategy"]: r for r in csv.DictReader(to_csv(board).splitlines())}
    assert float(by_label["select"]["delta_vs_random"]) == pytest.approx(0.225)
    assert by_label["random"]["delta_vs_random_ci_low"] == ""
    del cells[4]["config"]["leaderboard"]["per_doc"]
    (tmp_path / "results" / "4.json").write_text(json.dumps(cells[4]))
    assert {r.label: r for r in build_board(tmp_path).rows}["select"].vs_random is None


def test_seed_retraining_seeds_each_cells_retraining(tiny_gpt2):
    """With ``seed_retraining: true`` the seeds of a deterministic strategy (select) are three
    retrainings, not three copies; the cell hash records the switch; a non-boolean is refused."""
    from lm_eval_approx.errors import ApproxError
    from lm_eval_approx.leaderboard.config import config_from_dict
    from lm_eval_approx.leaderboard.runner import approx_model_args, cell_hash

    raw = {"base": tiny_gpt2, "expert": {"adapter": tiny_gpt2}, "corpus": {"spec": "seed:wikitext2"},
           "strategies": [{"name": "select", "seeds": [0, 1]}], "budgets": [4]}
    plain, seeded = config_from_dict(raw).resolve(), config_from_dict({**raw, "seed_retraining": True}).resolve()
    cells = [c for c in seeded.cells() if c.kind == "approx"]
    seeds = [approx_model_args(seeded, c, tiny_gpt2)["train_seed"] for c in cells]
    assert seeds == [0, 1]
    assert [approx_model_args(plain, c, tiny_gpt2)["train_seed"] for c in cells] == [0, 0]
    assert cell_hash(plain, cells[0]) != cell_hash(seeded, cells[0])
    with pytest.raises(ApproxError) as caught:
        config_from_dict({**raw, "seed_retraining": "yes"})
    assert caught.value.field == "seed_retraining"


def _slow_two_level(row, reference, metric, iterations, seed, level=0.95):
    """From the definition: per draw, pick each side's runs with replacement, then the documents;
    average the picked runs per picked document and take the metric of each side."""
    ids = sorted(set.intersection(*(set(r) for r in [*row, *reference])))

    def metric_of(runs, picks):
        chosen = [np.mean([np.asarray(run[ids[j]], dtype=float) for run in runs], axis=0) for j in picks]
        if np.ndim(chosen[0]) == 0:
            return float(np.mean(chosen))
        ll, w = np.sum(chosen, axis=0)
        return math.exp(-ll / w)

    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(iterations):
        a = [row[s] for s in rng.integers(0, len(row), size=len(row))]
        b = [reference[s] for s in rng.integers(0, len(reference), size=len(reference))]
        docs = rng.integers(0, len(ids), size=(1, len(ids)))[0]
        diffs.append(metric_of(a, docs) - metric_of(b, docs))
    full = range(len(ids))
    return metric_of(row, full) - metric_of(reference, full), *np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])


@pytest.mark.parametrize("metric", ["acc", "word_perplexity"])
def test_two_level_interval_matches_the_definition(metric):
    from lm_eval_approx.leaderboard.intervals import two_level_interval

    rng = np.random.default_rng(4)
    if metric == "acc":
        row = _runs([rng.integers(0, 2, 50).tolist() for _ in range(3)])
        ref = _runs([rng.integers(0, 2, 50).tolist() for _ in range(2)])
    else:
        weights = rng.integers(10, 30, 30).tolist()
        row = _runs([[[-float(rng.uniform(20, 60)), w] for w in weights] for _ in range(3)])
        ref = _runs([[[-float(rng.uniform(20, 60)), w] for w in weights] for _ in range(3)])
    fast = two_level_interval(row, ref, metric, iterations=200, seed=9)
    delta, low, high = _slow_two_level(row, ref, metric, 200, 9)
    assert fast.delta == pytest.approx(delta) and fast.low == pytest.approx(low) and fast.high == pytest.approx(high)


def test_two_level_interval_widens_with_seed_noise():
    from lm_eval_approx.leaderboard.intervals import two_level_interval

    rng = np.random.default_rng(6)
    base = rng.uniform(0, 1, 400)
    row = _runs([(base + shift).tolist() for shift in (-0.08, 0.0, 0.08)])
    ref = _runs([base.tolist()] * 3)
    documents_only = paired_interval(row, ref, "acc", iterations=500)
    both = two_level_interval(row, ref, "acc", iterations=500)
    assert documents_only.excludes_zero() is False or documents_only.high - documents_only.low < 1e-9
    assert both.high - both.low > 10 * (documents_only.high - documents_only.low + 1e-12)
    assert both.low < 0 < both.high
    assert two_level_interval(row, [], "acc") is None


def test_the_documents_only_interval_keeps_its_definition_at_any_level_and_one_document():
    """scipy.stats.bootstrap(paired=True) draws the same index arrays as the definition; a single
    shared document resamples to itself (scipy refuses one observation, the interval is the point)."""
    rng = np.random.default_rng(11)
    row = _runs([rng.integers(0, 2, 80).tolist() for _ in range(2)])
    ref = _runs([rng.integers(0, 2, 80).tolist()])
    fast = paired_interval(row, ref, "acc", iterations=400, level=0.8, seed=2)
    delta, low, high = _slow(row, ref, "acc", 400, 2, level=0.8)
    assert (fast.delta, fast.low, fast.high) == pytest.approx((delta, low, high))
    one = paired_interval([{"x": 1.0}], [{"x": 0.0}], "acc")
    assert (one.delta, one.low, one.high, one.documents) == (1.0, 1.0, 1.0, 1)


def test_row_interval_is_two_level_with_seeds_on_both_sides_else_documents_only():
    from lm_eval_approx.leaderboard.intervals import DOCUMENTS_ONLY, TWO_LEVEL, row_interval, two_level_interval

    rng = np.random.default_rng(12)
    three = _runs([rng.integers(0, 2, 60).tolist() for _ in range(3)])
    two = _runs([rng.integers(0, 2, 60).tolist() for _ in range(2)])
    one = _runs([rng.integers(0, 2, 60).tolist()])
    both = row_interval(three, two, "acc")
    assert both == two_level_interval(three, two, "acc") and both.method == TWO_LEVEL
    for row, ref in ((one, two), (three, one), (one, one)):
        single = row_interval(row, ref, "acc")
        assert single == paired_interval(row, ref, "acc") and single.method == DOCUMENTS_ONLY
    assert both.to_dict()["method"] == TWO_LEVEL
