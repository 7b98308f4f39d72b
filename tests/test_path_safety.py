"""Paths built from config values stay inside the output and cache folders: no ``..`` escape, no
absolute part, no symlink leading out (a symlinked ``results/`` folder or results file is refused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lm_eval_approx.leaderboard import runner
from lm_eval_approx.leaderboard.config import (
    APPROX,
    Cell,
    ExpertConfig,
    LeaderboardConfig,
    LeaderboardConfigError,
    StrategyConfig,
    config_from_dict,
)
from lm_eval_approx.leaderboard.sources import apply_overrides, read_yaml
from lm_eval_approx.data.mirror import DATA_ENV, mirror_path
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.cache.paths import cache_dir, cache_path
from lm_eval_approx.cache.safe_paths import (
    PathEscapeError,
    contained,
    contained_relative,
    safe_name,
)

ESCAPES = ["..", ".", "", "../x", "../../etc/passwd", "a/../../b", "/abs", "a\\b", "nul\x00byte"]
PLAIN = ["select-k5-s0", "..-k5-s0", "a.b_c", "ünïcødé", "k=3"]
HYPOTHESIS_EXAMPLES = 200


@pytest.fixture
def outside(tmp_path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


@pytest.fixture
def out(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("name", ESCAPES)
def test_a_name_that_is_not_one_plain_component_is_refused(name):
    with pytest.raises(PathEscapeError) as info:
        safe_name("label", name)
    assert info.value.field == "label" and info.value.value == name


@pytest.mark.parametrize("name", PLAIN)
def test_plain_names_are_accepted_unchanged(out, name):
    assert safe_name("label", name) == name
    assert contained(out, name) == out / name


@given(st.text(max_size=12))
@settings(max_examples=HYPOTHESIS_EXAMPLES, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_string_either_stays_inside_or_is_a_named_error(out, name):
    try:
        path = contained(out, name)
    except PathEscapeError as exc:
        assert exc.field == "path"
        return
    assert path.parent == out and path.resolve().parent == out.resolve()


def test_a_symlinked_folder_leading_out_is_refused(out, outside):
    (out / "results").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathEscapeError, match="symlink"):
        contained(out, "results")
    with pytest.raises(PathEscapeError):
        contained(out, "results", "cell.json")


def test_a_symlink_that_stays_inside_is_followed(out):
    (out / "real").mkdir()
    (out / "alias").symlink_to(out / "real", target_is_directory=True)
    assert contained(out, "alias", "x.json") == out / "alias" / "x.json"


def test_a_dangling_symlink_pointing_out_is_refused(out, outside):
    (out / "cell.json").symlink_to(outside / "not-yet-there.json")
    with pytest.raises(PathEscapeError):
        contained(out, "cell.json")


def test_relative_paths_are_checked_part_by_part(out):
    assert contained_relative(out, "seed/wikitext2.jsonl") == out / "seed" / "wikitext2.jsonl"
    for bad in ("seed/../../x.jsonl", "/etc/passwd", "seed//x"):
        with pytest.raises(PathEscapeError):
            contained_relative(out, bad)


def test_mirror_paths_cannot_leave_the_mirror(monkeypatch, out):
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert mirror_path("seed/x.jsonl") is None
    monkeypatch.setenv(DATA_ENV, str(out))
    assert mirror_path("seed/x.jsonl") == out.resolve() / "seed" / "x.jsonl"
    with pytest.raises(PathEscapeError) as info:
        mirror_path("seed/../../../etc/passwd.jsonl", field="corpus")
    assert info.value.field == "corpus"


def test_cache_paths_cannot_leave_the_cache(outside):
    assert cache_path("stages", "labels", "0123abcd") == cache_dir() / "stages" / "labels" / "0123abcd"
    with pytest.raises(PathEscapeError):
        cache_path("stages", "labels", "../../../../x")
    link = cache_dir() / "linked-out"
    link.symlink_to(outside, target_is_directory=True)
    try:
        with pytest.raises(PathEscapeError):
            cache_path("linked-out", "model")
    finally:
        link.unlink()


def _config(label: str) -> LeaderboardConfig:
    """A config built directly (skipping the YAML checks), so the runner's own guard is what is tested."""
    strategy = StrategyConfig(name="random", label=label, budgets=[2], seeds=[0])
    return LeaderboardConfig(base="/nonexistent", expert=ExpertConfig(adapter="/nonexistent"), strategies=[strategy])


