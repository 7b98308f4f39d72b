"""``leaderboard gains``: each row's per-document gain over θ0 against the expert's, against its definition."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lm_eval_approx.cli import main
from lm_eval_approx.leaderboard.document_gains import gain_summary
from lm_eval_approx.leaderboard.paired_rows import RowComparisonError


def _grid(folder: Path, cells, limit=4):
    """cells = [(label, seed, per-document (log-likelihood, words) pairs)]."""
    (folder / "results").mkdir(parents=True)
    for label, seed, pairs in cells:
        leaderboard = {"label": label, "seed": seed, "k": 4, "target": "approx_msmarco",
                       "limits": {"approx_msmarco": limit},
                       "per_doc": {"word_perplexity": {str(i): list(p) for i, p in enumerate(pairs)}}}
        (folder / "results" / f"{label}-s{seed}.json").write_text(json.dumps({"config": {"leaderboard": leaderboard}}))
    return folder


def _pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def test_per_document_gain_matches_its_definition_and_reads_rows_of_another_folder(tmp_path, capsys):
    words = [10.0, 20.0, 5.0, 8.0]
    theta0 = [-40.0, -60.0, -30.0, -16.0]
    expert = [-20.0, -40.0, -10.0, -16.0]
    seed0 = [-30.0, -70.0, -20.0, -8.0]
    seed1 = [-34.0, -50.0, -25.0, -12.0]
    ceiling = [-18.0, -38.0, -12.0, -15.0]
    pairs = lambda lls: list(zip(lls, words))
    grid = _grid(tmp_path / "grid", [("theta0", 0, pairs(theta0)), ("expert", 0, pairs(expert)),
                                      ("select", 0, pairs(seed0)), ("select", 1, pairs(seed1))])
    other = _grid(tmp_path / "other", [("indomain", 0, pairs(ceiling))])

    per_word = lambda lls: [ll / w for ll, w in zip(lls, words)]
    base, ref = per_word(theta0), per_word(expert)
    row = [(a + b) / 2 for a, b in zip(per_word(seed0), per_word(seed1))]
    gain = [r - b for r, b in zip(row, base)]
    ref_gain = [r - b for r, b in zip(ref, base)]
    summary = gain_summary(dict(enumerate(row)), dict(enumerate(base)), dict(enumerate(ref)))
    assert summary["mean_gain"] == pytest.approx(sum(gain) / 4)
    assert summary["share"] == pytest.approx(sum(gain) / sum(ref_gain))
    assert summary["improved"] == sum(g > 0 for g in gain) / 4
    assert summary["correlation"] == pytest.approx(_pearson(gain, ref_gain))

    assert main(["leaderboard", "gains", "--out", str(grid), "--metric", "word_perplexity", "--row", "select",
                 "--row", f"{other}:indomain"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2] == "| expert | 0 | +1.750 | 100% | 75% | 1.00 |"  # the last document: no gain
    assert table[3].startswith(f"| select | 0, 1 | {summary['mean_gain']:+.3f} | {summary['share']:.0%} |")
    assert table[4].startswith("| indomain | 0 |")

    elsewhere = _grid(tmp_path / "elsewhere", [("indomain", 0, pairs(ceiling))], limit=3)
    assert main(["leaderboard", "gains", "--out", str(grid), "--metric", "word_perplexity",
                 "--row", f"{elsewhere}:indomain"]) == 2
    assert "not scored on the documents" in capsys.readouterr().err
    assert main(["leaderboard", "gains", "--out", str(grid), "--metric", "word_perplexity", "--row", "random"]) == 2
    assert "no finished cell of row 'random'" in capsys.readouterr().err
    with pytest.raises(RowComparisonError, match="same documents"):
        gain_summary({0: 1.0}, {0: 0.0, 1: 0.0}, {0: 1.0, 1: 1.0})
