"""``lm-eval-approx leaderboard compare | gains | records`` on small leaderboard folders built here.

The parser keeps running a grid exactly as before (no subcommand), and each subcommand prints what
its package function returns, with the numbers of the functions it rests on: the paired intervals
(checked against their definitions in test_intervals.py), the per-document gain summary
(test_per_document_gain.py) and the training record's summary (test_training_summary.py)."""

from __future__ import annotations

import json
import math

import pytest

from lm_eval_approx.cli import build_parser, main
from lm_eval_approx.commands.leaderboard import leaderboard_command
from lm_eval_approx.commands.leaderboard_analysis import compare_command, gains_command, records_command
from lm_eval_approx.leaderboard.document_gains import gain_summary, gains_table
from lm_eval_approx.leaderboard.intervals import paired_interval, two_level_interval
from lm_eval_approx.leaderboard.paired_rows import compare_rows, score
from lm_eval_approx.leaderboard.retraining_records import retraining_records
from lm_eval_approx.training.summary import TRAINING_FILE, kept_text, read_retraining_summary

TARGET = "approx_agnews"


def _run(values: list[float]) -> dict[str, float]:
    return {str(i): v for i, v in enumerate(values)}


def _grid(folder, cells, target=TARGET, limit=6):
    """A leaderboard folder of result files: cells = [(label, seed, per-document accuracies)]."""
    (folder / "results").mkdir(parents=True)
    for label, seed, values in cells:
        leaderboard = {"label": label, "seed": seed, "k": 4, "target": target, "limits": {target: limit},
                       "per_doc": {"acc": _run(values)}}
        (folder / "results" / f"{label}-s{seed}.json").write_text(json.dumps({"config": {"leaderboard": leaderboard}}))
    return folder


def _bounds(interval) -> str:
    return f"{interval.delta:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]"


def test_the_grid_run_parses_as_before_and_the_analyses_are_subcommands(capsys):
    parser = build_parser()
    demo = parser.parse_args(["leaderboard", "--preset", "cpu-small", "--out", "out/demo", "--resume"])
    assert demo.func is leaderboard_command and demo.analysis is None
    assert (demo.preset, demo.out, demo.resume) == ("cpu-small", "out/demo", True)
    grid = parser.parse_args(["leaderboard", "--config", "g.yaml", "--out", "o", "--only", "compare", "--dry-run"])
    assert grid.func is leaderboard_command and grid.only == ["compare"] and grid.dry_run
    for argv, func in ((["compare", "--row", "a", "--against", "b"], compare_command),
                       (["gains", "--row", "a"], gains_command), (["records", "--write"], records_command)):
        args = parser.parse_args(["leaderboard", *argv, "--out", "o"])
        assert args.func is func and args.analysis == argv[0] and str(args.out) == "o"
    with pytest.raises(SystemExit):
        parser.parse_args(["leaderboard", "--help"])
    shown = capsys.readouterr().out
    assert "lm-eval-approx leaderboard (--config FILE | --preset NAME | --show DIR)" in shown
    assert all(verb in shown for verb in ("compare", "gains", "records"))
    with pytest.raises(SystemExit):
        parser.parse_args(["leaderboard", "compare", "--help"])
    assert capsys.readouterr().out.startswith("usage: lm-eval-approx leaderboard compare [-h] --out OUT")
    assert main(["leaderboard"]) == 2
    assert "give one of --config FILE, --preset NAME or --show DIR" in capsys.readouterr().err