def _no_compute(monkeypatch):
    monkeypatch.setattr(runner, "shared_task_manager", lambda: pytest.fail("lm-eval started for an unsafe path"))
    monkeypatch.setattr(runner, "expert_model", lambda *a, **k: pytest.fail("expert built for an unsafe path"))


@pytest.mark.parametrize("label", ["../../x", "/abs/x", "a/b"])
def test_a_cell_id_that_escapes_is_refused_before_any_compute(monkeypatch, out, label):
    _no_compute(monkeypatch)
    with pytest.raises(PathEscapeError) as info:
        runner.run_leaderboard(_config(label), out, progress=False)
    assert info.value.field == "leaderboard cell"
    assert not (out / "results").exists() and not (out / "leaderboard.json").exists()


def test_a_symlinked_results_folder_is_refused(monkeypatch, out, outside):
    _no_compute(monkeypatch)
    (out / "results").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathEscapeError, match="results"):
        runner.run_leaderboard(_config("random"), out, progress=False)
    assert list(outside.iterdir()) == []


def test_a_symlinked_result_file_is_refused_when_read_or_written(monkeypatch, out, outside):
    foreign = outside / "foreign.json"
    foreign.write_text(json.dumps({"config": {"leaderboard": {"cell_hash": "x"}}}))
    (out / "results").mkdir()
    cell = Cell("random-k2-s0", APPROX, "random", 2, 0)
    (out / "results" / f"{cell.id}.json").symlink_to(foreign)
    with pytest.raises(PathEscapeError):
        runner.finished(out, _config("random"), cell)
    with pytest.raises(PathEscapeError):
        runner.result_files(out)
    _no_compute(monkeypatch)
    with pytest.raises(PathEscapeError):
        runner.run_leaderboard(_config("random"), out, resume=True, progress=False)
    assert json.loads(foreign.read_text())["config"]["leaderboard"]["cell_hash"] == "x"


def test_result_paths_of_plain_cells_are_unchanged(out):
    cell = Cell("select_changed-k300-s1", APPROX, "select_changed", 300, 1)
    assert runner.results_path(out, cell) == out / "results" / "select_changed-k300-s1.json"
    (out / "results").mkdir()
    (out / "results" / "a.json").write_text("{}")
    assert runner.result_files(out) == [out / "results" / "a.json"]


def test_a_stage_key_cannot_point_outside_the_cache():
    with pytest.raises(PathEscapeError) as info:
        runner._stage_seconds(("selection",), {"selection": "../../../../tmp/x"})
    assert "selection" in info.value.field


@pytest.mark.parametrize("label", ["../../x", "a/b", "/abs"])
def test_the_yaml_refuses_a_label_with_a_path_in_it(label):
    data = apply_overrides(read_yaml(preset="tiny"), ["base=/nonexistent/model"])
    data["strategies"] = [{"name": "random", "label": label}]
    with pytest.raises(LeaderboardConfigError) as info:
        config_from_dict(data)
    assert info.value.field == "strategies[0].label"



def test_the_report_does_not_read_a_result_file_linked_from_outside(out, outside):
    from lm_eval_approx.leaderboard.report import load_results

    (outside / "foreign.json").write_text(json.dumps({"results": {}}))
    (out / "results").mkdir()
    (out / "results" / "theta0.json").symlink_to(outside / "foreign.json")
    with pytest.raises(PathEscapeError):
        load_results(out)


@pytest.mark.parametrize("preset", ["../presets/cpu", "cpu/../cpu", "/etc/passwd"])
def test_a_preset_name_with_a_path_in_it_is_an_unknown_preset(preset):
    from lm_eval_approx.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="preset"):
        read_yaml(preset=preset)


def test_a_seed_corpus_name_cannot_read_outside_the_mirror(monkeypatch, tmp_path):
    from lm_eval_approx.data.corpus import load_corpus

    mirror = tmp_path / "mirror"
    (mirror / "seed").mkdir(parents=True)
    (tmp_path / "secret.jsonl").write_text('{"text": "outside the mirror"}\n')
    monkeypatch.setenv(DATA_ENV, str(mirror))
    # The spec grammar refuses the name before any path is built (seed names are file names) ...
    with pytest.raises(ConfigError, match="seed:<name>"):
        load_corpus("seed:../../secret")
    # ... and the mirror lookup under it refuses a relative path that leaves the mirror.
    with pytest.raises(PathEscapeError):
        mirror_path("seed/../../secret.jsonl")
