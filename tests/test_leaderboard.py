"""The leaderboard: the tiny preset end to end, resume after a kill, config errors before compute,
the report's arithmetic against a hand computation, and the HTML page in a real headless Chromium."""

from __future__ import annotations

import csv
import html
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from lm_eval_approx.cli import main
from lm_eval_approx.leaderboard import runner
from lm_eval_approx.leaderboard.config import LeaderboardConfigError, config_from_dict
from lm_eval_approx.leaderboard.report import build_board, to_csv, to_markdown
from lm_eval_approx.leaderboard.sources import apply_overrides, load_config, read_yaml

TARGET, METRIC, WIKITEXT = "approx_agnews", "acc", "wikitext"
TINY_CELLS = 7  # θ0, expert, random × 2 seeds, topk, likelihood_min, select at k = 4
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MIN_PIXEL_STD = 0.02  # a blank or single-colour screenshot has (almost) zero spread


def _mirror() -> Path:
    path = Path(os.environ.get("LM_EVAL_APPROX_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not (path / "ag_news" / "train.jsonl").is_file():
        pytest.skip("data mirror not available (the tiny preset draws AG News and WikiText-2 from it)")
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny preset run once through the CLI: (output folder, tiny base model, printed table)."""
    from conftest import save_tiny_model

    mirror = _mirror()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LM_EVAL_APPROX_DATA", str(mirror))
        mp.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path_factory.mktemp("lb-cache")))
        base = save_tiny_model(tmp_path_factory.mktemp("lb-tiny-llama"), "llama")
        out = tmp_path_factory.mktemp("lb-out") / "tiny"
        code = main(["leaderboard", "--preset", "tiny", "--set", f"base={base}", "--out", str(out), "--no-progress"])
        assert code == 0
        yield out, base, os.environ["LM_EVAL_APPROX_CACHE"]


def _results(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))}


def _score(record: dict, task: str, metric: str) -> float:
    return record["results"][task][f"{metric},none"]


def test_tiny_preset_end_to_end(tiny_run, capsys):
    out, _, _ = tiny_run
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.html", "metric_vs_k.png", "gap_closed.png",
                 "sources.png", "leaderboard.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = _results(out)
    assert len(results) == TINY_CELLS
    for record in results.values():  # lm-eval's schema with our extras
        assert {"results", "versions", "n-samples", "higher_is_better", "config"} <= set(record)
        assert record["config"]["leaderboard"]["target"] == TARGET
    assert results["select-k4-s0"]["config"]["model"] == "approx"
    assert results["select-k4-s0"]["config"]["approx"]["strategy"] == "select"
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [r["strategy"] for r in rows] == ["theta0", "expert", "random", "topk", "likelihood_min", "select"]
    theta0, expert = _score(results["theta0"], TARGET, METRIC), _score(results["expert"], TARGET, METRIC)
    random_mean = (_score(results["random-k4-s0"], TARGET, METRIC) + _score(results["random-k4-s1"], TARGET, METRIC)) / 2
    for row in rows:
        cells = [v for k, v in results.items() if v["config"]["leaderboard"]["label"] == row["strategy"]]
        scores = [_score(c, TARGET, METRIC) for c in cells]
        mean = sum(scores) / len(scores)
        assert float(row[METRIC]) == pytest.approx(mean, abs=1e-4)
        wiki = sum(_score(c, WIKITEXT, "word_perplexity") for c in cells) / len(cells)
        assert float(row["approx_wikitext:word_perplexity"]) == pytest.approx(wiki, rel=1e-4)
        if expert != theta0:
            assert float(row["gap_closed_vs_theta0"]) == pytest.approx((mean - theta0) / (expert - theta0), abs=1e-3)
        else:
            assert row["gap_closed_vs_theta0"] == ""
        if row["k"] and expert != random_mean:
            assert float(row["gap_closed_vs_random"]) == pytest.approx((mean - random_mean) / (expert - random_mean), abs=1e-3)
        if row["k"]:
            assert float(row["training_s"]) > 0 and row["vocab_containment"] != "" and row["sources"]
        # each trained cell records the epoch its stop rule kept, as its training record says
        kept = []
        for cell in sorted(cells, key=lambda c: c["config"]["leaderboard"]["seed"]):
            record = cell["config"]["leaderboard"].get("retraining")
            if row["strategy"] == "theta0":
                assert record is None
                continue
            folder = (cell["config"]["approx"]["adapter"] if row["k"]
                      else cell["config"]["model_args"].split("peft=")[-1])
            history = json.loads((Path(folder) / "training.json").read_text())
            assert record["kept_epoch"] == history["best_epoch"] and record["epochs_run"] == history["epochs_run"]
            stop_on = history.get("stop_on") or "validation_loss"
            assert record["stop_on"] == stop_on
            assert record["signal"] == history["probes"].get(stop_on, history["validation_loss"])
            kept.append(f"{history['best_epoch']}/{history['epochs_run']}")
        assert row["kept_epoch"] == " ".join(kept)
    random_row = next(r for r in rows if r["strategy"] == "random")
    assert random_row["seeds"] == "0 1"
    # the pseudo-labels column counts θf's labels of the selected documents, read back from the selection file
    from collections import Counter

    from lm_eval_approx.data.selection_file import read_selection

    selected = read_selection(results["select-k4-s0"]["config"]["approx"]["selection_file"])
    counts = Counter(r.label_text for r in selected)
    select_row = next(r for r in rows if r["strategy"] == "select")
    shares = dict(part.split("=") for part in select_row["labels"].split(";"))
    assert {name: float(v) for name, v in shares.items()} == pytest.approx(
        {name: n / len(selected) for name, n in counts.items()}, abs=1e-3)
    assert all(r["labels"] == "" for r in rows if not r["k"])
    assert "pseudo-labels %" in (out / "leaderboard.md").read_text()
    # a WikiText/DBpedia pool holds none of the expert's AG News documents: 0 in the CSV, no markdown column
    assert all(float(r["true_documents"]) == 0 for r in rows if r["k"])
    assert all(r["true_documents"] == "" for r in rows if not r["k"])
    assert "true training docs" not in (out / "leaderboard.md").read_text()
    # --show prints the saved table without computing anything.
    capsys.readouterr()
    assert main(["leaderboard", "--show", str(out)]) == 0
    assert capsys.readouterr().out == (out / "leaderboard.md").read_text()


def test_retraining_records_fills_cells_saved_before_the_record_from_the_stage_cache(tiny_run, tmp_path,
                                                                                      monkeypatch, capsys):
    """``leaderboard records --write`` gives a cell saved without a ``retraining`` record the
    one it would have saved (read from its cached training stage), changes nothing else, and
    regenerates the tables; a cell recorded already is left as it is."""
    out, _, cache = tiny_run
    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", cache)
    old = tmp_path / "old"
    shutil.copytree(out, old)
    recorded = {}
    for path in sorted((old / "results").glob("*.json")):
        cell = json.loads(path.read_text())
        recorded[path.name] = cell["config"]["leaderboard"].pop("retraining", None)
        if path.name != "random-k4-s1.json":  # this one keeps its record
            path.write_text(json.dumps(cell, indent=2, ensure_ascii=False) + "\n")
    before = {p.name: json.loads(p.read_text()) for p in (old / "results").glob("*.json")}
    assert all(not any(row.kept_epochs) for row in build_board(old).rows if row.label != "random")
    assert main(["leaderboard", "records", "--out", str(old), "--write"]) == 0
    printed = capsys.readouterr().out
    assert f"{len(recorded) - 2} results JSONs given a retraining record" in printed  # not θ0, not random s1
    for path in sorted((old / "results").glob("*.json")):
        cell = json.loads(path.read_text())
        assert cell["config"]["leaderboard"].get("retraining") == recorded[path.name], path.name
        cell["config"]["leaderboard"].pop("retraining", None)
        before[path.name]["config"]["leaderboard"].pop("retraining", None)
        assert cell == before[path.name], f"{path.name}: only the record may change"
    assert (old / "leaderboard.csv").read_text() == (out / "leaderboard.csv").read_text()
    assert "kept epoch" in (old / "leaderboard.md").read_text()


def test_resume_after_kill_redoes_only_the_unfinished_cell(tiny_run, monkeypatch, capsys):
    out, base, cache = tiny_run
    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(_mirror()))
    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", cache)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    killed = out / "results" / "topk-k4-s0.json"
    old = json.loads(killed.read_text())
    killed.unlink()  # the kill came while this cell was being scored: its JSON was never renamed into place
    (out / "results" / ".topk-k4-s0.json.abc.tmp").write_text("{half a fi")
    ran = []
    original = runner.run_cell
    monkeypatch.setattr(runner, "run_cell", lambda config, cell, *a, **k: ran.append(cell.id) or original(config, cell, *a, **k))
    capsys.readouterr()
    code = main(["leaderboard", "--preset", "tiny", "--set", f"base={base}", "--out", str(out), "--resume", "--no-progress"])
    assert code == 0 and ran == ["topk-k4-s0"]
    printed = capsys.readouterr()
    assert printed.out == (out / "leaderboard.md").read_text()  # the guide goes to stderr, the table alone to stdout
    for part in (str(out / "leaderboard.html"), "leaderboard.csv", "gap_closed.png", "gap closed vs random",
                 "95% CI", "beats random when", "Next: ", "Bring your own task"):
        assert part in printed.err, part
    upfront = next(line for line in printed.err.splitlines() if " cells to run, estimated " in line)
    assert upfront.startswith("leaderboard 'tiny': 1 of "), upfront  # only the killed cell is left
    assert "min on this machine (a timing probe ran " in upfront, upfront  # scaled to this machine
    assert printed.err.index(upfront) < printed.err.index("Wrote ")
    after = {p.name: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    assert {n: t for n, t in after.items() if n != killed.name} == {n: t for n, t in before.items() if n != killed.name}
    new = json.loads(killed.read_text())
    assert all(new["config"]["approx"]["stage_cached"].values())  # selection and training came from the cache
    assert _score(new, TARGET, METRIC) == _score(old, TARGET, METRIC)


def _tiny_dict(**changes) -> dict:
    data = apply_overrides(read_yaml(preset="tiny"), ["base=/nonexistent/model"])
    data.update(changes)
    return data


@pytest.mark.parametrize("changes, key", [
    ({"strategies": ["random", "selekt"]}, "strategies[1].name"),
    ({"budgets": [4, 0]}, "budgets[1]"),
    ({"strategies": [{"name": "select", "budgets": [-3]}]}, "strategies[0].budgets[0]"),
    ({"expert": {"size": 10}}, "expert"),
    ({"task": "approx_nonesuch"}, "task"),
    ({"extra_tasks": ["no_such_lm_eval_task"]}, "extra_tasks[0].name"),
    ({"corpus": {"spec": "seed:wikitext2+nothing"}}, "corpus.spec"),
    ({"strategies": [{"name": "select_batched", "options": {"batch_sise": 4}}]}, "strategies[0].options.batch_sise"),
    ({"recipe": {"epochs": 0}}, "recipe.epochs"),
    ({"strategies": ["random", {"name": "select", "recipe": {"epochs": 0}}]}, "strategies[1].recipe.epochs"),
])
def test_bad_config_fails_before_compute_naming_the_key(changes, key, tmp_path, monkeypatch, capsys):
    with pytest.raises(LeaderboardConfigError) as info:
        config_from_dict(_tiny_dict(**changes)).resolve()  # names (strategies, tasks) are looked up here
    assert info.value.field == key
    # Through the CLI: exit 2, one line naming the key, and no cell or expert was started.
    monkeypatch.setattr(runner, "expert_model", lambda *a, **k: pytest.fail("expert built for a bad config"))
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(json.dumps(_tiny_dict(**changes)))
    assert main(["leaderboard", "--config", str(config_file), "--out", str(tmp_path / "out")]) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_strategy_recipe_changes_only_its_own_rows_retraining(monkeypatch):
    monkeypatch.setattr(runner, "resolve_model", lambda name: name)
    data = _tiny_dict(strategies=["select", {"name": "select", "label": "select_2ep", "recipe": {"epochs": 2}}])
    config = config_from_dict(data).resolve()
    plain, longer = (next(c for c in config.cells() if c.label == label) for label in ("select", "select_2ep"))
    default_epochs = config.recipe_for().epochs
    assert runner.approx_model_args(config, plain, "EXPERT")["train_epochs"] == default_epochs
    assert runner.approx_model_args(config, longer, "EXPERT")["train_epochs"] == 2
    assert config.recipe_for(config.expert.recipe).epochs == default_epochs
    # A row without a recipe hashes as before the key existed, so earlier results still resume.
    alone = config_from_dict(_tiny_dict(strategies=["select"])).resolve()
    assert runner.cell_hash(config, plain) == runner.cell_hash(alone, plain)
    assert runner.cell_hash(config, longer) != runner.cell_hash(
        config_from_dict(_tiny_dict(strategies=[{"name": "select", "label": "select_2ep"}])).resolve(), longer)


def test_the_training_path_names_a_cell_whether_stated_or_defaulted(monkeypatch):
    """Stating the old training path (fp32, shuffled, torch dropout) keeps a cell's hash as it was
    before those fields existed; the fast path, now the default, changes it, stated in the config or
    taken from the defaults."""
    monkeypatch.setattr(runner, "resolve_model", lambda name: name)
    old_path = {"mixed_precision": "no", "batch_order": "shuffled", "dropout_sampler": "torch"}
    plain = config_from_dict(_tiny_dict(strategies=["select"])).resolve()
    cell = next(c for c in plain.cells() if c.label == "select")
    pinned = config_from_dict(_tiny_dict(strategies=["select"], recipe=dict(plain.recipe, **old_path))).resolve()
    assert runner.cell_hash(pinned, cell) != runner.cell_hash(plain, cell)  # defaults: the fast path
    stated = config_from_dict(_tiny_dict(strategies=["select"],
                                         recipe=dict(plain.recipe, **{**old_path, "batch_order": "bucketed"}))).resolve()
    assert runner.cell_hash(stated, cell) != runner.cell_hash(pinned, cell)
    before = runner.cell_hash(plain, cell)
    # Were the defaults the old path, nothing would name the training path: the hash would change.
    from lm_eval_approx.leaderboard import cell_keys

    defaults = plain.retraining_for("select")
    monkeypatch.setattr(cell_keys, "OLD_TRAINING_PATH", {name: getattr(defaults, name) for name in old_path})
    assert runner.cell_hash(plain, cell) != before


def test_every_preset_validates_and_dry_runs(capsys):
    for preset, cells in (("gpu", 2 + 3 * 2 + 9 * 2), ("cpu", 2 + 3 * 3 + 3 + 8), ("cpu-small", 5), ("cpu-msmarco", 2 + 3 + 4)):
        assert main(["leaderboard", "--preset", preset, "--dry-run"]) == 0
        text = capsys.readouterr().out
        assert f"{cells} cells" in text and "total:" in text, preset


def test_gap_vs_random_compares_rows_retrained_with_the_same_recipe(tmp_path):
    def cell(label, strategy, kind, seed, acc, epochs):
        record = _fake_cell(label, kind, 5 if kind == "approx" else 0, seed, 30.0, acc)
        record["results"] = {"approx_agnews": {"acc,none": acc}}
        record["higher_is_better"] = {"approx_agnews": {"acc": True}}
        record["config"]["leaderboard"].update(target="approx_agnews", strategy=strategy, limits={"approx_agnews": 10})
        if epochs:
            record["config"]["approx"] = {"recipe": {"epochs": epochs, "learning_rate": 2e-4}}
        return record

    cells = [cell("theta0", "theta0", "theta0", 0, 0.5, None), cell("expert", "expert", "expert", 0, 0.9, None),
             cell("random", "random", "approx", 0, 0.6, 1), cell("random", "random", "approx", 1, 0.62, 1),
             cell("random_2ep", "random", "approx", 0, 0.55, 2), cell("select", "select", "approx", 0, 0.65, 1),
             cell("select_2ep", "select", "approx", 0, 0.75, 2)]
    (tmp_path / "results").mkdir()
    for i, record in enumerate(cells):
        (tmp_path / "results" / f"{i}.json").write_text(json.dumps(record))
    rows = {r.label: r for r in build_board(tmp_path).rows}
    assert rows["select"].gap_random == pytest.approx((0.65 - 0.61) / (0.9 - 0.61))
    assert rows["select_2ep"].gap_random == pytest.approx((0.75 - 0.55) / (0.9 - 0.55))
    assert rows["random_2ep"].gap_random == pytest.approx(0.0) and rows["random"].gap_random == pytest.approx(0.0)
    table = to_markdown(build_board(tmp_path))
    assert "-0.0%" not in table and "| 0.0% |" in table


def test_a_recipe_saved_before_a_field_existed_matches_that_fields_default(tmp_path):
    """DBpedia's first cells were saved before ``class_balance`` existed; later cells hold its
    default "none", which trains the same way, so they share a random row. "balanced" does not."""
    def cell(label, strategy, seed, acc, **fields):
        record = _fake_cell(label, "approx" if strategy else label, 5 if strategy else 0, seed, 30.0, acc)
        record["results"] = {"approx_agnews": {"acc,none": acc}}
        record["higher_is_better"] = {"approx_agnews": {"acc": True}}
        record["config"]["leaderboard"].update(target="approx_agnews", strategy=strategy or label,
                                               limits={"approx_agnews": 10})
        if strategy:
            record["config"]["approx"] = {"recipe": {"epochs": 2, "learning_rate": 2e-4, **fields}}
        return record

    cells = [cell("theta0", None, 0, 0.5), cell("expert", None, 0, 0.9),
             cell("random", "random", 0, 0.6), cell("random", "random", 1, 0.62, class_balance="none"),
             cell("topk", "topk", 0, 0.7, class_balance="none"),
             cell("topk_balanced", "topk", 0, 0.8, class_balance="balanced")]
    (tmp_path / "results").mkdir()
    for i, record in enumerate(cells):
        (tmp_path / "results" / f"{i}.json").write_text(json.dumps(record))
    rows = {r.label: r for r in build_board(tmp_path).rows}
    assert rows["random"].mean == pytest.approx(0.61)
    assert rows["topk"].gap_random == pytest.approx((0.7 - 0.61) / (0.9 - 0.61))
    assert rows["topk_balanced"].gap_random is None


def test_dry_run_with_resume_marks_finished_cells_and_drops_their_cost(tiny_run, capsys):
    out, base, _ = tiny_run
    config_args = ["--preset", "tiny", "--set", f"base={base}"]
    assert main(["leaderboard", *config_args, "--dry-run"]) == 0
    fresh = capsys.readouterr().out
    assert main(["leaderboard", *config_args, "--out", str(out), "--resume", "--dry-run"]) == 0
    resumed = capsys.readouterr().out
    assert "(done)" not in fresh and "already finished" not in fresh
    done_lines = [line for line in resumed.splitlines() if line.endswith("(done)")]
    assert len(done_lines) == len(list((out / "results").glob("*.json"))) > 0
    from lm_eval_approx.leaderboard.estimate import estimate

    config = load_config(None, "tiny", [f"base={base}"])
    done = frozenset(line.split()[0] for line in done_lines)
    assert estimate(config, done).seconds["scoring"] < estimate(config).seconds["scoring"]


def test_only_runs_the_matching_cells_in_pattern_order(tiny_run, tmp_path, monkeypatch, capsys):
    out, base, cache = tiny_run
    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(_mirror()))
    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", cache)
    config = load_config(None, "tiny", [f"base={base}"])
    assert [c.id for c in config.chosen_cells(["select-*", "random-k4-s1", "random-*"])] == \
        ["select-k4-s0", "random-k4-s1", "random-k4-s0"]
    assert config.chosen_cells(None) == config.cells()
    with pytest.raises(LeaderboardConfigError) as info:
        config.chosen_cells(["random-*", "selekt-*"])
    assert info.value.field == "--only" and "select-k4-s0" in str(info.value)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in ("random-k4-s1", "select-k4-s0", "topk-k4-s0"):
        (copy / "results" / f"{name}.json").unlink()
    config_args = ["--preset", "tiny", "--set", f"base={base}", "--out", str(copy), "--resume"]
    capsys.readouterr()
    assert main(["leaderboard", *config_args, "--only", "select-*", "--only", "random-*", "--dry-run"]) == 0
    planned = capsys.readouterr().out.splitlines()
    assert planned[0].startswith(f"leaderboard 'tiny': 3 of {TINY_CELLS} cells (--only)")
    assert [line.strip() for line in planned[1:4]] == ["select-k4-s0", "random-k4-s0  (done)", "random-k4-s1"]
    ran = []
    original = runner.run_cell
    monkeypatch.setattr(runner, "run_cell", lambda config, cell, *a, **k: ran.append(cell.id) or original(config, cell, *a, **k))
    assert main(["leaderboard", *config_args, "--only", "select-*", "--only", "random-*", "--no-progress"]) == 0
    assert ran == ["select-k4-s0", "random-k4-s1"]
    assert not (copy / "results" / "topk-k4-s0.json").exists()  # left out, not run
    table = capsys.readouterr().out
    assert "| topk |" not in table and "| select |" in table  # the table covers the finished cells
    for name in ("select-k4-s0", "random-k4-s1"):
        new, old = _results(copy)[name], _results(out)[name]
        assert _score(new, TARGET, METRIC) == _score(old, TARGET, METRIC)


def test_resume_skips_a_cell_another_worker_finished_after_the_plan_was_made(tiny_run, tmp_path, monkeypatch):
    """Two workers on one folder: a cell planned as unfinished but finished by the other worker
    before its turn is not scored again, and its results file (with its real costs) is kept."""
    out, base, cache = tiny_run
    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(_mirror()))
    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", cache)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in ("select-k4-s0", "random-k4-s1"):
        (copy / "results" / f"{name}.json").unlink()
    other_worker = (out / "results" / "random-k4-s1.json").read_bytes()
    ran = []
    original = runner.run_cell

    def run_and_let_the_other_worker_finish(config, cell, *args, **kwargs):
        ran.append(cell.id)
        path = original(config, cell, *args, **kwargs)
        (copy / "results" / "random-k4-s1.json").write_bytes(other_worker)
        return path

    monkeypatch.setattr(runner, "run_cell", run_and_let_the_other_worker_finish)
    assert main(["leaderboard", "--preset", "tiny", "--set", f"base={base}", "--out", str(copy), "--resume",
                 "--no-progress", "--only", "select-*", "--only", "random-*"]) == 0
    assert ran == ["select-k4-s0"]
    assert (copy / "results" / "random-k4-s1.json").read_bytes() == other_worker


def test_a_bumped_task_version_reopens_the_cells_scored_with_the_old_one(tiny_run, tmp_path):
    out, base, _ = tiny_run
    config = load_config(None, "tiny", [f"base={base}"])
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    done = runner.finished_cells(copy, config)
    assert done == {cell.id for cell in config.cells()}
    stale = copy / "results" / "theta0.json"
    record = json.loads(stale.read_text())
    assert float(record["versions"][TARGET]) == float(runner.task_versions((TARGET,))[TARGET])
    record["versions"][TARGET] = 0.5
    stale.write_text(json.dumps(record))
    assert runner.finished_cells(copy, config) == done - {"theta0"}
    del record["versions"]
    stale.write_text(json.dumps(record))
    assert "theta0" not in runner.finished_cells(copy, config)


def _fake_cell(label: str, kind: str, k: int, seed: int, ppl: float, acc: float) -> dict:
    """A results dict in lm-eval's schema with a perplexity target and an accuracy extra task."""
    return {
        "results": {"approx_msmarco": {"word_perplexity,none": ppl}, "approx_agnews": {"acc,none": acc}},
        "higher_is_better": {"approx_msmarco": {"word_perplexity": False}, "approx_agnews": {"acc": True}},
        "config": {"leaderboard": {"cell": f"{label}-{k}-{seed}", "kind": kind, "label": label, "k": k, "seed": seed,
                                   "target": "approx_msmarco", "metric": None,
                                   "limits": {"approx_msmarco": None, "approx_agnews": 10},
                                   "sources": {"seed:a": 0.25, "seed:b": 0.75}}},
    }


def test_report_arithmetic_matches_a_hand_computation_for_lower_is_better(tmp_path):
    cells = [_fake_cell("theta0", "theta0", 0, 0, 30.0, 0.5), _fake_cell("expert", "expert", 0, 0, 20.0, 0.6),
             _fake_cell("random", "approx", 5, 0, 28.0, 0.55), _fake_cell("random", "approx", 5, 1, 26.0, 0.45),
             _fake_cell("select", "approx", 5, 0, 23.0, 0.4)]
    for i, cell in enumerate(cells):
        (tmp_path / "results").mkdir(exist_ok=True)
        (tmp_path / "results" / f"{i}.json").write_text(json.dumps(cell))
    board = build_board(tmp_path)
    assert not board.higher_is_better and board.metric == "word_perplexity"
    rows = {r.label: r for r in board.rows}
    assert rows["random"].mean == 27.0 and rows["random"].std == pytest.approx(math.sqrt(2.0))
    assert rows["select"].gap_theta0 == pytest.approx((23 - 30) / (20 - 30))  # 70 %: lower perplexity is progress
    assert rows["select"].gap_random == pytest.approx((23 - 27) / (20 - 27))
    assert rows["random"].extras["approx_agnews:acc"] == pytest.approx(0.5)
    assert "27.0000 ± 1.4142" in to_markdown(board) and "70.0%" in to_markdown(board)
    assert next(csv.DictReader(to_csv(board).splitlines()))["strategy"] == "theta0"


def _chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120, check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


# Written into the page's title once it is laid out, so --dump-dom carries the measurement out.
MEASURE = ("<script>window.addEventListener('load', function(){var box = document.querySelector('div.board'), "
           "page = document.documentElement, table = document.querySelector('#board'); document.title = "
           "JSON.stringify({box: [box.scrollWidth, box.clientWidth], page: [page.scrollWidth, page.clientWidth], "
           "table: table.getBoundingClientRect().width});});</script>")


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_html_page_renders_in_headless_chromium(tiny_run, tmp_path):
    """At 1400 px the page reads like leaderboard.md: its headers (no CSV column names), its cells (seed
    counts, Δ with interval and marks, percentages), its notes, each row's context columns folded
    under it, and a table that fits the window without a horizontal scroll."""
    import matplotlib.image as mpimg

    from lm_eval_approx.leaderboard.report import columns, readable_table

    out, _, _ = tiny_run
    page = (out / "leaderboard.html").resolve()
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1400,900", page.as_uri())
    assert shot.is_file()
    assert mpimg.imread(shot)[..., :3].std() > MIN_PIXEL_STD
    measured = tmp_path / "measured.html"
    measured.write_text(text.replace("</body>", MEASURE + "</body>"))
    dom = _chromium("--window-size=1400,900", "--dump-dom", measured.as_uri()).stdout
    board = build_board(out)
    table = readable_table(board)
    head = [_text(th) for th in re.findall(r"<th[^>]*>(.*?)</th>", dom)]
    assert head == table.header[: table.leading]
    assert not set(head) & (set(columns(board)) - set(table.header)), "a raw CSV column name in the header"
    assert any(name.startswith("Δ vs random") for name in head)
    rows = re.findall(r"<tbody[^>]*>(.*?)</tbody>", dom)  # a row: its result line, its folded context
    assert len(rows) == len(board.rows)
    for (row, cells), body in zip(table.rows, rows):
        main_line = re.search(r'<tr class="main">(.*?)</tr>', body).group(1)
        shown = [_text(td) for td in re.findall(r"<td[^>]*>(.*?)</td>", main_line)]
        assert shown == cells[: table.leading], row.label
        assert shown[head.index("seeds")] == str(len(row.seeds))
        folded = [(_text(name), _text(value)) for name, value in re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", body)]
        assert folded == [(n, v) for n, v in zip(table.header[table.leading :], cells[table.leading :]) if v], row.label
    assert table.notes and all(note in _text(dom) for note in table.notes)
    assert "¹" in _text(dom)  # one-seed rows: their Δ carries the mark, its note is under the table
    size = json.loads(html.unescape(re.search(r"<title>(.*?)</title>", dom).group(1)))
    assert size["box"][0] <= size["box"][1] and size["page"][0] <= size["page"][1], size
    assert size["table"] <= size["box"][1], size
    assert dom.count("data:image/png;base64,") == 3


def test_estimate_costs_each_stage_at_its_measured_rate():
    from lm_eval_approx.leaderboard.estimate import CPU_RATES, estimate

    def labels_and_features(preset, *overrides, fused=False):
        overrides = [*overrides, f"approx.fused_labels={str(fused).lower()}"]
        return estimate(load_config(None, preset, overrides)).seconds["labels+features"]

    n = load_config(None, "cpu-small", []).corpus.size
    # random needs only pseudo-labels: one forward per choice for AG News, one forward for MS MARCO
    assert labels_and_features("cpu-small", "strategies=[random]") == pytest.approx(n / CPU_RATES["score_choice"])
    m = load_config(None, "cpu-msmarco", []).corpus.size
    assert labels_and_features("cpu-msmarco", "strategies=[random]") == pytest.approx(m / CPU_RATES["label_text"])
    head = labels_and_features("cpu-small", "strategies=[select]")
    changed = labels_and_features("cpu-small", "strategies=[select]", "approx={params: changed}")
    three = labels_and_features("cpu-small", "strategies=[select]", "approx={params: head, checkpoints: 3}")
    both = labels_and_features("cpu-small", "strategies=[select, {name: select_checkpoints, approx: {checkpoints: 3}}]")
    assert changed - head == pytest.approx(n / CPU_RATES["features_changed"] - n / CPU_RATES["features_head"])
    assert three - head == pytest.approx(2 * n / CPU_RATES["features_head"])
    assert both == pytest.approx(three)  # α = 1 is one store, shared by select and select_checkpoints
    # fused_labels: θf's pseudo-labels come from its head store's forward, whichever strategy runs
    assert labels_and_features("cpu-small", "strategies=[random]", fused=True) == pytest.approx(
        n / CPU_RATES["features_head"])
    assert head - labels_and_features("cpu-small", "strategies=[select]", fused=True) == pytest.approx(
        n / CPU_RATES["score_choice"])
    assert labels_and_features("cpu-msmarco", "strategies=[random]", fused=True) == pytest.approx(
        m / CPU_RATES["label_text"])  # a language-modelling task has no labels to fuse


def test_cheaper_lora_recipes_are_costed_at_their_measured_time_ratio():
    from lm_eval_approx.leaderboard.estimate import HEAD_ONLY_TIME, PREFIX_EPOCH, PREFIX_ONCE, TOP_BLOCKS_TIME, estimate

    def retraining(*overrides):  # the preset's retraining without its prefix cache unless an override sets one
        seconds = estimate(load_config(None, "cpu-small", ["retraining={}", *overrides])).seconds
        return seconds["retraining"], seconds["expert"]

    default = retraining("recipe={epochs: 2}")  # every block adapted (the preset itself adapts 4)
    assert retraining("recipe={epochs: 2, lora_layers: 4}") == pytest.approx([t * TOP_BLOCKS_TIME for t in default])
    assert retraining("recipe={epochs: 2, target_modules: [head]}") == pytest.approx([t * HEAD_ONLY_TIME for t in default])
    assert retraining("recipe={epochs: 2, method: full}") == pytest.approx(default)
    lora4 = retraining("recipe={epochs: 2, lora_layers: 4}")
    cached = retraining("recipe={epochs: 2, lora_layers: 4}", "retraining={prefix_cache: true}")
    assert cached[0] == pytest.approx(lora4[0] * (PREFIX_ONCE + 2 * PREFIX_EPOCH) / 2)  # the states once, then cheaper epochs
    assert cached[1] == pytest.approx(lora4[1])  # the expert's recipe has no cache


def test_a_retraining_on_a_teacher_signal_is_costed_at_its_cap_plus_its_probes():
    """Under the retraining rule every epoch up to the cap is counted, and the monitor texts are
    scored after every epoch in every cell, and by θf and θ0 once per draw of monitor texts (the
    cells of one retraining seed share it: cached stages), at the choice rate."""
    from lm_eval_approx.leaderboard.estimate import CPU_RATES, estimate

    def retraining(*overrides):  # fp32: bf16 would scale the probe passes by its measured factor
        return estimate(load_config(None, "cpu-small", ["recipe.mixed_precision=no", *overrides])).seconds["retraining"]

    plain = retraining("retraining={epochs: 8}")
    ruled = retraining("retraining={epochs: 8, stop_on: task_agreement, monitor_size: 100}")
    cells = len(load_config(None, "cpu-small", []).cells()) - 2
    assert ruled - plain == pytest.approx((cells * 8 + 2) * 100 / CPU_RATES["score_choice"])
    seeded = ["seeds=[0, 1]", "seed_retraining=true"]
    two_draws = retraining("retraining={epochs: 8, stop_on: task_agreement, monitor_size: 100}", *seeded)
    assert two_draws - retraining("retraining={epochs: 8}", *seeded) == pytest.approx(
        (2 * cells * 8 + 2 * 2) * 100 / CPU_RATES["score_choice"])
    texts = ["condition=task_texts", "recipe.mixed_precision=no"]  # monitor texts of the task, fp32
    lm_config = load_config(None, "cpu-msmarco", texts)
    lm = estimate(lm_config).seconds["retraining"]  # task_loss: no θf pass
    lm_plain = estimate(load_config(None, "cpu-msmarco", [*texts, "retraining={epochs: 8}"])).seconds["retraining"]
    lm_cells = len(lm_config.cells()) - 2
    draws = len({c.seed for c in lm_config.cells() if c.kind == "approx"}) if lm_config.seed_retraining else 1
    assert lm - lm_plain == pytest.approx((lm_cells * 8 + draws) * 256 / CPU_RATES["loss"])


def test_the_fast_recipe_is_costed_at_its_measured_factors():
    from lm_eval_approx.leaderboard.estimate import FAST_TIME, estimate

    def retraining(*overrides):
        return estimate(load_config(None, "cpu-small", ["retraining={epochs: 2}", *overrides])).seconds["retraining"]

    old = retraining("recipe={lora_layers: 4, batch_size: 4, micro_batch_size: 0, mixed_precision: 'no', "
                     "batch_order: shuffled, dropout_sampler: torch}")
    fast = retraining("recipe={lora_layers: 4, batch_size: 4, micro_batch_size: 0, mixed_precision: bf16, "
                      "batch_order: bucketed, dropout_sampler: fast}")
    factor = 1.0
    for value in FAST_TIME.values():
        factor *= value
    assert fast == pytest.approx(old * factor)


def test_language_modelling_retraining_is_costed_at_the_whole_text_rate():
    """An MS MARCO retraining trains on whole passages: its cells and its expert are costed at
    train_text, a classification grid's at train (measured side by side, estimate.py)."""
    from lm_eval_approx.leaderboard.estimate import CPU_RATES, estimate

    old_path = ["recipe.mixed_precision=no", "recipe.batch_order=shuffled", "recipe.dropout_sampler=torch"]
    config = load_config(None, "cpu-msmarco", ["retraining={}", *old_path])
    seconds = estimate(config).seconds
    cells = [cell for cell in config.cells() if cell.kind == "approx"]
    assert seconds["retraining"] == pytest.approx(
        sum(cell.k * config.retraining_for(cell.label).epochs for cell in cells) / CPU_RATES["train_text"])
    assert seconds["expert"] == pytest.approx(
        config.expert.size * config.recipe_for(config.expert.recipe).epochs / CPU_RATES["train_text"])
    agnews = load_config(None, "cpu-small", ["retraining={}", "recipe={lora_layers: 0}", *old_path])
    expert_recipe = agnews.recipe_for(agnews.expert.recipe)
    assert expert_recipe.method == "lora" and not expert_recipe.lora_layers
    assert estimate(agnews).seconds["expert"] == pytest.approx(
        agnews.expert.size * expert_recipe.epochs / CPU_RATES["train"])


def test_scoring_is_costed_by_how_lm_eval_scores_each_task():
    """Whole passages in rolling windows at the text rate; multiple choice and the one-request
    last-word task at the choice rate."""
    from lm_eval_approx.leaderboard.estimate import CPU_RATES, _scoring_rate

    assert _scoring_rate(CPU_RATES, "approx_msmarco") == CPU_RATES["score_text"]
    assert _scoring_rate(CPU_RATES, "approx_msmarco_last") == CPU_RATES["score_choice"]
    assert _scoring_rate(CPU_RATES, "approx_agnews") == CPU_RATES["score_choice"]


def test_true_documents_counts_selected_documents_the_expert_trained_on(tiny_run, tmp_path, monkeypatch):
    from lm_eval_approx.leaderboard.config import APPROX
    from lm_eval_approx.data.selection_file import SelectedExample, write_selection
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec

    _, base, cache = tiny_run
    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(_mirror()))
    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", cache)
    config = load_config(None, "tiny", [f"base={base}"])
    texts = [e.text for e in runner.true_examples(config, get_task_spec(config.task))]
    truth = runner.true_data(config)
    assert len(texts) == config.expert.size and truth.reference == texts[: config.similarity["reference_size"]]
    selection = write_selection(tmp_path / "selection.jsonl", [
        SelectedExample(id="a", text="  " + texts[0].replace(" ", "\n "), label=0, label_text="World"),  # re-wrapped
        SelectedExample(id="b", text=texts[-1], label=1, label_text="Sports", order=1),
        SelectedExample(id="c", text="a document the expert never saw", label=2, label_text="Business", order=2),
    ])

    class ApproxLM:
        def get_model_info(self):
            return {"approx": {"stage_keys": {}, "selection_file": str(selection)}}

    cell = next(c for c in config.cells() if c.kind == APPROX)
    assert runner.cell_extras(config, cell, ApproxLM(), truth, "unused")["true_documents"] == 2
    assert "true_documents" not in runner.cell_extras(config, cell, ApproxLM(), runner.TrueData(), "unused")


def test_the_estimate_is_scaled_to_this_machine_by_the_timing_probe(monkeypatch, capsys):
    """A machine whose probe runs twice as long as the reference machine's is told twice the
    reference minutes, up front and in --dry-run; the probe itself is a positive wall time."""
    from lm_eval_approx.commands import leaderboard as command
    from lm_eval_approx.leaderboard import machine_probe
    from lm_eval_approx.leaderboard.estimate import estimate
    from lm_eval_approx.leaderboard.sources import load_config

    assert machine_probe.probe_seconds() > 0
    config = load_config(None, "cpu-small", [])
    reference = estimate(config).total / 60
    monkeypatch.setattr(command, "slowdown", lambda: 2.0)
    line = command.on_this_machine(config, estimate(config).total)
    assert line.startswith(f"{2 * reference:.0f} min on this machine") and "2.0x as long" in line, line
    assert f"where it is {reference:.0f} min" in line, line
    assert main(["leaderboard", "--preset", "cpu-small", "--dry-run"]) == 0
    assert f"\n  {2 * reference:.0f} min on this machine (" in capsys.readouterr().out
    monkeypatch.setattr(command, "slowdown", lambda: (_ for _ in ()).throw(AssertionError("probed")))
    gpu = load_config(None, "gpu", [])
    assert "GPU speed-up assumed" in command.on_this_machine(gpu, 60.0)  # no probe for a GPU figure