def test_compare_prints_the_intervals_of_one_grid_or_of_two_on_the_same_documents(tmp_path, capsys):
    """Shared seeds by default, every seed's mean with --all-seeds, a row of another grid with
    --against-out, and a refusal when the two were scored on other documents."""
    good, bad = [1, 1, 1, 1, 0, 1], [0, 1, 0, 0, 0, 1]
    one = _grid(tmp_path / "one", [("quota", 0, good), ("quota", 1, good), ("select", 1, bad), ("select", 2, bad)])
    other = _grid(tmp_path / "other", [("expert", 0, good)])
    elsewhere = _grid(tmp_path / "elsewhere", [("expert", 0, good)], limit=5)

    assert main(["leaderboard", "compare", "--out", str(one), "--row", "quota", "--against", "select"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == compare_rows(one, "quota", "select")
    expected = paired_interval([_run(good)], [_run(bad)], "acc")
    assert expected.excludes_zero()
    assert printed[2] == f"quota − select over seeds [1]: {_bounds(expected)} (6 documents)  excludes 0"
    assert printed[3] == f"  seed 1: {_bounds(expected)}"
    assert printed[0] == "quota: 0.833 ± 0.000 over seeds [0, 1] (0.833, 0.833)"

    assert main(["leaderboard", "compare", "--out", str(one), "--row", "select", "--against-out", str(other),
                 "--against", "expert", "--all-seeds"]) == 0
    every = paired_interval([_run(bad), _run(bad)], [_run(good)], "acc")
    assert f"select (seeds [1, 2]) − expert (seeds [0]): {_bounds(every)}" in capsys.readouterr().out
    assert main(["leaderboard", "compare", "--out", str(one), "--row", "quota", "--against", "select",
                 "--all-seeds"]) == 0
    levels = two_level_interval([_run(good), _run(good)], [_run(bad), _run(bad)], "acc")
    assert f"  two-level (seeds, then documents): {_bounds(levels)}" in capsys.readouterr().out

    assert main(["leaderboard", "compare", "--out", str(one), "--row", "select", "--against-out", str(other),
                 "--against", "expert"]) == 2
    assert "share no seed; --all-seeds" in capsys.readouterr().err
    assert main(["leaderboard", "compare", "--out", str(one), "--row", "quota", "--against-out", str(elsewhere),
                 "--against", "expert", "--all-seeds"]) == 2
    assert "not scored on the same documents" in capsys.readouterr().err
    pairs = {"d0": [-2.0, 1.0], "d1": [-4.0, 1.0]}  # a perplexity from summed pairs, not a mean of them
    assert score(pairs, "word_perplexity") == pytest.approx(math.exp(3.0))
    assert score({"d0": 1.0, "d1": 0.0}, "acc") == 0.5


def test_gains_prints_the_gain_summary_of_each_row(tmp_path, capsys):
    theta0, expert = [0, 0, 1, 0, 0, 1], [1, 1, 1, 0, 1, 1]
    seeds = [[1, 0, 1, 0, 0, 1], [1, 1, 0, 0, 0, 1]]
    grid = _grid(tmp_path / "grid", [("theta0", 0, theta0), ("expert", 0, expert),
                                     *[("select", s, v) for s, v in enumerate(seeds)]])
    assert main(["leaderboard", "gains", "--out", str(grid), "--row", "select"]) == 0
    printed = capsys.readouterr().out
    assert printed == gains_table(grid, ["select"]) + "\n"
    row = {str(i): (a + b) / 2 for i, (a, b) in enumerate(zip(*seeds))}
    summary = gain_summary(row, _run(theta0), _run(expert))
    assert printed.splitlines()[3] == (f"| select | 0, 1 | {summary['mean_gain']:+.3f} | {summary['share']:.0%} "
                                       f"| {summary['improved']:.0%} | {summary['correlation']:.2f} |")


def _trained(folder, stop_on: str, best: int, signal: list[float], stopped_early: bool):
    """A model folder holding the training record the training loop writes."""
    folder.mkdir(parents=True)
    (folder / TRAINING_FILE).write_text(json.dumps({"stop_on": stop_on, "best_epoch": best,
                                                    "epochs_run": len(signal) - 1, "stopped_early": stopped_early,
                                                    "probes": {stop_on: signal}}))
    return folder


def _scored(cell_id, kind, label, seed, acc, retraining=None, **config):
    leaderboard = {"cell": cell_id, "kind": kind, "label": label, "k": 4 if kind == "approx" else 0, "seed": seed,
                   "target": TARGET, "metric": "acc", "limits": {TARGET: 6}, "strategy": label}
    if retraining is not None:
        leaderboard["retraining"] = retraining
    return {"results": {TARGET: {"acc,none": acc}}, "higher_is_better": {TARGET: {"acc": True}},
            "config": {"leaderboard": leaderboard, **config}}


def test_records_lists_each_cells_kept_epoch_and_writes_the_missing_ones(tmp_path, monkeypatch, capsys):
    """Recorded cells print their record; older cells are read from the stage cache (an approximation)
    or the folder the cell names (the expert); --write stores those and regenerates the tables."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(cache))
    cached = _trained(cache / "stages" / "training" / "key1" / "adapter", "task_agreement", 1, [0.5, 0.75, 0.7], True)
    expert_dir = _trained(tmp_path / "expert", "task_agreement", 2, [0.4, 0.6, 0.9], False)
    recorded = {"stop_on": "task_agreement", "kept_epoch": 3, "epochs_run": 3, "stopped_early": False,
                "signal": [0.5, 0.6, 0.65, 0.8]}
    cells = {
        "theta0": _scored("theta0", "theta0", "theta0", 0, 0.25),
        "expert": _scored("expert", "expert", "expert", 0, 0.75, model_args=f"pretrained=base,peft={expert_dir}"),
        "select-k4-s0": _scored("select-k4-s0", "approx", "select", 0, 0.5, retraining=recorded),
        "select-k4-s1": _scored("select-k4-s1", "approx", "select", 1, 0.625,
                                approx={"stage_keys": {"training": "key1"}}),
        "random-k4-s0": _scored("random-k4-s0", "approx", "random", 0, 0.375,
                                approx={"stage_keys": {"training": "gone"}}),
    }
    out = tmp_path / "grid"
    (out / "results").mkdir(parents=True)
    for name, cell in cells.items():
        (out / "results" / f"{name}.json").write_text(json.dumps(cell))

    assert main(["leaderboard", "records", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == retraining_records(out)[0]
    from_cache = read_retraining_summary(cached)
    assert printed == [
        "expert: score 0.7500; kept epoch 2/2 on task_agreement (ran to the cap; stage cache): 0.4000 0.6000 0.9000",
        "random-k4-s0: score 0.3750; no retraining record, and its training stage is not cached here",
        "select-k4-s0: score 0.5000; kept epoch 3/3 on task_agreement (ran to the cap; recorded): "
        "0.5000 0.6000 0.6500 0.8000",
        f"select-k4-s1: score 0.6250; kept epoch {kept_text(from_cache)} on task_agreement (stopped early; "
        "stage cache): 0.5000 0.7500 0.7000",
    ]

    assert main(["leaderboard", "records", "--out", str(out), "--write"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"2 results JSONs given a retraining record; tables regenerated in {out}"
    saved = {p.stem: json.loads(p.read_text()) for p in (out / "results").glob("*.json")}
    assert saved["select-k4-s1"]["config"]["leaderboard"]["retraining"] == from_cache
    assert saved["expert"]["config"]["leaderboard"]["retraining"] == read_retraining_summary(expert_dir)
    assert {name: saved[name] for name in ("theta0", "select-k4-s0", "random-k4-s0")} == \
        {name: cells[name] for name in ("theta0", "select-k4-s0", "random-k4-s0")}
    assert "| select | 4 | 2 |" in (out / "leaderboard.md").read_text()
    assert "3/3 1/2" in (out / "leaderboard.md").read_text()  # the kept epochs, seed by seed
    assert (out / "leaderboard.html").is_file()
